"""A run folder read back for the pages: run.json, benchmark_final.json (computed from
the case files when a run was interrupted before writing it), and every case's files."""

from __future__ import annotations

import difflib
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regen.orchestrator import outcomes
from regen.orchestrator.aggregate import FORMAT, aggregate
from regen.orchestrator.dataset import Case
from regen.orchestrator.outcomes import CaseOutcome, read_outcome
from regen.orchestrator.report.thumbs import Thumbnails
from regen.orchestrator.results import RunLayout, read_json
from regen.orchestrator.usage import Totals
from regen.orchestrator.usage import summarize as summarize_usage


class ReportError(ValueError):
    """The folder is not a run folder (the message names what is missing)."""


@dataclass
class Picture:
    """An image of the run: its full size and its thumbnail, relative to the run folder."""

    full: str
    thumb: str


@dataclass
class CandidateView:
    index: int
    prompt: str
    seed: int
    refused: bool
    refusal_reason: str
    truncated: bool
    scores: dict[str, float]
    selection: float | None
    picture: Picture | None
    is_round_best: bool = False


@dataclass
class RoundView:
    index: int
    prompt: str
    prompt_source: str
    # The input prompt against the previous round's, as HTML with <ins>/<del>.
    prompt_diff: str | None
    candidates: list[CandidateView]
    best_so_far: dict[str, Any] | None
    differences: list[dict[str, str]]
    revised_prompt: str | None


@dataclass
class CaseView:
    outcome: CaseOutcome
    reference: Picture | None
    best: Picture | None = None
    rounds: list[RoundView] = field(default_factory=list)
    iut: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return self.outcome.case

    @property
    def category(self) -> str:
        return self.outcome.category

    @property
    def status(self) -> str:
        return self.outcome.status

    @property
    def record(self) -> dict[str, Any]:
        return self.outcome.record or {}

    def usage_rows(self) -> list[tuple[str, dict[str, Any]]]:
        """The case's usage per service and method, then its total."""
        rows = [
            (f"{service}.{method}", Totals.from_record(values).record())
            for service, methods in self.outcome.usage.items()
            for method, values in methods.items()
        ]
        return [*rows, ("total", summarize_usage([self.outcome.usage])["total"])] if rows else []


@dataclass
class RunView:
    run_dir: Path
    run: dict[str, Any]
    benchmark: dict[str, Any]
    cases: list[CaseView]

    @property
    def metrics(self) -> list[str]:
        return list(self.benchmark["metrics"])

    @property
    def categories(self) -> list[str]:
        return list(self.benchmark["categories"])


def word_diff(before: str, after: str) -> str:
    """`after` against `before`, word by word, as escaped HTML: removed words in <del>,
    added ones in <ins>."""
    old, new = before.split(), after.split()
    parts: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if op in ("delete", "replace"):
            parts.append(f"<del>{html.escape(' '.join(old[i1:i2]))}</del>")
        if op in ("insert", "replace"):
            parts.append(f"<ins>{html.escape(' '.join(new[j1:j2]))}</ins>")
        if op == "equal":
            parts.append(html.escape(" ".join(old[i1:i2])))
    return " ".join(parts)


def run_cases(run: dict[str, Any]) -> list[Case]:
    """The run's cases as run.json lists them, in dataset order."""
    root = Path(run["dataset"]["root"])
    return [Case(c["id"], root / c["file"], c["category"], c["sha256"]) for c in run["dataset"]["cases"]]


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """run.json and benchmark_final.json (computed when missing)."""
    layout = RunLayout(run_dir)
    if not layout.run_file.is_file():
        raise ReportError(f"{run_dir} is not a regen run folder: it has no run.json")
    run = read_json(layout.run_file)
    if layout.benchmark_file.is_file():
        benchmark = read_json(layout.benchmark_file)
        if benchmark.get("format") == FORMAT:  # an older format is computed again
            return run, benchmark
    return run, aggregate(layout, run_cases(run), run=run)


def _rounds(run_dir: Path, case: str, rounds: int, thumbs: Thumbnails) -> list[RoundView]:
    views: list[RoundView] = []
    previous: str | None = None
    for r in range(1, rounds + 1):
        path = run_dir / case / f"iteration_{r}" / "metadata.json"
        if not path.is_file():
            break
        meta = read_json(path)
        best = (meta.get("best") or {}).get("candidate")
        candidates = [
            CandidateView(
                index=c["index"],
                prompt=c["prompt"],
                seed=c["seed"],
                refused=c["refused"],
                refusal_reason=c["refusal_reason"],
                truncated=c["prompt_truncated"],
                scores=c["scores"],
                selection=c["selection"],
                picture=(
                    Picture(f"{case}/iteration_{r}/{c['file']}", thumbs.of(case, f"iteration_{r}/{c['file']}"))
                    if c["file"]
                    else None
                ),
                is_round_best=c["index"] == best,
            )
            for c in meta["candidates"]
        ]
        views.append(
            RoundView(
                index=r,
                prompt=meta["prompt"],
                prompt_source=meta["prompt_source"],
                prompt_diff=word_diff(previous, meta["prompt"]) if previous is not None else None,
                candidates=candidates,
                best_so_far=meta.get("best_so_far"),
                differences=meta.get("differences") or [],
                revised_prompt=meta.get("revised_prompt"),
            )
        )
        previous = meta["prompt"]
    return views


def load_run(run_dir: Path, thumbs: Thumbnails | None = None) -> RunView:
    """The run as the report shows it; the thumbnails it needs are queued on `thumbs`."""
    thumbs = thumbs or Thumbnails(run_dir)
    run, benchmark = read_run(run_dir)
    layout = RunLayout(run_dir)
    views: list[CaseView] = []
    for case in run_cases(run):
        outcome = read_outcome(layout, case)
        ref = thumbs.reference(case.id, case.path)
        view = CaseView(outcome, Picture(*ref) if ref else None)
        if outcome.status != outcomes.PENDING:
            view.rounds = _rounds(run_dir, case.id, run["config"]["rounds"], thumbs)
            iut_file = layout.iut_file(case.id)
            view.iut = read_json(iut_file) if iut_file.is_file() else None
        best = (outcome.record or {}).get("best") if outcome.status == outcomes.DONE else None
        if best:
            view.best = Picture(f"{case.id}/{best['file']}", thumbs.of(case.id, best["file"]))
        views.append(view)
    return RunView(run_dir, run, benchmark, views)
