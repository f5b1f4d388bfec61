"""benchmark_final.json: statistics over the finished cases, read back from their folders.

Everything is computed from the files on disk, in dataset order, with seeded bootstrap
resampling, so a resumed run and an uninterrupted one give identical numbers. Wall-clock
measurements live only under "timings".

Per metric: n, mean, std (sample, n-1; null for n < 2), and a percentile bootstrap
confidence interval of the mean (`bootstrap_resamples` resamples of the cases with
replacement; seed derived from the run seed, the metric and the category).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from regen.orchestrator.dataset import Case
from regen.orchestrator.results import RunLayout, read_json
from regen.orchestrator.seeds import bootstrap_seed
from regen.orchestrator.usage import summarize as summarize_usage

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
FORMAT = "regen.benchmark_final/1"
_CHUNK = 1000


def bootstrap_ci(values: Sequence[float], *, resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile interval of the mean over `resamples` resamples with replacement."""
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, _CHUNK):
        stop = min(resamples, start + _CHUNK)
        means[start:stop] = data[rng.integers(0, len(data), size=(stop - start, len(data)))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def summarize(values: Sequence[float], *, resamples: int, confidence: float, seed: int) -> dict[str, Any]:
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    low, high = bootstrap_ci(values, resamples=resamples, confidence=confidence, seed=seed)
    return {
        "n": n,
        # fsum is exactly rounded, hence independent of summation order.
        "mean": math.fsum(values) / n,
        "std": statistics.stdev(values) if n > 1 else None,
        "ci_low": low,
        "ci_high": high,
    }


def _metric_names(finals: Sequence[dict[str, Any]]) -> list[str]:
    present = {name for final in finals for name in final["metrics"]}
    return [m for m in METRIC_ORDER if m in present] + sorted(present - set(METRIC_ORDER))


def _round_curve(finals: Sequence[dict[str, Any]], rounds: int) -> list[dict[str, Any]]:
    curve = []
    for r in range(rounds):
        values = [f["best_selection_by_round"][r] for f in finals if f["best_selection_by_round"][r] is not None]
        curve.append(
            {
                "round": r + 1,
                "n": len(values),
                "mean_best_selection": math.fsum(values) / len(values) if values else None,
            }
        )
    return curve


def _group(
    finals: Sequence[dict[str, Any]], *, rounds: int, run_seed: int, resamples: int, confidence: float, label: str
) -> dict[str, Any]:
    return {
        "metrics": {
            name: summarize(
                [f["metrics"][name] for f in finals if f["metrics"].get(name) is not None],
                resamples=resamples,
                confidence=confidence,
                seed=bootstrap_seed(run_seed, label, name),
            )
            for name in _metric_names(finals)
        },
        "rounds": _round_curve(finals, rounds),
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
    rounds, run_seed = config["rounds"], config["seed"]
    resamples, confidence = config["bootstrap_resamples"], config["confidence"]
    finals: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    pending: list[str] = []
    usages: list[dict[str, Any]] = []
    for case in cases:
        if layout.is_done(case.id):
            finals.append(read_json(layout.final_metrics_file(case.id)))
            usages.append(finals[-1].get("usage", {}))
        elif layout.error_file(case.id).is_file():
            error = read_json(layout.error_file(case.id))
            failed.append({"case": case.id, "category": case.category, **error.get("failure", {})})
            usages.append(error.get("usage", {}))
        else:
            pending.append(case.id)

    categories = sorted({case.category for case in cases})
    by_category: dict[str, Any] = {}
    for category in categories:
        members = [f for f in finals if f["category"] == category]
        by_category[category] = {
            "cases": sum(1 for c in cases if c.category == category),
            "done": len(members),
            "failed": sum(1 for f in failed if f["category"] == category),
            **_group(
                members, rounds=rounds, run_seed=run_seed, resamples=resamples, confidence=confidence, label=category
            ),
        }

    stage_totals: dict[str, float] = {}
    for final in finals:
        for stage, seconds in final["timings"]["stages_s"].items():
            stage_totals[stage] = stage_totals.get(stage, 0.0) + seconds
    return {
        "format": FORMAT,
        "run": run["run_name"],
        "dataset": run["dataset"]["name"],
        "cases": {"total": len(cases), "done": len(finals), "failed": len(failed), "pending": len(pending)},
        "failed": failed,
        "pending": pending,
        **_group(finals, rounds=rounds, run_seed=run_seed, resamples=resamples, confidence=confidence, label="all"),
        "metric_ids": run["models"]["scorer"]["metric_ids"],
        "selection": {"weights": config["selection_weights"], "definition": "sum of weight * metric"},
        "bootstrap": {"method": "percentile", "resamples": resamples, "confidence": confidence},
        "categories": by_category,
        "models": run["models"],
        "config": config,
        # What the cases cost (done and failed ones): calls and retries per service and
        # method, and what remote APIs reported (tokens, images, cost).
        "usage": summarize_usage(usages),
        "timings": {
            **(timings or {}),
            "stages_total_s": stage_totals,
            "stages_mean_per_case_s": {k: v / len(finals) for k, v in stage_totals.items()} if finals else {},
            "case_mean_s": math.fsum(f["timings"]["total_s"] for f in finals) / len(finals) if finals else None,
        },
    }
