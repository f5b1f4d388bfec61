"""Content-addressed, on-disk cache of describer answers.

The key is the sha256 of a canonical JSON of everything that decides an answer: the
backend and its model id and revision, the template version, the task and its schema,
the inputs (images by the hash of their decoded pixels) and the sampling settings. Every
generator benchmarked with the same describer therefore gets the same IUT and the same
first prompt. Entries are written to a temporary file and renamed into place, so a
reader never sees half an entry; an unreadable entry is a miss, and is overwritten.
Only valid answers are stored: a failure is never replayed from the cache. The core
validates every entry it reads again, as it validates a fresh answer, and removes one
that fails (an entry written before a rule existed), so an old poisoned cache heals.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from regen.describer.schemas import canonical_json, loads_strict

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "regen" / "describer"


def cache_key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()


@dataclass(frozen=True)
class CachedAnswer:
    answer: Any  # the task's JSON answer
    output_tokens: int
    attempts: int
    # What the answer took when it was made, and which model made it.
    input_tokens: int = 0
    served_model: str = ""
    system_fingerprint: str = ""


class AnswerCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> CachedAnswer | None:
        path = self._path(key)
        try:
            entry = loads_strict(path.read_text(encoding="utf-8"))
            if entry.get("key") != key:
                raise ValueError("entry holds another key")
            return CachedAnswer(
                entry["answer"],
                int(entry["output_tokens"]),
                int(entry["attempts"]),
                int(entry.get("input_tokens", 0)),
                str(entry.get("served_model", "")),
                str(entry.get("system_fingerprint", "")),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable describer cache entry %s: %s", path, exc)
            return None

    def put(self, key: str, fields: dict[str, Any], value: CachedAnswer) -> None:
        path = self._path(key)
        entry = {
            "key": key,
            "fields": fields,
            "answer": value.answer,
            "output_tokens": value.output_tokens,
            "attempts": value.attempts,
            "input_tokens": value.input_tokens,
            "served_model": value.served_model,
            "system_fingerprint": value.system_fingerprint,
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:16]}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(entry, fh, ensure_ascii=False, sort_keys=True)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            # A full or read-only disk must not fail the request that produced the answer.
            log.warning("cannot write describer cache entry %s: %s", path, exc)

    def remove(self, key: str) -> None:
        """Drop an entry (one that no longer validates); a missing one is fine."""
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove describer cache entry %s: %s", path, exc)
