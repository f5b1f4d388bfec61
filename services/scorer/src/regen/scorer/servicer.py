"""The gRPC adapter: regen.v1.Scorer over a BatchedScorer."""

from __future__ import annotations

from regen.common.grpc_server import grpc_errors
from regen.common.identity import server_info
from regen.scorer.scoring import BatchedScorer, ScorerDescription
from regen.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc

SERVICE_NAME = scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].full_name
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
        metrics=[
            scorer_pb2.MetricInfo(
                id=s.id, name=s.name, checkpoint=s.checkpoint, revision=s.revision, definition=s.definition
            )
            for s in description.metrics
        ],
        max_candidates=description.max_candidates,
    )


class ScorerServicer(scorer_pb2_grpc.ScorerServicer):
    def __init__(self, scorer: BatchedScorer) -> None:
        self._scorer = scorer

    @grpc_errors
    async def Info(self, request: common_pb2.InfoRequest, context) -> scorer_pb2.ScorerInfo:
        return info_message(self._scorer.describe())

    @grpc_errors
    async def Score(self, request: scorer_pb2.ScoreRequest, context) -> scorer_pb2.ScoreResponse:
        results = await self._scorer.score(request.reference_png, request.candidate_pngs, request.metrics)
        return scorer_pb2.ScoreResponse(
            candidates=[scorer_pb2.CandidateScores(index=i, scores=scores) for i, scores in enumerate(results)]
        )
