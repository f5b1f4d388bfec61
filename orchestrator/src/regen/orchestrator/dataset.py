"""Datasets: a known name (EvalRef-100) or any folder of images.

A named dataset resolves to a local copy (its env var, then `../shared/data/<name>`
beside a source checkout, then the cache folder) or is downloaded from its public
repository; either way every file used is checked against
the manifest shipped with this package. A folder may carry a MANIFEST.json (the
EvalRef-100 format: {"images": [{"file", "category", "sha256"}]}); without one, every
image in it is a case and its category is the file-name prefix before "_".

A dataset is untrusted input. The accepted images are the files with a suffix in
IMAGE_SUFFIXES (PNG, JPEG, WebP, BMP, TIFF, GIF; animated images are refused per case by
the decoder); other files are reported in a warning, never silently skipped. A manifest
may name only files inside its folder. Each case's id, which names its folder in the
run, is derived in one place (`case_ids`): letters, digits, "_" and "-" only, at most
MAX_ID_CHARS, never a name the run folder itself uses (`results.RESERVED_NAMES`); two files
that would get one id (plain.jpg and plain.tiff) keep their suffixes (plain_jpg,
plain_tiff), and the log says so.

Cases are ordered round-robin over the categories (each category in natural file-name
order), so `--limit 8` on EvalRef-100 takes two cases of each of its four categories,
and a smaller limit always takes a prefix of a larger one's cases.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
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
from regen.orchestrator.results import RESERVED_NAMES

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
MANIFEST_NAME = "MANIFEST.json"
UNCATEGORIZED = "uncategorized"
# Longest case id: a folder name, with room for a collision suffix.
MAX_ID_CHARS = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


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
                with case.path.open("rb") as fh:  # streamed: a huge file costs no memory
                    digest = hashlib.file_digest(fh, "sha256").hexdigest()
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
    files: list[tuple[Path, str | None, str | None]] = []
    missing: list[str] = []
    for entry in entries:
        try:
            file, category, digest = entry["file"], entry.get("category"), entry.get("sha256")
        except (KeyError, TypeError, AttributeError):
            raise DatasetError(f"{where}: manifest entry {entry!r} has no 'file'") from None
        path = _inside(root, file, where)
        if not path.is_file():
            missing.append(str(file))
            continue
        files.append((path, _text_or_none(category), _text_or_none(digest)))
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DatasetError(f"dataset {name} at {where}: {len(missing)} of {len(entries)} images are missing: {shown}")
    ids = case_ids([path for path, _, _ in files], where)
    cases = [
        Case(case_id, path, category or category_from_name(path.stem), digest)
        for case_id, (path, category, digest) in zip(ids, files, strict=True)
    ]
    return Dataset(name, root, tuple(interleave_categories(cases)), verified=all(c.sha256 for c in cases))


def _inside(root: Path, file: object, where: str) -> Path:
    """`root / file`, or DatasetError when `file` is not a relative path inside `root`."""
    if not isinstance(file, str) or not file.strip():
        raise DatasetError(f"{where}: manifest entry file {file!r} is not a file name")
    relative = Path(file)  # checked as written: links inside the folder are the dataset's own
    if relative.is_absolute() or ".." in relative.parts:
        raise DatasetError(f"{where}: manifest entry {file!r} points outside the dataset folder")
    return root / relative


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


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
    entries = sorted(path.iterdir(), key=lambda p: natural_key(p.name))
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
    # Hidden files are not read; only those that look like images are worth a mention.
    others = [
        p.name
        for p in entries
        if p not in images and p.name != MANIFEST_NAME and (not p.name.startswith(".") or p.suffix in IMAGE_SUFFIXES)
    ]
    if others:
        shown = ", ".join(others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
        log.warning(
            "dataset %s: not read (hidden, or not an image file with an accepted suffix: %s): %s", path, suffixes, shown
        )
    if not images:
        raise DatasetError(f"dataset {path}: no images in this folder (looked for {suffixes})")
    ids = case_ids(images, str(path))
    cases = [Case(case_id, p, category_from_name(p.stem)) for case_id, p in zip(ids, images, strict=True)]
    return Dataset(path.name, path, tuple(interleave_categories(cases)))


def safe_id(stem: str) -> str:
    """A file stem as a case id: runs of anything but letters, digits, "_" and "-" become
    one "_", never first or last (so never ".", "..", "-x" or a dotted name like run.json),
    at most MAX_ID_CHARS, never empty and never a name the run folder uses itself."""
    case_id = _UNSAFE.sub("_", stem).strip("_-")[:MAX_ID_CHARS] or "case"
    if case_id.lower() in {name.lower() for name in RESERVED_NAMES}:
        case_id = f"case_{case_id}"
    return case_id


def case_ids(paths: list[Path], where: str) -> list[str]:
    """The case id of each file: `safe_id` of its stem. Files that would share an id (in
    any letter case, as on a case-insensitive file system) keep their suffixes, and a
    number after that if still needed; the log names each such file and its id."""
    wanted = [safe_id(p.stem) for p in paths]
    counts: dict[str, int] = {}
    for case_id in wanted:
        counts[case_id.lower()] = counts.get(case_id.lower(), 0) + 1
    taken: set[str] = {case_id.lower() for case_id in wanted if counts[case_id.lower()] == 1}
    ids: list[str] = []
    for path, case_id in zip(paths, wanted, strict=True):
        if counts[case_id.lower()] > 1:
            base = safe_id(f"{case_id}_{path.suffix.lstrip('.')}")
            case_id, n = base, 2
            while case_id.lower() in taken:
                case_id, n = f"{base}_{n}", n + 1
            log.warning("%s: %s shares its name with another file; it is case %r", where, path.name, case_id)
        elif case_id != path.stem:
            log.info("%s: %s is case %r", where, path.name, case_id)
        taken.add(case_id.lower())
        ids.append(case_id)
    return ids


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
