"""Build the tiny models into one folder, atomically, skipping those already current.

Layout of `out_dir`:

    clip/  dinov2/  stable-diffusion/  qwen2.5-vl/   one `save_pretrained` folder each (the scorer's
                                                     metrics' models come from its metric registry)
    manifest.json                                    builder version, seed, sha256 per file
    .lock                                            serialises concurrent builders

A model is skipped when the manifest records the current builder version and seed for it
and its folder still holds exactly the recorded files with the recorded hashes. Each model
is built into a hidden temporary folder next to its target and renamed into place, so an
interrupted build never leaves a half-written folder under the model's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
LOCK = ".lock"


@dataclass(frozen=True)
class ModelSpec:
    name: str  # folder name under out_dir
    builder: str  # "module:attribute" of `build(out: Path, seed: int) -> None`
    version: int  # bump when the builder's output changes; stale folders are rebuilt


# The generator's and the describer's tiny models; the scorer's come from its metric
# registry (each metric with a model says how to build its tiny one).
BUILT_IN: tuple[ModelSpec, ...] = (
    ModelSpec("stable-diffusion", "regen.tiny_models.stable_diffusion:build", 1),
    ModelSpec("qwen2.5-vl", "regen.tiny_models.qwen_vl:build", 2),
)


def model_specs() -> dict[str, ModelSpec]:
    """Every tiny model by name: the scorer's metrics' first, then the built-in ones.
    Computed on use, so that importing this package imports no torch."""
    specs: dict[str, ModelSpec] = {}
    try:
        from regen.scorer.metrics import REGISTRY
    except ImportError:  # the scorer is not installed here
        return {spec.name: spec for spec in BUILT_IN}
    for name in REGISTRY.names():
        metric = REGISTRY.load(name)
        if metric.tiny_version:
            builder = f"{metric.__module__}:{metric.__qualname__}.build_tiny"
            specs[name] = ModelSpec(name, builder, metric.tiny_version)
    return specs | {spec.name: spec for spec in BUILT_IN}


def model_names() -> tuple[str, ...]:
    return tuple(model_specs())


@dataclass(frozen=True)
class BuildResult:
    name: str
    path: Path
    built: bool  # False: already current, skipped
    seconds: float
    size_bytes: int


def build_all(
    out_dir: Path | str,
    *,
    seed: int = 0,
    only: Iterable[str] | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Build (or reuse) the tiny models; returns {name: folder} for the requested ones."""
    return {r.name: r.path for r in build_models(out_dir, seed=seed, only=only, force=force)}


def build_models(
    out_dir: Path | str,
    *,
    seed: int = 0,
    only: Iterable[str] | None = None,
    force: bool = False,
) -> list[BuildResult]:
    """Like `build_all`, with what was done for each model."""
    specs = model_specs()
    names = _select(only, specs)
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    with _locked(out):
        manifest = read_manifest(out)
        for name in names:
            spec = specs[name]
            target = out / name
            start = time.perf_counter()
            entry = manifest["models"].get(name)
            if not force and is_current(entry, target, spec, seed):
                results.append(BuildResult(name, target, False, time.perf_counter() - start, entry["size_bytes"]))
                continue
            entry = _build_one(spec, out, seed)
            manifest["models"][name] = entry
            _write_json_atomic(out / MANIFEST, manifest)
            results.append(BuildResult(name, target, True, time.perf_counter() - start, entry["size_bytes"]))
    return results


def read_manifest(out_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("models"), dict):
        return {"format": MANIFEST_FORMAT, "models": {}}
    return data


def is_current(entry: dict[str, Any] | None, folder: Path, spec: ModelSpec, seed: int) -> bool:
    """The manifest entry matches this builder and seed, and the folder matches the entry."""
    if not isinstance(entry, dict) or entry.get("builder_version") != spec.version or entry.get("seed") != seed:
        return False
    if not folder.is_dir():
        return False
    try:
        return file_hashes(folder) == entry.get("files")
    except OSError:
        return False


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder, keyed by POSIX relative path, sorted."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): _sha256(p) for p in files}


def _select(only: Iterable[str] | None, specs: dict[str, ModelSpec]) -> list[str]:
    if only is None:
        return list(specs)
    if isinstance(only, str):
        only = [only]
    wanted = list(dict.fromkeys(only))
    unknown = [n for n in wanted if n not in specs]
    if unknown:
        raise ValueError(f"unknown tiny model(s) {', '.join(unknown)}; choose from {', '.join(specs)}")
    return wanted


def _build_one(spec: ModelSpec, out: Path, seed: int) -> dict[str, Any]:
    module_name, _, attribute = spec.builder.partition(":")
    build: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        build = getattr(build, part)
    _remove_stale_temps(out, spec.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".tmp", dir=out))
    try:
        with _quiet(), _own_rng():
            build(tmp, seed)
        _normalise_modes(tmp)
        files = file_hashes(tmp)
        size = sum((tmp / f).stat().st_size for f in files)
        _replace_dir(tmp, out / spec.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "builder_version": spec.version,
        "seed": seed,
        "size_bytes": size,
        "files": files,
        "built_with": _library_versions(),
    }


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an existing target is moved aside first, then deleted."""
    old = None
    if target.exists() or target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        old.rmdir()
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_stale_temps(out: Path, name: str) -> None:
    # Only called under the lock: no other builder is writing these.
    for pattern in (f".{name}.*.tmp", f".{name}.*.old"):
        for p in out.glob(pattern):
            shutil.rmtree(p, ignore_errors=True)


def _normalise_modes(folder: Path) -> None:
    # mkdtemp makes 0700 folders and safetensors writes 0600 files; models are shared data.
    for p in [folder, *folder.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _library_versions() -> dict[str, str]:
    versions = {}
    for dist in ("torch", "transformers", "diffusers", "tokenizers"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """An exclusive advisory lock on out/.lock (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with (out / LOCK).open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _own_rng() -> Iterator[None]:
    """Builders seed torch's global RNG; give the caller its RNG state back afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        yield


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
