"""The scorer as a BentoML service: an HTTP API, plus the regen.v1.Scorer gRPC server
started in the same process over the same loaded models and the same batcher.

    REGEN_PRESET=tiny REGEN_SCORER_PORT=50053 bentoml serve services/scorer/service.py:Scorer

Settings come from REGEN_SCORER_* variables, REGEN_CONFIG and REGEN_PRESET.
"""

from __future__ import annotations

from dataclasses import asdict
from functools import partial

import bentoml

from regen.common import bento
from regen.common.errors import RegenError
from regen.common.grpc_server import CoreSlot, GrpcHost
from regen.common.settings import load_settings
from regen.scorer.scoring import BatchedScorer
from regen.scorer.server import build_engine, registrations
from regen.scorer.settings import ScorerSettings


@bentoml.service(name="regen-scorer", resources={"gpu": 1}, workers=1, traffic={"timeout": 300})
class Scorer:
    def __init__(self) -> None:
        self.settings = load_settings(ScorerSettings)
        self.slot: CoreSlot = CoreSlot(build_engine(self.settings))
        self.scorer = BatchedScorer(self.slot, self.settings)
        self.grpc: GrpcHost | None = None

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        self.grpc = await bento.start_grpc(self.settings, self.slot, partial(registrations, scorer=self.scorer))

    @bentoml.on_shutdown
    async def stop_grpc(self) -> None:
        await bento.stop_grpc(self.grpc, self.scorer.close)

    @bentoml.api
    async def score(self, reference_png: str, candidate_pngs: list[str], metrics: list[str] | None = None) -> dict:
        """Images as base64 PNG/JPEG/...; returns {"candidates": [{"index", "scores": {metric id: value}}]}."""
        try:
            reference = bento.b64decode_field(reference_png, "reference")
            candidates = [bento.b64decode_field(text, f"candidate {i}") for i, text in enumerate(candidate_pngs)]
            results = await self.scorer.score(reference, candidates, metrics or [])
        except RegenError as exc:
            raise bento.http_error(exc) from None
        return {"candidates": [{"index": i, "scores": scores} for i, scores in enumerate(results)]}

    @bentoml.api
    async def info(self) -> dict:
        """Models, metric ids and definitions, limits and batching statistics."""
        try:
            description = self.scorer.describe()
        except RegenError as exc:
            raise bento.http_error(exc) from None
        return {
            "models": [asdict(model) | {"backend": "transformers"} for model in description.models],
            "metrics": [asdict(spec) for spec in description.metrics],
            "max_candidates": description.max_candidates,
            "server": bento.stats_json(description.stats),
        }
