"""The gRPC adapter: regen.v1.Scorer over a ScorerCore, and `regen serve scorer`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from regen.common.grpc_server import CoreSlot, grpc_errors
from regen.common.identity import server_info
from regen.common.serving import ServiceDefinition
from regen.scorer.core import ScorerCore, ScorerDescription
from regen.scorer.settings import ScorerSettings
from regen.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc

LIBRARIES = ("torch", "transformers", "torchmetrics", "pillow")


def info_message(description: ScorerDescription) -> scorer_pb2.ScorerInfo:
    return scorer_pb2.ScorerInfo(
        models=[
            common_pb2.ModelInfo(
                model_id=m.model_id, revision=m.revision, backend="transformers", device=m.device, dtype=m.dtype
            )
            for m in description.models
        ],
        server=server_info(description.stats, *LIBRARIES),
        metrics=[scorer_pb2.MetricInfo(**asdict(m)) for m in description.metrics],
        max_candidates=description.max_candidates,
    )


class ScorerServicer(scorer_pb2_grpc.ScorerServicer):
    def __init__(self, slot: CoreSlot[ScorerCore]) -> None:
        self._slot = slot

    @grpc_errors
    async def Info(self, request: common_pb2.InfoRequest, context: Any) -> scorer_pb2.ScorerInfo:
        return info_message(self._slot.get().describe())

    @grpc_errors
    async def Score(self, request: scorer_pb2.ScoreRequest, context: Any) -> scorer_pb2.ScoreResponse:
        results = await self._slot.get().score(request.reference_png, request.candidate_pngs, request.metrics)
        return scorer_pb2.ScoreResponse(
            candidates=[scorer_pb2.CandidateScores(index=i, scores=scores) for i, scores in enumerate(results)]
        )


DEFINITION: ServiceDefinition[ScorerSettings, ScorerCore] = ServiceDefinition(
    settings_class=ScorerSettings,
    build_core=ScorerCore.load,
    add_servicer=scorer_pb2_grpc.add_ScorerServicer_to_server,
    servicer=ScorerServicer,
    service_name=scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].full_name,
    close_core=lambda core: core.close(),
)
# `regen serve scorer`: bind, load the models, serve until SIGTERM.
serve = DEFINITION.serve
