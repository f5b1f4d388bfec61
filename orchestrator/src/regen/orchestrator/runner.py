"""A whole run: resolve the dataset, reach (or start) the services, run many cases at
once, resume, aggregate.

Up to `concurrency` cases are in flight, each going through its stages on its own, so
at any moment some cases wait for the describer while others' Generate and Score calls
reach their servers together and get batched there. Nothing serialises a stage across
cases.

Resume: a case is finished iff <case>/final/final_metrics.json exists. On start, the
finished cases are skipped; any other case folder (interrupted, or failed last time) is
removed and the case is run again from the start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regen.common.identity import model_json
from regen.orchestrator.aggregate import aggregate
from regen.orchestrator.clients import Clients
from regen.orchestrator.config import RunConfig, stable_hash
from regen.orchestrator.dataset import Case, Dataset, resolve_dataset
from regen.orchestrator.launcher import SERVICES, LocalServices
from regen.orchestrator.loop import CaseFailed, CaseRunner, LoopSettings
from regen.orchestrator.progress import Reporter, SilentReporter
from regen.orchestrator.results import RunLayout, atomic_write_json, read_json
from regen.orchestrator.seeds import SCHEME

RUN_FORMAT = "regen.run/1"
TINY_MODEL_DIRS = ("clip", "dinov2", "stable-diffusion", "qwen2.5-vl")


class RunError(RuntimeError):
    """The run cannot start (or go on); the message names the problem."""


@dataclass
class RunSummary:
    run_dir: Path
    total: int
    done: int
    failed: int
    skipped: int
    benchmark: dict[str, Any]


def regen_version() -> str:
    try:
        return importlib.metadata.version("regen-orchestrator")
    except importlib.metadata.PackageNotFoundError:
        from regen.common import __version__

        return __version__


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "x"


def default_run_name(dataset: str, generator_model: str, seed: int, config_hash: str) -> str:
    model = Path(generator_model.rstrip("/")).name or generator_model
    return f"{_slug(dataset)}-{_slug(model)}-seed{seed}-{config_hash[:8]}"


def describe_models(describer_info: Any, generator_info: Any, scorer_info: Any) -> dict[str, Any]:
    """Everything about the services that changes results (no timings, no counters)."""
    return {
        "describer": {**model_json(describer_info.model), "template_version": describer_info.template_version},
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


def _library_versions(info: Any) -> dict[str, str]:
    return dict(sorted(info.server.library_versions.items()))


def ensure_tiny_models(reporter: Reporter) -> None:
    """Build the tiny models with `regen tiny-models` in a child process when missing
    (this process never imports torch)."""
    from regen.common.settings import tiny_models_dir

    root = tiny_models_dir()
    if (root / "manifest.json").is_file() and all((root / name).is_dir() for name in TINY_MODEL_DIRS):
        return
    reporter.message(f"building the tiny models into {root} (once) ...")
    done = subprocess.run(
        [sys.executable, "-m", "regen.cli", "tiny-models"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise RunError(f"building the tiny models failed (exit code {done.returncode}):\n{tail}")


def embedded_env(config: RunConfig) -> dict[str, str]:
    """The tiny preset runs on the CPU: one thread per service keeps results bit-exact
    across runs and stops three services from fighting over the cores."""
    if config.preset != "tiny":
        return {}
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in SERVICES:
        env[f"REGEN_{name.upper()}_CPU_THREADS"] = "1"
    return {key: value for key, value in env.items() if key not in os.environ}


def run(config: RunConfig, reporter: Reporter | None = None) -> RunSummary:
    """Run (or resume) a benchmark; start the services that have no address, and stop them after."""
    reporter = reporter or SilentReporter()
    started = time.monotonic()
    dataset = resolve_dataset(config.dataset)
    cases = dataset.select(config.limit)
    given = {name: getattr(config, name) for name in SERVICES if getattr(config, name)}
    if not config.embedded:
        return asyncio.run(_run(config, dataset, cases, given, reporter, started))
    if config.preset == "tiny":
        ensure_tiny_models(reporter)
    reporter.message(f"starting the {', '.join(config.embedded)} on 127.0.0.1 (preset {config.preset}) ...")
    services = LocalServices(
        names=config.embedded,
        preset=config.preset,
        config_file=config.service_config,
        env=embedded_env(config),
        startup_timeout_s=config.startup_timeout_s,
    )
    with services:
        addresses = {**given, **{name: services.address(name) for name in config.embedded}}
        reporter.message("services: " + ", ".join(f"{n} {a}" for n, a in sorted(addresses.items())))
        return asyncio.run(_run(config, dataset, cases, addresses, reporter, started))


async def _run(
    config: RunConfig,
    dataset: Dataset,
    cases: list[Case],
    addresses: dict[str, str],
    reporter: Reporter,
    started: float,
) -> RunSummary:
    clients = Clients.connect(addresses, config.retry)
    try:
        await clients.wait_until_serving(config.connect_timeout_s)
        return await _run_connected(config, dataset, cases, addresses, clients, reporter, started)
    finally:
        await clients.close()


def _loop_settings(config: RunConfig, generator_info: Any, scorer_info: Any) -> LoopSettings:
    metric_names = {m.id: m.name for m in scorer_info.metrics}
    available = sorted(set(metric_names.values()))
    unknown = sorted(set(config.selection_weights) - set(available))
    if unknown:
        raise RunError(
            f"selection weights name {', '.join(unknown)}, "
            f"but the scorer offers only: {', '.join(available) or 'nothing'}"
        )
    if len(available) != len(metric_names):
        raise RunError(f"the scorer reports two metrics with one name: {sorted(metric_names.items())}")
    return LoopSettings(
        run_seed=config.seed,
        rounds=config.rounds,
        candidates=config.candidates,
        token_budget=generator_info.prompt_token_budget,
        generation=config.generation,
        metric_names=metric_names,
        selection_weights=config.selection_weights,
        generator_max_batch=generator_info.max_batch,
        scorer_max_candidates=scorer_info.max_candidates,
    )


def _check_or_write_run_file(layout: RunLayout, run_info: dict[str, Any]) -> None:
    if layout.run_file.is_file():
        previous = read_json(layout.run_file)
        if previous.get("config_hash") != run_info["config_hash"]:
            changed = [key for key in ("config", "dataset", "models") if previous.get(key) != run_info[key]]
            detail = "; ".join(_first_difference(previous.get(key), run_info[key], key) for key in changed)
            raise RunError(
                f"{layout.root} holds a run with a different configuration ({detail or 'hash differs'}); "
                "use the same options to resume it, or another --run-name/--out for a new run"
            )
        return
    atomic_write_json(layout.run_file, run_info)


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


async def _run_connected(
    config: RunConfig,
    dataset: Dataset,
    cases: list[Case],
    addresses: dict[str, str],
    clients: Clients,
    reporter: Reporter,
    started: float,
) -> RunSummary:
    describer_info, generator_info, scorer_info = await asyncio.gather(
        clients.describer.info(), clients.generator.info(), clients.scorer.info()
    )
    settings = _loop_settings(config, generator_info, scorer_info)
    models = describe_models(describer_info, generator_info, scorer_info)
    identity = {
        "config": config.result_config(),
        "dataset": {"name": dataset.name, "cases": [[c.id, c.category, c.sha256] for c in cases]},
        "models": models,
    }
    config_hash = stable_hash(identity)
    run_name = config.run_name or default_run_name(
        dataset.name, models["generator"]["model_id"], config.seed, config_hash
    )
    layout = RunLayout(config.out / run_name)
    lock = layout.lock()
    try:
        run_info = {
            "format": RUN_FORMAT,
            "run_name": run_name,
            "config_hash": config_hash,
            "config": identity["config"],
            "dataset": {
                "name": dataset.name,
                "root": str(dataset.root),
                "cases": [{"id": c.id, "category": c.category, "file": c.path.name, "sha256": c.sha256} for c in cases],
            },
            "models": models,
            "seeds": {
                "run_seed": config.seed,
                "scheme": SCHEME,
                "candidate": "parts: 'candidate', case id, round (1-based), candidate (1-based)",
                "variants": "parts: 'variants', case id, round (1-based)",
                "bootstrap": "parts: 'bootstrap', category or 'all', metric name",
            },
            "versions": {
                "regen": regen_version(),
                "python": platform.python_version(),
                "services": {
                    "describer": _library_versions(describer_info),
                    "generator": _library_versions(generator_info),
                    "scorer": _library_versions(scorer_info),
                },
            },
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "first_invocation": {
                "addresses": addresses,
                "embedded": list(config.embedded),
                "preset": config.preset if config.embedded else None,
                "concurrency": config.concurrency,
            },
        }
        _check_or_write_run_file(layout, run_info)
        run_info = read_json(layout.run_file)
        layout.remove_stale_temporaries()
        return await _run_cases(config, cases, clients, settings, layout, run_info, reporter, started)
    finally:
        os.close(lock)


async def _busy(clients: Clients) -> dict[str, dict[str, float]]:
    infos = await asyncio.gather(*(client.info() for client in clients.all()), return_exceptions=True)
    busy: dict[str, dict[str, float]] = {}
    for client, info in zip(clients.all(), infos, strict=True):
        if not isinstance(info, BaseException):
            busy[client.service] = {
                "busy_s": info.server.busy_s,
                "batches": info.server.batches,
                "items": info.server.items,
            }
    return busy


async def _run_cases(
    config: RunConfig,
    cases: list[Case],
    clients: Clients,
    settings: LoopSettings,
    layout: RunLayout,
    run_info: dict[str, Any],
    reporter: Reporter,
    started: float,
) -> RunSummary:
    todo = [case for case in cases if not layout.is_done(case.id)]
    skipped = len(cases) - len(todo)
    busy_before = await _busy(clients)
    semaphore = asyncio.Semaphore(config.concurrency)
    counts = {"done": 0, "failed": 0}
    work_started = time.monotonic()

    async def one(case: Case) -> None:
        async with semaphore:
            await asyncio.to_thread(layout.reset_case, case.id)
            try:
                final = await CaseRunner(clients, settings, layout, case, on_stage=reporter.stage).run()
            except CaseFailed as failure:
                record = {"case": case.id, "status": "failed", "failure": failure.record()}
                await asyncio.to_thread(atomic_write_json, layout.error_file(case.id), record)
                counts["failed"] += 1
                reporter.case_failed(case.id, f"{failure.stage}: {failure}")
                return
            counts["done"] += 1
            m = final["metrics"]
            reporter.case_done(
                case.id, f"selection {m['selection']:.4f}, judge {m['judge_content']}/{m['judge_quality']}"
            )

    reporter.start(len(cases), skipped)
    try:
        await asyncio.gather(*(one(case) for case in todo))
    finally:
        reporter.stop()
    busy_after = await _busy(clients)
    services = {
        name: {key: after[key] - busy_before.get(name, {}).get(key, 0) for key in after}
        for name, after in busy_after.items()
    }
    timings = {
        "wall_s": time.monotonic() - started,
        "cases_wall_s": time.monotonic() - work_started,
        "cases_run": len(todo),
        "services": services,
    }
    benchmark = aggregate(layout, cases, run=run_info, timings=timings)
    atomic_write_json(layout.benchmark_file, benchmark)
    return RunSummary(
        run_dir=layout.root,
        total=len(cases),
        done=benchmark["cases"]["done"],
        failed=benchmark["cases"]["failed"],
        skipped=skipped,
        benchmark=benchmark,
    )
