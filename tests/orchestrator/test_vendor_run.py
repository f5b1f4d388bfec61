"""`regen run` against the vendor engine (OpenAI-compatible Images API, faked on
127.0.0.1) as the generator: a refused API key stops the run in seconds, with exit status
2 and a message naming the key's setting, and nothing is recorded against the model."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fake_images_api import KEY_ENV, MODEL, FakeImagesAPI
from support.fake_images_api import serve as serve_api

from regen.common.settings import load_settings
from regen.generator.core import GeneratorCore
from regen.generator.grpc_api import BackgroundServer
from regen.generator.settings import GeneratorSettings


@pytest.fixture(scope="module")
def vendor_with_a_wrong_key(monkeypatch_module) -> Iterator[tuple[str, FakeImagesAPI]]:
    for api in serve_api(FakeImagesAPI()):
        monkeypatch_module.setenv(KEY_ENV, "sk-not-the-right-key")
        settings = load_settings(
            GeneratorSettings,
            engine="openai",
            model=MODEL,
            api_base_url=api.base_url,
            api_key_env=KEY_ENV,
            width=64,
            height=64,
        )
        with BackgroundServer(GeneratorCore.load(settings), settings) as server:
            yield server.address, api


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_a_refused_api_key_stops_the_run_at_once(
    vendor_with_a_wrong_key, describer_address, scorer_address, scene_dataset: Path, tmp_path: Path
) -> None:
    address, _api = vendor_with_a_wrong_key
    args = ["run", "--dataset", str(scene_dataset), "--out", str(tmp_path), "--preset", "tiny", "--limit", "4"]
    args += ["--progress", "none", f"--generator={address}", f"--describer={describer_address}"]
    args += [f"--scorer={scorer_address}"]
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "regen.cli", *args], capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the run stopped" in done.stderr and "UNAUTHENTICATED" in done.stderr, done.stderr
    assert f"environment variable {KEY_ENV} (setting api_key_env)" in done.stderr, done.stderr
    assert "run the same command again to resume" in done.stderr
    assert elapsed < 120, f"took {elapsed:.0f} s"
    # Not the model's failure: no case is recorded as failed.
    assert not list(tmp_path.rglob("error.json"))
