"""The regen.v1 contract compiles, its committed stubs are current, it passes buf's lint,
and it stays compatible with the released contract."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load_generate_module():
    spec = importlib.util.spec_from_file_location("proto_generate", REPO_ROOT / "proto" / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stubs_are_current(tmp_path: Path) -> None:
    generate = _load_generate_module()
    written = generate.generate(tmp_path)
    assert len(written) == 3 * len(generate.proto_files())
    committed_dir = REPO_ROOT / "proto" / "regen" / "v1"
    stale = [
        f.name
        for f in written
        if not (committed_dir / f.name).exists() or (committed_dir / f.name).read_bytes() != f.read_bytes()
    ]
    assert not stale, f"stale stubs {stale}: run `python proto/generate.py`"


def test_buf_lint_and_no_breaking_change() -> None:
    """buf's lint rules (exceptions justified in proto/buf.yaml) and its wire/JSON breaking-
    change check against the released contract, proto/v1.binpb."""
    if not (REPO_ROOT / "proto" / "node_modules" / ".bin" / "buf").exists() and shutil.which("npm") is None:
        pytest.skip("buf is not installed and there is no npm to install it (scripts/setup.sh does)")
    done = subprocess.run(["bash", "scripts/check-proto.sh"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
