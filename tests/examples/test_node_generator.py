"""The Node.js example generator (examples/generators/node), the proof that anything that
implements regen.v1.Generator, in any language, can be benchmarked: it passes every
generator contract check, shows the behaviour it promises (refusals, seed echo,
determinism, error details, stopped work), and runs a tiny benchmark as the generator.

Skipped without `node`, or without its packages (scripts/setup.sh runs `npm ci` there).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from regen.common.grpc_server import channel_options
from regen.conformance import generator as generator_checks
from regen.conformance.outcome import run_check
from regen.v1 import common_pb2, generator_pb2, generator_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "generators" / "node"
REFUSAL_PROMPT = "a forbidden door"  # the example refuses prompts with the word "forbidden"


def _start(log: IO[str]) -> tuple[subprocess.Popen, str]:
    """`node server.js --port 0`, and the address from its `listening on HOST:PORT` line."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Node.js example generator cannot run")
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip(f"{EXAMPLE.relative_to(REPO_ROOT)}/node_modules is missing: run scripts/setup.sh (npm ci there)")
    proc = subprocess.Popen(
        [node, "server.js", "--port", "0"], cwd=EXAMPLE, stdout=subprocess.PIPE, stderr=log, text=True
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("listening on "):
        proc.kill()
        proc.wait()
        log.seek(0)
        raise AssertionError(f"the Node.js generator did not start: stdout {line!r}, stderr {log.read()!r}")
    return proc, line.removeprefix("listening on ").strip()


def _wait_serving(channel: grpc.Channel, service: str = "", timeout: float = 30) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


@pytest.fixture(scope="module")
def node_generator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The example server's address, once it reports SERVING."""
    with (tmp_path_factory.mktemp("node-generator") / "stderr.log").open("w+") as log:
        proc, address = _start(log)
        try:
            with grpc.insecure_channel(address, options=channel_options()) as channel:
                _wait_serving(channel)
            yield address
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def channel(node_generator: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(node_generator, options=channel_options()) as opened:
        yield opened


@pytest.mark.parametrize("check", generator_checks.CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
def test_passes_every_conformance_check(check: Callable[..., None], channel: grpc.Channel) -> None:
    """Every check applies to it (seeded, refuses a known prompt, slow enough to miss a
    deadline), so every check must pass: none may be skipped."""
    result = run_check(check, channel, refusal_prompt=REFUSAL_PROMPT)
    assert result.result == "PASS", f"{result.result}: {result.reason}"


def test_regen_check_generator_exits_0(node_generator: str) -> None:
    """The conformance kit as a vendor runs it: `regen check generator ADDR`."""
    done = subprocess.run(
        [sys.executable, "-m", "regen.cli", "check", "generator", node_generator, "--refusal-prompt", REFUSAL_PROMPT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 failed, 0 skipped" in done.stdout, done.stdout


def _generate(channel: grpc.Channel, *prompts: tuple[str, int], **fields) -> list[generator_pb2.GeneratedImage]:
    """Images in prompt order."""
    request = generator_pb2.GenerateRequest(
        prompts=[generator_pb2.PromptSpec(text=text, seed=seed) for text, seed in prompts], **fields
    )
    images = list(generator_pb2_grpc.GeneratorStub(channel).Generate(request, timeout=60))
    return sorted(images, key=lambda image: image.index)


def test_health_info_and_every_image_name_the_same_model(channel: grpc.Channel) -> None:
    _wait_serving(channel, "regen.v1.Generator", timeout=5)
    info = generator_pb2_grpc.GeneratorStub(channel).Info(common_pb2.InfoRequest(), timeout=10)
    assert info.model.model_id == "regen-example-node" and len(info.model.revision) == 16
    assert info.model.backend == "node" and info.server.library_versions["node"].startswith("v")
    assert "@grpc/grpc-js" in info.server.library_versions
    assert info.HasField("capabilities") and info.capabilities.seeded and not info.capabilities.negative_prompt
    assert info.capabilities.max_side == 1024 and not info.capabilities.sizes
    image = _generate(channel, ("a cup of coffee", 1))[0]
    assert (image.model_id, image.revision) == (info.model.model_id, info.model.revision)
    assert image.usage == common_pb2.Usage()


def test_a_prompt_with_forbidden_is_refused_the_documented_way(channel: grpc.Channel) -> None:
    images = _generate(channel, ("a cup of coffee", 1), (REFUSAL_PROMPT, 2), width=32, height=16)
    assert [image.refused for image in images] == [False, True]
    refused = images[1]
    assert refused.refusal_reason and refused.png == b"" and refused.seed == 2
    assert (refused.width, refused.height) == (32, 16)


def test_seeds_are_echoed_exactly_and_images_depend_only_on_text_seed_and_size(channel: grpc.Channel) -> None:
    big = 2**63 - 1  # beyond what a JavaScript number holds
    alone = _generate(channel, ("a dog on a beach", big))[0]
    assert alone.seed == big
    batch = _generate(channel, ("a red fox", 2**53 + 1), ("a dog on a beach", big), ("a dog on a beach", 5))
    assert [image.seed for image in batch] == [2**53 + 1, big, 5]
    assert batch[1].png == alone.png, "the same text, seed and size gave another image in another batch"
    assert batch[2].png != alone.png, "another seed gave the same image"
    wider = _generate(channel, ("a dog on a beach", big), width=72)[0]
    assert (wider.width, wider.height) == (72, 64) and wider.png != alone.png


def test_invalid_argument_carries_a_bad_request_naming_the_field(channel: grpc.Channel) -> None:
    from google.rpc.error_details_pb2 import BadRequest

    with pytest.raises(grpc.RpcError) as caught:
        _generate(channel, ("a fox", 1), ("a fox", -3))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("prompts[1].seed: ")
    status = rpc_status.from_call(caught.value)
    assert status is not None and len(status.details) == 1
    bad_request = BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [violation.field for violation in bad_request.field_violations] == ["prompts[1].seed"]


def test_a_cancelled_call_stops_its_work(channel: grpc.Channel) -> None:
    stub = generator_pb2_grpc.GeneratorStub(channel)
    request = generator_pb2.GenerateRequest(
        prompts=[generator_pb2.PromptSpec(text=f"a lighthouse {i}", seed=i) for i in range(8)]
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Generate(request, timeout=0.05))
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.1)  # the step in flight when the deadline passed ends
    after_deadline = stub.Info(common_pb2.InfoRequest(), timeout=10).steps_run
    time.sleep(0.3)  # 8 images take 8 steps of 20 ms
    assert stub.Info(common_pb2.InfoRequest(), timeout=10).steps_run == after_deadline, "work went on after cancel"


def test_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    with (tmp_path / "stderr.log").open("w+") as log:
        proc, _ = _start(log)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0


@pytest.mark.slow
def test_a_tiny_benchmark_runs_with_it_as_the_generator(node_generator, scene_dataset, tiny_models, tmp_path) -> None:
    """`regen run --generator ADDR`: the describer and scorer start locally, the images
    come from the Node.js server, and both cases finish."""
    args = ["run", "--dataset", str(scene_dataset), "--preset", "tiny", "--limit", "2", "--rounds", "2"]
    args += ["--candidates", "2", "--generator", node_generator, "--out", str(tmp_path), "--progress", "plain"]
    done = subprocess.run(
        [sys.executable, "-m", "regen.cli", *args], capture_output=True, text=True, env=dict(os.environ), timeout=900
    )
    assert done.returncode == 0, done.stdout + done.stderr
    run_dir = Path(done.stdout.split("results: ", 1)[1].split("\n", 1)[0])
    benchmark = json.loads((run_dir / "benchmark_final.json").read_text())
    assert benchmark["cases"]["done"] == 2, benchmark["cases"]
    assert benchmark["models"]["generator"]["model_id"] == "regen-example-node"
