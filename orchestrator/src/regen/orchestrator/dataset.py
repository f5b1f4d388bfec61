"""Datasets: a known name (EvalRef-100) or any folder of images.

A named dataset resolves to a local copy (its env var, then `../shared/data/<name>`
beside a source checkout, then the cache folder) or is downloaded from its public
repository; either way every file used is checked against
the manifest shipped with this package. A folder may carry a MANIFEST.json (the
EvalRef-100 format: {"images": [{"file", "category", "sha256"}]}); without one, every
image in it is a case and its category is the file-name prefix before "_".

Cases are ordered round-robin over the categories (each category in natural file-name
order), so `--limit 8` on EvalRef-100 takes two cases of each of its four categories,
and a smaller limit always takes a prefix of a larger one's cases.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from regen.common.images import encode_png, load_image_file, sha256_hex

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
MANIFEST_NAME = "MANIFEST.json"
UNCATEGORIZED = "uncategorized"


class DatasetError(ValueError):
    """The dataset cannot be used; the message names the path, name or file at fault."""


@dataclass(frozen=True)
class Case:
    id: str
    path: Path
    category: str
    # sha256 of the file's bytes: from the manifest, or computed when selected.
    sha256: str | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    root: Path
    cases: tuple[Case, ...]
    # Whether sha256 values come from a manifest and must be verified.
    verified: bool = False

    def select(self, limit: int | None = None) -> list[Case]:
        """The first `limit` cases, each file read once: checked against its manifest hash,
        or hashed, so the run's identity covers the exact bytes."""
        chosen = list(self.cases[:limit] if limit else self.cases)
        selected: list[Case] = []
        for case in chosen:
            try:
                digest = sha256_hex(case.path.read_bytes())
            except OSError as exc:
                raise DatasetError(f"dataset {self.name}: cannot read {case.path}: {exc.strerror or exc}") from None
            if self.verified and case.sha256 != digest:
                raise DatasetError(
                    f"dataset {self.name}: {case.path} does not match its manifest "
                    f"(sha256 {digest}, expected {case.sha256}); the copy is damaged or a different file"
                )
            selected.append(replace(case, sha256=digest))
        return selected


@dataclass(frozen=True)
class KnownDataset:
    name: str
    dir_env: str
    url_env: str
    default_url: str
    manifest_file: str
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def manifest(self) -> dict[str, Any]:
        return json.loads((Path(__file__).parent / "datasets" / self.manifest_file).read_text())

    @property
    def url(self) -> str:
        return os.environ.get(self.url_env) or self.default_url

    def cache_dir(self) -> Path:
        return datasets_cache_dir() / self.name


EVALREF_100 = KnownDataset(
    name="EvalRef-100",
    dir_env="REGEN_EVALREF_DIR",
    url_env="REGEN_EVALREF_URL",
    # The paper's repository at the commit the manifest was made from; the archive holds
    # the images in data/Evalref_100 (matched to the manifest by hash, not by path).
    default_url="https://github.com/SPEEDSRER/Image-Regeneration/archive/fc84eef1e6e1d9d4b34ce70fdc81805538a621d5.zip",
    manifest_file="evalref-100.json",
    aliases=("evalref-100", "evalref100", "evalref_100"),
)
KNOWN_DATASETS: tuple[KnownDataset, ...] = (EVALREF_100,)


def datasets_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "regen" / "datasets"


def beside_checkout(known: KnownDataset) -> Path | None:
    """`<checkout>/../shared/data/<name>` when running from a source checkout (or an
    editable install), as CI and the tests lay it out."""
    root = Path(__file__).resolve().parents[4]
    candidate = root.parent / "shared" / "data" / known.name
    if (root / "pyproject.toml").is_file() and candidate.is_dir():
        return candidate
    return None


def known_dataset(spec: str) -> KnownDataset | None:
    key = spec.strip().lower()
    return next((d for d in KNOWN_DATASETS if key in d.aliases or key == d.name.lower()), None)


def resolve_dataset(spec: str, *, download: bool = True) -> Dataset:
    """`spec` is an existing folder, or a known name. Raises DatasetError naming the problem."""
    path = Path(spec).expanduser()
    known = known_dataset(spec)
    if path.exists() or known is None:
        return folder_dataset(path, spec)
    return _resolve_known(known, download=download)


def _resolve_known(known: KnownDataset, *, download: bool) -> Dataset:
    manifest = known.manifest()
    env_dir = os.environ.get(known.dir_env)
    if env_dir:
        root = Path(env_dir).expanduser()
        if not root.is_dir():
            raise DatasetError(f"{known.dir_env}={env_dir}: no such folder (it should hold the {known.name} images)")
        return _manifest_dataset(known.name, root, manifest, where=f"{known.dir_env}={env_dir}")
    beside = beside_checkout(known)
    if beside is not None:
        return _manifest_dataset(known.name, beside, manifest, where=str(beside))
    cached = known.cache_dir()
    if cached.is_dir():
        return _manifest_dataset(known.name, cached, manifest, where=str(cached))
    if not download:
        raise DatasetError(f"{known.name} is not in {cached} and downloading is disabled; set {known.dir_env}")
    download_dataset(known, cached, manifest)
    return _manifest_dataset(known.name, cached, manifest, where=str(cached))


def _manifest_dataset(name: str, root: Path, manifest: dict[str, Any], *, where: str) -> Dataset:
    entries = manifest.get("images")
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"{where}: the manifest lists no images")
    cases: list[Case] = []
    missing: list[str] = []
    for entry in entries:
        try:
            file, category, digest = entry["file"], entry.get("category"), entry.get("sha256")
        except (KeyError, TypeError):
            raise DatasetError(f"{where}: manifest entry {entry!r} has no 'file'") from None
        path = root / file
        if not path.is_file():
            missing.append(file)
            continue
        cases.append(Case(Path(file).stem, path, category or category_from_name(Path(file).stem), digest))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(f"dataset {name} at {where}: {len(missing)} of {len(entries)} images are missing: {shown}")
    _check_unique(cases, where)
    return Dataset(name, root, tuple(interleave_categories(cases)), verified=all(c.sha256 for c in cases))


def folder_dataset(path: Path, spec: str | None = None) -> Dataset:
    known = ", ".join(d.aliases[0] for d in KNOWN_DATASETS)
    if not path.exists():
        raise DatasetError(f"dataset {spec or path}: no such folder, and not a known dataset name (known: {known})")
    if not path.is_dir():
        raise DatasetError(f"dataset {path}: not a folder (give a folder of images or one of: {known})")
    manifest_path = path / MANIFEST_NAME
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{manifest_path}: unreadable manifest: {exc}") from None
        if isinstance(manifest, dict) and "images" in manifest:
            return _manifest_dataset(str(manifest.get("name") or path.name), path, manifest, where=str(path))
    images = sorted(
        (
            p
            for p in path.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
        ),
        key=lambda p: natural_key(p.name),
    )
    if not images:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DatasetError(f"dataset {path}: no images in this folder (looked for {suffixes})")
    cases = [Case(p.stem, p, category_from_name(p.stem)) for p in images]
    _check_unique(cases, str(path))
    return Dataset(path.name, path, tuple(interleave_categories(cases)))


def _check_unique(cases: Iterable[Case], where: str) -> None:
    seen: dict[str, Path] = {}
    for case in cases:
        if case.id in seen:
            raise DatasetError(f"{where}: {seen[case.id].name} and {case.path.name} would both be case {case.id!r}")
        seen[case.id] = case.path


def category_from_name(stem: str) -> str:
    """portrait_3 -> portrait; a name without "_" has no category."""
    prefix, sep, _ = stem.partition("_")
    return prefix if sep and prefix else UNCATEGORIZED


def natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def interleave_categories(cases: Iterable[Case]) -> list[Case]:
    """Round-robin over categories (sorted by name), each in natural file-name order."""
    by_category: dict[str, list[Case]] = {}
    for case in sorted(cases, key=lambda c: natural_key(c.path.name)):
        by_category.setdefault(case.category, []).append(case)
    queues = [by_category[c] for c in sorted(by_category)]
    ordered: list[Case] = []
    for i in range(max(map(len, queues), default=0)):
        ordered.extend(q[i] for q in queues if i < len(q))
    return ordered


def load_reference_png(case: Case) -> bytes:
    """Decode the reference (any format, EXIF-oriented, RGB) and encode it as PNG once."""
    return encode_png(load_image_file(case.path))


def download_dataset(known: KnownDataset, dest: Path, manifest: dict[str, Any]) -> None:
    """Fetch the archive at known.url, keep the files whose sha256 the manifest lists
    (named as in the manifest), and move the complete folder into place atomically."""
    url = known.url
    hint = f"set {known.dir_env} to a local copy of {known.name}, or {known.url_env} to a reachable archive URL"
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            data = response.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DatasetError(
            f"{known.name} is not available locally and downloading {url} failed ({reason}); {hint}"
        ) from None
    wanted = {entry["sha256"]: entry["file"] for entry in manifest["images"]}
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile:
            raise DatasetError(f"{url}: not a zip archive ({len(data)} bytes); {hint}") from None
        found: set[str] = set()
        for member in archive.infolist():
            if member.is_dir() or Path(member.filename).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            content = archive.read(member)
            digest = sha256_hex(content)
            if digest in wanted and digest not in found:
                (staging / wanted[digest]).write_bytes(content)
                found.add(digest)
        missing = [file for digest, file in wanted.items() if digest not in found]
        if missing:
            raise DatasetError(
                f"{url}: {len(missing)} of {len(wanted)} {known.name} images are missing or differ from the "
                f"manifest's sha256 (e.g. {', '.join(missing[:3])}); {hint}"
            )
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
