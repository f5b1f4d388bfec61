"""What `regen run` checks before any work starts, so a bad option fails in a second with
exit status 2 and a message naming the option, and leaves no run folder behind.

Before any service starts (`check_run`, called by the CLI): the settings' ranges (their
model refuses out-of-range, NaN and infinite values, naming the flag), `--out` usable (a
folder, or creatable, and writable), `--run-name` not an existing file, the TLS files
readable, and the secrets this process can see registered for scrubbing
(`regen.common.secrets.register_environment`).

Right after the services' Info, before the run folder exists (`check_services`, called by
the runner): `--candidates` within the describer's max_variants and `--width`/`--height`
what the generator renders. (The runner checks there too that the selection weights name
the scorer's metrics.)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from regen.common import secrets
from regen.common.tls import TLSConfigError, use_client_tls
from regen.orchestrator.settings import OrchestratorSettings


class PreflightError(ValueError):
    """A setting that cannot work; the message starts with the option's name."""


def check_run(settings: OrchestratorSettings) -> None:
    """Everything that can be checked before a service starts; PreflightError otherwise."""
    secrets.register_environment()
    check_out(settings.out, settings.run_name)
    try:
        use_client_tls(settings.tls if settings.tls.configured else None)
    except TLSConfigError as exc:
        raise PreflightError(str(exc)) from None


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path.cwd()


def check_out(out: Path, run_name: str | None = None) -> None:
    """`--out` is a folder (or can become one) this process can write in; nothing is
    created or left behind by the check."""
    out = out.expanduser()
    existing = _nearest_existing(out)
    if not existing.is_dir():
        what = "is a file" if existing == out else f"cannot be created: {existing} is a file"
        raise PreflightError(f"--out {out}: {what}; give a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PreflightError(f"--out {out}: {existing} is not writable by this user")
    try:  # os.access is not the whole truth (a read-only mount, root on some systems)
        probe = tempfile.mkdtemp(prefix=".regen-write-check-", dir=existing)
        os.rmdir(probe)
    except OSError as exc:
        raise PreflightError(f"--out {out}: cannot write in {existing}: {exc.strerror or exc}") from None
    if run_name is not None and (out / run_name).exists() and not (out / run_name).is_dir():
        raise PreflightError(f"--run-name {run_name}: {out / run_name} is a file; give another name")


def check_services(settings: OrchestratorSettings, describer_info: Any, generator_info: Any, scorer_info: Any) -> None:
    """What the services' Info tells about the options; PreflightError naming the option."""
    max_variants = getattr(describer_info, "max_variants", 0)
    if max_variants and settings.candidates > max_variants:
        raise PreflightError(
            f"--candidates {settings.candidates}: the describer writes at most {max_variants} variants of a prompt; "
            f"use 1 to {max_variants}"
        )
    _check_size(settings, generator_info)


def _check_size(settings: OrchestratorSettings, generator_info: Any) -> None:
    capabilities = generator_info.capabilities if generator_info.HasField("capabilities") else None
    multiple = generator_info.size_multiple or 1
    max_side = capabilities.max_side if capabilities is not None and capabilities.max_side else 0
    for name, value in (("width", settings.generation.width), ("height", settings.generation.height)):
        if value is None:
            continue
        if value % multiple:
            raise PreflightError(f"--{name} {value}: the generator needs a multiple of {multiple}")
        if max_side and value > max_side:
            raise PreflightError(f"--{name} {value}: the generator renders at most {max_side} pixels a side")
    sizes = [(s.width, s.height) for s in capabilities.sizes] if capabilities is not None else []
    width = settings.generation.width or generator_info.default_width
    height = settings.generation.height or generator_info.default_height
    if sizes and (width, height) not in sizes:
        choices = ", ".join(f"{w}x{h}" for w, h in sizes)
        raise PreflightError(f"--width/--height {width}x{height}: the generator renders only {choices}")
