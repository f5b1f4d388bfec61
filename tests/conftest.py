"""Shared fixtures: source paths for child processes, the tiny models, reference images
the tests make (`scenes`, `scene_dataset`), EvalRef-100 for the tests of that dataset
only, and real local services started once per test session.

Tests live in one folder per part (tests/scorer, tests/orchestrator, ...); plain helper
modules live in tests/support and are imported as `support.<module>`."""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `support.*`

from support import scenes as scene_maker  # noqa: E402

SOURCE_PATHS = [
    str(REPO_ROOT / p)
    for p in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["pythonpath"]
]

# Child processes (services, the CLI) must import the same working tree as the tests.
os.environ["PYTHONPATH"] = os.pathsep.join([*SOURCE_PATHS, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
os.environ.setdefault("REGEN_TINY_MODELS", str(REPO_ROOT / ".cache" / "tiny-models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Several service processes share two cores in CI; one thread each avoids oversubscription.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def evalref_dir() -> Path:
    return Path(os.environ.get("REGEN_EVALREF_DIR", REPO_ROOT.parent / "shared" / "data" / "EvalRef-100"))


@pytest.fixture(scope="session")
def scenes() -> dict[str, bytes]:
    """PNG bytes of the test-made reference images, by name (object_1, scene_2, ...)."""
    return {name: scene_maker.scene_png(name) for name in scene_maker.NAMES}


@pytest.fixture(scope="session")
def scene_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset folder of 8 test-made references in 4 categories, with a MANIFEST.json."""
    return scene_maker.write_dataset(tmp_path_factory.mktemp("scenes"))


@pytest.fixture(scope="session")
def evalref() -> Path:
    """EvalRef-100's files, for the tests of that dataset itself; skipped without them."""
    path = evalref_dir()
    if not (path / "MANIFEST.json").exists():
        pytest.skip(f"EvalRef-100 not found at {path} (set REGEN_EVALREF_DIR)")
    return path


@pytest.fixture(scope="session")
def tiny_models() -> Path:
    """Build (or reuse, when current) the tiny models once per session."""
    from regen.tiny_models import build_all

    out = Path(os.environ["REGEN_TINY_MODELS"])
    build_all(out)
    return out


def _local_services(names: tuple[str, ...], **kwargs) -> Iterator:
    from regen.orchestrator.launcher import LocalServices

    with LocalServices(names=names, preset="tiny", startup_timeout_s=600, **kwargs) as services:
        yield services


@pytest.fixture(scope="session")
def scorer_address(tiny_models) -> Iterator[str]:
    yield from (s.address("scorer") for s in _local_services(("scorer",)))


@pytest.fixture(scope="session")
def generator_address(tiny_models) -> Iterator[str]:
    yield from (s.address("generator") for s in _local_services(("generator",)))


@pytest.fixture(scope="session")
def describer_address(tiny_models) -> Iterator[str]:
    yield from (s.address("describer") for s in _local_services(("describer",)))
