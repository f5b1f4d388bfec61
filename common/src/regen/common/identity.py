"""What a service reports about itself in Info: model revision and software versions."""

from __future__ import annotations

import hashlib
import importlib.metadata
import time
from pathlib import Path
from typing import Any

from regen.common import __version__
from regen.common.batching import BatchStats

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".model", ".jinja")


def model_revision(model: str, revision: str | None = None) -> str:
    """A hub revision as given, or "sha256:<hex>" over a local model folder's files
    (names and bytes), so two different local models never share a revision."""
    path = Path(model).expanduser()
    if not path.exists():
        return revision or "main"
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file.is_file() and file.suffix in _WEIGHT_SUFFIXES:
            digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            with file.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:16]


def model_json(model: Any) -> dict[str, Any]:
    """A model's identity as JSON, from a regen.v1.ModelInfo or anything else with
    model_id, revision, backend, device and dtype."""
    return {
        "model_id": model.model_id,
        "revision": model.revision,
        "backend": model.backend,
        "device": model.device,
        "dtype": model.dtype,
    }


def library_versions(*names: str) -> dict[str, str]:
    versions: dict[str, str] = {}
    for name in ("grpcio", "protobuf", *names):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def server_info(stats: BatchStats | None, *libraries: str):
    """A regen.v1.ServerInfo filled from batch statistics."""
    from regen.v1 import common_pb2

    info = common_pb2.ServerInfo(regen_version=__version__, library_versions=library_versions(*libraries))
    if stats is not None:
        info.busy_s = stats.busy_s
        info.batches = stats.batches
        info.items = stats.items
        info.uptime_s = time.monotonic() - stats.started_at
    return info
