"""Thumbnails for the report pages, written once with Pillow.

A thumbnail lives under `<run>/report_files/thumbs/<case>/`, named after its source
(`iteration_2__candidate_3.jpg`, `reference.jpg`), and is rewritten only when it is
missing or older than its source (a case redone on resume gets new ones). The
reference image is copied once into `<run>/report_files/references/`, so the run folder
holds everything its pages show and can be moved or shared as a whole.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from regen.orchestrator.results import atomic_write_bytes

FILES_DIR = "report_files"
THUMB_SIDE = 192
JPEG_QUALITY = 85


def _fresh(target: Path, source: Path) -> bool:
    try:
        return target.stat().st_mtime_ns >= source.stat().st_mtime_ns
    except FileNotFoundError:
        return False


def write_thumbnail(source: Path, target: Path, side: int = THUMB_SIDE) -> None:
    """A JPEG at most `side` pixels on its longer side (never enlarged)."""
    import io

    with Image.open(source) as image:
        image.draft("RGB", (side, side))  # JPEG sources decode at a reduced size
        small = image.convert("RGB")
        small.thumbnail((side, side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    atomic_write_bytes(target, buffer.getvalue())


@dataclass
class Thumbnails:
    """Collects the thumbnails a page needs (paths relative to the run folder), then
    writes the missing or stale ones in a few threads (Pillow decodes without the GIL)."""

    run_dir: Path
    _jobs: dict[Path, Path] = field(default_factory=dict)

    @property
    def files_dir(self) -> Path:
        return self.run_dir / FILES_DIR

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.run_dir).as_posix()

    def of(self, case: str, relative: str) -> str:
        """The thumbnail of `<case>/<relative>` (a file of the run), to be written."""
        source = self.run_dir / case / relative
        target = self.files_dir / "thumbs" / case / (relative.replace("/", "__").rsplit(".", 1)[0] + ".jpg")
        self._jobs[target] = source
        return self._rel(target)

    def reference(self, case: str, original: Path) -> tuple[str, str] | None:
        """(full size, thumbnail) of a case's reference image: a copy in the run folder,
        made once from the dataset's file; None when neither exists."""
        copy = self.files_dir / "references" / f"{case}{original.suffix.lower()}"
        if not _fresh(copy, original) and original.is_file():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(original, copy)
        if not copy.is_file():
            return None
        target = self.files_dir / "thumbs" / case / "reference.jpg"
        self._jobs[target] = copy
        return self._rel(copy), self._rel(target)

    def write(self) -> int:
        """Write what is missing or stale; returns how many were written."""
        todo = [(s, t) for t, s in self._jobs.items() if s.is_file() and not _fresh(t, s)]
        if todo:
            with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
                list(pool.map(lambda job: write_thumbnail(*job), todo))
        self._jobs.clear()
        return len(todo)
