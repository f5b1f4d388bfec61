"""Run one model service as a standalone process: `regen serve <service>`.

Each service's grpc_api module describes itself once as a `ServiceDefinition` (its
settings class, how to load its core, its gRPC servicers, how to close the core); both
`regen serve <service>` and its BentoML HTTP adapter start from it. Standalone, this
module binds the gRPC port first (health NOT_SERVING), loads the model, flips health to
SERVING, and shuts down gracefully on SIGTERM. A model that cannot be loaded ends the
process with status 1 and a message naming the setting and the path or id (`load_core`),
also written to Kubernetes' termination log, so a pod shows the reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from regen.common.grpc_server import CoreSlot, GrpcHost, Registration, serve_until_signal
from regen.common.metrics import serve_metrics
from regen.common.settings import ServiceSettings, load_settings


def write_port_file(path: Path, port: int) -> None:
    """Atomically publish the bound port (for launchers that asked for port 0)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


S = TypeVar("S", bound=ServiceSettings)
C = TypeVar("C")

log = logging.getLogger(__name__)
# Where Kubernetes reads a container's termination message (terminationMessagePath).
TERMINATION_LOG = Path("/dev/termination-log")


class ModelLoadError(RuntimeError):
    """A service's models could not be loaded; the message names the settings that name
    them, the path or id, and the reason."""


def _model_settings(values: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Every setting named `model` (at any depth, e.g. metric_options.clip.model) with its value."""
    found: list[tuple[str, str]] = []
    if isinstance(values, dict):
        for key, value in values.items():
            name = f"{prefix}{key}"
            if key == "model" and isinstance(value, str):
                found.append((name, value))
            else:
                found += _model_settings(value, f"{name}.")
    return found


def load_failure_message(settings: ServiceSettings, exc: BaseException) -> str:
    """`<section>: cannot load model='<id or path>' (...): <why>`, with a hint for a path
    that does not exist (Hugging Face would call it an invalid repo id)."""
    models = _model_settings(settings.model_dump())
    named = ", ".join(f"{name}={value!r}" for name, value in models) or "its models"
    paths = [value for _, value in models if value.startswith(("/", "./", "../", "~"))]
    missing = [value for value in paths if not Path(value).expanduser().exists()]
    hint = "".join(f"{value} does not exist; " for value in missing)
    return f"{settings.section}: cannot load {named}: {hint}{type(exc).__name__}: {exc}"


def load_core(build_core: Callable[[S], C], settings: S) -> C:
    """build_core(settings), or ModelLoadError naming what could not be loaded."""
    try:
        return build_core(settings)
    except Exception as exc:
        raise ModelLoadError(load_failure_message(settings, exc)) from exc


def report_fatal(message: str) -> None:
    """Log `message` and leave it where Kubernetes shows why the container stopped."""
    log.critical("%s", message)
    try:
        if TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK):
            TERMINATION_LOG.write_text(message[-4096:])
    except OSError:
        pass


def run_service(
    settings: S,
    build_core: Callable[[S], C],
    registrations: Callable[[CoreSlot[C]], list[Registration]],
    *,
    port_file: Path | None = None,
    close_core: Callable[[C], Any] | None = None,
) -> None:
    logging.basicConfig(
        level=os.environ.get("REGEN_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )

    if settings.metrics_port is not None:
        serve_metrics(settings.metrics_port, settings.host)

    async def main() -> None:
        slot: CoreSlot[C] = CoreSlot()
        host = GrpcHost.for_settings(settings)

        def on_stop() -> Any:
            if close_core is not None:
                try:
                    return close_core(slot.get())
                except Exception:
                    return None
            return None

        await serve_until_signal(
            host,
            registrations(slot),
            lambda: load_core(build_core, settings),
            slot,
            on_port=(lambda port: write_port_file(port_file, port)) if port_file else None,
            on_stop=on_stop,
        )

    try:
        asyncio.run(main())
    except ModelLoadError as exc:
        report_fatal(str(exc))
        sys.exit(1)


@dataclass(frozen=True)
class ServiceDefinition(Generic[S, C]):
    """One model service, as every way of running it starts it."""

    settings_class: type[S]
    # Loads the models (slow) and returns the service's core.
    build_core: Callable[[S], C]
    # The generated add_<Service>Servicer_to_server, and the servicer, built over the slot
    # that holds the core once it is loaded.
    add_servicer: Callable[[Any, Any], None]
    servicer: Callable[[CoreSlot[C]], Any]
    # The full name of the gRPC service, e.g. "regen.v1.Scorer".
    service_name: str
    # Releases the core; may return an awaitable.
    close_core: Callable[[C], Any]

    def registrations(self, slot: CoreSlot[C]) -> list[Registration]:
        return [Registration(self.add_servicer, self.servicer(slot), self.service_name)]

    def serve(
        self,
        *,
        port_file: Path | None = None,
        preset: str | None = None,
        config_file: str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> None:
        """`regen serve <service>`: bind, load the models, serve until SIGTERM."""
        settings = load_settings(self.settings_class, preset=preset, config_file=config_file, **overrides)
        run_service(settings, self.build_core, self.registrations, port_file=port_file, close_core=self.close_core)
