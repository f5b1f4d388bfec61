"""The short summary `regen run` and `regen report` print: headline metrics with their
95% intervals, outcomes, usage, and where the report is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from regen.orchestrator.report.render import interval, num, pct, usd


def metrics_table(benchmark: dict[str, Any]) -> Table:
    title = f"{benchmark['run']}: headline metrics (refused cases at the penalty values)"
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("95% CI", justify="right")
    table.add_column("answered only", justify="right")
    table.add_column("n", justify="right")
    for name, s in benchmark["metrics"].items():
        answered = benchmark["answered"]["metrics"][name]
        table.add_row(name, num(s["mean"]), interval(s), num(answered["mean"]), f"{s['n']}")
    return table


def outcome_lines(benchmark: dict[str, Any]) -> list[str]:
    c, cand = benchmark["cases"], benchmark["candidates"]
    pending = f", {c['pending']} pending" if c["pending"] else ""
    return [
        f"cases: {c['done']} done, {c['refused']} refused, {c['failed']} failed{pending} of {c['total']}"
        f" (coverage {pct(benchmark['coverage'])})",
        f"candidates: {cand['refused']} of {cand['total']} refused ({pct(cand['refusal_rate'])}),"
        f" {cand['truncated']} prompts truncated to the token budget",
    ]


def usage_lines(benchmark: dict[str, Any]) -> list[str]:
    usage = benchmark["usage"]
    services = usage["services"]
    parts = []
    for name in sorted(services):
        totals = services[name]
        text = f"{name} {totals['calls']} calls"
        if totals["retries"]:
            text += f" ({totals['retries']} retries)"
        if name == "generator":
            text += f", {totals['images_received']} images"
        if totals.get("model_calls") or totals.get("cache_hits"):
            text += f", {totals['model_calls']} model calls ({totals['repairs']} repairs)"
            text += f", {totals['cache_hits']} cached"
        if totals["input_tokens"] or totals["output_tokens"]:
            text += f", {totals['input_tokens']}+{totals['output_tokens']} tokens"
        parts.append(text)
    cost = usage["cost"]
    return [
        f"usage: {'; '.join(parts) or 'none'}",
        f"cost: {usd(cost['total_usd'])} ({usd(cost['per_case_usd'])} per case)",
    ]


def judge_lines(benchmark: dict[str, Any]) -> list[Text]:
    """The judge's reliability: a warning line per problem found, else one line of what
    was checked; and the cases whose judge failed (judge metrics missing)."""
    reliability = benchmark.get("judge_reliability") or {}
    lines = []
    unreliable = reliability.get("passed") is False
    if unreliable:
        lines.append(Text("warning: the judge's scores are not reliable in this run:", style="bold yellow"))
    for warning in reliability.get("warnings", []):
        # Under the heading, a list item; alone, a warning of its own.
        lines.append(Text(f"  - {warning}" if unreliable else f"warning: {warning}", style="yellow"))
    if reliability.get("passed"):
        swap, control = reliability["swap"], reliability["control"]
        lines.append(
            Text(
                f"judge: reliability checks passed on {reliability['sample']['checked']} cases (order swap "
                f"agreement {pct(swap['within_one'])}, controls {num(control['mean_control'], 2)} vs candidates "
                f"{num(control['mean_candidate'], 2)})"
            )
        )
    failed = benchmark.get("judge_failed") or []
    if failed:
        coverage = (benchmark.get("metric_coverage") or {}).get("judge_content") or {}
        lines.append(
            Text(
                f"warning: the judge failed on {len(failed)} cases; the judge metrics cover "
                f"{coverage.get('cases', '?')} of {coverage.get('of', '?')} finished cases",
                style="yellow",
            )
        )
    return lines


def run_summary(benchmark: dict[str, Any], report: Path | None) -> Group:
    lines: list[Any] = [metrics_table(benchmark)]
    lines += [Text(line) for line in (*outcome_lines(benchmark), *usage_lines(benchmark))]
    lines += judge_lines(benchmark)
    if report is not None:
        lines.append(Text(f"report: {report}"))
    return Group(*lines)
