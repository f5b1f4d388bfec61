"""Metric identities: a stable id per metric that names what produced the number.

Id scheme: `<name>:<checkpoint>@<revision>[;<param>=<value>...]`, or `<name>[;...]` for
metrics without a checkpoint. The checkpoint is the hub id, or the folder name of a
local model; the revision is the hub commit, or "sha256:<hex>" of the local weights.
Scores with different ids must never be averaged together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from regen.common.errors import InvalidInput

CLIP = "clip"
DINOV2 = "dinov2"
SSIM = "ssim"

# SSIM as SPEC §3 fixes it: Gaussian window 11 (sigma 1.5, truncated at 3.5 sigma),
# data range 1, RGB, candidate resized bicubically to the reference's size, border of
# half a window excluded from the mean (as scikit-image does).
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
SSIM_DATA_RANGE = 1.0
SSIM_ID = "ssim;win=11;sigma=1.5;range=1;color=rgb;resize=bicubic"


@dataclass(frozen=True)
class MetricSpec:
    id: str
    name: str
    checkpoint: str
    revision: str
    definition: str


def checkpoint_label(model: str) -> str:
    """The hub id as given, or a local model's folder name (paths differ per machine)."""
    path = Path(model).expanduser()
    if path.exists():
        return path.resolve().name
    return model


def metric_id(name: str, checkpoint: str = "", revision: str = "", **params: str) -> str:
    head = f"{name}:{checkpoint}@{revision}" if checkpoint else name
    return head + "".join(f";{key}={value}" for key, value in params.items())


def ssim_spec() -> MetricSpec:
    return MetricSpec(
        id=SSIM_ID,
        name=SSIM,
        checkpoint="",
        revision="",
        definition=(
            "mean SSIM over RGB channels: Gaussian window 11, sigma 1.5, data range 1, "
            "candidate resized (bicubic) to the reference's size, 5-pixel border excluded"
        ),
    )


def select_metrics(available: Sequence[MetricSpec], requested: Sequence[str]) -> tuple[MetricSpec, ...]:
    """Resolve names ("clip") or full ids; empty means every metric. Unknown -> InvalidInput."""
    if not requested:
        return tuple(available)
    by_key = {spec.name: spec for spec in available} | {spec.id: spec for spec in available}
    chosen: dict[str, MetricSpec] = {}
    for i, key in enumerate(requested):
        spec = by_key.get(key)
        if spec is None:
            known = ", ".join(f"{s.name} ({s.id})" for s in available)
            raise InvalidInput(f"metrics[{i}]: unknown metric {key!r}; this scorer has {known}")
        chosen[spec.id] = spec
    return tuple(chosen.values())
