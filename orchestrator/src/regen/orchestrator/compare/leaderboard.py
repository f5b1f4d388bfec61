"""The leaderboard's numbers (leaderboard.json): one row per generator, pairwise tests on
the paired cases, and the describer consistency check.

- A row's metric is the headline one (refused cases at their penalty; failed cases
  left out), over its runs: with one run seed it is exactly the run's own
  benchmark_final.json number; with several, the mean over cases of each case's mean
  over seeds, with a two-stage bootstrap interval that also resamples the seeds
  (`stats.summarize_pooled`).
- Pairwise: for generators A and B, each case's difference is the mean over the run
  seeds both finished of A - B; the cases finished by both are the pairs. The p-value
  is a sign-flip permutation test of "mean difference = 0" (exact up to 16 cases),
  Holm-adjusted over all pairs of generators for each metric; a difference is
  significant when the adjusted p is below 1 - confidence. Its interval is a
  percentile bootstrap of the mean difference over the paired cases.
- The judge's scores are ranked and tested only where they can be trusted: when the
  judge's reliability checks failed in any of the runs (benchmark_final.json's
  "judge_reliability"), judge_content, judge_quality and judge_mean are left out of the
  leaderboard, and "judge" says why, unless the caller trusts the judge anyway.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from typing import Any

from regen.orchestrator import outcomes
from regen.orchestrator.compare.runs import Generator, RunData
from regen.orchestrator.seeds import derive_seed
from regen.orchestrator.stats import bootstrap_ci, holm, sign_flip_test, summarize_pooled
from regen.orchestrator.usage import Totals

FORMAT = "regen.leaderboard/1"
PRIMARY = "selection"


def _values(g: Generator, metric: str, cases: Sequence[str]) -> list[list[float]]:
    """Per case (those given), the headline values of the generator's runs that finished it."""
    groups = []
    for case in cases:
        values = [v for run in g.runs if (v := run.outcomes[case].headline(metric)) is not None]
        if values:
            groups.append(values)
    return groups


def _summary(g: Generator, metric: str, cases: Sequence[str], label: str, config: dict[str, Any]) -> dict[str, Any]:
    groups = _values(g, metric, cases)
    # One seed: the run's own bootstrap seed, so the row repeats benchmark_final.json.
    seed_parts: tuple[object, ...] = (label, metric) if len(g.runs) == 1 else ("pooled", label, metric)
    return summarize_pooled(
        groups,
        resamples=config["bootstrap_resamples"],
        confidence=config["confidence"],
        seed=derive_seed(g.runs[0].seed, "bootstrap", *seed_parts),
    )


def _outcomes(g: Generator) -> dict[str, Any]:
    counts = {s: sum(r.benchmark["cases"][s] for r in g.runs) for s in outcomes.STATUSES}
    candidates = {k: sum(r.benchmark["candidates"][k] for r in g.runs) for k in ("total", "refused", "truncated")}
    finished = counts[outcomes.DONE] + counts[outcomes.REFUSED]
    return {
        **counts,
        "coverage": counts[outcomes.DONE] / finished if finished else None,
        "candidates": {
            **candidates,
            "refusal_rate": candidates["refused"] / candidates["total"] if candidates["total"] else None,
        },
        "complete": all(r.benchmark["complete"] for r in g.runs),
    }


def _usage(g: Generator) -> dict[str, Any]:
    total = Totals()
    cases = 0
    for run in g.runs:
        total.add(Totals.from_record(run.benchmark["usage"]["total"]))
        cases += run.benchmark["usage"]["cases"]
    record = total.record()
    return {
        **record,
        "cases": cases,
        "cost_per_case_usd": record["cost_usd"] / cases if record["cost_usd"] is not None and cases else None,
    }


def _pair(a: Generator, b: Generator, metric: str, cases: Sequence[str], config: dict[str, Any]) -> dict[str, Any]:
    """A - B on the cases both finished, averaged over the run seeds both finished."""
    seeds = sorted(set(a.seeds) & set(b.seeds))
    by_seed_a = {r.seed: r for r in a.runs}
    by_seed_b = {r.seed: r for r in b.runs}
    diffs: list[float] = []
    for case in cases:
        per_seed = []
        for seed in seeds:
            va = by_seed_a[seed].outcomes[case].headline(metric)
            vb = by_seed_b[seed].outcomes[case].headline(metric)
            if va is not None and vb is not None:
                per_seed.append(va - vb)
        if per_seed:
            diffs.append(math.fsum(per_seed) / len(per_seed))
    base = derive_seed(seeds[0] if seeds else 0, "pairwise", a.key, b.key, metric)
    test = sign_flip_test(diffs, resamples=config["bootstrap_resamples"], seed=base)
    low = high = None
    if diffs:
        low, high = bootstrap_ci(
            diffs, resamples=config["bootstrap_resamples"], confidence=config["confidence"], seed=base + 1
        )
    return {
        "a": a.label,
        "b": b.label,
        "metric": metric,
        "n": len(diffs),
        "mean_difference": math.fsum(diffs) / len(diffs) if diffs else None,
        "ci_low": low,
        "ci_high": high,
        "p": test["p"],
        "test": test["method"],
    }


def pairwise(generators: Sequence[Generator], metrics: Sequence[str], cases: Sequence[str], config: dict) -> dict:
    alpha = 1.0 - config["confidence"]
    result: dict[str, list[dict[str, Any]]] = {}
    for metric in metrics:
        pairs = [_pair(a, b, metric, cases, config) for a, b in itertools.combinations(generators, 2)]
        tested = [p for p in pairs if p["p"] is not None]
        for p, adjusted in zip(tested, holm([p["p"] for p in tested]), strict=True):
            p["p_holm"] = adjusted
            p["significant"] = adjusted < alpha
            p["better"] = (p["a"] if p["mean_difference"] > 0 else p["b"]) if p["significant"] else None
        for p in pairs:
            p.setdefault("p_holm", None)
            p.setdefault("significant", False)
            p.setdefault("better", None)
        result[metric] = pairs
    return result


def consistency(runs: Sequence[RunData], labels: dict[str, str], cases: Sequence[str]) -> dict[str, Any]:
    """Cases where the describer's IUT or first prompt differs between the runs (the
    shared describer cache should make them identical for every generator)."""
    budgets = {r.run["models"]["generator"].get("prompt_token_budget") for r in runs}
    mismatches = []
    for case in cases:
        for what, read in (("iut", RunData.iut), ("first prompt", RunData.first_prompt)):
            groups: dict[str, list[str]] = {}
            for run in runs:
                value = read(run, case)
                if value is not None:
                    groups.setdefault(json.dumps(value, sort_keys=True), []).append(labels[run.name])
            if len(groups) > 1:
                mismatches.append({"case": case, "what": what, "groups": list(groups.values())})
    note = None
    if len(budgets) > 1:
        note = f"the generators' prompt token budgets differ ({sorted(budgets)}), so first prompts may differ"
    return {"cases": len(cases), "consistent": not mismatches, "mismatches": mismatches, "note": note}


def judge_trust(runs: Sequence[RunData], *, trust: bool) -> dict[str, Any]:
    """Whether the judge's scores may be ranked: not when its reliability checks failed
    in a run (each such run named with its flags), unless `trust`."""
    failed, unmeasured = [], []
    for run in runs:
        reliability = run.benchmark.get("judge_reliability") or {}
        if reliability.get("passed") is False:
            failed.append({"run": run.name, "flags": [f["flag"] for f in reliability.get("flags", [])]})
        elif reliability.get("passed") is None:
            unmeasured.append(run.name)
    withheld = bool(failed) and not trust
    if withheld:
        note = (
            "the judge's scores are left out: its reliability checks failed in "
            + "; ".join(f"{f['run']} ({', '.join(f['flags'])})" for f in failed)
            + " (regen compare --trust-judge ranks on them anyway)"
        )
    elif failed:
        note = "the judge's reliability checks failed, but its scores are ranked as asked (--trust-judge)"
    elif unmeasured:
        note = f"the judge's reliability was not measured in {', '.join(unmeasured)}"
    else:
        note = None
    return {"withheld": withheld, "trusted_by_request": bool(failed) and trust, "failed": failed, "note": note}


def build(runs: Sequence[RunData], generators: Sequence[Generator], *, trust_judge: bool = False) -> dict[str, Any]:
    first = runs[0]
    config = first.run["config"]
    judge = judge_trust(runs, trust=trust_judge)
    metrics = [m for m in first.benchmark["metrics"] if not (judge["withheld"] and m in outcomes.JUDGE_METRICS)]
    cases = [c["id"] for c in first.run["dataset"]["cases"]]
    categories = list(first.benchmark["categories"])
    category_of = {c["id"]: c["category"] for c in first.run["dataset"]["cases"]}
    rows = []
    for g in generators:
        rows.append(
            {
                "generator": g.label,
                **g.identity,
                "seeds": g.seeds,
                "runs": [str(r.path) for r in g.runs],
                "metrics": {m: _summary(g, m, cases, "all", config) for m in metrics},
                "answered": {
                    m: summarize_pooled(
                        [[v for r in g.runs if (v := r.outcomes[c].answered(m)) is not None] for c in cases],
                        resamples=config["bootstrap_resamples"],
                        confidence=config["confidence"],
                        seed=derive_seed(g.runs[0].seed, "bootstrap", "answered", "all", m),
                    )
                    for m in metrics
                },
                "categories": {
                    cat: {m: _summary(g, m, [c for c in cases if category_of[c] == cat], cat, config) for m in metrics}
                    for cat in categories
                },
                "outcomes": _outcomes(g),
                "usage": _usage(g),
            }
        )
    rows.sort(
        key=lambda row: -(row["metrics"][PRIMARY]["mean"] if row["metrics"][PRIMARY]["mean"] is not None else -1e9)
    )
    for rank, row in enumerate(rows, start=1):
        row["rank"] = rank
    pairs = pairwise(generators, metrics, cases, config)
    for row in rows:
        row["significantly_better_than"] = [
            p["b"] if p["better"] == p["a"] else p["a"] for p in pairs[PRIMARY] if p["better"] == row["generator"]
        ]
    labels = {r.name: g.label for g in generators for r in g.runs}
    return {
        "format": FORMAT,
        "primary": PRIMARY,
        "metrics": metrics,
        "categories": categories,
        "like_for_like": {
            "dataset": first.run["dataset"]["name"],
            "cases": len(cases),
            "describer": {
                k: first.run["models"]["describer"].get(k) for k in ("model_id", "revision", "template_version")
            },
            "metric_ids": first.run["models"]["scorer"]["metric_ids"],
            "selection_weights": config["selection_weights"],
            "rounds": config["rounds"],
            "candidates": config["candidates"],
            "seeds": generators[0].seeds,
        },
        "method": {
            "headline": "refused cases count at the penalty values, failed cases are left out",
            "penalties": first.benchmark["penalties"],
            "interval": f"percentile bootstrap, {config['bootstrap_resamples']} resamples, confidence "
            f"{config['confidence']}; with several run seeds, two-stage (cases, then each case's seeds)",
            "test": "paired sign-flip permutation test on the cases both finished (exact up to 16 cases), "
            "Holm-adjusted over the pairs of generators for each metric",
            "alpha": round(1.0 - config["confidence"], 10),
        },
        "judge": judge,
        "generators": rows,
        "pairwise": pairs,
        "consistency": consistency(runs, labels, cases),
    }
