"""A hostile dataset runs to the end against the tiny services: every good case is done,
every bad case failed with a record naming its file, and nothing outside the run folder
changes (the parent folder is hashed before and after, an earlier run beside it
included). Options the services' Info refuses stop the run before any case, with exit 2
and no run folder. A planted API key that the generator's vendor API echoes in its
errors appears nowhere: not in the results, not on stderr."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from support.fake_images_api import serve
from support.hostile_api import KEY_ENV, PLANTED_KEY, HostileAPI
from support.scenes import scene, scene_png

pytestmark = pytest.mark.slow


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


GOOD = {
    "object_1.png": scene_png("object_1"),
    "run.json.png": scene_png("object_2"),  # crashed the whole run
    "benchmark_final.json.png": scene_png("portrait_1"),  # became a folder shadowing the summary
    "plain.jpg": encoded(scene("portrait_2"), "JPEG"),  # with plain.tiff, refused the folder
    "plain.tiff": encoded(scene("scene_1"), "TIFF"),
    "still.gif": encoded(scene("scene_2"), "GIF"),  # skipped silently
}
BAD = {
    "moving.gif": encoded(scene("complex_1"), "GIF", save_all=True, append_images=[scene("complex_2")]),
    "corrupt.png": b"\x89PNG\r\n\x1a\n" + b"\0garbage" * 10,
    "truncated.jpg": encoded(scene("complex_1"), "JPEG")[:300],
    "huge.png": encoded(Image.new("RGB", (4096, 4096), (9, 9, 9)), "PNG"),  # over the scorer's reference cap
}
HIDDEN = {"...png": scene_png("object_1"), "..png": scene_png("object_2")}  # were cases ".." and "."


def tree_digest(root: Path, skip: Path) -> dict[str, str]:
    """Every file and folder under `root` (links not followed) and its content's hash,
    except what lies under `skip`."""
    digest = {}
    for path in sorted(root.rglob("*")):
        if path == skip or skip in path.parents:
            continue
        key = str(path.relative_to(root))
        if path.is_symlink():
            digest[key] = "link:" + str(path.readlink())
        elif path.is_dir():
            digest[key] = "dir"
        else:
            digest[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digest


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for name, blob in {**GOOD, **BAD, **HIDDEN}.items():
        (data / name).write_bytes(blob)
    (data / "notes.txt").write_text("not an image")
    earlier = tmp_path / "out" / "earlier-run"
    earlier.mkdir(parents=True)
    (earlier / "run.json").write_text('{"precious": true}')
    (tmp_path / "out" / "keep.txt").write_text("beside the runs")
    return tmp_path


def regen_run(addresses: dict[str, str], *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "regen.cli", "run", "--progress", "plain", "--preset", "tiny"]
    command += [f"--{name}={address}" for name, address in addresses.items()]
    return subprocess.run(
        [*command, "--rounds", "1", "--candidates", "2", *args],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def services(describer_address, generator_address, scorer_address) -> dict[str, str]:
    return {"describer": describer_address, "generator": generator_address, "scorer": scorer_address}


def test_a_hostile_dataset_runs_to_the_end_and_touches_nothing_outside(hostile: Path, services) -> None:
    run_dir = hostile / "out" / "hostile"
    before = tree_digest(hostile, run_dir)
    done = regen_run(
        services, "--dataset", str(hostile / "data"), "--out", str(hostile / "out"), "--run-name", "hostile"
    )
    assert done.returncode == 1, done.stdout + done.stderr  # the bad cases failed; the run finished
    assert tree_digest(hostile, run_dir) == before, "something outside the run folder changed"

    run = json.loads((run_dir / "run.json").read_text())
    files = {case["id"]: case["file"] for case in run["dataset"]["cases"]}
    assert sorted(files.values()) == sorted([*GOOD, *BAD]), files
    summary = json.loads((run_dir / "benchmark_final.json").read_text())
    assert summary["cases"]["done"] == len(GOOD) and summary["cases"]["failed"] == len(BAD), summary["cases"]
    for case_id, file in files.items():
        assert (run_dir / case_id).is_dir() and case_id not in (".", "..", "run.json", "benchmark_final.json")
        error_file = run_dir / case_id / "error.json"
        if file in GOOD:
            assert (run_dir / case_id / "final" / "final_metrics.json").is_file(), (file, case_id)
            assert not error_file.exists()
        else:
            record = json.loads(error_file.read_text())
            message = record["failure"]["error"]
            named = file in message or record.get("file") == file
            assert named, (file, record)
    assert "plain.jpg shares its name with another file" in done.stderr
    assert "...png" in done.stderr and "notes.txt" in done.stderr, done.stderr


def test_options_the_services_refuse_stop_the_run_before_any_case(hostile: Path, services) -> None:
    out = hostile / "out"
    before = tree_digest(hostile, hostile / "none")
    for option, words in (("--candidates=5", "--candidates 5"), ("--width=100", "--width 100")):
        done = regen_run(services, "--dataset", str(hostile / "data"), "--out", str(out), option)
        assert done.returncode == 2, done.stdout + done.stderr
        assert words in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert tree_digest(hostile, hostile / "none") == before, "a refused start left something behind"


@pytest.fixture(scope="module")
def echoing_generator(monkeypatch_module) -> Iterator[str]:
    """The vendor engine over an API that answers every prompt with a 400 quoting the key."""
    from regen.common.settings import load_settings
    from regen.generator.core import GeneratorCore
    from regen.generator.grpc_api import BackgroundServer
    from regen.generator.settings import GeneratorSettings

    for api in serve(HostileAPI(always="[echo-400]")):
        monkeypatch_module.setenv(KEY_ENV, PLANTED_KEY)
        settings = load_settings(
            GeneratorSettings,
            engine="openai",
            model="regen-test-image-model",
            api_base_url=api.base_url,
            api_key_env=KEY_ENV,
            width=64,
            height=64,
        )
        with BackgroundServer(GeneratorCore.load(settings), settings) as server:
            yield server.address


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_an_echoed_api_key_appears_in_no_result_and_no_output(
    echoing_generator, services, scene_dataset: Path, tmp_path: Path
) -> None:
    addresses = {**services, "generator": echoing_generator}
    env = {**__import__("os").environ, KEY_ENV: PLANTED_KEY}
    done = regen_run(addresses, "--dataset", str(scene_dataset), "--out", str(tmp_path), "--limit", "2", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [e.read_text() for e in tmp_path.rglob("error.json")]
    assert len(errors) == 2, errors
    # Cases that reach the generator fail with its scrubbed error.
    assert all("[redacted]" in e for e in errors if '"stage": "generate"' in e), errors
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert PLANTED_KEY.encode() not in path.read_bytes(), path
    assert PLANTED_KEY not in done.stdout + done.stderr
    assert PLANTED_KEY[:14] not in done.stdout + done.stderr
