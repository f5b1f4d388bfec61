"""The leaderboard written out: leaderboard.json, leaderboard.md and leaderboard.html in
the output folder, and a rich table for the terminal. The HTML page shows images from
the runs' folders (thumbnails written once into each run's report_files/) by paths
relative to the output folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from regen.orchestrator import outcomes
from regen.orchestrator.compare.leaderboard import build
from regen.orchestrator.compare.runs import Generator, RunData, load_runs
from regen.orchestrator.report import REPORT_FILE, write_report
from regen.orchestrator.report.model import Picture
from regen.orchestrator.report.render import interval, num, pct, render, usd
from regen.orchestrator.report.thumbs import Thumbnails
from regen.orchestrator.results import atomic_write_bytes, atomic_write_json

JSON_FILE, MARKDOWN_FILE, HTML_FILE = "leaderboard.json", "leaderboard.md", "leaderboard.html"
# Metrics shown in the terminal and Markdown tables (all are in the JSON and HTML).
SHORT_METRICS: tuple[str, ...] = ("selection", "clip", "dinov2", "ssim", "judge_mean")


def default_out(paths: Sequence[Path]) -> Path:
    """`leaderboard/` in the runs' common parent folder."""
    parent = Path(os.path.commonpath([str(Path(p).resolve().parent) for p in paths]))
    return parent / "leaderboard"


def _mean_ci(summary: dict[str, Any], digits: int = 4) -> str:
    return f"{num(summary['mean'], digits)} {interval(summary, digits)}"


def _outcome_cell(row: dict[str, Any]) -> str:
    o = row["outcomes"]
    return f"{o['done']}/{o['refused']}/{o['failed']}" + ("" if o["complete"] else " (incomplete)")


def _short_metrics(board: dict[str, Any]) -> list[str]:
    return [m for m in SHORT_METRICS if m in board["metrics"]]


def terminal_table(board: dict[str, Any]) -> Table:
    table = Table(title="leaderboard (headline: refusals at the penalty; mean [95% CI])", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("generator")
    table.add_column("seeds")
    for m in _short_metrics(board):
        table.add_column(m, justify="right")
    for cat in board["categories"]:
        table.add_column(f"{board['primary']}: {cat}", justify="right")
    table.add_column("done/refused/failed", justify="right")
    table.add_column("cost/case", justify="right")
    table.add_column("better than (p<α, Holm)")
    ranks = {row["generator"]: row["rank"] for row in board["generators"]}
    for row in board["generators"]:
        table.add_row(
            str(row["rank"]),
            row["generator"],
            ",".join(map(str, row["seeds"])),
            *(_mean_ci(row["metrics"][m], 3) for m in _short_metrics(board)),
            *(num(row["categories"][c][board["primary"]]["mean"], 3) for c in board["categories"]),
            _outcome_cell(row),
            usd(row["usage"]["cost_per_case_usd"]),
            ", ".join(f"#{ranks[g]}" for g in row["significantly_better_than"]) or "-",
        )
    return table


def markdown(board: dict[str, Any]) -> str:
    primary = board["primary"]
    metrics = _short_metrics(board)
    head = ["#", "generator", "seeds", *metrics, *(f"{primary}: {c}" for c in board["categories"])]
    head += ["done/refused/failed", "coverage", "cost/case", f"significantly better ({primary})"]
    lines = [
        "# Leaderboard",
        "",
        f"Dataset {board['like_for_like']['dataset']} ({board['like_for_like']['cases']} cases), "
        f"{board['like_for_like']['rounds']} rounds × {board['like_for_like']['candidates']} candidates, "
        f"run seeds {', '.join(map(str, board['like_for_like']['seeds']))}. Mean [95% CI]; refused cases count at "
        f"the penalty values ({', '.join(f'{k} {v:g}' for k, v in board['method']['penalties'].items())}); "
        "failed cases are left out.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---:"] + ["---"] * 2 + ["---:"] * (len(head) - 4) + ["---"]) + "|",
    ]
    for row in board["generators"]:
        cells = [str(row["rank"]), row["generator"], ",".join(map(str, row["seeds"]))]
        cells += [_mean_ci(row["metrics"][m], 3) for m in metrics]
        cells += [num(row["categories"][c][primary]["mean"], 3) for c in board["categories"]]
        cells += [_outcome_cell(row), pct(row["outcomes"]["coverage"]), usd(row["usage"]["cost_per_case_usd"])]
        cells += [", ".join(row["significantly_better_than"]) or "-"]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines += [
        "",
        f"## Pairwise differences ({primary})",
        "",
        "| A | B | cases | mean A − B [95% CI] | p | p (Holm) | |",
    ]
    lines.append("|---|---|---:|---:|---:|---:|---|")
    for p in board["pairwise"][primary]:
        diff = f"{num(p['mean_difference'])} [{num(p['ci_low'])}, {num(p['ci_high'])}]"
        mark = f"**significant: {p['better']} better**" if p["significant"] else "not significant"
        lines.append(f"| {p['a']} | {p['b']} | {p['n']} | {diff} | {num(p['p'])} | {num(p['p_holm'])} | {mark} |")
    lines += ["", f"Test: {board['method']['test']}; α = {board['method']['alpha']:g}.", ""]
    check = board["consistency"]
    if check["consistent"]:
        lines.append(
            f"Describer consistency: the same IUT and first prompt for every generator in all {check['cases']} cases."
        )
    else:
        lines.append(f"Describer consistency: **{len(check['mismatches'])} differences**:")
        for m in check["mismatches"]:
            lines.append(
                f"- {m['case']}: the {m['what']} differs between " + " | ".join(", ".join(g) for g in m["groups"])
            )
    if check["note"]:
        lines.append(f"Note: {check['note']}.")
    if board["judge"]["note"]:
        lines += ["", f"Judge: {board['judge']['note']}."]
    return "\n".join(lines) + "\n"


def _relative(path: Path, out: Path) -> str:
    return Path(os.path.relpath(path, out)).as_posix()


def side_by_side(generators: Sequence[Generator], out: Path) -> list[dict[str, Any]]:
    """Per case: the reference and each generator's best image (its lowest run seed),
    with the headline scores; thumbnails written into each run's report_files/."""
    shown = [g.runs[0] for g in generators]
    thumbs = {run.name: Thumbnails(run.path) for run in shown}
    rows: list[dict[str, Any]] = []
    first = shown[0]
    for case in first.run["dataset"]["cases"]:
        ref = thumbs[first.name].reference(case["id"], Path(first.run["dataset"]["root"]) / case["file"])
        entries = []
        for g, run in zip(generators, shown, strict=True):
            outcome = run.outcomes[case["id"]]
            picture = None
            if outcome.status == outcomes.DONE and outcome.record:
                file = outcome.record["best"]["file"]
                thumb = thumbs[run.name].of(case["id"], file)
                picture = Picture(_relative(run.path / case["id"] / file, out), _relative(run.path / thumb, out))
            entries.append(
                {
                    "generator": g.label,
                    "status": outcome.status,
                    "picture": picture,
                    "selection": outcome.headline("selection"),
                    "judge_mean": outcome.headline("judge_mean"),
                }
            )
        rows.append(
            {
                "case": case["id"],
                "category": case["category"],
                "reference": Picture(*(_relative(first.path / p, out) for p in ref)) if ref else None,
                "entries": entries,
            }
        )
    for t in thumbs.values():
        t.write()
    return rows


def write_leaderboard(
    paths: Sequence[Path], out: Path | None = None, *, trust_judge: bool = False
) -> tuple[dict[str, Any], Path]:
    """Compare the runs; write the three files into `out` (default: `default_out`).
    The judge's scores are left out where its reliability checks failed, unless
    `trust_judge`."""
    runs, generators = load_runs(paths)
    for run in runs:  # the rows link to each run's report
        if not (run.path / REPORT_FILE).is_file():
            write_report(run.path)
    out = Path(os.path.abspath(out or default_out([r.path for r in runs])))
    board = build(runs, generators, trust_judge=trust_judge)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / JSON_FILE, board)
    atomic_write_bytes(out / MARKDOWN_FILE, markdown(board).encode())
    page = render(
        "leaderboard.html.j2",
        board=board,
        rows=side_by_side(generators, out),
        reports={g.label: [_relative(r.path / REPORT_FILE, out) for r in g.runs] for g in generators},
        short_metrics=_short_metrics(board),
    )
    atomic_write_bytes(out / HTML_FILE, page.encode())
    return board, out


__all__ = ["RunData", "default_out", "markdown", "terminal_table", "write_leaderboard"]
