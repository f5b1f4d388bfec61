"""What an orchestrator (Kubernetes, compose) sees of a service's life: while its model
loads, /livez answers 200, /readyz 503, gRPC health NOT_SERVING and the APIs UNAVAILABLE;
a model that cannot load ends the server with status 1 and a message naming the path;
a service told to use CUDA refuses to run on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.bento_server import BENTOML, REPO_ROOT, free_port, stop_process_group

pytestmark = pytest.mark.slow


def _http_status(url: str, body: dict | None = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


def _health(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def _bentoml(target: str, tmp_path: Path, env: dict[str, str], http_port: int) -> subprocess.Popen:
    if not BENTOML.exists():
        pytest.skip("bentoml is not installed")
    env = {**os.environ, "REGEN_PRESET": "tiny", "BENTOML_HOME": str(tmp_path / "home"), **env}
    env["BENTOML_DO_NOT_TRACK"] = "true"
    log = (tmp_path / "bentoml.log").open("wb")
    command = [str(BENTOML), "serve", target, "--host", "127.0.0.1", "--port", str(http_port)]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _until(what: str, check, proc: subprocess.Popen, log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except (OSError, grpc.RpcError):
            pass
        assert proc.poll() is None, f"bentoml serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"not {what} after {timeout_s} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.3)


def test_while_the_model_loads_liveness_passes_and_readiness_waits(tiny_models: Path, tmp_path: Path) -> None:
    http_port, grpc_port = free_port(), free_port()
    gate = tmp_path / "gate"
    proc = _bentoml(
        "tests/deploy/slow_scorer.py:SlowScorer",
        tmp_path,
        {"REGEN_TEST_LOAD_GATE": str(gate), "REGEN_SCORER_PORT": str(grpc_port)},
        http_port,
    )
    log = tmp_path / "bentoml.log"
    base, address = f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    try:
        _until("live", lambda: _http_status(f"{base}/livez") == 200, proc, log)
        # Loading: both servers answer at once, and say they are not ready yet.
        assert _http_status(f"{base}/readyz") == 503
        _until("answering gRPC health", lambda: _health(address) == "NOT_SERVING", proc, log)
        assert _http_status(f"{base}/info", {}) == 503
        time.sleep(1)
        assert _http_status(f"{base}/livez") == 200 and _http_status(f"{base}/readyz") == 503
        gate.touch()
        _until("ready", lambda: _http_status(f"{base}/readyz") == 200, proc, log)
        assert _health(address) == "SERVING"
        assert _http_status(f"{base}/info", {}) == 200
    finally:
        stop_process_group(proc)


def test_a_model_that_cannot_load_stops_the_bentoml_server(tiny_models: Path, tmp_path: Path) -> None:
    """Not a worker restarted every few seconds forever: `bentoml serve` itself ends with
    status 1, and the message names the setting and the missing path."""
    missing = tmp_path / "no-such-clip"
    proc = _bentoml(
        "regen.scorer.http_api:Scorer",
        tmp_path,
        {
            "REGEN_SCORER_PORT": str(free_port()),
            "REGEN_SCORER_METRIC_OPTIONS": json.dumps({"clip": {"model": str(missing)}}),
        },
        free_port(),
    )
    try:
        code = proc.wait(timeout=180)
    finally:
        stop_process_group(proc)
    output = (tmp_path / "bentoml.log").read_text()
    assert code == 1, output[-3000:]
    assert f"metric_options.clip.model='{missing}'" in output
    assert f"{missing} does not exist" in output
    assert output.count("cannot load") <= 3, "the worker was started again"


def test_regen_serve_exits_1_naming_the_model_it_cannot_load(tiny_models: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    env = {**os.environ, "REGEN_GENERATOR_MODEL": str(missing)}
    regen = Path(sys.executable).with_name("regen")
    command = [str(regen), "serve", "generator", "--preset", "tiny", "--port", "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"generator: cannot load model='{missing}': {missing} does not exist" in result.stderr


def test_cuda_named_but_not_usable_is_refused() -> None:
    import torch

    from regen.common.settings import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a usable GPU")
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == "cpu"
    for device in ("cuda", "cuda:1"):
        with pytest.raises(RuntimeError, match=rf"device '{device}': CUDA is not usable here.*built for CUDA"):
            resolve_device(device)
