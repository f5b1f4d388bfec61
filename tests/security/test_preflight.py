"""Pre-flight: a bad option fails in seconds, before any service starts, with exit
status 2 and a message naming the option, and leaves no run folder behind; what only
the services' Info can tell (the describer's max_variants, the generator's sizes) is
checked right after Info."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from regen.orchestrator.preflight import PreflightError, check_out, check_services
from regen.orchestrator.settings import OrchestratorSettings
from regen.v1 import describer_pb2, generator_pb2, scorer_pb2


def regen_run(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "regen.cli", "run", "--progress", "none", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return done, time.monotonic() - started


@pytest.mark.parametrize(
    "option, value, words",
    [
        ("--weights", "clip=nan", "--weights"),
        ("--weights", "clip=inf,dinov2=0.5", "--weights"),
        ("--rpc-timeout", "inf", "--rpc-timeout"),
        ("--guidance-scale", "nan", "--guidance-scale"),
        ("--outage-budget", "-inf", "--outage-budget"),
        ("--candidates", "0", "--candidates"),
    ],
)
def test_out_of_range_options_fail_at_once_naming_the_option(tmp_path: Path, option, value, words) -> None:
    (tmp_path / "data").mkdir()
    out = tmp_path / "out"
    done, elapsed = regen_run("--dataset", str(tmp_path / "data"), "--out", str(out), f"{option}={value}")
    assert done.returncode == 2, done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert elapsed < 30 and not out.exists()


def test_an_out_that_is_a_file_fails_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "file").write_text("not a folder")
    for out in (tmp_path / "file", tmp_path / "file" / "below"):
        done, elapsed = regen_run("--dataset", str(tmp_path / "data"), "--out", str(out), "--preset", "tiny")
        assert done.returncode == 2 and f"--out {out}" in done.stderr and "is a file" in done.stderr, done.stderr
        assert elapsed < 30 and "Errno" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "file"]


def test_an_unwritable_out_is_refused_naming_it(tmp_path: Path, monkeypatch) -> None:
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    with pytest.raises(PreflightError, match=r"--out .*: cannot write in .*Read-only file system"):
        check_out(tmp_path / "results")
    (tmp_path / "run-as-file").write_text("x")
    monkeypatch.undo()
    with pytest.raises(PreflightError, match="--run-name run-as-file"):
        check_out(tmp_path, "run-as-file")
    check_out(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists(), "the check creates nothing"


def infos(max_variants: int = 4, metrics=("clip", "dinov2"), sizes=()):
    describer = describer_pb2.DescriberInfo(max_variants=max_variants)
    capabilities = generator_pb2.GeneratorCapabilities(
        max_side=2048, sizes=[generator_pb2.ImageSize(width=w, height=h) for w, h in sizes]
    )
    generator = generator_pb2.GeneratorInfo(
        size_multiple=8, default_width=512, default_height=512, capabilities=capabilities
    )
    scorer = scorer_pb2.ScorerInfo(metrics=[scorer_pb2.MetricInfo(id=f"{m}/x", name=m) for m in metrics])
    return describer, generator, scorer


def settings(**values) -> OrchestratorSettings:
    return OrchestratorSettings(dataset="x", **values)


def test_after_info_candidates_and_sizes_are_checked() -> None:
    check_services(settings(candidates=4), *infos())
    check_services(settings(candidates=9), *infos(max_variants=0))  # a describer that does not say
    with pytest.raises(PreflightError, match=r"--candidates 5: the describer writes at most 4 variants"):
        check_services(settings(candidates=5), *infos())
    with pytest.raises(PreflightError, match="--width 100: the generator needs a multiple of 8"):
        check_services(settings(generation={"width": 100}), *infos())
    with pytest.raises(PreflightError, match="--height 4096: the generator renders at most 2048"):
        check_services(settings(generation={"height": 4096}), *infos())
    with pytest.raises(PreflightError, match="--width/--height 512x512: the generator renders only 1024x1024"):
        check_services(settings(), *infos(sizes=[(1024, 1024)]))
