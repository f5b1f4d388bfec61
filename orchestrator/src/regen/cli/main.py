"""`regen`: run benchmarks, serve model services, build the offline tiny models."""

from __future__ import annotations

import importlib
import os
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

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


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _service_module(name: str, package: str):
    # TODO(issue 9): only grpc_api once every service has it.
    for module in ("grpc_api", "server"):
        try:
            return importlib.import_module(f"regen.{name}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"regen.{name}.{module}" and not (exc.name and exc.name == f"regen.{name}"):
                raise
    _fail(f"the {name} service is not installed: pip install ./{package}")


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
    engine: Annotated[str | None, typer.Option("--engine", help="diffusers or openai (Images API).")] = None,
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
    backend: Annotated[str | None, typer.Option("--backend", help="transformers, vllm or openai.")] = None,
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


@app.command("run")
def run(
    dataset: Annotated[
        str, typer.Option("--dataset", help="evalref-100, or a folder of images (optionally with MANIFEST.json).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Results folder; the run goes into <out>/<run-name>.")] = Path(
        "runs"
    ),
    describer: Annotated[str | None, typer.Option("--describer", help=ADDRESS_HELP.format("describer"))] = None,
    generator: Annotated[str | None, typer.Option("--generator", help=ADDRESS_HELP.format("generator"))] = None,
    scorer: Annotated[str | None, typer.Option("--scorer", help=ADDRESS_HELP.format("scorer"))] = None,
    preset: Annotated[
        str, typer.Option("--preset", help="Models of locally started services: tiny (offline, CPU) or default.")
    ] = "default",
    config: ConfigOpt = None,
    rounds: Annotated[int, typer.Option("--rounds", help="Rounds of generate, score, compare, revise.")] = 3,
    candidates: Annotated[int, typer.Option("--candidates", help="Prompt variants (images) per round.")] = 3,
    seed: Annotated[int, typer.Option("--seed", help="Run seed; every image seed derives from it.")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", help="Run only the first N cases.")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Cases in flight at once.")] = 8,
    run_name: Annotated[
        str | None, typer.Option("--run-name", help="Folder name of the run (default: derived from the configuration).")
    ] = None,
    weights: Annotated[
        str, typer.Option("--weights", help="Selection score weights over scorer metrics.")
    ] = "clip=0.5,dinov2=0.5",
    progress: Annotated[
        str, typer.Option("--progress", help="auto (rich on a terminal), rich, plain or none.")
    ] = "auto",
) -> None:
    """Benchmark a text-to-image model: regenerate every reference image of a dataset."""
    import logging

    from pydantic import ValidationError

    from regen.orchestrator.config import RunConfig, parse_weights
    from regen.orchestrator.launcher import LaunchError
    from regen.orchestrator.progress import make_reporter
    from regen.orchestrator.runner import run as run_benchmark

    logging.basicConfig(level=os.environ.get("REGEN_LOG_LEVEL", "WARNING"), format="%(levelname)s %(message)s")
    try:
        run_config = RunConfig(
            dataset=dataset,
            out=out,
            run_name=run_name,
            describer=describer,
            generator=generator,
            scorer=scorer,
            preset=preset,
            service_config=config,
            rounds=rounds,
            candidates=candidates,
            seed=seed,
            limit=limit,
            concurrency=concurrency,
            selection_weights=parse_weights(weights),
            progress=progress,
        )
    except ValidationError as exc:
        _fail("; ".join(f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()))
    except ValueError as exc:
        _fail(str(exc))
    reporter = make_reporter(run_config.progress)

    def on_sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # unwind normally, so locally started services are stopped

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        summary = run_benchmark(run_config, reporter)
    except LaunchError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        typer.secho("interrupted; run the same command again to resume", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    except (ValueError, RuntimeError, OSError) as exc:  # dataset, connection and run-folder errors name the problem
        _fail(str(exc))
    failed = f", {summary.failed} failed" if summary.failed else ""
    resumed = f" ({summary.skipped} from an earlier invocation)" if summary.skipped else ""
    typer.echo(f"{summary.done} of {summary.total} cases done{resumed}{failed}")
    typer.echo(f"results: {summary.run_dir}")
    typer.echo(f"summary: {summary.run_dir / 'benchmark_final.json'}")
    if summary.failed:
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
