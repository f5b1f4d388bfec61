"""How a case ends, and what a refused case counts as.

- **done**: the loop finished; final/final_metrics.json holds the best candidate's scores.
- **refused**: the generator refused every candidate of every round. That is the model's
  answer, so the case is finished (final/final_metrics.json with "status": "refused",
  kept on resume) and counts in the headline metrics with the penalty values below.
- **failed**: an infrastructure or contract failure (error.json), not the model's
  answer: excluded from every mean, retried on resume, and it makes the run incomplete.
- **pending**: not run yet (an interrupted run).

Penalties are values no real answer is worse than in practice: 0 for the similarity
metrics (CLIP and DINOv2 cosine similarities and SSIM of any rendered image are above
0 in practice) and for the selection score (a weighted sum of them), 1 for the judge's
1-5 ratings and their mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from regen.orchestrator.dataset import Case
from regen.orchestrator.results import RunLayout, read_json

DONE, REFUSED, FAILED, PENDING = "done", "refused", "failed", "pending"
STATUSES: tuple[str, ...] = (DONE, REFUSED, FAILED, PENDING)

JUDGE_METRICS: tuple[str, ...] = ("judge_content", "judge_quality", "judge_mean")
JUDGE_PENALTY = 1.0
SIMILARITY_PENALTY = 0.0


# Judge failures of the infrastructure, not of the judge's answer: a resumed run judges
# these cases again. An answer that stayed invalid (FAILED_PRECONDITION) or broke the
# contract stands: asking again would only re-roll a sampling judge.
TRANSIENT_JUDGE_CODES = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "UNKNOWN", "CANCELLED"}
)


def judge_failed_transiently(final: dict[str, Any]) -> bool:
    """A finished case (final_metrics.json's content) whose Judge call failed for a
    passing reason, so that a resumed run asks again."""
    failure = final.get("judge_failure")
    return final.get("status") == DONE and isinstance(failure, dict) and failure.get("code") in TRANSIENT_JUDGE_CODES


def penalty(metric: str) -> float:
    """The value a refused case takes for `metric` in the headline numbers."""
    return JUDGE_PENALTY if metric in JUDGE_METRICS else SIMILARITY_PENALTY


def penalties(metrics: Sequence[str]) -> dict[str, float]:
    return {name: penalty(name) for name in metrics}


@dataclass(frozen=True)
class CaseOutcome:
    """A case as its folder says it ended: final_metrics.json's content (done or
    refused), error.json's (failed), or nothing yet (pending)."""

    case: str
    category: str
    status: str
    record: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in (DONE, REFUSED)

    def headline(self, metric: str) -> float | None:
        """The case's value in the headline numbers: its score when done, the penalty
        when refused, None when failed or pending (or the metric is missing)."""
        if self.status == REFUSED:
            return penalty(metric)
        if self.status == DONE and self.record is not None:
            value = self.record["metrics"].get(metric)
            return None if value is None else float(value)
        return None

    def answered(self, metric: str) -> float | None:
        """The case's value over answered cases only: its score when done, else None."""
        return self.headline(metric) if self.status == DONE else None

    @property
    def usage(self) -> dict[str, Any]:
        return (self.record or {}).get("usage") or {}


def _candidate_counts(layout: RunLayout, case_id: str) -> dict[str, int]:
    """Candidates asked for, refused and truncated, from the rounds' metadata (for cases
    finished before final_metrics.json carried these counts)."""
    candidates = [
        c
        for path in sorted(layout.case_dir(case_id).glob("iteration_*/metadata.json"))
        for c in read_json(path)["candidates"]
    ]
    return {
        "total": len(candidates),
        "refused": sum(1 for c in candidates if c["refused"]),
        "truncated": sum(1 for c in candidates if c["prompt_truncated"]),
    }


def read_outcome(layout: RunLayout, case: Case) -> CaseOutcome:
    if layout.is_done(case.id):
        final = read_json(layout.final_metrics_file(case.id))
        if "candidates" not in final:
            final["candidates"] = _candidate_counts(layout, case.id)
        return CaseOutcome(case.id, case.category, final.get("status", DONE), final)
    if layout.error_file(case.id).is_file():
        return CaseOutcome(case.id, case.category, FAILED, read_json(layout.error_file(case.id)))
    return CaseOutcome(case.id, case.category, PENDING)


def read_outcomes(layout: RunLayout, cases: Sequence[Case]) -> list[CaseOutcome]:
    """Every case's outcome, in dataset order."""
    return [read_outcome(layout, case) for case in cases]
