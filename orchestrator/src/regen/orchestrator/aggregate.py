"""benchmark_final.json: statistics over the finished cases, read back from their folders.

Everything is computed from the files on disk, in dataset order, with seeded bootstrap
resampling, so a resumed run and an uninterrupted one give identical numbers. Wall-clock
measurements live only under "timings".

Headline numbers count every finished case: done cases with their scores, refused ones
with the penalty values of `regen.orchestrator.outcomes`; "answered" holds the same
numbers over the done cases only. Failed and pending cases are in neither, and make
the run incomplete.

Per metric: n, mean, std (sample, n-1; null for n < 2), and a percentile bootstrap
confidence interval of the mean (`bootstrap_resamples` resamples of the cases with
replacement; seed derived from the run seed, the metric and the category). A metric
may cover fewer cases than the run finished: a case whose judge failed keeps its
similarity metrics and has no judge metrics; "metric_coverage" says, per metric, how
many finished cases it covers and which done cases lack it ("judge_failed" says why).

"judge_reliability" is what the judge's reliability checks found
(`regen.orchestrator.reliability`): flags, warnings, and what the checks cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from regen.orchestrator import outcomes
from regen.orchestrator.dataset import Case
from regen.orchestrator.outcomes import CaseOutcome, read_outcomes
from regen.orchestrator.reliability import reliability
from regen.orchestrator.results import RunLayout
from regen.orchestrator.seeds import bootstrap_seed
from regen.orchestrator.stats import bootstrap_ci, summarize
from regen.orchestrator.usage import summarize as summarize_usage

__all__ = ["FORMAT", "METRIC_ORDER", "aggregate", "bootstrap_ci", "summarize"]

# Reported first, in this order; any further scorer metric follows by name.
METRIC_ORDER: tuple[str, ...] = (
    "clip",
    "dinov2",
    "ssim",
    "selection",
    "judge_content",
    "judge_quality",
    "judge_mean",
)
# 3: judge_reliability, judge_failed, metric_coverage; a case may lack the judge metrics.
FORMAT = "regen.benchmark_final/3"

Value = Callable[[CaseOutcome, str], "float | None"]


def metric_names(run: dict[str, Any], found: Sequence[CaseOutcome]) -> list[str]:
    """The run's metrics: the scorer's (run.json), the selection score and the judge's,
    and any other metric a case recorded."""
    present = set(run["models"]["scorer"]["metric_ids"]) | {"selection", *outcomes.JUDGE_METRICS}
    present |= {name for o in found if o.status == outcomes.DONE for name in o.record["metrics"]}  # type: ignore[index]
    return [m for m in METRIC_ORDER if m in present] + sorted(present - set(METRIC_ORDER))


def _headline(outcome: CaseOutcome, metric: str) -> float | None:
    return outcome.headline(metric)


def _answered(outcome: CaseOutcome, metric: str) -> float | None:
    return outcome.answered(metric)


def _round_curve(found: Sequence[CaseOutcome], rounds: int, *, headline: bool) -> list[dict[str, Any]]:
    """Mean best-so-far selection after each round. Headline: over the finished cases, a
    round with nothing rendered yet counting as the selection penalty; answered: over
    the done cases that had a scored candidate by then."""
    curve = []
    for r in range(rounds):
        values: list[float] = []
        for o in found:
            if o.status == outcomes.DONE or (headline and o.status == outcomes.REFUSED):
                value = o.record["best_selection_by_round"][r]  # type: ignore[index]
                if value is None and headline:
                    value = outcomes.penalty("selection")
                if value is not None:
                    values.append(value)
        curve.append(
            {
                "round": r + 1,
                "n": len(values),
                "mean_best_selection": math.fsum(values) / len(values) if values else None,
            }
        )
    return curve


def _metrics(
    found: Sequence[CaseOutcome], names: Sequence[str], value: Value, *, seed_parts: tuple[str, ...], config: dict
) -> dict[str, Any]:
    summaries = {}
    for name in names:
        values = [v for o in found if (v := value(o, name)) is not None]
        summaries[name] = summarize(
            values,
            resamples=config["bootstrap_resamples"],
            confidence=config["confidence"],
            seed=bootstrap_seed(config["seed"], *seed_parts, name),
        )
    return summaries


def _counts(found: Sequence[CaseOutcome]) -> dict[str, int]:
    return {status: sum(1 for o in found if o.status == status) for status in outcomes.STATUSES}


def _coverage(counts: dict[str, int]) -> float | None:
    finished = counts[outcomes.DONE] + counts[outcomes.REFUSED]
    return counts[outcomes.DONE] / finished if finished else None


def _group(found: Sequence[CaseOutcome], names: Sequence[str], config: dict, label: str) -> dict[str, Any]:
    """Headline and answered-only numbers of one group of cases (all, or a category)."""
    rounds = config["rounds"]
    return {
        "metrics": _metrics(found, names, _headline, seed_parts=(label,), config=config),
        "rounds": _round_curve(found, rounds, headline=True),
        "answered": {
            "metrics": _metrics(found, names, _answered, seed_parts=("answered", label), config=config),
            "rounds": _round_curve(found, rounds, headline=False),
        },
    }


def _coverage_by_metric(found: Sequence[CaseOutcome], names: Sequence[str]) -> dict[str, Any]:
    """Per metric: the finished cases it covers (done cases with a value, refused ones
    at the penalty), of how many, and the done cases without it."""
    finished = [o for o in found if o.finished]
    coverage = {}
    for name in names:
        missing = [o.case for o in finished if o.headline(name) is None]
        coverage[name] = {"cases": len(finished) - len(missing), "of": len(finished), "missing": missing}
    return coverage


def _judge_failed(found: Sequence[CaseOutcome]) -> list[dict[str, Any]]:
    """Done cases whose judge failed: they count for the similarity metrics only."""
    return [
        {"case": o.case, "category": o.category, **o.record["judge_failure"]}  # type: ignore[index]
        for o in found
        if o.status == outcomes.DONE and (o.record or {}).get("judge_failure")
    ]


def _candidates(found: Sequence[CaseOutcome]) -> dict[str, Any]:
    """Candidates of the finished cases: asked for, refused, prompts truncated."""
    totals = {"total": 0, "refused": 0, "truncated": 0}
    for o in found:
        if o.finished:
            for key in totals:
                totals[key] += o.record["candidates"][key]  # type: ignore[index]
    return {**totals, "refusal_rate": totals["refused"] / totals["total"] if totals["total"] else None}


def _usage(found: Sequence[CaseOutcome]) -> dict[str, Any]:
    """Usage summed over every case that ran (done, refused or failed), each case's
    totals, and the cost: overall and per case that ran, where the APIs stated one."""
    ran = [o for o in found if o.status != outcomes.PENDING]
    summary = summarize_usage([o.usage for o in ran])
    per_case = {o.case: summarize_usage([o.usage])["total"] for o in ran}
    cost = summary["total"]["cost_usd"]
    return {
        **summary,
        "cases": len(ran),
        "per_case": per_case,
        "cost": {"total_usd": cost, "per_case_usd": cost / len(ran) if cost is not None and ran else None},
    }


def aggregate(
    layout: RunLayout,
    cases: Sequence[Case],
    *,
    run: dict[str, Any],
    timings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of benchmark_final.json. `run` is run.json's content."""
    config = run["config"]
    found = read_outcomes(layout, cases)
    names = metric_names(run, found)
    counts = _counts(found)
    by_category: dict[str, Any] = {}
    for category in sorted({case.category for case in cases}):
        members = [o for o in found if o.category == category]
        category_counts = _counts(members)
        by_category[category] = {
            "cases": len(members),
            **category_counts,
            "coverage": _coverage(category_counts),
            **_group(members, names, config, category),
        }

    finished = [o for o in found if o.finished]
    stage_totals: dict[str, float] = {}
    for o in finished:
        for stage, seconds in o.record["timings"]["stages_s"].items():  # type: ignore[index]
            stage_totals[stage] = stage_totals.get(stage, 0.0) + seconds
    return {
        "format": FORMAT,
        "run": run["run_name"],
        "dataset": run["dataset"]["name"],
        "complete": counts[outcomes.FAILED] == 0 and counts[outcomes.PENDING] == 0,
        "cases": {"total": len(cases), **counts},
        "coverage": _coverage(counts),
        "candidates": _candidates(found),
        "penalties": outcomes.penalties(names),
        **_group(found, names, config, "all"),
        "refused": [
            {
                "case": o.case,
                "category": o.category,
                "candidates": o.record["candidates"]["total"],  # type: ignore[index]
                "reasons": o.record.get("refusal_reasons", []),  # type: ignore[union-attr]
            }
            for o in found
            if o.status == outcomes.REFUSED
        ],
        "failed": [
            {"case": o.case, "category": o.category, **o.record.get("failure", {})}  # type: ignore[union-attr]
            for o in found
            if o.status == outcomes.FAILED
        ],
        "pending": [o.case for o in found if o.status == outcomes.PENDING],
        "metric_coverage": _coverage_by_metric(found, names),
        "judge_failed": _judge_failed(found),
        "judge_reliability": reliability(
            found,
            sample_size=int(config.get("judge_checks", 0)),
            judge_temperature=float(run["models"].get("describer", {}).get("judge_temperature", 0.0)),
        ),
        "metric_ids": run["models"]["scorer"]["metric_ids"],
        "selection": {"weights": config["selection_weights"], "definition": "sum of weight * metric"},
        "bootstrap": {
            "method": "percentile",
            "resamples": config["bootstrap_resamples"],
            "confidence": config["confidence"],
        },
        "categories": by_category,
        "models": run["models"],
        "config": config,
        # What the cases cost (done, refused and failed ones): calls and retries per
        # service and method, what remote APIs reported (tokens, images, cost), per case.
        "usage": _usage(found),
        "timings": {
            **(timings or {}),
            "stages_total_s": stage_totals,
            "stages_mean_per_case_s": {k: v / len(finished) for k, v in stage_totals.items()} if finished else {},
            "case_mean_s": (
                math.fsum(o.record["timings"]["total_s"] for o in finished) / len(finished)  # type: ignore[index]
                if finished
                else None
            ),
        },
    }
