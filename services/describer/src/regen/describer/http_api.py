"""The describer as a BentoML service: an HTTP API, plus the regen.v1.Describer gRPC server
started in the same process over the same core (model, cache and batcher).

    REGEN_PRESET=tiny REGEN_DESCRIBER_PORT=50051 bentoml serve regen.describer.http_api:Describer --host 127.0.0.1

Settings come from REGEN_DESCRIBER_* variables, REGEN_CONFIG and REGEN_PRESET. Each
endpoint calls the same core method as its gRPC twin, with the same checks and limits.
Images are base64-encoded image files. An IUT is the one JSON form of
`regen.common.describer_json` (object types "person", "animal", "object"; each object
with its own type's attributes), the form /understand returns and iut.json holds; it is
read into the regen.v1 message and from there into the core exactly as over gRPC.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import bentoml
from pydantic import ConfigDict, Field, WithJsonSchema
from starlette.responses import JSONResponse

from regen.common import bento, describer_json
from regen.describer import convert, schemas
from regen.describer.answers import Difference, ImageUnderstandingTree
from regen.describer.core import CallReport, DescriberCore
from regen.describer.grpc_api import DEFINITION, describer_info

# The ranges of the proto's int32 and int64 fields: gRPC cannot carry other values.


Base64Image = Annotated[str, Field(description="An image file (PNG, JPEG, WebP...), base64-encoded.")]
IutJson = Annotated[
    dict[str, Any],
    WithJsonSchema(schemas.iut_form_schema()),
    Field(description="An Image Understanding Tree in its one JSON form, as /understand returns it."),
]

# Two 16x16 images for the examples of the OpenAPI page.
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAQElEQVR42mP88OwEAymAiYFEQHsNLJhCNyzC4GyNE6sI2ICsGpOLrgFT"
    "GlNwEIYSigbMMMEUZMIvjWkE4zBISwCfwxRdDqxdlQAAAABJRU5ErkJggg=="
)
EXAMPLE_PNG_2 = (
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAQElEQVR42mPUiFrAQApgYiAR0F4DC6bQpbwOOFtvUgUBG5BVY3LRNWBK"
    "YwoOwlBC0YAZJpiCTPilMY1gHAZpCQBxRxFlAPhjhgAAAABJRU5ErkJggg=="
)
EXAMPLE_IUT: dict[str, Any] = {
    "global_description": "A red apple on a wooden table",
    "global_features": {"style": "photo", "lighting": "soft", "color_palette": "red, brown", "composition": "centered"},
    "objects": [
        {
            "name": "apple",
            "type": "object",
            "attributes": {
                "color": "red",
                "material": "",
                "position": "center",
                "texture": "smooth",
                "function": "food",
                "state": "fresh",
            },
        }
    ],
    "relationships": [],
}
EXAMPLE_DIFFERENCES = [{"aspect": "content", "description": "the table is missing"}]
EXAMPLE_CALL = {
    "cached": False,
    "cache_key": "0" * 64,
    "output_tokens": 21,
    "elapsed_s": 0.8,
    "attempts": 1,
    "repairs": 0,
    "input_tokens": 310,
    "served_model": "Qwen/Qwen2.5-VL-7B-Instruct",
    "system_fingerprint": "",
    "seed": 1234567,
    "usage": {"api_calls": 0, "retries": 0, "input_tokens": 310, "output_tokens": 21},
}


def _example(value: dict[str, Any]) -> ConfigDict:
    # "example" (singular): BentoML's OpenAPI schema has no "examples".
    return ConfigDict(extra="forbid", json_schema_extra={"example": value})


class CallUsageBody(bento.StrictModel):
    """What this request cost now (regen.v1.Usage); zero from the cache or a shared call."""

    api_calls: int = Field(description="Remote API requests (an API backend's model calls)")
    retries: int = Field(description="Always 0: the describer never repeats a request; its caller retries")
    input_tokens: int = Field(description="Prompt tokens of this request's model calls")
    output_tokens: int = Field(description="Answer tokens of this request's model calls")


class CallBody(bento.StrictModel):
    """How an answer was produced (CallInfo over gRPC)."""

    cached: bool
    cache_key: str
    output_tokens: int = Field(description="Tokens of every model call of the answer, repairs included.")
    elapsed_s: float
    attempts: int = Field(description="Model calls spent on this request; 0 from the cache or a shared call.")
    repairs: int = Field(description="Of those, calls that asked the model to repair an invalid answer.")
    input_tokens: int = Field(description="Prompt tokens of every model call of the answer, repairs included.")
    served_model: str = Field(description="The model that answered, as its server names it.")
    system_fingerprint: str = Field(description="The API's system_fingerprint; empty when not given.")
    seed: int = Field(description="Seed of the first model call (every call is seeded).")
    usage: CallUsageBody

    @classmethod
    def of(cls, report: CallReport) -> CallBody:
        return cls(**asdict(report))


class DifferenceBody(bento.StrictModel):
    aspect: str = Field("", json_schema_extra={"enum": list(describer_json.ASPECTS)})
    description: str = ""


class DescriberInfoBody(bento.StrictModel):
    model_config = _example(
        {
            "model": {
                "model_id": "Qwen/Qwen2.5-VL-7B-Instruct",
                "revision": "main",
                "backend": "transformers",
                "device": "cuda",
                "dtype": "float16",
            },
            "template_version": "1+85fd7c7b",
            "max_variants": 8,
            "judge_temperature": 0.0,
            "server": {"busy_s": 12.5, "batches": 10, "items": 14},
        }
    )
    model: bento.ModelBody
    template_version: str = Field(description="The prompt templates' version; part of every cache key.")
    max_variants: int = Field(description="Most prompts one variants call may ask for (n).")
    judge_temperature: float = Field(description="Judge's sampling temperature; 0: greedy (the seed is ignored).")
    server: bento.ServerStatsBody


class UnderstandBody(bento.StrictModel):
    model_config = _example({"image_png": EXAMPLE_PNG})
    image_png: Base64Image


class UnderstoodBody(bento.StrictModel):
    model_config = _example({"iut": EXAMPLE_IUT, "call": EXAMPLE_CALL})
    iut: IutJson
    call: CallBody


class WritePromptBody(bento.StrictModel):
    model_config = _example({"iut": EXAMPLE_IUT, "token_budget": 77})
    iut: IutJson
    token_budget: bento.Int32 = Field(0, description="The generator's prompt token budget; 0: unlimited.")


class PromptBody(bento.StrictModel):
    model_config = _example({"prompt": "red apple, wooden table, soft light, photo", "call": EXAMPLE_CALL})
    prompt: str
    call: CallBody


class VariantsBody(bento.StrictModel):
    model_config = _example({"prompt": "red apple, wooden table", "n": 2, "token_budget": 77, "seed": 0})
    prompt: str
    n: bento.Int32 = Field(description="How many variants, 1 to the server's max_variants.")
    token_budget: bento.Int32 = 0
    seed: bento.Int64 = Field(0, description="The same seed gives the same variants.")


class PromptsBody(bento.StrictModel):
    model_config = _example(
        {"prompts": ["red apple on a wooden table", "wooden table, red apple"], "call": EXAMPLE_CALL}
    )
    prompts: list[str]
    call: CallBody


class CompareBody(bento.StrictModel):
    model_config = _example({"reference_png": EXAMPLE_PNG, "candidate_png": EXAMPLE_PNG_2, "prompt": "red apple"})
    reference_png: Base64Image
    candidate_png: Base64Image
    prompt: str = Field("", description="The prompt that produced the candidate (optional).")


class DifferencesBody(bento.StrictModel):
    model_config = _example({"differences": EXAMPLE_DIFFERENCES, "call": EXAMPLE_CALL})
    differences: list[DifferenceBody]
    call: CallBody


class ReviseBody(bento.StrictModel):
    model_config = _example({"prompt": "red apple", "differences": EXAMPLE_DIFFERENCES, "token_budget": 77})
    prompt: str
    differences: list[DifferenceBody]
    token_budget: bento.Int32 = 0


class JudgeBody(bento.StrictModel):
    model_config = _example({"reference_png": EXAMPLE_PNG, "candidate_png": EXAMPLE_PNG_2, "seed": 0})
    reference_png: Base64Image
    candidate_png: Base64Image
    seed: bento.Int64 = Field(0, description="A sampling judge's seed (judge_temperature > 0); else ignored.")


class JudgementBody(bento.StrictModel):
    model_config = _example(
        {"content_consistency": 2, "perceptual_quality": 4, "rationale": "another object", "call": EXAMPLE_CALL}
    )
    content_consistency: int = Field(description="1 to 5: how well the candidate matches the reference.")
    perceptual_quality: int = Field(description="1 to 5: the candidate's own quality.")
    rationale: str
    call: CallBody


def iut_from_json(data: dict[str, Any]) -> ImageUnderstandingTree:
    """The JSON form -> the regen.v1 message -> the core's value, as over gRPC."""
    return convert.iut_from_proto(describer_json.iut_from_json(data, "iut"), "iut")


def iut_to_json(iut: ImageUnderstandingTree) -> dict[str, Any]:
    return describer_json.iut_to_json(convert.iut_to_proto(iut))


async def _understand(core: DescriberCore, body: UnderstandBody) -> UnderstoodBody:
    result = await core.understand(bento.b64decode_field(body.image_png, "image_png"))
    return UnderstoodBody(iut=iut_to_json(result.answer), call=CallBody.of(result.call))


async def _write_prompt(core: DescriberCore, body: WritePromptBody) -> PromptBody:
    result = await core.write_prompt(iut_from_json(body.iut), body.token_budget)
    return PromptBody(prompt=result.answer, call=CallBody.of(result.call))


async def _variants(core: DescriberCore, body: VariantsBody) -> PromptsBody:
    result = await core.variants(body.prompt, body.n, body.token_budget, body.seed)
    return PromptsBody(prompts=result.answer, call=CallBody.of(result.call))


async def _compare(core: DescriberCore, body: CompareBody) -> DifferencesBody:
    reference, candidate = (
        bento.b64decode_field(body.reference_png, "reference_png"),
        bento.b64decode_field(body.candidate_png, "candidate_png"),
    )
    result = await core.compare(reference, candidate, body.prompt)
    differences = [DifferenceBody(aspect=d.aspect, description=d.description) for d in result.answer]
    return DifferencesBody(differences=differences, call=CallBody.of(result.call))


async def _revise(core: DescriberCore, body: ReviseBody) -> PromptBody:
    differences = [Difference(d.aspect, d.description) for d in body.differences]
    result = await core.revise(body.prompt, differences, body.token_budget)
    return PromptBody(prompt=result.answer, call=CallBody.of(result.call))


async def _judge(core: DescriberCore, body: JudgeBody) -> JudgementBody:
    reference, candidate = (
        bento.b64decode_field(body.reference_png, "reference_png"),
        bento.b64decode_field(body.candidate_png, "candidate_png"),
    )
    result = await core.judge(reference, candidate, body.seed)
    return JudgementBody(**asdict(result.answer), call=CallBody.of(result.call))


@bentoml.service(
    name="regen-describer", resources={"gpu": 1}, workers=1, traffic={"timeout": 600}, **bento.SERVICE_CONFIG
)
class Describer(bento.GrpcAlongside[DescriberCore]):
    definition = DEFINITION

    @bentoml.api(input_spec=bento.NoBody, output_spec=DescriberInfoBody)
    async def info(self) -> DescriberInfoBody:
        """Model identity, template version and model-call statistics (regen.v1.Describer.Info)."""
        info = describer_info(self.core)
        return DescriberInfoBody(
            model=bento.ModelBody.of(info.model),
            template_version=info.template_version,
            max_variants=info.max_variants,
            judge_temperature=info.judge_temperature,
            server=bento.ServerStatsBody.of(info.server),
        )

    @bentoml.api(input_spec=UnderstandBody, output_spec=UnderstoodBody)
    async def understand(self, **body: Any) -> UnderstoodBody | JSONResponse:
        """The image's Image Understanding Tree (Understand)."""
        return await bento.answer(_understand(self.core, UnderstandBody.model_validate(body)))

    @bentoml.api(input_spec=WritePromptBody, output_spec=PromptBody)
    async def write_prompt(self, **body: Any) -> PromptBody | JSONResponse:
        """The first text-to-image prompt for an IUT, within the token budget (WritePrompt)."""
        return await bento.answer(_write_prompt(self.core, WritePromptBody.model_validate(body)))

    @bentoml.api(input_spec=VariantsBody, output_spec=PromptsBody)
    async def variants(self, **body: Any) -> PromptsBody | JSONResponse:
        """Exactly n distinct prompts with the prompt's meaning, sampled with the seed (Variants)."""
        return await bento.answer(_variants(self.core, VariantsBody.model_validate(body)))

    @bentoml.api(input_spec=CompareBody, output_spec=DifferencesBody)
    async def compare(self, **body: Any) -> DifferencesBody | JSONResponse:
        """What the candidate lacks of the reference, most important first (Compare)."""
        return await bento.answer(_compare(self.core, CompareBody.model_validate(body)))

    @bentoml.api(input_spec=ReviseBody, output_spec=PromptBody)
    async def revise(self, **body: Any) -> PromptBody | JSONResponse:
        """The prompt revised to fix the differences (Revise)."""
        return await bento.answer(_revise(self.core, ReviseBody.model_validate(body)))

    @bentoml.api(input_spec=JudgeBody, output_spec=JudgementBody)
    async def judge(self, **body: Any) -> JudgementBody | JSONResponse:
        """Content consistency and perceptual quality of the candidate, 1 to 5, with the rationale (Judge)."""
        return await bento.answer(_judge(self.core, JudgeBody.model_validate(body)))


bento.use_error_shape(Describer)
