"""`regen run` end to end: tiny models, real services, the test-made reference scenes.

Most tests use the session's three services (conftest fixtures) through
`--describer/--generator/--scorer`; one test runs the embedded default, which starts
and stops its own services. Runs are small (4 cases, 2 rounds x 2 candidates).

The runs compared for identical numbers use --concurrency 1, so every server sees the
same batches in every run: the tiny generator and scorer currently give slightly
different pixels/scores for the same input when it is batched with other requests
(test_numbers_do_not_depend_on_concurrency shows it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image
from support.heavy_imports import run_regen_cli

pytestmark = pytest.mark.slow

CASES = ["complex_1", "portrait_1", "scene_1", "object_1"]  # --limit 4: one per category
METRICS = ("clip", "dinov2", "ssim", "selection", "judge_content", "judge_quality", "judge_mean")


@pytest.fixture(scope="module")
def addresses(describer_address, generator_address, scorer_address) -> list[str]:
    return [f"--describer={describer_address}", f"--generator={generator_address}", f"--scorer={scorer_address}"]


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return dict(os.environ)


def _regen(args: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "regen.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def _run_args(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run",
        "--dataset",
        str(dataset),
        "--preset",
        "tiny",
        "--limit",
        "4",
        "--rounds",
        "2",
        "--candidates",
        "2",
        "--out",
        str(out),
        *extra,
    ]


def _results_dir(stdout: str) -> Path:
    return Path(stdout.split("results: ", 1)[1].split("\n", 1)[0])


def _numbers(run_dir: Path) -> dict:
    """benchmark_final.json but its timings and usage: what the cases cost depends on the
    describer's cache (an answer from it costs nothing), not on the benchmark."""
    benchmark = json.loads((run_dir / "benchmark_final.json").read_text())
    return {key: value for key, value in benchmark.items() if key not in ("timings", "usage")}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, scene_dataset, addresses, env) -> Path:
    """`regen run --preset tiny --limit 4 --rounds 2 --candidates 2`."""
    out = tmp_path_factory.mktemp("full")
    done = _regen([*_run_args(scene_dataset, out, "--concurrency", "1", "--progress", "plain"), *addresses], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 of 4 cases done" in done.stdout
    return _results_dir(done.stdout)


def test_full_layout_and_consistent_benchmark(full_run: Path):
    run_info = json.loads((full_run / "run.json").read_text())
    bench = json.loads((full_run / "benchmark_final.json").read_text())
    assert run_info["config"]["rounds"] == 2 and run_info["config"]["candidates"] == 2
    assert [c["id"] for c in run_info["dataset"]["cases"]] == CASES
    assert run_info["models"]["generator"]["revision"].startswith("sha256:")
    assert run_info["models"]["generator"]["prompt_token_budget"] > 0

    finals = {}
    for case in CASES:
        folder = full_run / case
        iut = json.loads((folder / "iut.json").read_text())
        assert "global_description" in iut
        best_so_far = None
        assert sorted(p.name for p in folder.iterdir()) == ["final", "iteration_1", "iteration_2", "iut.json"]
        assert sorted(p.name for p in (folder / "final").iterdir()) == ["best_image.png", "final_metrics.json"]
        for r in (1, 2):
            it = folder / f"iteration_{r}"
            for name in ("candidate_1.png", "candidate_2.png", "best_image.png"):
                with Image.open(it / name) as img:
                    assert img.format == "PNG" and img.size == (64, 64)
            meta = json.loads((it / "metadata.json").read_text())
            assert len(meta["candidates"]) == 2 and len({c["seed"] for c in meta["candidates"]}) == 2
            for cand in meta["candidates"]:
                assert set(cand["scores"]) == {"clip", "dinov2", "ssim"}
                assert cand["selection"] == pytest.approx(0.5 * cand["scores"]["clip"] + 0.5 * cand["scores"]["dinov2"])
                if best_so_far is None or cand["selection"] > best_so_far[0]:
                    best_so_far = (cand["selection"], r, cand["index"])
            assert meta["best_so_far"]["selection"] == best_so_far[0]
            assert (meta["revised_prompt"] is None) == (r == 2)
        final = json.loads((folder / "final" / "final_metrics.json").read_text())
        assert (final["best"]["round"], final["best"]["candidate"]) == best_so_far[1:]
        assert final["metrics"]["selection"] == best_so_far[0]
        assert (folder / "final" / "best_image.png").read_bytes() == (
            folder / f"iteration_{best_so_far[1]}" / f"candidate_{best_so_far[2]}.png"
        ).read_bytes()
        assert 1 <= final["metrics"]["judge_content"] <= 5 and 1 <= final["metrics"]["judge_quality"] <= 5
        finals[case] = final

    assert bench["cases"] == {"total": 4, "done": 4, "refused": 0, "failed": 0, "pending": 0}
    for metric in METRICS:
        stat = bench["metrics"][metric]
        values = [f["metrics"][metric] for f in finals.values()]
        assert stat["n"] == 4 and stat["mean"] == pytest.approx(sum(values) / 4)
        assert stat["ci_low"] <= stat["mean"] <= stat["ci_high"]
    assert set(bench["categories"]) == {"complex_scenarios", "human_portraits", "natural_scenes", "simple_objects"}
    for category in bench["categories"].values():
        assert category["done"] == 1 and category["metrics"]["selection"]["n"] == 1
    curve = [r["mean_best_selection"] for r in bench["rounds"]]
    assert len(curve) == 2 and curve == sorted(curve)
    assert curve[-1] == pytest.approx(bench["metrics"]["selection"]["mean"])
    assert bench["models"]["scorer"]["metric_ids"]["clip"] == bench["metric_ids"]["clip"]
    timings = bench["timings"]
    assert timings["wall_s"] > 0 and set(timings["services"]) == {"describer", "generator", "scorer"}
    assert timings["services"]["generator"]["items"] == 4 * 2 * 2


def test_same_seed_gives_identical_numbers(full_run, scene_dataset, tmp_path, addresses, env):
    done = _regen([*_run_args(scene_dataset, tmp_path, "--concurrency", "1", "--progress", "none"), *addresses], env)
    assert done.returncode == 0, done.stderr
    again = _results_dir(done.stdout)
    assert again.name == full_run.name
    assert _numbers(again) == _numbers(full_run)


def test_numbers_do_not_depend_on_concurrency(full_run, scene_dataset, tmp_path, addresses, env):
    """The tiny preset makes the generator and scorer batch-invariant, so how requests
    were batched together cannot change a single number."""
    done = _regen([*_run_args(scene_dataset, tmp_path, "--concurrency", "4", "--progress", "none"), *addresses], env)
    assert done.returncode == 0, done.stderr
    assert _numbers(_results_dir(done.stdout)) == _numbers(full_run)


def test_kill_9_then_resume_gives_the_uninterrupted_numbers(full_run, scene_dataset, tmp_path, addresses, env):
    args = [*_run_args(scene_dataset, tmp_path, "--progress", "plain", "--concurrency", "1"), *addresses]
    proc = subprocess.Popen(
        [sys.executable, "-m", "regen.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    run_dir = tmp_path / full_run.name
    deadline = time.monotonic() + 600
    try:
        while not list(run_dir.glob("*/final/final_metrics.json")):
            assert proc.poll() is None, f"the run ended (code {proc.returncode}) before it could be killed"
            assert time.monotonic() < deadline, "no case finished in time"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = {p.parents[1].name for p in run_dir.glob("*/final/final_metrics.json")}
    assert 1 <= len(finished) < 4
    assert not (run_dir / "benchmark_final.json").exists()

    done = _regen(args, env)
    assert done.returncode == 0, done.stderr
    assert f"4 of 4 cases done ({len(finished)} from an earlier invocation)" in done.stdout
    assert _numbers(run_dir) == _numbers(full_run)
    assert not list(run_dir.rglob(".*.tmp-*"))


def test_dead_service_gives_a_clear_error(tmp_path, scene_dataset, describer_address, scorer_address, env):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    args = _run_args(scene_dataset, tmp_path, "--progress", "none", "--connect-timeout", "3")
    started = time.monotonic()
    done = _regen([*args, f"--describer={describer_address}", f"--scorer={scorer_address}", f"--generator={dead}"], env)
    assert done.returncode == 2
    assert f"error: cannot reach the generator at {dead} within 3 s" in done.stderr
    assert time.monotonic() - started < 60, "an unreachable service fails once the connect timeout is spent"
    assert not list(tmp_path.iterdir()), "nothing is written for a run that cannot start"


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


def test_embedded_default_starts_runs_and_stops_the_services(tiny_models, scene_dataset, tmp_path, env):
    """No addresses: the run starts the three services, uses them, stops them; the
    orchestrator process itself never imports torch, transformers or diffusers."""
    args = ["run", "--dataset", str(scene_dataset), "--preset", "tiny", "--limit", "1", "--rounds", "1"]
    args += ["--candidates", "2", "--out", str(tmp_path), "--progress", "plain"]
    done = run_regen_cli(args, env=env, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "HEAVY=\n" in done.stderr
    run_dir = _results_dir(done.stdout)
    assert run_dir.parent == tmp_path and (run_dir / "benchmark_final.json").is_file()
    assert json.loads((run_dir / "benchmark_final.json").read_text())["cases"]["done"] == 1
    services_line = next(line for line in done.stderr.splitlines() if "services: " in line)
    started = dict(part.strip().split(" ") for part in services_line.split("services: ", 1)[1].split(","))
    assert set(started) == {"describer", "generator", "scorer"}
    assert all(address.startswith("127.0.0.1:") for address in started.values())
    assert not any(_listening(address) for address in started.values()), "services must be stopped after the run"


def test_prepare_fills_the_describers_cache_for_the_run(tmp_path, scene_dataset, addresses, env):
    """`regen prepare` runs every case's generator-independent steps; the run that follows
    finds each of those answers in the describer's cache."""
    args = ["--dataset", str(scene_dataset), "--out", str(tmp_path), "--limit", "2", "--seed", "41"]
    args += ["--rounds", "1", "--candidates", "2", "--progress", "none", *addresses]
    prepared = _regen(["prepare", *args], env)
    assert prepared.returncode == 0, prepared.stderr
    assert "2 of 2 cases prepared" in prepared.stdout
    assert not list(tmp_path.iterdir()), "the pre-pass writes no run folder"
    done = _regen(["run", *args], env)
    assert done.returncode == 0, done.stderr
    (summary,) = tmp_path.glob("*/benchmark_final.json")
    describer = json.loads(summary.read_text())["usage"]["services"]["describer"]["by_method"]
    for method in ("Understand", "WritePrompt", "Variants"):
        assert describer[method]["cache_hits"] == describer[method]["calls"] == 2, (method, describer[method])
