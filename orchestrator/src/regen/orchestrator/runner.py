"""A whole run: resolve the dataset, reach (or start) the services, run many cases at
once, resume, aggregate.

Up to `concurrency` cases are in flight, each going through its stages on its own, so
at any moment some cases wait for the describer while others' Generate and Score calls
reach their servers together and get batched there. Nothing serialises a stage across
cases.

Resume: a case is finished iff <case>/final/final_metrics.json exists. On start, the
finished cases are skipped; any other case folder (interrupted, or failed last time) is
removed and the case is run again from the start. A finished case whose Judge failed for
a passing reason (outcomes.TRANSIENT_JUDGE_CODES) is judged again, and only that.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from regen.orchestrator.admission import Gate, make_gate
from regen.orchestrator.aggregate import aggregate
from regen.orchestrator.clients import Clients, RunInterrupted
from regen.orchestrator.dataset import Case, Dataset, resolve_dataset
from regen.orchestrator.identity import (
    check_or_write_run_file,
    default_run_name,
    describe_models,
    run_identity,
    run_record,
    stable_hash,
)
from regen.orchestrator.launcher import SERVICES, LocalServices
from regen.orchestrator.loop import CaseFailed, CaseRunner, LoopSettings
from regen.orchestrator.outcomes import REFUSED, judge_failed_transiently
from regen.orchestrator.preflight import check_services
from regen.orchestrator.progress import Reporter, SilentReporter
from regen.orchestrator.reliability import plan as judge_plan
from regen.orchestrator.report import write_report
from regen.orchestrator.results import RunLayout, atomic_write_json, read_json
from regen.orchestrator.settings import OrchestratorSettings

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
    refused: int = 0
    # report.html, or None when it could not be written (`report_error` says why).
    report: Path | None = None
    report_error: str | None = None

    @property
    def complete(self) -> bool:
        """Every case finished (done or refused): nothing failed or pending."""
        return bool(self.benchmark["complete"])


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


def embedded_env(preset: str) -> dict[str, str]:
    """The tiny preset runs on the CPU: one thread per service keeps results bit-exact
    across runs and stops three services from fighting over the cores."""
    if preset != "tiny":
        return {}
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in SERVICES:
        env[f"REGEN_{name.upper()}_CPU_THREADS"] = "1"
    return {key: value for key, value in env.items() if key not in os.environ}


def run(
    settings: OrchestratorSettings, reporter: Reporter | None = None, *, config_file: Path | None = None
) -> RunSummary:
    """Run (or resume) a benchmark; start the services that have no address, and stop them
    after. `config_file` is passed to the services started here (they read their own
    sections of it)."""
    return _with_services(settings, reporter, config_file, _run_connected)


@dataclass
class PrepareSummary:
    total: int
    prepared: int
    # (case id, what went wrong) of the cases whose preparation failed.
    failed: list[tuple[str, str]]


def prepare(
    settings: OrchestratorSettings, reporter: Reporter | None = None, *, config_file: Path | None = None
) -> PrepareSummary:
    """The pre-pass: every case's generator-independent steps (understand, the first prompt
    within the generator's token budget, round 1's variants), once per dataset and
    describer. The describer caches the answers, so the runs of a leaderboard that use
    it afterwards, one per generator, feed their generators from their first second.
    Nothing is written to a run folder."""
    return _with_services(settings, reporter, config_file, _prepare_connected)


T = TypeVar("T")
Work = Callable[..., Awaitable[T]]


def _with_services(
    settings: OrchestratorSettings, reporter: Reporter | None, config_file: Path | None, work: Work[T]
) -> T:
    """Resolve the dataset, reach (or start) the services, connect, then `work`."""
    reporter = reporter or SilentReporter()
    started = time.monotonic()
    dataset = resolve_dataset(settings.dataset)
    cases = dataset.select(settings.limit)
    given = {name: address for name in SERVICES if (address := getattr(settings, name))}
    if not settings.embedded:
        return asyncio.run(_connected(settings, dataset, cases, given, reporter, started, work))
    preset = settings.service_preset
    if preset == "tiny":
        ensure_tiny_models(reporter)
    reporter.message(f"starting the {', '.join(settings.embedded)} on 127.0.0.1 (preset {preset}) ...")
    services = LocalServices(
        names=settings.embedded,
        preset=preset,
        config_file=config_file,
        env=embedded_env(preset),
        startup_timeout_s=settings.startup_timeout_s,
    )
    with services:
        addresses = {**given, **{name: services.address(name) for name in settings.embedded}}
        reporter.message("services: " + ", ".join(f"{n} {a}" for n, a in sorted(addresses.items())))
        return asyncio.run(_connected(settings, dataset, cases, addresses, reporter, started, work))


async def _connected(
    settings: OrchestratorSettings,
    dataset: Dataset,
    cases: list[Case],
    addresses: dict[str, str],
    reporter: Reporter,
    started: float,
    work: Work[T],
) -> T:
    clients = Clients.connect(addresses, settings.retry)
    try:
        await clients.wait_until_serving(settings.connect_timeout_s, reporter.message)
        return await work(settings, dataset, cases, addresses, clients, reporter, started)
    finally:
        await clients.close()


async def _prepare_connected(
    settings: OrchestratorSettings,
    dataset: Dataset,
    cases: list[Case],
    addresses: dict[str, str],
    clients: Clients,
    reporter: Reporter,
    started: float,
) -> PrepareSummary:
    _infos, loop_settings = await _checked_services(settings, cases, clients)
    slots = asyncio.Semaphore(settings.prepare_ahead)
    failed: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="regen-prepare-") as scratch:
        layout = RunLayout(Path(scratch))

        async def one(case: Case) -> None:
            async with slots:
                try:
                    await CaseRunner(clients, loop_settings, layout, case, on_stage=reporter.stage).prepare()
                except CaseFailed as failure:
                    failed.append((case.id, f"{failure.stage}: {failure}"))
                    reporter.case_failed(case.id, f"{failure.stage}: {failure}")
                else:
                    reporter.case_done(case.id, "prepared")

        reporter.start(len(cases), 0)
        try:
            async with asyncio.TaskGroup() as group:
                for case in cases:
                    group.create_task(one(case))
        except* RunInterrupted as stopped:
            raise stopped.exceptions[0] from None
        finally:
            reporter.stop()
    return PrepareSummary(total=len(cases), prepared=len(cases) - len(failed), failed=failed)


async def _checked_services(
    settings: OrchestratorSettings, cases: list[Case], clients: Clients
) -> tuple[tuple[Any, Any, Any], LoopSettings]:
    """The three services' Info (describer, generator, scorer), checked against the
    settings before anything is written, and the loop's settings drawn from them."""
    infos = await asyncio.gather(clients.describer.info(), clients.generator.info(), clients.scorer.info())
    check_services(settings, *infos)
    return (infos[0], infos[1], infos[2]), _loop_settings(settings, cases, *infos)


def _loop_settings(
    settings: OrchestratorSettings, cases: list[Case], describer_info: Any, generator_info: Any, scorer_info: Any
) -> LoopSettings:
    metric_names = {m.id: m.name for m in scorer_info.metrics}
    available = sorted(set(metric_names.values()))
    unknown = sorted(set(settings.selection_weights) - set(available))
    if unknown:
        raise RunError(
            f"selection weights name {', '.join(unknown)}, "
            f"but the scorer offers only: {', '.join(available) or 'nothing'}"
        )
    if len(available) != len(metric_names):
        raise RunError(f"the scorer reports two metrics with one name: {sorted(metric_names.items())}")
    return LoopSettings(
        run_seed=settings.seed,
        rounds=settings.rounds,
        candidates=settings.candidates,
        token_budget=generator_info.prompt_token_budget,
        generation=settings.generation,
        metric_names=metric_names,
        selection_weights=settings.selection_weights,
        image_width=settings.generation.width or generator_info.default_width,
        image_height=settings.generation.height or generator_info.default_height,
        generator_model_id=generator_info.model.model_id,
        generator_revision=generator_info.model.revision,
        generator_max_batch=generator_info.max_batch,
        scorer_max_candidates=scorer_info.max_candidates,
        judge_plan=judge_plan(cases, settings.seed, settings.judge_checks, repeat=describer_info.judge_temperature > 0),
    )


async def _run_connected(
    settings: OrchestratorSettings,
    dataset: Dataset,
    cases: list[Case],
    addresses: dict[str, str],
    clients: Clients,
    reporter: Reporter,
    started: float,
) -> RunSummary:
    (describer_info, generator_info, scorer_info), loop_settings = await _checked_services(settings, cases, clients)
    identity = run_identity(settings, dataset, cases, describe_models(describer_info, generator_info, scorer_info))
    config_hash = stable_hash(identity)
    generator_model = identity["models"]["generator"]["model_id"]
    run_name = settings.run_name or default_run_name(dataset.name, generator_model, settings.seed, config_hash)
    layout = RunLayout(settings.out / run_name)
    lock = layout.lock()
    try:
        infos = {"describer": describer_info, "generator": generator_info, "scorer": scorer_info}
        record = run_record(settings, dataset, cases, identity, run_name, infos, addresses)
        run_info = check_or_write_run_file(layout, record)
        layout.remove_stale_temporaries()
        return await _run_cases(settings, cases, clients, loop_settings, layout, run_info, reporter, started)
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


async def _run_case(
    case: Case, clients: Clients, loop_settings: LoopSettings, layout: RunLayout, reporter: Reporter, gate: Gate
) -> None:
    """One case from a clean folder; a failure is recorded in its error.json, not raised.
    `gate` decides when the case starts, and when its generator work may begin."""
    ticket = await gate.start()
    runner = CaseRunner(clients, loop_settings, layout, case, on_stage=reporter.stage)
    try:
        await asyncio.to_thread(layout.reset_case, case.id)
        prepared = await runner.prepare()
        await gate.admit(ticket, images=loop_settings.candidates)
        final = await runner.finish(prepared)
    except CaseFailed as failure:
        record = {"case": case.id, "file": case.path.name, "status": "failed", "failure": failure.record()}
        record["usage"] = runner.usage.record()
        await asyncio.to_thread(atomic_write_json, layout.error_file(case.id), record)
        reporter.case_failed(case.id, f"{failure.stage}: {failure}")
        return
    finally:
        gate.finish(ticket)
    if final["status"] == REFUSED:
        reporter.case_done(case.id, f"refused: the generator refused all {final['candidates']['total']} candidates")
        return
    reporter.case_done(case.id, f"selection {final['metrics']['selection']:.4f}, {_judge_summary(final['metrics'])}")


def _transient_judge_failure(layout: RunLayout, case: Case) -> dict[str, Any] | None:
    """A finished case's record when its Judge failed for a passing reason, else None."""
    try:
        final = read_json(layout.final_metrics_file(case.id))
    except (OSError, ValueError):
        return None  # the report and the aggregate name an unreadable record
    return final if isinstance(final, dict) and judge_failed_transiently(final) else None


def _judge_summary(metrics: dict[str, Any]) -> str:
    return (
        f"judge {metrics['judge_content']}/{metrics['judge_quality']}" if "judge_content" in metrics else "judge failed"
    )


async def _rejudge_case(
    case: Case,
    final: dict[str, Any],
    clients: Clients,
    loop_settings: LoopSettings,
    layout: RunLayout,
    reporter: Reporter,
    gate: Gate,
) -> None:
    """A finished case whose Judge failed transiently last time: only the judge again.
    The case stays finished whatever happens; a new failure replaces the old one."""
    ticket = await gate.start()
    runner = CaseRunner(clients, loop_settings, layout, case, on_stage=reporter.stage)
    try:
        judged = await runner.rejudge(final)
    except CaseFailed as failure:
        reporter.case_done(case.id, f"judged again, but {failure.stage} failed: {failure}; the case stands as it was")
        return
    finally:
        gate.finish(ticket)
    reporter.case_done(case.id, f"judged again: {_judge_summary(judged['metrics'])}")


async def _run_cases(
    settings: OrchestratorSettings,
    cases: list[Case],
    clients: Clients,
    loop_settings: LoopSettings,
    layout: RunLayout,
    run_info: dict[str, Any],
    reporter: Reporter,
    started: float,
) -> RunSummary:
    todo: list[Case] = []
    rejudge: list[tuple[Case, dict[str, Any]]] = []
    for case in cases:
        if not layout.is_done(case.id):
            todo.append(case)
        elif (final := _transient_judge_failure(layout, case)) is not None:
            rejudge.append((case, final))
    skipped = len(cases) - len(todo) - len(rejudge)
    busy_before = await _busy(clients)
    gate = make_gate(settings, clients, loop_settings)
    work_started = time.monotonic()

    reporter.start(len(cases), skipped)
    try:
        # A RunInterrupted (credentials refused, a service down past the outage budget)
        # cancels every case in flight: none can go on.
        async with asyncio.TaskGroup() as group:
            for case in todo:
                group.create_task(_run_case(case, clients, loop_settings, layout, reporter, gate))
            for case, final in rejudge:
                group.create_task(_rejudge_case(case, final, clients, loop_settings, layout, reporter, gate))
    except* RunInterrupted as stopped:
        raise stopped.exceptions[0] from None
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
        "cases_rejudged": len(rejudge),
        "services": services,
        # Calls, images and seconds with calls open, per replica that answered.
        "replicas": clients.replicas(),
        "peak_cases_in_flight": gate.peak_in_flight,
    }
    benchmark = aggregate(layout, cases, run=run_info, timings=timings)
    atomic_write_json(layout.benchmark_file, benchmark)
    summary = RunSummary(
        run_dir=layout.root,
        total=len(cases),
        done=benchmark["cases"]["done"],
        failed=benchmark["cases"]["failed"],
        skipped=skipped,
        benchmark=benchmark,
        refused=benchmark["cases"]["refused"],
    )
    reporter.message("writing report.html ...")
    try:
        summary.report = await asyncio.to_thread(write_report, layout.root)
    except Exception as exc:  # the results are written; a report problem must not hide them
        summary.report_error = f"{type(exc).__name__}: {exc}"
    return summary
