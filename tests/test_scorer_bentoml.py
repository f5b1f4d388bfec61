"""The BentoML scorer service: its HTTP API and the gRPC server its startup hook starts
answer alike, over the same loaded models."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image, ImageFilter

from regen.common.grpc_server import channel_options
from regen.common.images import encode_png
from regen.orchestrator.launcher import wait_for_serving
from regen.v1 import scorer_pb2, scorer_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
BENTOML = Path(sys.executable).with_name("bentoml")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, object]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for_http(url: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
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


@pytest.fixture(scope="module")
def bento(tiny_models) -> Iterator[tuple[str, str]]:
    if not BENTOML.exists():
        pytest.skip("bentoml is not installed")
    http_port, grpc_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="regen-scorer-bento-"))
    log = workdir / "bentoml.log"
    env = {
        **os.environ,
        "REGEN_PRESET": "tiny",
        "REGEN_SCORER_PORT": str(grpc_port),
        "REGEN_SCORER_CPU_THREADS": "1",
        "BENTOML_HOME": str(workdir / "home"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    command = [str(BENTOML), "serve", "services/scorer/service.py:Scorer", "--host", "127.0.0.1"]
    command += ["--port", str(http_port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_http(f"http://127.0.0.1:{http_port}/readyz", proc, 120, log)
        wait_for_serving(f"127.0.0.1:{grpc_port}", timeout_s=30, proc=proc)
        yield f"http://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.slow
def test_http_and_grpc_give_the_same_scores(bento, evalref: Path) -> None:
    http_url, grpc_address = bento
    reference_img = Image.open(evalref / "scene_2.png").convert("RGB")
    reference = encode_png(reference_img)
    candidates = [reference, encode_png(reference_img.filter(ImageFilter.GaussianBlur(3)))]
    candidates.append(encode_png(Image.open(evalref / "portrait_2.png")))

    status, body = post(
        f"{http_url}/score", {"reference_png": b64(reference), "candidate_pngs": [b64(c) for c in candidates]}
    )
    assert status == 200, body
    over_http = [c["scores"] for c in body["candidates"]]
    assert [c["index"] for c in body["candidates"]] == [0, 1, 2]

    with grpc.insecure_channel(grpc_address, options=channel_options()) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        reply = stub.Score(scorer_pb2.ScoreRequest(reference_png=reference, candidate_pngs=candidates), timeout=120)
    over_grpc = [dict(c.scores) for c in reply.candidates]

    assert len(over_http) == len(over_grpc) == 3
    for http_scores, grpc_scores in zip(over_http, over_grpc, strict=True):
        assert http_scores.keys() == grpc_scores.keys()
        assert len(http_scores) == 3
        for metric_id, value in http_scores.items():
            assert value == pytest.approx(grpc_scores[metric_id], abs=1e-6)
    assert all(v == pytest.approx(1.0, abs=1e-5) for v in over_http[0].values())

    # Same semantics for bad input: 400 naming the candidate, and HTTP info matches gRPC ids.
    status, body = post(
        f"{http_url}/score", {"reference_png": b64(reference), "candidate_pngs": [b64(reference), b64(b"")]}
    )
    assert status == 400
    assert "candidate 1: empty (0 bytes)" in json.dumps(body)
    status, info = post(f"{http_url}/info", {})
    assert status == 200
    assert {m["id"] for m in info["metrics"]} == set(over_grpc[0])
    assert info["server"]["items"] >= 5  # both adapters fed the same batcher
