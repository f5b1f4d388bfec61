"""The generator as a BentoML service: an HTTP API, plus the regen.v1.Generator gRPC server
started in the same process over the same loaded engine and the same batcher (so HTTP and
gRPC requests are batched together).

    REGEN_PRESET=tiny REGEN_GENERATOR_PORT=50052 \
        bentoml serve regen.generator.http_api:Generator --host 127.0.0.1 --port 3000

Settings come from REGEN_GENERATOR_* variables, REGEN_CONFIG and REGEN_PRESET.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import bentoml
from pydantic import ConfigDict, Field
from starlette.responses import JSONResponse

from regen.common import bento
from regen.generator.core import (
    MAX_SEED,
    GeneratedImage,
    GenerateRequest,
    GeneratorCore,
    GeneratorDescription,
    PromptSpec,
)
from regen.generator.grpc_api import DEFINITION


class PromptBody(bento.StrictModel):
    text: str = Field(description="What to draw")
    negative_prompt: str = Field("", description="What to avoid (engines that support it)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of this image's own random generator (int64, >= 0)")


class GenerateBody(bento.StrictModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {"prompts": [{"text": "a red fox sleeping in fresh snow, watercolor", "seed": 1}]}
        },
    )

    prompts: list[PromptBody] = Field(description="One image per prompt, at most Info's max_batch")
    width: int | None = Field(None, description="Unset: the model's default; a multiple of size_multiple")
    height: int | None = Field(None, description="Unset: the model's default; a multiple of size_multiple")
    steps: int | None = Field(None, description="Denoising steps; unset: the model's default")
    guidance_scale: float | None = Field(None, description="Classifier-free guidance, 0 to 100; unset: the default")

    def request(self) -> GenerateRequest:
        return GenerateRequest(
            prompts=[PromptSpec(p.text, p.negative_prompt, p.seed) for p in self.prompts],
            width=self.width,
            height=self.height,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
        )


class UsageBody(bento.StrictModel):
    """What rendering one image cost (regen.v1.Usage)."""

    api_calls: int = Field(description="Remote API calls made for this image, retries included")
    retries: int = Field(description="Of those, calls repeated after a transient failure")
    input_tokens: int = Field(description="Tokens the API billed, as it reported them")
    output_tokens: int
    images: int = Field(description="Images the API billed")
    cost_usd: float | None = Field(description="US dollars, where the API states it; else null")


class ImageBody(bento.StrictModel):
    index: int = Field(description="Position of the prompt in prompts")
    png: str = Field(description="Lossless PNG, base64; empty when refused")
    seed: int
    elapsed_s: float = Field(description="Seconds from the request's arrival to this image being ready")
    width: int
    height: int
    prompt_tokens: int = Field(description="Tokens in the prompt before truncation (0: not counted)")
    prompt_truncated: bool = Field(description="The prompt was cut to the model's token budget")
    refused: bool = Field(description="The model refused the prompt (content policy); no image")
    refusal_reason: str
    model_id: str = Field(description="The model that rendered the image: Info's model.model_id")
    revision: str = Field(description="Info's model.revision")
    usage: UsageBody

    @classmethod
    def of(cls, image: GeneratedImage) -> ImageBody:
        return cls(**asdict(image) | {"png": base64.b64encode(image.png).decode("ascii")})


class ImagesBody(bento.StrictModel):
    images: list[ImageBody] = Field(description="One image per prompt, in prompt order")


class SizeBody(bento.StrictModel):
    width: int
    height: int


class CapabilitiesBody(bento.StrictModel):
    """What the model can do (regen.v1.GeneratorCapabilities)."""

    seeded: bool = Field(description="The same prompt, settings and seed give the same image")
    negative_prompt: bool = Field(description="negative_prompt is used; otherwise a non-empty one is refused")
    sampling_params: bool = Field(description="steps and guidance_scale change the image; otherwise ignored")
    sizes: list[SizeBody] = Field(description="The only sizes rendered; empty: any multiple of size_multiple")
    max_side: int = Field(description="Longest side accepted")


class GeneratorInfoBody(bento.StrictModel):
    model: bento.ModelBody
    prompt_token_budget: int = Field(description="Tokens of prompt the text encoder keeps; 0: unlimited")
    default_width: int
    default_height: int
    default_steps: int
    default_guidance_scale: float
    max_batch: int = Field(description="Most prompts in one request")
    size_multiple: int = Field(description="Width and height must be multiples of this")
    steps_run: int = Field(description="Denoising steps run since start (0: not counted)")
    capabilities: CapabilitiesBody
    server: bento.ServerStatsBody

    @classmethod
    def of(cls, description: GeneratorDescription) -> GeneratorInfoBody:
        return cls(
            model=bento.ModelBody.of(description.model),
            server=bento.ServerStatsBody.of(description.stats),
            capabilities=CapabilitiesBody.model_validate(asdict(description.capabilities)),
            **asdict(description.figures),
        )


@bentoml.service(
    name="regen-generator", resources={"gpu": 1}, workers=1, traffic={"timeout": 600}, **bento.SERVICE_CONFIG
)
class Generator(bento.GrpcAlongside[GeneratorCore]):
    definition = DEFINITION

    @bentoml.api(input_spec=GenerateBody, output_spec=ImagesBody)
    async def generate(self, **body: Any) -> ImagesBody | JSONResponse:
        """One image per prompt, in prompt order (regen.v1.Generator.Generate, collected)."""
        return await bento.answer(_generate(self.core, GenerateBody.model_validate(body)))

    @bentoml.api(input_spec=GenerateBody)
    async def generate_stream(self, **body: Any) -> Any:  # a StreamingResponse, or a JSONResponse error
        """The same images as `generate`, as newline-delimited JSON (application/x-ndjson):
        one ImageBody per line as each is ready. A request refused before the first image
        (invalid, queue full) gets an ordinary error answer; when a prompt fails after
        that, a last line holds the error (the one error shape) and the body ends
        abnormally, so the client sees the failure."""
        return await bento.ndjson_stream(stream_lines(self.core, GenerateBody.model_validate(body).request()))

    @bentoml.api(input_spec=bento.NoBody, output_spec=GeneratorInfoBody)
    async def info(self) -> GeneratorInfoBody:
        """Model identity, prompt token budget, defaults, limits, capabilities and batching statistics."""
        return GeneratorInfoBody.of(self.core.describe())


async def _generate(core: GeneratorCore, body: GenerateBody) -> ImagesBody:
    images = await core.generate_all(body.request())
    return ImagesBody(images=[ImageBody.of(image) for image in images])


async def stream_lines(core: GeneratorCore, request: GenerateRequest) -> AsyncIterator[str]:
    """One JSON line per image as it is ready; the first failure is raised after them."""
    async for image in core.generate(request):
        yield ImageBody.of(image).model_dump_json() + "\n"


bento.use_error_shape(Generator)
