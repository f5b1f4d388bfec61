"""The results folder and atomic writes.

    <out>/<run>/run.json
    <out>/<run>/<case>/iut.json
    <out>/<run>/<case>/iteration_<r>/candidate_<k>.png, best_image.png, metadata.json
    <out>/<run>/<case>/final/best_image.png, final_metrics.json
    <out>/<run>/<case>/error.json          (only while the case's last attempt failed)
    <out>/<run>/benchmark_final.json

Every file is written to a temporary name in the same folder and renamed over its
target, so a killed run never leaves a half-written file under a real name. A case is
finished exactly when final/final_metrics.json exists; it is written last.

Files get the permissions the umask gives (0644 under the usual 022), so a host user can
read what a container wrote, and every string written is scrubbed of registered secrets
(`regen.common.secrets`). A case folder is always a direct child of the run folder
(`RunLayout.case_dir` refuses anything else), and every delete asserts that its path is
inside the run folder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regen.common import secrets

RUN_FILE = "run.json"
BENCHMARK_FILE = "benchmark_final.json"
FINAL_METRICS = "final_metrics.json"
ERROR_FILE = "error.json"
LOCK_FILE = ".lock"
_TMP_MARK = ".tmp-"
# Names at the run folder's root that are not case folders: no case id may be one
# (regen.orchestrator.dataset.safe_id). The report's files are report.html and report_files/.
RESERVED_NAMES = frozenset({RUN_FILE, BENCHMARK_FILE, LOCK_FILE, "report.html", "report_files"})


class UnsafePath(RuntimeError):
    """A path the run would write or delete lies outside its run folder."""


def _umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TMP_MARK}", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 whatever the umask
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def to_json(data: Any) -> bytes:
    # allow_nan=False: JSON has no NaN; an undefined statistic is written as null.
    text = json.dumps(secrets.scrub_data(data), indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode()


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, to_json(data))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


class RunLockedError(RuntimeError):
    pass


@dataclass(frozen=True)
class RunLayout:
    root: Path

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    @property
    def benchmark_file(self) -> Path:
        return self.root / BENCHMARK_FILE

    def case_dir(self, case_id: str) -> Path:
        """`<run>/<case_id>`; UnsafePath unless that is a plain folder name of a case."""
        path = self.root / case_id
        if not case_id or path.parent != self.root or case_id in (".", "..") or case_id in RESERVED_NAMES:
            raise UnsafePath(f"{self.root}: {case_id!r} is not a case folder name")
        return path

    def check_inside(self, path: Path) -> Path:
        """`path`, or UnsafePath when it (links resolved) is not strictly inside the run folder."""
        root = self.root.resolve()
        target = path.parent.resolve() / path.name
        if target == root or not target.is_relative_to(root):
            raise UnsafePath(f"refusing to change {path}: it is not inside the run folder {self.root}")
        return path

    def iut_file(self, case_id: str) -> Path:
        return self.case_dir(case_id) / "iut.json"

    def iteration_dir(self, case_id: str, round_index: int) -> Path:
        return self.case_dir(case_id) / f"iteration_{round_index}"

    def final_dir(self, case_id: str) -> Path:
        return self.case_dir(case_id) / "final"

    def final_metrics_file(self, case_id: str) -> Path:
        return self.final_dir(case_id) / FINAL_METRICS

    def error_file(self, case_id: str) -> Path:
        return self.case_dir(case_id) / ERROR_FILE

    def is_done(self, case_id: str) -> bool:
        return self.final_metrics_file(case_id).is_file()

    def reset_case(self, case_id: str) -> None:
        """Remove whatever an unfinished or failed attempt left, before redoing the case
        (a link in its place is removed, never followed)."""
        path = self.check_inside(self.case_dir(case_id))
        if path.is_symlink() or path.is_file():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)

    def remove_stale_temporaries(self) -> None:
        """Temporary files of a killed run's interrupted writes (run-level only; case
        folders of unfinished cases are reset as a whole)."""
        for tmp in self.root.glob(f".*{_TMP_MARK}*"):
            self.check_inside(tmp).unlink(missing_ok=True)

    def lock(self) -> int:
        """Hold an exclusive lock on the run folder for this process's lifetime (released by
        the OS even on kill -9). Two runs writing one folder would corrupt each other."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(f"{self.root}: another regen run is writing this run folder") from None
            raise
        return fd
