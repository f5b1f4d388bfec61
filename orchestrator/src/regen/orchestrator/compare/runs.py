"""The runs a leaderboard compares: read back, grouped by generator, and checked to be
like for like (the same dataset, describer, metrics, loop and run seeds), so that any
difference between the rows is the generators'."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from regen.orchestrator.identity import stable_hash
from regen.orchestrator.outcomes import CaseOutcome, read_outcome
from regen.orchestrator.report.model import read_run, run_cases
from regen.orchestrator.report.render import generation_settings
from regen.orchestrator.results import RunLayout, read_json


class CompareError(ValueError):
    """The runs cannot be compared; the message names every difference."""


@dataclass
class RunData:
    path: Path
    run: dict[str, Any]
    benchmark: dict[str, Any]
    outcomes: dict[str, CaseOutcome]

    @property
    def name(self) -> str:
        return self.run["run_name"]

    @property
    def seed(self) -> int:
        return int(self.run["config"]["seed"])

    @property
    def generator(self) -> dict[str, Any]:
        """What makes a generator a generator here: model, revision, image settings."""
        model = self.run["models"]["generator"]
        return {
            "model_id": model["model_id"],
            "revision": model["revision"],
            "settings": generation_settings(self.run),
        }

    def first_prompt(self, case: str) -> str | None:
        path = RunLayout(self.path).iteration_dir(case, 1) / "metadata.json"
        return read_json(path)["prompt"] if path.is_file() else None

    def iut(self, case: str) -> Any:
        path = RunLayout(self.path).iut_file(case)
        return read_json(path) if path.is_file() else None


@dataclass
class Generator:
    """One leaderboard row: a generator and its runs (one per run seed)."""

    key: str
    identity: dict[str, Any]
    runs: list[RunData] = field(default_factory=list)
    label: str = ""

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


def load_run_data(path: Path) -> RunData:
    run, benchmark = read_run(path)
    layout = RunLayout(path)
    outcomes = {case.id: read_outcome(layout, case) for case in run_cases(run)}
    return RunData(path, run, benchmark, outcomes)


def _cases_hash(run: dict[str, Any]) -> str:
    return stable_hash([[c["id"], c["category"], c["sha256"]] for c in run["dataset"]["cases"]])[:16]


# What two runs must share to be compared; each names the difference it finds.
LIKE_FOR_LIKE: tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...] = (
    ("dataset", lambda r: r["dataset"]["name"]),
    ("dataset manifest hash (case ids, categories, sha256 of every reference)", _cases_hash),
    ("describer model", lambda r: r["models"]["describer"]["model_id"]),
    ("describer revision", lambda r: r["models"]["describer"]["revision"]),
    ("describer prompt templates", lambda r: r["models"]["describer"].get("template_version")),
    ("describer judge temperature", lambda r: r["models"]["describer"].get("judge_temperature", 0.0)),
    ("metric ids", lambda r: r["models"]["scorer"]["metric_ids"]),
    ("selection weights", lambda r: r["config"]["selection_weights"]),
    ("rounds", lambda r: r["config"]["rounds"]),
    ("candidates", lambda r: r["config"]["candidates"]),
)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 90 else text[:87] + "..."


def _names(runs: Sequence[RunData]) -> str:
    return ", ".join(r.name for r in runs)


def differences(runs: Sequence[RunData]) -> list[str]:
    """Each way the runs are not like for like, naming the values and the runs."""
    problems = []
    for label, value_of in LIKE_FOR_LIKE:
        groups: dict[str, list[RunData]] = {}
        for run in runs:
            groups.setdefault(json.dumps(value_of(run.run), sort_keys=True), []).append(run)
        if len(groups) > 1:
            parts = [f"{_short(json.loads(key))} in {_names(members)}" for key, members in groups.items()]
            problems.append(f"{label}: {'; '.join(parts)}")
    return problems


def _label(generator: Generator, others: Sequence[Generator]) -> str:
    """The model's short name, with the settings (and revision) that tell it apart."""
    identity = generator.identity
    name = Path(identity["model_id"].rstrip("/")).name or identity["model_id"]
    settings = identity["settings"]
    same_model = [o for o in others if o is not generator and o.identity["model_id"] == identity["model_id"]]
    differing = [k for k in settings if any(o.identity["settings"].get(k) != settings[k] for o in same_model)]
    label = name + (" " + " ".join(f"{k}={settings[k]}" for k in differing) if differing else "")
    if any(o.identity["revision"] != identity["revision"] for o in same_model):
        label += f" @{identity['revision'][:15]}"
    return label


def group(runs: Sequence[RunData]) -> list[Generator]:
    """Runs grouped by generator, in the order first given; refuses the same generator
    twice with one seed, and generators run with different sets of seeds."""
    generators: dict[str, Generator] = {}
    for run in runs:
        key = stable_hash(run.generator)
        generators.setdefault(key, Generator(key, run.generator)).runs.append(run)
    problems = []
    for g in generators.values():
        g.runs.sort(key=lambda r: r.seed)
        seen: dict[int, RunData] = {}
        for run in g.runs:
            if run.seed in seen:
                problems.append(f"the same generator twice with run seed {run.seed}: {seen[run.seed].name}, {run.name}")
            seen[run.seed] = run
    for g in generators.values():
        g.label = _label(g, list(generators.values()))
    seed_sets = {tuple(sorted(set(g.seeds))) for g in generators.values()}
    if len(seed_sets) > 1:
        listed = "; ".join(f"{g.label}: {', '.join(map(str, sorted(set(g.seeds))))}" for g in generators.values())
        problems.append(f"run seeds differ between generators (each must be run with the same seeds): {listed}")
    if problems:
        raise CompareError("cannot compare these runs:\n  " + "\n  ".join(problems))
    return list(generators.values())


def load_runs(paths: Sequence[Path]) -> tuple[list[RunData], list[Generator]]:
    """Read and check the runs; CompareError names every difference that forbids it."""
    if not paths:
        raise CompareError("no run folders given")
    resolved = [Path(os.path.abspath(p)) for p in paths]
    if len(set(resolved)) != len(resolved):
        raise CompareError("a run folder is given twice")
    runs = [load_run_data(p) for p in resolved]
    problems = differences(runs)
    if problems:
        raise CompareError("these runs are not like for like, so they cannot be compared:\n  " + "\n  ".join(problems))
    return runs, group(runs)
