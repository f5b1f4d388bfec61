"""`regen serve generator`: the generator as a standalone gRPC process."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from regen.common.grpc_server import CoreSlot, GrpcHost, Registration
from regen.common.serving import run_service
from regen.common.settings import load_settings
from regen.generator.engine import Generator, build_generator
from regen.generator.servicer import SERVICE_NAME, GeneratorServicer
from regen.generator.settings import GeneratorSettings
from regen.v1 import generator_pb2_grpc


def build_engine(settings: GeneratorSettings) -> Generator:
    return build_generator(settings)


def registrations(slot: CoreSlot[Generator], settings: GeneratorSettings) -> list[Registration]:
    return [Registration(generator_pb2_grpc.add_GeneratorServicer_to_server, GeneratorServicer(slot), SERVICE_NAME)]


def serve(
    *, port_file: Path | None = None, preset: str | None = None, config_file: str | Path | None = None, **overrides: Any
) -> None:
    settings = load_settings(GeneratorSettings, preset=preset, config_file=config_file, **overrides)
    run_service(settings, build_engine, registrations, port_file=port_file, close_core=lambda g: g.close())


class BackgroundServer:
    """A gRPC server over an already built Generator, on its own event-loop thread.

    For benchmarks and tests that need a real server in this process (an in-memory
    pipeline, or log capture); `regen serve` uses `serve` instead."""

    def __init__(self, generator: Generator, settings: GeneratorSettings, *, host: str = "127.0.0.1") -> None:
        self.generator = generator
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
        return await self._grpc.start(registrations(CoreSlot(self.generator), self.settings))

    def stop(self) -> None:
        if self._loop is None:
            return

        async def shutdown() -> None:
            if self._grpc is not None:
                await self._grpc.stop(grace_s=1.0)
            await self.generator.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._loop.close()
        self._loop = None
