"""`regen`: run benchmarks, serve model services, build the offline tiny models."""

from __future__ import annotations

import importlib
import os
import signal
import threading
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError

from regen.orchestrator.settings import OrchestratorSettings

app = typer.Typer(
    name="regen",
    help="Benchmark text-to-image models by image regeneration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
serve_app = typer.Typer(help="Serve one model service over gRPC (standalone process).", no_args_is_help=True)
app.add_typer(serve_app, name="serve")

PresetOpt = Annotated[str | None, typer.Option("--preset", help="Settings preset: tiny or default.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config file with per-service sections.")]
PortOpt = Annotated[int | None, typer.Option("--port", help="gRPC port; 0 picks a free one.")]
HostOpt = Annotated[str | None, typer.Option("--host", help="Address to bind, e.g. 0.0.0.0 in a container.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="cpu, cuda, cuda:1 or auto.")]
PortFileOpt = Annotated[
    Path | None, typer.Option("--port-file", help="Write the bound port to this file once listening.")
]


def _fail(message: str) -> NoReturn:
    from regen.common import secrets

    typer.secho(f"error: {secrets.scrub(message)}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _service_module(name: str, package: str):
    try:
        return importlib.import_module(f"regen.{name}.grpc_api")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("regen"):
            _fail(f"the {name} service is not installed: pip install ./{package}")
        raise


def _serve(name: str, package: str, port_file: Path | None, **settings) -> None:
    module = _service_module(name, package)
    try:
        module.serve(port_file=port_file, **settings)
    except ValueError as exc:  # settings errors name the field or file
        _fail(str(exc))


@serve_app.command("scorer")
def serve_scorer(
    port: PortOpt = None,
    host: HostOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    device: DeviceOpt = None,
    port_file: PortFileOpt = None,
) -> None:
    """CLIP, DINOv2 and SSIM similarity."""
    _serve(
        "scorer", "services/scorer", port_file, preset=preset, config_file=config, port=port, host=host, device=device
    )


@serve_app.command("generator")
def serve_generator(
    port: PortOpt = None,
    host: HostOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    device: DeviceOpt = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Model id or path for AutoPipelineForText2Image.")
    ] = None,
    engine: Annotated[
        str | None, typer.Option("--engine", help="A registered engine: diffusers, openai (Images API), or a plugin's.")
    ] = None,
    port_file: PortFileOpt = None,
) -> None:
    """A text-to-image model under test."""
    _serve(
        "generator",
        "services/generator",
        port_file,
        preset=preset,
        config_file=config,
        port=port,
        host=host,
        device=device,
        model=model,
        engine=engine,
    )


@serve_app.command("describer")
def serve_describer(
    port: PortOpt = None,
    host: HostOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    device: DeviceOpt = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="A registered backend: transformers, vllm, openai, or a plugin's.")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model id, path, or the API's model name.")] = None,
    port_file: PortFileOpt = None,
) -> None:
    """The multimodal LLM: describe, write prompts, compare, judge."""
    _serve(
        "describer",
        "services/describer",
        port_file,
        preset=preset,
        config_file=config,
        port=port,
        host=host,
        device=device,
        backend=backend,
        model=model,
    )


ADDRESS_HELP = "host:port of a running {} service; without it, one is started locally."
MODEL_DEFAULT = "the generator's"

# `regen run`'s flags that set an orchestrator setting: parameter -> setting path. Their
# defaults are the settings' (file, environment, then OrchestratorSettings' defaults).
RUN_FLAGS: dict[str, tuple[str, ...]] = {
    "dataset": ("dataset",),
    "out": ("out",),
    "run_name": ("run_name",),
    "describer": ("describer",),
    "generator": ("generator",),
    "scorer": ("scorer",),
    "preset": ("service_preset",),
    "rounds": ("rounds",),
    "candidates": ("candidates",),
    "seed": ("seed",),
    "limit": ("limit",),
    "concurrency": ("concurrency",),
    "weights": ("selection_weights",),
    "width": ("generation", "width"),
    "height": ("generation", "height"),
    "steps": ("generation", "steps"),
    "guidance_scale": ("generation", "guidance_scale"),
    "negative_prompt": ("generation", "negative_prompt"),
    "judge_checks": ("judge_checks",),
    "rpc_timeout": ("retry", "rpc_timeout_s"),
    "outage_budget": ("retry", "outage_budget_s"),
    "initial_backoff": ("retry", "initial_backoff_s"),
    "max_backoff": ("retry", "max_backoff_s"),
    "connect_timeout": ("connect_timeout_s",),
    "startup_timeout": ("startup_timeout_s",),
    "progress": ("progress",),
}


def _setting_default(path: tuple[str, ...]) -> str:
    """The default of an orchestrator setting, as shown in --help."""
    model: Any = OrchestratorSettings
    for name in path[:-1]:
        model = model.model_fields[name].annotation
    field = model.model_fields[path[-1]]
    if field.is_required():
        return ""
    value = field.get_default(call_default_factory=True)
    if value is None or value == "":
        return "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _run_option(param: str, help: str, *, unset: str | None = None) -> Any:
    """A `regen run` option for setting RUN_FLAGS[param]; `unset` describes a None default."""
    default = _setting_default(RUN_FLAGS[param])
    shown = unset if unset is not None and default == "none" else default
    suffix = f" (default: {shown})" if shown else ""
    return typer.Option("--" + param.replace("_", "-"), help=help + suffix, show_default=False)


def _nested(flags: dict[str, Any]) -> dict[str, Any]:
    """Given flags as setting overrides: {"width": 64} -> {"generation": {"width": 64}}."""
    overrides: dict[str, Any] = {}
    for param, value in flags.items():
        *parents, leaf = RUN_FLAGS[param]
        target = overrides
        for name in parents:
            target = target.setdefault(name, {})
        target[leaf] = value
    return overrides


def _settings_error(exc: ValidationError, flags: dict[str, Any], config_file: str | None) -> str:
    """Name where each bad value came from: the flag, the environment variable, or the file."""
    from regen.common.settings import read_config_file

    try:
        section = read_config_file(config_file).get(OrchestratorSettings.section) or {}
    except ValueError:
        section = {}
    by_path = {path: param for param, path in RUN_FLAGS.items()}
    problems = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        flag_param = next((by_path[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in by_path), None)
        flag = "--" + flag_param.replace("_", "-") if flag_param else None
        envs = ["REGEN_ORCHESTRATOR_" + "__".join(loc[:n]).upper() for n in range(len(loc), 0, -1)]
        env = next((name for name in envs if name in os.environ), None)
        setting = f"{OrchestratorSettings.section}.{'.'.join(loc)}"
        if flag_param in flags:
            where = flag
        elif env:
            where = env
        elif _has_path(section, loc):
            where = f"{config_file}: {setting}"
        else:
            where = f"{flag} (or {setting} in the config file)" if flag else setting
        problems.append(f"{where}: {error['msg']}")
    return "; ".join(problems)


def _has_path(data: Any, path: tuple[str, ...]) -> bool:
    for name in path:
        if not isinstance(data, dict) or name not in data:
            return False
        data = data[name]
    return True


@app.command("run")
def run(
    dataset: Annotated[
        str | None,
        _run_option(
            "dataset",
            "evalref-100, or a folder of images (optionally with MANIFEST.json); required here or in the config file.",
        ),
    ] = None,
    out: Annotated[Path | None, _run_option("out", "Results folder; the run goes into <out>/<run-name>.")] = None,
    describer: Annotated[str | None, _run_option("describer", ADDRESS_HELP.format("describer"), unset="local")] = None,
    generator: Annotated[str | None, _run_option("generator", ADDRESS_HELP.format("generator"), unset="local")] = None,
    scorer: Annotated[str | None, _run_option("scorer", ADDRESS_HELP.format("scorer"), unset="local")] = None,
    preset: Annotated[
        str | None, _run_option("preset", "Models of locally started services: tiny (offline, CPU) or default.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="YAML config file (default: $REGEN_CONFIG): its orchestrator section, and the sections of "
            "locally started services.",
        ),
    ] = None,
    rounds: Annotated[int | None, _run_option("rounds", "Rounds of generate, score, compare, revise.")] = None,
    candidates: Annotated[int | None, _run_option("candidates", "Prompt variants (images) per round.")] = None,
    seed: Annotated[int | None, _run_option("seed", "Run seed; every image seed derives from it.")] = None,
    limit: Annotated[int | None, _run_option("limit", "Run only the first N cases.", unset="all")] = None,
    concurrency: Annotated[
        str | None,
        _run_option("concurrency", "Cases in flight: auto (the generator's backpressure) or a number."),
    ] = None,
    run_name: Annotated[
        str | None,
        _run_option("run_name", "Folder name of the run.", unset="derived from the configuration"),
    ] = None,
    weights: Annotated[str | None, _run_option("weights", "Selection score weights over scorer metrics.")] = None,
    width: Annotated[int | None, _run_option("width", "Image width.", unset=MODEL_DEFAULT)] = None,
    height: Annotated[int | None, _run_option("height", "Image height.", unset=MODEL_DEFAULT)] = None,
    steps: Annotated[int | None, _run_option("steps", "Denoising steps.", unset=MODEL_DEFAULT)] = None,
    guidance_scale: Annotated[
        float | None, _run_option("guidance_scale", "Classifier-free guidance scale.", unset=MODEL_DEFAULT)
    ] = None,
    negative_prompt: Annotated[str | None, _run_option("negative_prompt", "Negative prompt of every image.")] = None,
    judge_checks: Annotated[
        int | None,
        _run_option("judge_checks", "Cases sampled for the judge's reliability checks (swap, control, repeat)."),
    ] = None,
    rpc_timeout: Annotated[
        float | None, _run_option("rpc_timeout", "Deadline of one call in seconds, queueing included.")
    ] = None,
    outage_budget: Annotated[
        float | None,
        _run_option("outage_budget", "Seconds a call rides through UNAVAILABLE or RESOURCE_EXHAUSTED, retrying."),
    ] = None,
    initial_backoff: Annotated[
        float | None, _run_option("initial_backoff", "Seconds before the first retry; doubles each time.")
    ] = None,
    max_backoff: Annotated[float | None, _run_option("max_backoff", "Longest pause between retries, seconds.")] = None,
    connect_timeout: Annotated[
        float | None, _run_option("connect_timeout", "Seconds to wait for a remote service that is still loading.")
    ] = None,
    startup_timeout: Annotated[
        float | None, _run_option("startup_timeout", "Seconds to wait for locally started services.")
    ] = None,
    progress: Annotated[str | None, _run_option("progress", "auto (rich on a terminal), rich, plain or none.")] = None,
    prepare_only: Annotated[
        bool,
        typer.Option(
            "--prepare-only",
            help="Only the pre-pass (what `regen prepare` runs): the describer's generator-independent "
            "steps of every case, cached for the runs that follow.",
        ),
    ] = False,
) -> None:
    """Benchmark a text-to-image model: regenerate every reference image of a dataset.

    Each option may also be set in the config file's orchestrator section or by a
    REGEN_ORCHESTRATOR_* variable; the option wins.
    """
    # Every parameter but --config is a setting (RUN_FLAGS); those given override the rest.
    flags = {
        name: value for name, value in locals().items() if name not in ("config", "prepare_only") and value is not None
    }
    import logging

    from regen.common.settings import load_settings
    from regen.orchestrator.clients import RunStopped, ServiceDown
    from regen.orchestrator.launcher import LaunchError
    from regen.orchestrator.preflight import check_run
    from regen.orchestrator.progress import make_reporter
    from regen.orchestrator.runner import prepare as prepare_cases
    from regen.orchestrator.runner import run as run_benchmark

    logging.basicConfig(level=os.environ.get("REGEN_LOG_LEVEL", "WARNING"), format="%(levelname)s %(message)s")
    config_file = str(config) if config else os.environ.get("REGEN_CONFIG") or None
    try:
        settings = load_settings(OrchestratorSettings, config_file=config, **_nested(flags))
        check_run(settings)  # before any service starts: --out, TLS files (PreflightError names the option)
    except ValidationError as exc:
        _fail(_settings_error(exc, flags, config_file))
    except ValueError as exc:  # the config file: unreadable, or an unknown section or key (named)
        _fail(str(exc))
    reporter = make_reporter(settings.progress)

    def on_sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # unwind normally, so locally started services are stopped

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        if prepare_only:
            prepared = prepare_cases(settings, reporter, config_file=config)
        else:
            summary = run_benchmark(settings, reporter, config_file=config)
    except LaunchError as exc:
        _fail(str(exc))
    except RunStopped as exc:
        _fail(f"the run stopped: {exc}\nfix that, then run the same command again to resume")
    except ServiceDown as exc:
        typer.secho(
            f"error: the run stopped: {exc}\nnothing was recorded against the model; finished cases are kept: "
            "run the same command again to resume once the service is back",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(3) from None
    except KeyboardInterrupt:
        typer.secho("interrupted; run the same command again to resume", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    except (ValueError, RuntimeError, OSError) as exc:  # dataset, connection and run-folder errors name the problem
        _fail(str(exc))
    if prepare_only:
        typer.echo(f"{prepared.prepared} of {prepared.total} cases prepared")
        raise typer.Exit(1 if prepared.failed else 0)
    _print_run_end(summary)
    if not summary.complete:
        raise typer.Exit(1)


@app.command(
    "prepare", context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
)
def prepare(ctx: typer.Context) -> None:
    """The pre-pass of a leaderboard: understand every reference, write its first prompt and
    draw round 1's variants, once per dataset and describer. Takes the options of `regen
    run` (see `regen run --help`); the describer caches the answers, so each generator's
    run that follows starts generating at once."""
    command = typer.main.get_command(app)
    # Outside standalone mode click returns the exit status instead of exiting.
    status = command.main(["run", "--prepare-only", *ctx.args], prog_name="regen", standalone_mode=False)
    raise typer.Exit(status if isinstance(status, int) else 0)


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _print_run_end(summary: Any) -> None:
    """The cases, the headline table, the paths; how to resume an incomplete run."""
    from regen.orchestrator.report.terminal import run_summary

    refused = f", {summary.refused} refused" if summary.refused else ""
    failed = f", {summary.failed} failed" if summary.failed else ""
    resumed = f" ({summary.skipped} from an earlier invocation)" if summary.skipped else ""
    typer.echo(f"{summary.done} of {summary.total} cases done{resumed}{refused}{failed}")
    _console().print(run_summary(summary.benchmark, summary.report))
    if summary.report_error:
        typer.secho(f"warning: report.html was not written: {summary.report_error}", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"results: {summary.run_dir}")
    typer.echo(f"summary: {summary.run_dir / 'benchmark_final.json'}")
    if not summary.complete:
        cases = summary.benchmark["cases"]
        typer.secho(
            f"incomplete: {cases['failed']} failed and {cases['pending']} unfinished cases are left out of the "
            "numbers (see 'failed' in benchmark_final.json); run the same command again to resume: finished "
            "cases are kept, the others are run again",
            fg=typer.colors.YELLOW,
            err=True,
        )


@app.command("report")
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (<out>/<run-name>, with run.json).")],
) -> None:
    """Write RUN_DIR/report.html (self-contained, offline) and print the run's summary."""
    from regen.orchestrator.report import write_report
    from regen.orchestrator.report.model import ReportError, read_run
    from regen.orchestrator.report.terminal import run_summary

    try:
        path = write_report(run_dir)
        _run, benchmark = read_run(run_dir)
    except (ReportError, OSError) as exc:
        _fail(str(exc))
    _console().print(run_summary(benchmark, path))


@app.command("compare")
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run folders: one per generator and run seed.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Folder for leaderboard.json, .md and .html (default: leaderboard/ beside the runs)."
        ),
    ] = None,
    trust_judge: Annotated[
        bool,
        typer.Option(
            "--trust-judge",
            help="Rank on the judge's scores even where its reliability checks failed (left out otherwise).",
        ),
    ] = False,
) -> None:
    """A leaderboard of generators run like for like, with paired significance tests.

    The runs must share the dataset, the describer, the metrics, rounds, candidates and
    run seeds; several run seeds of one generator are pooled into one row.
    """
    from rich.console import Console

    from regen.orchestrator.compare import CompareError, terminal_table, write_leaderboard
    from regen.orchestrator.compare.output import HTML_FILE, JSON_FILE, MARKDOWN_FILE
    from regen.orchestrator.report.model import ReportError

    try:
        board, folder = write_leaderboard(run_dirs, out, trust_judge=trust_judge)
    except (CompareError, ReportError, OSError) as exc:
        _fail(str(exc))
    Console(highlight=False, width=max(160, Console().width)).print(terminal_table(board))
    if board["judge"]["note"]:
        typer.secho(f"warning: {board['judge']['note']}", fg=typer.colors.YELLOW, err=True)
    check = board["consistency"]
    if not check["consistent"]:
        typer.secho(
            f"warning: the describer's IUT or first prompt differs between generators in "
            f"{len(check['mismatches'])} places (listed in {folder / MARKDOWN_FILE})",
            fg=typer.colors.YELLOW,
            err=True,
        )
    for name in (HTML_FILE, MARKDOWN_FILE, JSON_FILE):
        typer.echo(f"{name.rsplit('.', 1)[1]}: {folder / name}")


CHECK_SERVICES = ("describer", "generator", "scorer")


@app.command("check")
def check(
    service: Annotated[str, typer.Argument(help="describer, generator or scorer.")],
    address: Annotated[str, typer.Argument(help="host:port of the server to check.")],
    refusal_prompt: Annotated[
        str | None,
        typer.Option("--refusal-prompt", help="A prompt the generator is known to refuse (checks the refusal form)."),
    ] = None,
    connect_timeout: Annotated[
        float, typer.Option("--connect-timeout", help="Seconds to wait for the server to answer at all.")
    ] = 30.0,
    use_tls: Annotated[
        bool, typer.Option("--tls", help="Connect with TLS, verifying the server against the system's roots.")
    ] = False,
    tls_ca: Annotated[
        Path | None, typer.Option("--tls-ca", help="PEM CA to verify the server with (implies --tls).")
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM client certificate, for a server that asks for one (mTLS).")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="PEM key of --tls-cert.")] = None,
) -> None:
    """Check that a server conforms to the regen.v1 contract; exit 1 if any check fails."""
    import grpc
    from rich.console import Console

    from regen.common.grpc_server import channel_options
    from regen.common.settings import TLSFiles
    from regen.common.tls import TLSConfigError, channel_credentials
    from regen.conformance.outcome import render, run_checks

    if service not in CHECK_SERVICES:
        _fail(f"service: {service!r} is not one of {', '.join(CHECK_SERVICES)}")
    if (tls_cert is None) != (tls_key is None):
        _fail("--tls-cert and --tls-key go together")
    try:
        credentials = channel_credentials(
            TLSFiles(enabled=use_tls, ca_file=tls_ca, cert_file=tls_cert, key_file=tls_key),
            names={"ca_file": "--tls-ca", "cert_file": "--tls-cert", "key_file": "--tls-key"},
        )
    except TLSConfigError as exc:
        _fail(str(exc))
    suite = importlib.import_module(f"regen.conformance.{service}")
    channel = (
        grpc.insecure_channel(address, options=channel_options())
        if credentials is None
        else grpc.secure_channel(address, credentials, options=channel_options())
    )
    with channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=connect_timeout)
        except grpc.FutureTimeoutError:
            hint = "is it running, is it host:port" + (", does it trust this client?" if credentials else ", or TLS?")
            _fail(f"cannot reach {address} within {connect_timeout:.0f} s ({hint})")
        results = run_checks(suite.CHECKS, channel, refusal_prompt=refusal_prompt)
    console = Console(stderr=False, width=max(120, Console().width))
    console.print(render(results, f"regen.v1.{service.capitalize()} at {address}"))
    counts = {kind: sum(r.result == kind for r in results) for kind in ("PASS", "FAIL", "SKIP")}
    console.print(f"{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
    if counts["FAIL"]:
        raise typer.Exit(1)


@app.command("tiny-models")
def tiny_models(
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder to build into (default: the tiny preset's).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even when up to date.")] = False,
    only: Annotated[list[str] | None, typer.Option("--only", help="Build only these models.")] = None,
) -> None:
    """Build tiny random-weight models of the real architectures, offline."""
    try:
        from regen.tiny_models import cli_main
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("regen"):
            _fail("the tiny-model builder is not installed: pip install ./tools/tiny_models")
        raise
    raise typer.Exit(cli_main(out=out, force=force, only=only))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
