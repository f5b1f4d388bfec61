"""Container tests: build the orchestrator image and run a benchmark from inside it
against real tiny services on the host (host networking, loopback only).

Needs a running Docker engine; skipped otherwise. The model services' images carry a
multi-GB CUDA torch and are built by deploy/docker/build-images.sh, not here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
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
    cmd = ["docker", "run", "--rm", "--network", "host", "--init"]
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
