"""Run one BentoML service (`bentoml serve services/<name>/service.py:<Class>`) with the
tiny preset on free 127.0.0.1 ports, for the tests of the three BentoML services, and
talk to its HTTP API.

Imported by tests as `support.bento_server` (tests/conftest.py puts tests/ on sys.path).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from regen.orchestrator.launcher import wait_for_serving

REPO_ROOT = Path(__file__).resolve().parents[2]
BENTOML = Path(sys.executable).with_name("bentoml")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, bytes]:
    """POST `body` as JSON; the status and the raw reply, errors (4xx, 5xx) included."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def post_json(url: str, body: dict) -> tuple[int, object]:
    """`post`, with the reply (an answer or an error) decoded from JSON."""
    status, reply = post(url, body)
    return status, json.loads(reply)


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group `proc` leads (start_new_session=True); SIGKILL after 20 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return  # the whole group is gone already
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_for_http(url: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"bentoml serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"{url} not ready after {timeout_s} s:\n{log.read_text()[-3000:]}")


@contextmanager
def serve_bento(
    target: str,
    grpc_port_env: str,
    workdir: Path,
    extra_env: Mapping[str, str] | None = None,
    *,
    startup_timeout_s: float = 120,
) -> Iterator[tuple[str, str]]:
    """`bentoml serve <target>` (e.g. "services/scorer/service.py:Scorer") from the
    repository root, its gRPC server's port set through `grpc_port_env` (e.g.
    "REGEN_SCORER_PORT"); yields (HTTP base URL, gRPC address) once /readyz answers 200
    and gRPC health is SERVING, and stops the server on exit. `workdir` holds
    BENTOML_HOME and the server's log, bentoml.log."""
    if not BENTOML.exists():
        pytest.skip("bentoml is not installed")
    http_port, grpc_port = free_port(), free_port()
    log = workdir / "bentoml.log"
    env = {
        **os.environ,
        "REGEN_PRESET": "tiny",
        grpc_port_env: str(grpc_port),
        **(extra_env or {}),
        "BENTOML_HOME": str(workdir / "home"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    command = [str(BENTOML), "serve", target, "--host", "127.0.0.1", "--port", str(http_port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_for_http(f"http://127.0.0.1:{http_port}/readyz", proc, startup_timeout_s, log)
        wait_for_serving(f"127.0.0.1:{grpc_port}", timeout_s=30, proc=proc)
        yield f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    finally:
        stop_process_group(proc)
