"""gRPC adapter: regen.v1.Generator over a `Generator` held in an CoreSlot."""

from __future__ import annotations

import grpc

from regen.common.grpc_server import CoreSlot, grpc_errors
from regen.common.identity import server_info
from regen.generator.engine import GeneratedImage, GenerateRequest, Generator, PromptSpec
from regen.v1 import common_pb2, generator_pb2, generator_pb2_grpc

SERVICE_NAME = generator_pb2.DESCRIPTOR.services_by_name["Generator"].full_name


def request_from_proto(message: generator_pb2.GenerateRequest) -> GenerateRequest:
    return GenerateRequest(
        prompts=[PromptSpec(p.text, p.negative_prompt, p.seed) for p in message.prompts],
        width=message.width if message.HasField("width") else None,
        height=message.height if message.HasField("height") else None,
        steps=message.steps if message.HasField("steps") else None,
        guidance_scale=message.guidance_scale if message.HasField("guidance_scale") else None,
    )


def image_to_proto(image: GeneratedImage) -> generator_pb2.GeneratedImage:
    return generator_pb2.GeneratedImage(
        index=image.index,
        png=image.png,
        seed=image.seed,
        elapsed_s=image.elapsed_s,
        prompt_truncated=image.prompt_truncated,
        prompt_tokens=image.prompt_tokens,
        refused=image.refused,
        refusal_reason=image.refusal_reason,
        width=image.width,
        height=image.height,
    )


def info_to_proto(generator: Generator) -> generator_pb2.GeneratorInfo:
    info = generator.info()
    return generator_pb2.GeneratorInfo(
        model=common_pb2.ModelInfo(
            model_id=info.model_id, revision=info.revision, backend=info.backend, device=info.device, dtype=info.dtype
        ),
        server=server_info(generator.batcher.stats, *info.libraries),
        prompt_token_budget=info.prompt_token_budget,
        default_width=info.default_width,
        default_height=info.default_height,
        default_steps=info.default_steps,
        default_guidance_scale=info.default_guidance_scale,
        max_batch=generator.settings.max_batch,
        size_multiple=info.size_multiple,
        steps_run=generator.engine.steps_run(),
    )


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    def __init__(self, slot: CoreSlot[Generator]) -> None:
        self._slot = slot

    @grpc_errors
    async def Info(self, request: generator_pb2.InfoRequest, context: grpc.aio.ServicerContext):
        return info_to_proto(self._slot.get())

    @grpc_errors
    async def Generate(self, request: generator_pb2.GenerateRequest, context: grpc.aio.ServicerContext):
        generator = self._slot.get()
        async for image in generator.generate(request_from_proto(request)):
            yield image_to_proto(image)
