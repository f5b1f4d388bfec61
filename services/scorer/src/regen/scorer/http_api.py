"""The scorer as a BentoML service: an HTTP API, plus the regen.v1.Scorer gRPC server
started in the same process over the same loaded metrics and the same batcher.

    REGEN_PRESET=tiny REGEN_SCORER_PORT=50053 bentoml serve regen.scorer.http_api:Scorer --host 127.0.0.1 --port 3000

Settings come from REGEN_SCORER_* variables, REGEN_CONFIG and REGEN_PRESET. Images are
base64-encoded image files (PNG, JPEG, ...).
"""

from __future__ import annotations

from dataclasses import asdict

import bentoml
from pydantic import ConfigDict, Field
from starlette.responses import JSONResponse

from regen.common import bento
from regen.scorer.core import ScorerCore
from regen.scorer.grpc_api import DEFINITION

# 16x16 PNGs (orange, and a slightly different orange) for the OpenAPI page's example.
_EXAMPLE_REFERENCE = (
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAGUlEQVR4nGM8UaHBQApgIkn1qIZRDUNKAwCAnAGIOXIt/QAAAABJRU5ErkJggg=="
)
_EXAMPLE_CANDIDATE = (
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAGUlEQVR4nGPcV2vEQApgIkn1qIZRDUNKAwCPzgGNstQLSQAAAABJRU5ErkJggg=="
)


class ScoreBody(bento.StrictModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "reference_png": _EXAMPLE_REFERENCE,
                "candidate_pngs": [_EXAMPLE_CANDIDATE, _EXAMPLE_REFERENCE],
                "metrics": [],
            }
        },
    )

    reference_png: str = Field(description="The reference image, base64")
    candidate_pngs: list[str] = Field(description="The candidates, base64, in order")
    metrics: list[str] = Field(default_factory=list, description='Metric names ("clip") or ids; empty: every metric')


class CandidateScoresBody(bento.StrictModel):
    index: int = Field(description="Position of the candidate in candidate_pngs")
    scores: dict[str, float] = Field(description="Metric id -> value")


class ScoresBody(bento.StrictModel):
    candidates: list[CandidateScoresBody]


class MetricBody(bento.StrictModel):
    id: str
    name: str
    checkpoint: str
    revision: str
    definition: str
    higher_is_better: bool


class ScorerInfoBody(bento.StrictModel):
    models: list[bento.ModelBody]
    metrics: list[MetricBody]
    max_candidates: int
    server: bento.ServerStatsBody


@bentoml.service(name="regen-scorer", resources={"gpu": 1}, workers=1, traffic={"timeout": 300}, **bento.SERVICE_CONFIG)
class Scorer(bento.GrpcAlongside[ScorerCore]):
    definition = DEFINITION

    @bentoml.api(input_spec=ScoreBody, output_spec=ScoresBody)
    async def score(self, **body: object) -> ScoresBody | JSONResponse:
        """Every requested metric for each candidate against the reference (regen.v1.Scorer.Score)."""
        return await bento.answer(_score(self.core, ScoreBody.model_validate(body)))

    @bentoml.api(input_spec=bento.NoBody, output_spec=ScorerInfoBody)
    async def info(self) -> ScorerInfoBody:
        """Models, metric ids and definitions, limits and batching statistics (regen.v1.Scorer.Info)."""
        description = self.core.describe()
        return ScorerInfoBody(
            models=[bento.ModelBody.of(model, backend="transformers") for model in description.models],
            metrics=[MetricBody(**asdict(m)) for m in description.metrics],
            max_candidates=description.max_candidates,
            server=bento.ServerStatsBody.of(description.stats),
        )


async def _score(core: ScorerCore, body: ScoreBody) -> ScoresBody:
    reference = bento.b64decode_field(body.reference_png, "reference_png")
    candidates = [bento.b64decode_field(text, f"candidate_pngs[{i}]") for i, text in enumerate(body.candidate_pngs)]
    results = await core.score(reference, candidates, body.metrics)
    return ScoresBody(candidates=[CandidateScoresBody(index=i, scores=s) for i, s in enumerate(results)])


bento.use_error_shape(Scorer)
