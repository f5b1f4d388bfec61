"""Checks of every reply against the regen.v1 contract. A reply that breaks it is never
absorbed: the case fails with a ContractViolation that names the service, the method,
the candidate (numbered from 1, as in the files) and what was sent.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class ContractViolation(RuntimeError):
    """A service answered, but not as regen.v1 says it must; retrying would not help."""

    def __init__(self, service: str, method: str, problem: str) -> None:
        self.service = service
        self.method = method
        self.problem = problem
        super().__init__(f"the {service} broke the regen.v1 contract in {method}: {problem}")


@dataclass(frozen=True)
class ExpectedImage:
    """What one GeneratedImage must be."""

    name: str  # "candidate 2"
    seed: int
    width: int
    height: int
    model_id: str
    revision: str


def describe_bytes(data: bytes) -> str:
    """What kind of file `data` looks like, for a message."""
    if data[8:12] == b"WEBP" and data.startswith(b"RIFF"):
        return f"WebP data ({len(data)} bytes)"
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return f"{kind} data ({len(data)} bytes)"
    return f"{len(data)} bytes that are not a known image format"


def check_generated_image(image: Any, expected: ExpectedImage) -> None:
    """Raise ValueError (the problem, naming the candidate) unless `image` (a
    regen.v1.GeneratedImage) is what `expected` says."""
    name = expected.name
    if image.seed != expected.seed:
        raise ValueError(f"{name}: answered seed {image.seed} for seed {expected.seed}")
    if image.model_id and (image.model_id, image.revision) != (expected.model_id, expected.revision):
        raise ValueError(
            f"{name}: rendered by model {image.model_id!r} revision {image.revision!r}, but Info names "
            f"{expected.model_id!r} revision {expected.revision!r} (a replica serving another model?)"
        )
    if image.refused:
        if image.png:
            raise ValueError(f"{name}: marked refused but carries {len(image.png)} bytes of image")
        return
    if not image.png:
        raise ValueError(f"{name}: neither an image nor a refusal (empty png, refused false)")
    if not image.png.startswith(PNG_SIGNATURE):
        raise ValueError(f"{name}: sent {describe_bytes(image.png)}, not a PNG")
    claimed = (image.width, image.height)
    wanted = (expected.width, expected.height)
    actual = _png_size(image.png, name)
    if actual != claimed:
        raise ValueError(f"{name}: the PNG is {actual[0]}x{actual[1]}, the reply claims {claimed[0]}x{claimed[1]}")
    if actual != wanted:
        raise ValueError(f"{name}: the PNG is {actual[0]}x{actual[1]}, the request asked for {wanted[0]}x{wanted[1]}")
    _decode_fully(image.png, name)


def _png_size(png: bytes, name: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(png)) as img:
            return img.size
    except Exception as exc:
        raise ValueError(f"{name}: a PNG signature, but an unreadable header: {exc}") from None


def _decode_fully(png: bytes, name: str) -> None:
    try:
        with warnings.catch_warnings(), Image.open(io.BytesIO(png)) as img:
            warnings.simplefilter("ignore")
            img.load()
    except Exception as exc:
        raise ValueError(f"{name}: the PNG does not decode: {exc}") from None


def check_indexes(received: Sequence[int], count: int, name_of: Any, *, partial: bool = False) -> None:
    """Each of 0..count-1 exactly once (at most once while `partial`, as a stream goes);
    raise ValueError telling missing, duplicate and out-of-range indexes apart.
    `name_of(i)` names index i ("candidate 3")."""
    seen: set[int] = set()
    for index in received:
        if not 0 <= index < count:
            raise ValueError(f"answered index {index}, outside 0..{count - 1} ({count} items asked for)")
        if index in seen:
            raise ValueError(f"answered {name_of(index)} (index {index}) twice")
        seen.add(index)
    missing = [i for i in range(count) if i not in seen]
    if missing and not partial:
        raise ValueError("the answer ends without " + ", ".join(f"{name_of(i)} (index {i})" for i in missing))
