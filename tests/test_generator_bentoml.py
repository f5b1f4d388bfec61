"""The BentoML generator service (`bentoml serve services/generator/service.py:Generator`)
with the tiny preset: its HTTP API and the gRPC server it starts in the same process
answer with the same images."""

from __future__ import annotations

import base64
import io
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
import numpy as np
import pytest
from PIL import Image

from regen.orchestrator.launcher import wait_for_serving
from regen.v1 import common_pb2, generator_pb2, generator_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
BENTOML = Path(sys.executable).with_name("bentoml")
PROMPTS = [
    {"text": "a red fox sleeping in fresh snow, watercolor", "seed": 11},
    {"text": "a tall lighthouse on a rocky cliff at sunset", "seed": 12, "negative_prompt": "blurry"},
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


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
    workdir = Path(tempfile.mkdtemp(prefix="regen-generator-bento-"))
    log = workdir / "bentoml.log"
    env = {
        **os.environ,
        "REGEN_PRESET": "tiny",
        "REGEN_GENERATOR_PORT": str(grpc_port),
        "BENTOML_HOME": str(workdir / "home"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    command = [str(BENTOML), "serve", "services/generator/service.py:Generator", "--host", "127.0.0.1"]
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


@pytest.mark.slow
def test_http_and_grpc_give_the_same_images(bento) -> None:
    http_url, grpc_address = bento
    status, body = post(f"{http_url}/generate", {"prompts": PROMPTS, "steps": 3})
    assert status == 200, body
    images = json.loads(body)["images"]
    assert [image["index"] for image in images] == [0, 1]
    http_pngs = [base64.b64decode(image["png"]) for image in images]
    assert all(np.asarray(Image.open(io.BytesIO(png))).shape == (64, 64, 3) for png in http_pngs)
    assert images[0]["prompt_tokens"] > 2 and not images[0]["prompt_truncated"]

    status, body = post(f"{http_url}/generate_stream", {"prompts": PROMPTS, "steps": 3})
    assert status == 200, body
    streamed = {line["index"]: base64.b64decode(line["png"]) for line in map(json.loads, body.decode().splitlines())}
    assert [streamed[0], streamed[1]] == http_pngs

    with grpc.insecure_channel(grpc_address) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        request = generator_pb2.GenerateRequest(prompts=[generator_pb2.PromptSpec(**p) for p in PROMPTS], steps=3)
        grpc_pngs = {image.index: image.png for image in stub.Generate(request, timeout=120)}
        info = stub.Info(common_pb2.InfoRequest(), timeout=30)
    assert [grpc_pngs[0], grpc_pngs[1]] == http_pngs

    status, body = post(f"{http_url}/info", {})
    assert status == 200
    http_info = json.loads(body)
    assert http_info["prompt_token_budget"] == info.prompt_token_budget == 77
    assert http_info["model"]["revision"] == info.model.revision
    assert http_info["server"]["items"] == info.server.items >= 6  # HTTP and gRPC share one batcher


@pytest.mark.slow
def test_http_refuses_bad_requests_with_400(bento) -> None:
    http_url, _ = bento
    for body, expected in [
        ({"prompts": []}, "prompts: empty"),
        ({"prompts": PROMPTS, "steps": 0}, "steps: 0"),
        ({"prompts": PROMPTS, "width": 60}, "width: 60"),
        ({"prompts": [{"text": "a cat", "seed": -1}]}, "prompts[0].seed"),
    ]:
        for route in ("generate", "generate_stream"):
            status, reply = post(f"{http_url}/{route}", body)
            assert status == 400, (route, body, reply)
            assert expected in reply.decode(), reply
