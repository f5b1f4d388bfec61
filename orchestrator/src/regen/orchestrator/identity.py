"""A run's identity: what determines its numbers, its hash, its default folder name, and
run.json, which records it so that a resume into the same folder with a different
configuration is refused instead of silently mixing results.

The identity is the result-relevant settings (`RESULT_FIELDS`), the dataset's cases with
their sha256, and the services' models; addresses, concurrency, timeouts and the
progress style may differ between a run and its resume.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import platform
import re
from pathlib import Path
from typing import Any

from regen.common.identity import model_json
from regen.orchestrator.dataset import Case, Dataset
from regen.orchestrator.results import RunLayout, atomic_write_json, read_json
from regen.orchestrator.seeds import SCHEME
from regen.orchestrator.settings import OrchestratorSettings

RUN_FORMAT = "regen.run/1"

# Settings whose value changes a run's numbers; everything else (addresses, concurrency,
# timeouts, progress style) may differ between a run and its resume.
RESULT_FIELDS: tuple[str, ...] = (
    "rounds",
    "candidates",
    "seed",
    "limit",
    "selection_weights",
    "generation",
    "judge_checks",
    "bootstrap_resamples",
    "confidence",
)


class RunMismatch(RuntimeError):
    """The run folder holds a run with another identity."""


def stable_hash(data: Any) -> str:
    """sha256 of canonical JSON (sorted keys), for identities that must survive restarts."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def result_config(settings: OrchestratorSettings) -> dict[str, Any]:
    """The part of the settings that determines the numbers."""
    data = settings.model_dump(mode="json")
    return {key: data[key] for key in RESULT_FIELDS}


def describe_models(describer_info: Any, generator_info: Any, scorer_info: Any) -> dict[str, Any]:
    """Everything about the services that changes results (no timings, no counters)."""
    return {
        "describer": {
            **model_json(describer_info.model),
            "template_version": describer_info.template_version,
            "judge_temperature": round(float(describer_info.judge_temperature), 6),
        },
        "generator": {
            **model_json(generator_info.model),
            "prompt_token_budget": generator_info.prompt_token_budget,
            "default_width": generator_info.default_width,
            "default_height": generator_info.default_height,
            "default_steps": generator_info.default_steps,
            "default_guidance_scale": round(float(generator_info.default_guidance_scale), 6),
        },
        "scorer": {
            "models": [model_json(m) for m in scorer_info.models],
            "metrics": [
                {
                    "id": m.id,
                    "name": m.name,
                    "checkpoint": m.checkpoint,
                    "revision": m.revision,
                    "definition": m.definition,
                }
                for m in scorer_info.metrics
            ],
            "metric_ids": {m.name: m.id for m in scorer_info.metrics},
        },
    }


def run_identity(
    settings: OrchestratorSettings, dataset: Dataset, cases: list[Case], models: dict[str, Any]
) -> dict[str, Any]:
    """What is hashed into the config hash."""
    return {
        "config": result_config(settings),
        "dataset": {"name": dataset.name, "cases": [[c.id, c.category, c.sha256] for c in cases]},
        "models": models,
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "x"


def default_run_name(dataset: str, generator_model: str, seed: int, config_hash: str) -> str:
    model = Path(generator_model.rstrip("/")).name or generator_model
    return f"{_slug(dataset)}-{_slug(model)}-seed{seed}-{config_hash[:8]}"


def regen_version() -> str:
    try:
        return importlib.metadata.version("regen-orchestrator")
    except importlib.metadata.PackageNotFoundError:
        from regen.common import __version__

        return __version__


def _library_versions(info: Any) -> dict[str, str]:
    return dict(sorted(info.server.library_versions.items()))


def run_record(
    settings: OrchestratorSettings,
    dataset: Dataset,
    cases: list[Case],
    identity: dict[str, Any],
    run_name: str,
    infos: dict[str, Any],
    addresses: dict[str, str],
) -> dict[str, Any]:
    """run.json's content: the identity and its hash, and how this run came to be."""
    return {
        "format": RUN_FORMAT,
        "run_name": run_name,
        "config_hash": stable_hash(identity),
        "config": identity["config"],
        "dataset": {
            "name": dataset.name,
            "root": str(dataset.root),
            "cases": [{"id": c.id, "category": c.category, "file": c.path.name, "sha256": c.sha256} for c in cases],
        },
        "models": identity["models"],
        "seeds": {
            "run_seed": settings.seed,
            "scheme": SCHEME,
            "candidate": "parts: 'candidate', case id, round (1-based), candidate (1-based)",
            "variants": "parts: 'variants', case id, round (1-based)",
            "bootstrap": "parts: 'bootstrap', category or 'all', metric name",
        },
        "versions": {
            "regen": regen_version(),
            "python": platform.python_version(),
            "services": {name: _library_versions(infos[name]) for name in ("describer", "generator", "scorer")},
        },
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "first_invocation": {
            "addresses": addresses,
            "embedded": list(settings.embedded),
            "preset": settings.service_preset if settings.embedded else None,
            "concurrency": settings.concurrency,
        },
    }


def check_or_write_run_file(layout: RunLayout, record: dict[str, Any]) -> dict[str, Any]:
    """Write run.json for a new run; for a resume, check that the identity is the same.
    Returns run.json's content as on disk (a resume keeps the first invocation's)."""
    if not layout.run_file.is_file():
        atomic_write_json(layout.run_file, record)
        return read_json(layout.run_file)
    previous = read_json(layout.run_file)
    if previous.get("config_hash") != record["config_hash"]:
        changed = [key for key in ("config", "dataset", "models") if previous.get(key) != record[key]]
        detail = "; ".join(_first_difference(previous.get(key), record[key], key) for key in changed)
        raise RunMismatch(
            f"{layout.root} holds a run with a different configuration ({detail or 'hash differs'}); "
            "use the same options to resume it, or another --run-name/--out for a new run"
        )
    return previous


def _first_difference(old: Any, new: Any, path: str) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{path}.{key}")
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            if a != b:
                return _first_difference(a, b, f"{path}[{i}]")
    return f"{path} was {_short(old)}, now {_short(new)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
