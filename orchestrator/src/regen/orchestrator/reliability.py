"""How far the judge's scores can be trusted, measured in every run.

The judge (the describer's Judge: content consistency and perceptual quality, 1-5) is a
model rating images, and a model can rate badly in ways its answers alone do not show:
always 5/5, swayed by which image comes first, a different verdict each time it is
asked, or a high score for two images that have nothing in common. So every run checks
it on a sample of its cases (`judge_checks` of them, chosen from the run seed) and
writes what it found into benchmark_final.json ("judge_reliability") and the report:

- **order swap**: the same pair judged with the images in the other order (candidate
  first, reference second). Content consistency is symmetric, so it should agree
  within one point; `AGREEMENT_MIN` of the pairs must.
- **repeat**: the same judgement asked again with another seed, where the judge samples
  (DescriberInfo.judge_temperature > 0); a greedy judge gives the same answer, so the
  check is skipped and says so. Both scores should agree within one point.
- **control pair**: the reference against an unrelated reference of the same dataset
  (another category where there is one). It must score low: a judge whose controls
  score as high as the real candidates, and above "2: only loosely related", is not
  comparing the images ("control_blind").
- **variance**: over every judged case, a score that never changes ("constant"), from
  `MIN_VARIANCE_CASES` cases on.

A failing check is a flag; any flag makes "passed" false, puts a warning in the run's
summary, and `regen compare` then leaves the judge's scores out of its ranking and tests
unless told to trust them (--trust-judge). What the checks cost is in the run's usage,
apart ("Judge:reliability"), as it depends on the describer's cache, not on the judge.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from regen.orchestrator import outcomes
from regen.orchestrator.dataset import Case
from regen.orchestrator.outcomes import CaseOutcome
from regen.orchestrator.seeds import derive_seed

# Share of pairs that must agree within one point (order swap, repeat).
AGREEMENT_MIN = 0.75
# Fewest pairs an agreement is judged on; fewer are reported, not judged.
MIN_PAIRS = 2
# Fewest judged cases the variance flags look at.
MIN_VARIANCE_CASES = 3
# A control scoring above this is more than "only loosely related".
CONTROL_LOW_MAX = 2.0
SCORES: tuple[tuple[str, str], ...] = (
    ("content_consistency", "judge_content"),
    ("perceptual_quality", "judge_quality"),
)


def judge_seed(run_seed: int, case_id: str, *, repeat: bool = False) -> int:
    """The seed of a case's judgement (a sampling judge draws with it), and of its repeat."""
    return derive_seed(run_seed, "judge-repeat" if repeat else "judge", case_id)


@dataclass(frozen=True)
class CheckPlan:
    """Which cases get the reliability checks, and each one's control reference."""

    controls: dict[str, Case | None]
    # Ask the judge again with another seed (only a sampling judge can differ).
    repeat: bool

    def __contains__(self, case_id: object) -> bool:
        return case_id in self.controls


def plan(cases: Sequence[Case], run_seed: int, size: int, *, repeat: bool) -> CheckPlan:
    """`size` cases in an order drawn from the run seed (the same cases on resume and on
    any machine); each one's control is the next case in that order of another category,
    else the next case at all (none in a dataset of one)."""
    order = sorted(cases, key=lambda c: (derive_seed(run_seed, "judge-check", c.id), c.id))
    controls: dict[str, Case | None] = {}
    for index, case in enumerate(order[: max(0, size)]):
        others = order[index + 1 :] + order[:index]
        control = next((o for o in others if o.category != case.category), others[0] if others else None)
        controls[case.id] = control
    return CheckPlan(controls, repeat)


def _scores(answer: Any) -> tuple[int, int] | None:
    if isinstance(answer, dict) and "content_consistency" in answer and "perceptual_quality" in answer:
        return int(answer["content_consistency"]), int(answer["perceptual_quality"])
    return None


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def _agreement(pairs: Sequence[tuple[int, int]]) -> dict[str, Any]:
    n = len(pairs)
    diffs = [abs(a - b) for a, b in pairs]
    return {
        "n": n,
        "exact": sum(1 for d in diffs if d == 0) / n if n else None,
        "within_one": sum(1 for d in diffs if d <= 1) / n if n else None,
        "mean_abs_difference": _mean(diffs),
    }


def _spread(values: Sequence[int]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "distinct": 0, "std": None, "mode": None, "mode_share": None}
    mode = max(sorted(set(values)), key=values.count)
    return {
        "n": len(values),
        "distinct": len(set(values)),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "mode": mode,
        "mode_share": values.count(mode) / len(values),
    }


class _Findings:
    def __init__(self) -> None:
        self.flags: list[dict[str, str]] = []
        self.warnings: list[str] = []

    def flag(self, name: str, message: str) -> None:
        self.flags.append({"flag": name, "message": message})
        self.warnings.append(message)


def _variance(judged: Sequence[tuple[int, int]], found: _Findings) -> dict[str, Any]:
    result = {}
    for position, (label, metric) in enumerate(SCORES):
        values = [scores[position] for scores in judged]
        spread = _spread(values)
        result[metric] = spread
        if spread["n"] >= MIN_VARIANCE_CASES and spread["distinct"] == 1:
            found.flag(
                f"constant_{metric}",
                f"the judge gave all {spread['n']} judged cases {label} {spread['mode']}: "
                "its scores do not tell the cases apart",
            )
    return result


def _agreement_check(
    name: str, pairs: Sequence[tuple[int, int]], what: str, found: _Findings, flag: str
) -> dict[str, Any]:
    result = _agreement(pairs)
    result["passed"] = None
    if result["n"] >= MIN_PAIRS:
        result["passed"] = result["within_one"] >= AGREEMENT_MIN
        if not result["passed"]:
            found.flag(
                flag,
                f"{name}: the judge's {what} changed by more than one point in "
                f"{round((1 - result['within_one']) * result['n'])} of {result['n']} cases "
                f"(agreement {result['within_one']:.2f} < {AGREEMENT_MIN})",
            )
    return result


def _control(pairs: Sequence[tuple[int, int]], found: _Findings) -> dict[str, Any]:
    """(candidate's content consistency, its control's) per checked case."""
    candidate = _mean([a for a, _ in pairs])
    control = _mean([b for _, b in pairs])
    result: dict[str, Any] = {
        "n": len(pairs),
        "mean_candidate": candidate,
        "mean_control": control,
        "control_at_least_candidate": sum(1 for a, b in pairs if b >= a) / len(pairs) if pairs else None,
        "passed": None,
    }
    if candidate is not None and control is not None:
        blind = control >= candidate and control > CONTROL_LOW_MAX
        result["passed"] = not blind
        if blind:
            found.flag(
                "control_blind",
                f"the judge rated unrelated references (controls) {control:.2f} on average for content "
                f"consistency, as high as the real candidates ({candidate:.2f}): it is not comparing the images",
            )
        elif control > CONTROL_LOW_MAX + 1:
            found.warnings.append(
                f"the judge rated unrelated references (controls) {control:.2f} on average for content consistency "
                f"(above {CONTROL_LOW_MAX:g}: only loosely related)"
            )
    return result


def reliability(found: Sequence[CaseOutcome], *, sample_size: int, judge_temperature: float) -> dict[str, Any]:
    """benchmark_final.json's "judge_reliability", from the finished cases' records."""
    done = [o for o in found if o.status == outcomes.DONE and o.record is not None]
    judged: list[tuple[int, int]] = []
    swap: list[tuple[int, int]] = []
    repeat: list[tuple[int, int, int, int]] = []
    control: list[tuple[int, int]] = []
    checked = errors = 0
    for outcome in done:
        record = outcome.record or {}
        scores = _scores(record.get("judge"))
        if scores is None:
            continue
        judged.append(scores)
        checks = record.get("judge_checks")
        if not checks:
            continue
        checked += 1
        errors += sum(
            1 for k in ("swap", "control", "repeat") if isinstance(checks.get(k), dict) and "error" in checks[k]
        )
        if (swapped := _scores(checks.get("swap"))) is not None:
            swap.append((scores[0], swapped[0]))
        if (again := _scores(checks.get("repeat"))) is not None:
            repeat.append((*scores, *again))
        if (controlled := _scores(checks.get("control"))) is not None:
            control.append((scores[0], controlled[0]))

    findings = _Findings()
    variance = _variance(judged, findings)
    swap_result = _agreement_check("order swap", swap, "content consistency", findings, "order_sensitive")
    repeat_result: dict[str, Any]
    if judge_temperature > 0:
        repeat_result = {
            "content_consistency": _agreement_check(
                "repeat", [(r[0], r[2]) for r in repeat], "content consistency", findings, "unstable_judge_content"
            ),
            "perceptual_quality": _agreement_check(
                "repeat", [(r[1], r[3]) for r in repeat], "perceptual quality", findings, "unstable_judge_quality"
            ),
        }
    else:
        repeat_result = {
            "skipped": "the judge decodes greedily (judge_temperature 0): asked again, it answers the same"
        }
    control_result = _control(control, findings)
    measured = bool(judged)
    if sample_size > 0 and checked == 0 and done:
        findings.warnings.append("no case of the sample was judged, so the order swap and control checks did not run")
    if errors:
        findings.warnings.append(f"{errors} reliability check calls failed (listed in the sampled cases' records)")
    return {
        "passed": (not findings.flags) if measured else None,
        "flags": findings.flags,
        "warnings": findings.warnings,
        "sample": {"size": sample_size, "checked": checked, "check_errors": errors},
        "judge_temperature": judge_temperature,
        "scores": variance,
        "swap": swap_result,
        "repeat": repeat_result,
        "control": control_result,
        "thresholds": {
            "agreement_within_one_min": AGREEMENT_MIN,
            "min_pairs": MIN_PAIRS,
            "min_variance_cases": MIN_VARIANCE_CASES,
            "control_low_max": CONTROL_LOW_MAX,
        },
    }
