"""The generator as a BentoML service: an HTTP API, plus the regen.v1.Generator gRPC
server started in the same process over the same loaded pipeline and the same batcher
(so HTTP and gRPC requests are batched together).

    REGEN_PRESET=tiny REGEN_GENERATOR_PORT=50052 bentoml serve services/generator/service.py:Generator

Settings come from REGEN_GENERATOR_* variables, REGEN_CONFIG and REGEN_PRESET.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator
from dataclasses import asdict
from typing import Any

import bentoml
from pydantic import BaseModel

from regen.common import bento
from regen.common.errors import RegenError
from regen.common.grpc_server import CoreSlot, GrpcHost
from regen.common.identity import model_json
from regen.common.settings import load_settings
from regen.generator import engine as core
from regen.generator.server import build_engine, registrations
from regen.generator.settings import GeneratorSettings


class Prompt(BaseModel):
    text: str
    negative_prompt: str = ""
    seed: int = 0


def _request(prompts: list[Prompt], width, height, steps, guidance_scale) -> core.GenerateRequest:
    return core.GenerateRequest(
        prompts=[core.PromptSpec(p.text, p.negative_prompt, p.seed) for p in prompts],
        width=width,
        height=height,
        steps=steps,
        guidance_scale=guidance_scale,
    )


def _image_json(image: core.GeneratedImage) -> dict[str, Any]:
    fields = asdict(image)
    fields["png"] = base64.b64encode(image.png).decode("ascii")
    return fields


@bentoml.service(name="regen-generator", resources={"gpu": 1}, workers=1, traffic={"timeout": 600})
class Generator:
    def __init__(self) -> None:
        self.settings = load_settings(GeneratorSettings)
        self.generator = build_engine(self.settings)
        self.slot: CoreSlot[core.Generator] = CoreSlot(self.generator)
        self.grpc: GrpcHost | None = None

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        self.grpc = await bento.start_grpc(self.settings, self.slot, registrations)

    @bentoml.on_shutdown
    async def stop_grpc(self) -> None:
        await bento.stop_grpc(self.grpc, self.generator.close)

    @bentoml.api
    async def generate(
        self,
        prompts: list[Prompt],
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> dict:
        """One image per prompt, in prompt order: {"images": [{"index", "png" (base64), "seed",
        "elapsed_s", "width", "height", "prompt_tokens", "prompt_truncated", "refused",
        "refusal_reason"}]}."""
        try:
            images = await self.generator.generate_all(_request(prompts, width, height, steps, guidance_scale))
        except RegenError as exc:
            raise bento.http_error(exc) from None
        return {"images": [_image_json(image) for image in images]}

    @bentoml.api
    async def generate_stream(
        self,
        prompts: list[Prompt],
        width: int | None = None,
        height: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> AsyncGenerator[str, None]:
        """The same images as `generate`, one JSON object per line as each is ready."""
        request = _request(prompts, width, height, steps, guidance_scale)
        try:
            self.generator.validate(request)  # refuse bad input with a status, before streaming
        except RegenError as exc:
            raise bento.http_error(exc) from None
        async for image in self.generator.generate(request):
            yield json.dumps(_image_json(image)) + "\n"

    @bentoml.api
    async def info(self) -> dict:
        """Model identity, prompt token budget, defaults, limits and batching statistics."""
        info = self.generator.info()
        return {
            "model": model_json(info),
            "prompt_token_budget": info.prompt_token_budget,
            "default_width": info.default_width,
            "default_height": info.default_height,
            "default_steps": info.default_steps,
            "default_guidance_scale": info.default_guidance_scale,
            "max_batch": self.settings.max_batch,
            "size_multiple": info.size_multiple,
            "steps_run": self.generator.engine.steps_run(),
            "server": bento.stats_json(self.generator.batcher.stats),
        }
