"""What every scorer metric provides, and the values it works on.

A metric compares candidates with their references. It declares its identity
(`MetricInfo`: an id that includes its checkpoint, whether higher is better), whether it
needs a model, its own options (a pydantic model, read from the scorer's
`metric_options.<name>` setting), and one batch function, `score`, which the scorer's
single model worker calls with the pairs of many concurrent requests at once.
A metric with a model also says how to build a tiny random-weight one for the tests and
the tiny preset (`tiny_version`, `build_tiny`), so one registry entry covers both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

from PIL import Image
from pydantic import BaseModel, ConfigDict

from regen.scorer.cache import LruCache


@dataclass(frozen=True)
class MetricInfo:
    # Stable id; includes the checkpoint and its revision, so results of different
    # checkpoints are never mixed.
    id: str
    # Short name, the registry name: "clip".
    name: str
    # One line: what is computed.
    definition: str
    higher_is_better: bool = True
    checkpoint: str = ""
    revision: str = ""


@dataclass(frozen=True)
class LoadedModel:
    model_id: str
    revision: str
    device: str
    dtype: str


@dataclass(frozen=True)
class Reference:
    """A decoded reference and the sha256 of its encoded bytes (the cache key)."""

    sha256: str
    image: Image.Image


@dataclass(frozen=True)
class Pair:
    """One candidate to compare with its reference."""

    reference: Reference
    candidate: Image.Image


@dataclass(frozen=True)
class MetricContext:
    """What the scorer gives every metric it loads."""

    device: str
    dtype: str
    # Compute every pair on its own, so a value never depends on what shared its batch.
    batch_invariant: bool
    # Shared by the metrics that cache per-reference work (keys start with the metric id).
    reference_cache: LruCache[Any]


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Metric(Protocol):
    name: ClassVar[str]
    needs_model: ClassVar[bool]
    Options: ClassVar[type[BaseModel]]
    # Smallest reference side the metric can compare (SSIM's window).
    min_reference_side: ClassVar[int]
    # 0: no tiny model; bump when build_tiny's output changes.
    tiny_version: ClassVar[int]

    info: MetricInfo
    model: LoadedModel | None

    @classmethod
    def load(cls, options: Any, context: MetricContext) -> Self:
        """Load the metric's model (if any) with its validated options."""
        ...

    def extra_pixels(self, reference_pixels: int, candidates: int) -> int:
        """Decoded pixels the metric needs beyond the request's own images."""
        ...

    def score(self, pairs: Sequence[Pair]) -> list[float]:
        """One value per pair, in order. Runs on the model worker thread."""
        ...

    @classmethod
    def build_tiny(cls, out: Path, seed: int) -> None:
        """Write a tiny random-weight model into `out` (metrics with a model)."""
        ...

    @classmethod
    def tiny_options(cls, folder: Path) -> dict[str, Any]:
        """Options of the tiny preset, given the folder build_tiny wrote."""
        ...


class MetricBase:
    """Defaults for the optional parts of `Metric`."""

    name: ClassVar[str]
    needs_model: ClassVar[bool] = False
    Options: ClassVar[type[BaseModel]] = NoOptions
    min_reference_side: ClassVar[int] = 1
    tiny_version: ClassVar[int] = 0
    model: LoadedModel | None = None

    def extra_pixels(self, reference_pixels: int, candidates: int) -> int:
        return 0

    @classmethod
    def build_tiny(cls, out: Path, seed: int) -> None:
        raise NotImplementedError(f"metric {cls.__name__} has no tiny model")

    @classmethod
    def tiny_options(cls, folder: Path) -> dict[str, Any]:
        return {"model": str(folder)}


def checkpoint_label(model: str) -> str:
    """The hub id as given, or a local model's folder name (paths differ per machine)."""
    path = Path(model).expanduser()
    if path.exists():
        return path.resolve().name
    return model


def metric_id(name: str, checkpoint: str = "", revision: str = "", **params: str) -> str:
    head = f"{name}:{checkpoint}@{revision}" if checkpoint else name
    return head + "".join(f";{key}={value}" for key, value in params.items())
