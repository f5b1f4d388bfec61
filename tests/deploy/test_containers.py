"""Container tests: build the orchestrator image and run a benchmark from inside it
against real tiny services on the host (host networking, loopback only).

Needs a running Docker engine; skipped otherwise. The model services' images carry a
multi-GB CUDA torch (one shared 6 GB layer, regen/torch): with REGEN_TEST_SERVICE_IMAGES=1
they are built too (about 20 minutes on 2 cores the first time), each is run hardened as a
Kubernetes pod runs it, and the tiny compose profile runs 2 cases end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from deploy.tools import compose_binary

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = "regen/orchestrator:0.1.0"

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def _docker_ready() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "no docker CLI"
    info = subprocess.run([docker, "info"], capture_output=True, text=True)
    if info.returncode != 0:
        return "no running Docker engine"
    base = os.environ.get("BASE_IMAGE", "regen-base:bookworm")
    has_base = subprocess.run([docker, "image", "inspect", base], capture_output=True).returncode == 0
    if not has_base and shutil.which("debootstrap") is None:
        return f"no base image {base} and no debootstrap to build it"
    return None


@pytest.fixture(scope="module")
def orchestrator_image() -> str:
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    result = subprocess.run(
        ["bash", "deploy/docker/build-images.sh", "orchestrator"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return IMAGE


def test_orchestrator_image_has_no_torch(orchestrator_image: str) -> None:
    code = "import importlib.util as u; print([m for m in ('torch','transformers','diffusers') if u.find_spec(m)])"
    result = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "python3", orchestrator_image, "-c", code],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_orchestrator_image_runs_as_a_user(orchestrator_image: str) -> None:
    result = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", orchestrator_image], capture_output=True)
    assert result.returncode == 0 and result.stdout.decode().startswith("uid=10001(regen)")


def test_benchmark_from_the_container(
    orchestrator_image: str,
    evalref: Path,
    tmp_path: Path,
    describer_address: str,
    generator_address: str,
    scorer_address: str,
) -> None:
    out = tmp_path / "results"
    out.mkdir()
    # As the host's user (as compose runs it): the results are theirs.
    cmd = ["docker", "run", "--rm", "--network", "host", "--init", "--user", f"{os.getuid()}:{os.getgid()}"]
    cmd += ["--read-only", "--tmpfs", "/tmp", "-e", "HOME=/tmp"]
    cmd += ["-v", f"{evalref}:/data/EvalRef-100:ro", "-v", f"{out}:/results", orchestrator_image]
    cmd += ["run", "--dataset", "/data/EvalRef-100", "--out", "/results", "--run-name", "container"]
    cmd += ["--describer", describer_address, "--generator", generator_address, "--scorer", scorer_address]
    cmd += ["--limit", "1", "--rounds", "1", "--candidates", "2", "--progress", "plain"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "results: /results/container" in result.stdout
    summary = json.loads((out / "container" / "benchmark_final.json").read_text())
    assert summary["cases"]["done"] == 1
    assert summary["cases"]["failed"] == 0
    assert (out / "container" / "benchmark_final.json").stat().st_uid == os.getuid()


SERVICE_IMAGES = {"scorer": "Scorer", "generator": "Generator", "describer": "Describer"}


def _grpc_model_ids(name: str, address: str) -> list[str]:
    import grpc

    from regen.common.grpc_server import channel_options
    from regen.v1 import common_pb2, describer_pb2_grpc, generator_pb2_grpc, scorer_pb2_grpc

    stubs = {
        "scorer": scorer_pb2_grpc.ScorerStub,
        "generator": generator_pb2_grpc.GeneratorStub,
        "describer": describer_pb2_grpc.DescriberStub,
    }
    with grpc.insecure_channel(address, options=channel_options()) as channel:
        info = stubs[name](channel).Info(common_pb2.InfoRequest(), timeout=30)
    return [m.model_id for m in info.models] if name == "scorer" else [info.model.model_id]


@pytest.mark.parametrize("name", sorted(SERVICE_IMAGES))
def test_service_image_serves_http_and_grpc(name: str, tiny_models: Path) -> None:
    """Build a model service's image and run its BentoML service with the tiny preset:
    HTTP and gRPC answer from one process, and Docker's own health check turns healthy."""
    import time
    import urllib.request

    from support.bento_server import free_port

    from regen.common.healthcheck import check

    if os.environ.get("REGEN_TEST_SERVICE_IMAGES") != "1":
        pytest.skip("service images carry a CUDA torch (about 6 GB); set REGEN_TEST_SERVICE_IMAGES=1 to test them")
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    build = subprocess.run(
        ["bash", "deploy/docker/build-images.sh", name], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    http_port, grpc_port = free_port(), free_port()
    prefix = f"REGEN_{name.upper()}_"
    container = f"regen-test-{name}-{grpc_port}"
    # As a pod runs it: read-only root, /tmp writable, no capabilities, its own non-root user.
    cmd = ["docker", "run", "-d", "--rm", "--name", container, "--network", "host", "--read-only"]
    cmd += ["--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges:true", "-e", "HOME=/tmp"]
    for key, value in {
        "REGEN_PRESET": "tiny",
        "REGEN_TINY_MODELS": "/models/tiny",
        f"{prefix}HOST": "127.0.0.1",  # host networking: stay on loopback
        f"{prefix}PORT": str(grpc_port),
        "REGEN_DESCRIBER_CACHE_DIR": "/tmp/describer-cache",
        "BENTOML_DO_NOT_TRACK": "true",
    }.items():
        cmd += ["-e", f"{key}={value}"]
    cmd += ["-v", f"{tiny_models}:/models/tiny:ro", f"regen/{name}:0.1.0"]
    target = f"regen.{name}.http_api:{SERVICE_IMAGES[name]}"
    cmd += ["bentoml", "serve", target, "--host", "127.0.0.1", "--port", str(http_port)]
    started = subprocess.run(cmd, capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    try:
        address = f"127.0.0.1:{grpc_port}"
        deadline = time.monotonic() + 300
        while not check(address):
            assert time.monotonic() < deadline, subprocess.run(
                ["docker", "logs", container], capture_output=True
            ).stderr
            time.sleep(1)
        assert all(model_id.startswith("/models/tiny/") for model_id in _grpc_model_ids(name, address))
        request = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/info", data=b"{}", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert reply.status == 200
            assert "/models/tiny/" in reply.read().decode()
        while True:
            status = subprocess.run(
                ["docker", "inspect", "--format", "{{.State.Health.Status}}", container], capture_output=True, text=True
            ).stdout.strip()
            if status == "healthy":
                break
            assert status == "starting" and time.monotonic() < deadline, f"docker health: {status}"
            time.sleep(2)
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)


def test_compose_up_runs_a_benchmark(tiny_models: Path, evalref: Path, tmp_path: Path) -> None:
    """`docker compose --profile tiny up`: three BentoML service containers and the
    orchestrator container, on host networking bound to 127.0.0.1, run 2 cases; the results
    belong to the user who ran compose."""
    from support.bento_server import free_port

    if os.environ.get("REGEN_TEST_SERVICE_IMAGES") != "1":
        pytest.skip("service images carry a CUDA torch (about 6 GB); set REGEN_TEST_SERVICE_IMAGES=1 to test them")
    reason = _docker_ready()
    compose = compose_binary()
    if reason or compose is None:
        pytest.skip(reason or "docker-compose not installed")
    build = subprocess.run(["bash", "deploy/docker/build-images.sh"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    results, cache = tmp_path / "results", tmp_path / "cache"
    results.mkdir()
    # The dataset where the orchestrator's cache keeps it (REGEN_CACHE_DIR/regen/datasets).
    shutil.copytree(evalref, cache / "regen" / "datasets" / "EvalRef-100")
    env = {**os.environ, "REGEN_TINY_MODELS": str(tiny_models), "REGEN_CACHE_DIR": str(cache)}
    env |= {"REGEN_RESULTS_DIR": str(results), "REGEN_LIMIT": "2"}
    env |= {"REGEN_UID": str(os.getuid()), "REGEN_GID": str(os.getgid())}
    for name in ("DESCRIBER", "GENERATOR", "SCORER"):
        env[f"REGEN_{name}_PORT"] = str(free_port())
        env[f"REGEN_{name}_HTTP_PORT"] = str(free_port())
    project = ["-p", f"regen-test-{os.getpid()}", "-f", "compose.yaml", "--profile", "tiny"]
    try:
        up = subprocess.run(
            [compose, *project, "up", "--exit-code-from", "orchestrator-tiny", "orchestrator-tiny"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
    finally:
        subprocess.run([compose, *project, "down"], cwd=REPO_ROOT, env=env, capture_output=True)
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-2000:]
    summary_file = results / "compose-tiny" / "benchmark_final.json"
    summary = json.loads(summary_file.read_text())
    assert summary["cases"]["done"] == 2 and summary["cases"]["failed"] == 0
    assert summary_file.stat().st_uid == os.getuid()
