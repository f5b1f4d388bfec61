"""The gRPC adapter: regen.v1.Generator over a GeneratorCore, `regen serve generator`, and
`BackgroundServer` for benchmarks and tests that need a real server in this process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from regen.common.grpc_server import CoreSlot, GrpcHost, grpc_errors
from regen.common.identity import model_json, server_info
from regen.common.serving import ServiceDefinition
from regen.generator.core import GenerateRequest, GeneratorCore, GeneratorDescription, PromptSpec
from regen.generator.settings import GeneratorSettings
from regen.v1 import common_pb2, generator_pb2, generator_pb2_grpc


def request_from_proto(message: generator_pb2.GenerateRequest) -> GenerateRequest:
    return GenerateRequest(
        prompts=[PromptSpec(p.text, p.negative_prompt, p.seed) for p in message.prompts],
        width=message.width if message.HasField("width") else None,
        height=message.height if message.HasField("height") else None,
        steps=message.steps if message.HasField("steps") else None,
        guidance_scale=message.guidance_scale if message.HasField("guidance_scale") else None,
    )


def info_message(description: GeneratorDescription) -> generator_pb2.GeneratorInfo:
    model = description.model
    return generator_pb2.GeneratorInfo(
        model=common_pb2.ModelInfo(**model_json(model)),
        server=server_info(description.stats, *model.libraries),
        capabilities=generator_pb2.GeneratorCapabilities(**asdict(description.capabilities)),
        **asdict(description.figures),
    )


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    def __init__(self, slot: CoreSlot[GeneratorCore]) -> None:
        self._slot = slot

    @grpc_errors
    async def Info(self, request: common_pb2.InfoRequest, context: Any) -> generator_pb2.GeneratorInfo:
        return info_message(self._slot.get().describe())

    @grpc_errors
    async def Generate(
        self, request: generator_pb2.GenerateRequest, context: Any
    ) -> AsyncIterator[generator_pb2.GeneratedImage]:
        async for image in self._slot.get().generate(request_from_proto(request)):
            yield generator_pb2.GeneratedImage(**asdict(image))


DEFINITION: ServiceDefinition[GeneratorSettings, GeneratorCore] = ServiceDefinition(
    settings_class=GeneratorSettings,
    build_core=GeneratorCore.load,
    add_servicer=generator_pb2_grpc.add_GeneratorServicer_to_server,
    servicer=GeneratorServicer,
    service_name=generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name,
    close_core=lambda core: core.close(),
)
# `regen serve generator`: bind, load the models, serve until SIGTERM.
serve = DEFINITION.serve


class BackgroundServer:
    """A gRPC server over an already built GeneratorCore, on its own event-loop thread.

    For benchmarks and tests that need a real server in this process (an in-memory
    pipeline, or log capture); `regen serve` uses `serve` instead."""

    def __init__(self, core: GeneratorCore, settings: GeneratorSettings, *, host: str = "127.0.0.1") -> None:
        self.core = core
        self.settings = settings
        self.host = host
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._grpc: GrpcHost | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="generator-grpc", daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=60)

    async def _start(self) -> int:
        self._grpc = GrpcHost(self.host, 0, max_message_bytes=self.settings.max_message_bytes)
        return await self._grpc.start(DEFINITION.registrations(CoreSlot(self.core)))

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            if self._grpc is not None:
                await self._grpc.stop(grace_s=1.0)
            await self.core.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None
