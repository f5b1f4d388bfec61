"""The describer as a BentoML service: an HTTP API, plus the regen.v1.Describer gRPC server
started in the same process over the same loaded model, cache and batcher.

    REGEN_PRESET=tiny REGEN_DESCRIBER_PORT=50051 bentoml serve services/describer/service.py:Describer

Settings come from REGEN_DESCRIBER_* variables, REGEN_CONFIG and REGEN_PRESET. Images are
base64-encoded image files; an IUT is the JSON form the `understand` endpoint returns.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import bentoml

from regen.common import bento
from regen.common.errors import RegenError
from regen.common.grpc_server import CoreSlot, GrpcHost
from regen.common.identity import model_json
from regen.common.settings import load_settings
from regen.describer.convert import differences_from_json, iut_from_json
from regen.describer.engine import CallReport
from regen.describer.server import build_engine, registrations
from regen.describer.servicer import describer_info
from regen.describer.settings import DescriberSettings


def _call(report: CallReport) -> dict[str, Any]:
    return asdict(report)


@bentoml.service(name="regen-describer", resources={"gpu": 1}, workers=1, traffic={"timeout": 600})
class Describer:
    def __init__(self) -> None:
        self.settings = load_settings(DescriberSettings)
        self.engine = build_engine(self.settings)
        self.slot: CoreSlot = CoreSlot(self.engine)
        self.grpc: GrpcHost | None = None

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        self.grpc = await bento.start_grpc(self.settings, self.slot, registrations)

    @bentoml.on_shutdown
    async def stop_grpc(self) -> None:
        await bento.stop_grpc(self.grpc, self.engine.aclose)

    @bentoml.api
    async def info(self) -> dict:
        """Model identity, template version and model-call statistics."""
        info = describer_info(self.engine)
        return {
            "model": model_json(info.model),
            "template_version": info.template_version,
            "server": bento.stats_json(info.server),
        }

    @bentoml.api
    async def understand(self, image_png: str) -> dict:
        """Image (base64) -> {"iut": {...}, "call": {...}}."""
        try:
            result = await self.engine.understand(bento.b64decode_field(image_png, "image_png"))
        except RegenError as exc:
            raise bento.http_error(exc) from None
        return {"iut": result.answer.to_json(), "call": _call(result.call)}

    @bentoml.api
    async def write_prompt(self, iut: dict, token_budget: int = 0) -> dict:
        """IUT -> {"prompt", "call"}; token_budget 0 means unlimited."""
        try:
            result = await self.engine.write_prompt(iut_from_json(iut), token_budget)
        except RegenError as exc:
            raise bento.http_error(exc) from None
        return {"prompt": result.answer, "call": _call(result.call)}

    @bentoml.api
    async def variants(self, prompt: str, n: int, token_budget: int = 0, seed: int = 0) -> dict:
        """Prompt -> {"prompts": [n prompts], "call"}; the same seed gives the same variants."""
        try:
            result = await self.engine.variants(prompt, n, token_budget, seed)
        except RegenError as exc:
            raise bento.http_error(exc) from None
        return {"prompts": result.answer, "call": _call(result.call)}

    @bentoml.api
    async def compare(self, reference_png: str, candidate_png: str, prompt: str = "") -> dict:
        """Reference and candidate (base64) -> {"differences": [{"aspect", "description"}], "call"}."""
        try:
            result = await self.engine.compare(
                bento.b64decode_field(reference_png, "reference_png"),
                bento.b64decode_field(candidate_png, "candidate_png"),
                prompt,
            )
        except RegenError as exc:
            raise bento.http_error(exc) from None
        return {"differences": [asdict(d) for d in result.answer], "call": _call(result.call)}

    @bentoml.api
    async def revise(self, prompt: str, differences: list[dict], token_budget: int = 0) -> dict:
        """Prompt and differences -> {"prompt", "call"}."""
        try:
            result = await self.engine.revise(prompt, differences_from_json(differences), token_budget)
        except RegenError as exc:
            raise bento.http_error(exc) from None
        return {"prompt": result.answer, "call": _call(result.call)}

    @bentoml.api
    async def judge(self, reference_png: str, candidate_png: str) -> dict:
        """Reference and candidate (base64) -> {"content_consistency", "perceptual_quality", "rationale", "call"}."""
        try:
            result = await self.engine.judge(
                bento.b64decode_field(reference_png, "reference_png"),
                bento.b64decode_field(candidate_png, "candidate_png"),
            )
        except RegenError as exc:
            raise bento.http_error(exc) from None
        return asdict(result.answer) | {"call": _call(result.call)}
