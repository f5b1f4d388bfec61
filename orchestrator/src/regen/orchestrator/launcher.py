"""Start model services as local processes on free 127.0.0.1 ports.

This is the embedded default of `regen run` (no addresses given) and the way tests get
real servers. Each service is `python -m regen.cli serve <name> --port 0 --port-file F`:
the child binds a free port itself and publishes it, so there is no race for ports.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from regen.common.healthcheck import check

SERVICES: tuple[str, ...] = ("describer", "generator", "scorer")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt): ")


class LaunchError(RuntimeError):
    """A local service did not come up; the message includes the end of its log."""


def wait_for_serving(
    address: str, *, timeout_s: float, service: str = "", proc: subprocess.Popen | None = None
) -> None:
    """Poll grpc.health.v1 until SERVING; fail early if `proc` exits."""
    deadline = time.monotonic() + timeout_s
    while not check(address, timeout_s=2.0):
        if proc is not None and proc.poll() is not None:
            raise LaunchError(f"{service or address} exited before serving (exit code {proc.returncode})")
        if time.monotonic() > deadline:
            raise LaunchError(f"{service or address} at {address} not SERVING after {timeout_s:.0f} s")
        time.sleep(0.1)


_PR_SET_PDEATHSIG = 1


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec_fn that has Linux send SIGTERM to the child when this process dies, so a
    launcher killed with SIGKILL leaves no service behind (None where unsupported)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


@dataclass
class LocalService:
    name: str
    process: subprocess.Popen
    address: str
    log_path: Path


@dataclass
class LocalServices:
    """Context manager: start services, wait until all are SERVING, stop them on exit."""

    names: Sequence[str] = SERVICES
    preset: str | None = None
    config_file: Path | None = None
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    env: dict[str, str] | None = None
    startup_timeout_s: float = 300.0
    log_dir: Path | None = None
    # Stop the services when the launching process dies, even by SIGKILL (Linux).
    die_with_parent: bool = True
    services: dict[str, LocalService] = field(default_factory=dict)

    def __enter__(self) -> LocalServices:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def address(self, name: str) -> str:
        return self.services[name].address

    def start(self) -> None:
        log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="regen-services-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        pending: dict[str, tuple[subprocess.Popen, Path, Path]] = {}
        try:
            for name in self.names:
                port_file = log_dir / f"{name}.port"
                port_file.unlink(missing_ok=True)
                log_path = log_dir / f"{name}.log"
                cmd = [sys.executable, "-m", "regen.cli", "serve", name, "--host", "127.0.0.1", "--port", "0"]
                cmd += ["--port-file", str(port_file)]
                if self.preset:
                    cmd += ["--preset", self.preset]
                if self.config_file:
                    cmd += ["--config", str(self.config_file)]
                cmd += self.extra_args.get(name, [])
                with log_path.open("wb") as log:
                    proc = subprocess.Popen(
                        cmd,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env={**os.environ, **(self.env or {})},
                        start_new_session=True,
                        preexec_fn=_die_with_parent_hook() if self.die_with_parent else None,
                    )
                pending[name] = (proc, port_file, log_path)
            deadline = time.monotonic() + self.startup_timeout_s
            for name, (proc, port_file, log_path) in pending.items():
                while not port_file.exists():
                    if proc.poll() is not None:
                        raise LaunchError(self._failure(name, proc, log_path, "exited before binding"))
                    if time.monotonic() > deadline:
                        raise LaunchError(self._failure(name, proc, log_path, "did not bind in time"))
                    time.sleep(0.05)
                address = f"127.0.0.1:{int(port_file.read_text())}"
                self.services[name] = LocalService(name, proc, address, log_path)
            for name, svc in self.services.items():
                try:
                    wait_for_serving(svc.address, timeout_s=max(1.0, deadline - time.monotonic()), proc=svc.process)
                except LaunchError:
                    what = f"at {svc.address} did not become SERVING"
                    raise LaunchError(self._failure(name, svc.process, svc.log_path, what)) from None
        except BaseException:
            for proc, _, _ in pending.values():
                _terminate(proc)
            self.services.clear()
            raise

    @staticmethod
    def _failure(name: str, proc: subprocess.Popen, log_path: Path, what: str) -> str:
        try:
            lines = log_path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        # A crashed Python process ends with its exception ("OSError: ..."), whose message
        # may run over several lines: show the exception's first line.
        errors = [line.strip() for line in lines if _EXCEPTION_LINE.match(line)]
        cause = errors[-1] if errors else next((line.strip() for line in reversed(lines) if line.strip()), "")
        state = "still running" if proc.poll() is None else f"exit code {proc.poll()}"
        tail = "\n".join(lines[-25:])
        return f"local {name} service {what} ({state}): {cause}\nlog {log_path}:\n{tail}"

    def stop(self, timeout_s: float = 15.0) -> None:
        for svc in self.services.values():
            _terminate(svc.process, timeout_s)
        self.services.clear()


def _terminate(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
