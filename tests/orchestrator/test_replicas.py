"""Several generator replicas, restarts and outages, with real tiny generators on
loopback: calls spread over replicas named by a list or by a DNS name, a replica that is
killed and restarted costs no case, a replica lost for good is routed around, and a
service down past the outage budget stops the run, which a rerun completes."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.replicas import GeneratorReplica, dns, replicas

from regen.orchestrator.clients import GeneratorClient
from regen.orchestrator.replies import ExpectedImage
from regen.orchestrator.settings import RetryPolicy
from regen.v1 import generator_pb2

pytestmark = pytest.mark.slow


def free_port(*hosts: str) -> int:
    """A port free on every host (loopback addresses) at once."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port = first.getsockname()[1]
            try:
                for host in hosts[1:]:
                    with socket.socket() as other:
                        other.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free on every host")


def spread(target: str, replica_count: int = 2, requests: int = 8) -> dict[str, int]:
    """Images per replica of `requests` Generate calls of 3 prompts through one channel,
    counted once every replica has answered (round_robin picks only connected replicas,
    and on a loaded machine the second may connect a moment after the first)."""

    async def main() -> dict[str, int]:
        client = GeneratorClient(target, RetryPolicy())
        try:
            info = await client.info()

            async def generate(label: str) -> None:
                prompts = [generator_pb2.PromptSpec(text=f"a lighthouse {label} {k}", seed=k) for k in range(3)]
                expected = [
                    ExpectedImage(f"candidate {k + 1}", k, 64, 64, info.model.model_id, info.model.revision)
                    for k in range(3)
                ]
                await client.generate(prompts, expected)

            for attempt in range(50):
                if len(client.ledger.replicas) == replica_count:
                    break
                await generate(f"warm-up {attempt}")
                await asyncio.sleep(0.1)
            before = {name: stats.images for name, stats in client.ledger.replicas.items()}
            for r in range(requests):
                await generate(str(r))
            return {name: stats.images - before.get(name, 0) for name, stats in client.ledger.replicas.items()}
        finally:
            await client.close()

    return asyncio.run(main())


def test_a_list_of_replicas_shares_the_images(tiny_models) -> None:
    port_a, port_b = free_port("127.0.0.1"), free_port("127.0.0.1")
    with replicas(("127.0.0.1", port_a), ("127.0.0.1", port_b)) as (a, b):
        images = spread(f"{a.address},{b.address}")
    assert set(images) == {a.address, b.address}, images
    assert all(0.4 <= count / 24 <= 0.6 for count in images.values()), images


def test_a_dns_name_of_several_replicas_shares_the_images(tiny_models) -> None:
    port = free_port("127.0.0.1", "127.0.0.2")
    with (
        replicas(("127.0.0.1", port), ("127.0.0.2", port)) as (a, b),
        dns({"generators.regen.test": ["127.0.0.1", "127.0.0.2"]}) as dns_port,
    ):
        images = spread(f"dns://127.0.0.1:{dns_port}/generators.regen.test:{port}")
    assert set(images) == {a.address, b.address}, images
    assert all(0.4 <= count / 24 <= 0.6 for count in images.values()), images


def _run(args: list[str], *, background: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
    command = [sys.executable, "-m", "regen.cli", "run", *args]
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def _numbers(run_dir: Path) -> dict:
    """benchmark_final.json's numbers (timings, usage and report paths aside)."""
    data = json.loads((run_dir / "benchmark_final.json").read_text())
    return {key: value for key, value in data.items() if key not in ("timings", "usage", "report")}


def _args(dataset: Path, out: Path, generator: str, describer: str, scorer: str, *extra: str) -> list[str]:
    args = ["--dataset", str(dataset), "--out", str(out), "--preset", "tiny", "--limit", "4", "--rounds", "2"]
    args += ["--candidates", "2", "--progress", "plain", "--run-name", "replicas"]
    return [*args, f"--generator={generator}", f"--describer={describer}", f"--scorer={scorer}", *extra]


def _wait_for(path_glob: str, root: Path, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not list(root.glob(path_glob)):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {path_glob} after {timeout_s} s"
        time.sleep(0.2)


def test_a_restarted_generator_costs_no_case(
    tiny_models, scene_dataset, describer_address, scorer_address, tmp_path
) -> None:
    replica = GeneratorReplica("127.0.0.1", free_port("127.0.0.1")).start()
    try:
        whole = _run(_args(scene_dataset, tmp_path / "whole", replica.address, describer_address, scorer_address))
        assert whole.returncode == 0, whole.stderr
        proc = _run(
            _args(scene_dataset, tmp_path / "cut", replica.address, describer_address, scorer_address),
            background=True,
        )
        _wait_for("replicas/*/iteration_1/candidate_1.png", tmp_path / "cut", proc)
        replica.kill()
        time.sleep(15)
        replica.start(wait=False)
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        replica.stop()
    assert proc.returncode == 0, stderr
    assert "4 of 4 cases done" in stdout, stdout
    assert _numbers(tmp_path / "cut" / "replicas") == _numbers(tmp_path / "whole" / "replicas")


def test_a_replica_lost_for_good_is_routed_around(
    tiny_models, scene_dataset, describer_address, scorer_address, tmp_path
) -> None:
    ports = free_port("127.0.0.1"), free_port("127.0.0.1")
    with replicas(*(("127.0.0.1", port) for port in ports)) as (a, b):
        target = f"{a.address},{b.address}"
        proc = _run(_args(scene_dataset, tmp_path, target, describer_address, scorer_address), background=True)
        _wait_for("replicas/*/iteration_1/candidate_1.png", tmp_path, proc)
        a.kill()
        stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr
    assert "4 of 4 cases done" in stdout, stdout


def test_a_service_down_past_the_budget_stops_the_run_and_a_rerun_completes(
    tiny_models, scene_dataset, describer_address, scorer_address, tmp_path
) -> None:
    replica = GeneratorReplica("127.0.0.1", free_port("127.0.0.1")).start()
    args = _args(scene_dataset, tmp_path, replica.address, describer_address, scorer_address, "--outage-budget", "5")
    try:
        proc = _run(args, background=True)
        _wait_for("replicas/*/iteration_1/candidate_1.png", tmp_path, proc)
        replica.kill()
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 3, stdout + stderr
        assert f"generator.Generate failed: UNAVAILABLE: unavailable at {replica.address} since" in stderr, stderr
        assert "(5 s, the outage budget)" in stderr and "run the same command again to resume" in stderr
        assert not list(tmp_path.rglob("error.json")), "nothing is recorded against the model"
        replica.start()
        again = _run(args)
    finally:
        replica.stop()
    assert again.returncode == 0, again.stderr
    assert "4 of 4 cases done" in again.stdout
