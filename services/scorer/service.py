"""The scorer as a BentoML service: an HTTP API, plus the regen.v1.Scorer gRPC server
started in the same process over the same loaded models and the same batcher.

    REGEN_PRESET=tiny REGEN_SCORER_PORT=50053 bentoml serve services/scorer/service.py:Scorer

Settings come from REGEN_SCORER_* variables, REGEN_CONFIG and REGEN_PRESET.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import asdict
from http import HTTPStatus

import bentoml
from bentoml.exceptions import BentoMLException

from regen.common.config import ScorerSettings, load_settings
from regen.common.errors import InvalidInput, RegenError
from regen.common.grpc_server import EngineSlot, GrpcHost
from regen.scorer.scoring import BatchedScorer
from regen.scorer.server import build_engine, registrations


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what}: not valid base64: {exc}") from None


def _http_error(exc: RegenError) -> BentoMLException:
    return BentoMLException(str(exc), error_code=HTTPStatus(exc.http_status))


@bentoml.service(name="regen-scorer", resources={"gpu": 1}, workers=1, traffic={"timeout": 300})
class Scorer:
    def __init__(self) -> None:
        self.settings = load_settings(ScorerSettings)
        self.slot: EngineSlot = EngineSlot(build_engine(self.settings))
        self.scorer = BatchedScorer(self.slot, self.settings)
        self.grpc: GrpcHost | None = None

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        # grpc.aio objects bind to the running loop, so they are created here, not in __init__.
        self.grpc = GrpcHost(self.settings.host, self.settings.port, max_message_bytes=self.settings.max_message_bytes)
        await self.grpc.start(registrations(self.slot, self.settings, scorer=self.scorer))

    @bentoml.on_shutdown
    async def stop_grpc(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop()
        await self.scorer.close()

    @bentoml.api
    async def score(self, reference_png: str, candidate_pngs: list[str], metrics: list[str] | None = None) -> dict:
        """Images as base64 PNG/JPEG/...; returns {"candidates": [{"index", "scores": {metric id: value}}]}."""
        try:
            reference = _b64decode(reference_png, "reference")
            candidates = [_b64decode(text, f"candidate {i}") for i, text in enumerate(candidate_pngs)]
            results = await self.scorer.score(reference, candidates, metrics or [])
        except RegenError as exc:
            raise _http_error(exc) from None
        return {"candidates": [{"index": i, "scores": scores} for i, scores in enumerate(results)]}

    @bentoml.api
    async def info(self) -> dict:
        """Models, metric ids and definitions, limits and batching statistics."""
        try:
            description = self.scorer.describe()
        except RegenError as exc:
            raise _http_error(exc) from None
        stats = description.stats
        return {
            "models": [asdict(model) | {"backend": "transformers"} for model in description.models],
            "metrics": [asdict(spec) for spec in description.metrics],
            "max_candidates": description.max_candidates,
            "server": {"busy_s": stats.busy_s, "batches": stats.batches, "items": stats.items},
        }
