"""`regen`: run benchmarks, serve model services, build the offline tiny models."""

from __future__ import annotations

import importlib
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
    try:
        return importlib.import_module(f"regen.{name}.server")
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
