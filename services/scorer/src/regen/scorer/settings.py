"""The scorer's settings: section `scorer` of the config file, REGEN_SCORER_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from regen.common.settings import ServiceSettings


class ScorerSettings(ServiceSettings):
    section: ClassVar[str] = "scorer"

    port: int = Field(50053, ge=0, le=65535)
    # Metrics to serve, by registry name (regen.scorer.metrics); empty: every registered one.
    metrics: list[str] = Field(default_factory=list)
    # Each metric's own options, by name, checked by the metric's Options model, e.g.
    # {"clip": {"model": "openai/clip-vit-large-patch14", "revision": "<commit>"},
    #  "dinov2": {"pooling": "cls"}, "ssim": {"chunk_pixels": 4194304}}.
    metric_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Where `regen tiny-models` built the tiny models: metrics that have one use it unless
    # their options name another model (set by the tiny preset).
    tiny_models: Path | None = None
    max_batch: int = Field(64, ge=1)
    max_candidates: int = Field(64, ge=1)
    reference_cache_size: int = Field(512, ge=0)
    # Compute every pair on its own (batch of one), so a score never depends on what
    # else shared its batch: bit-exact reproducible runs at some throughput cost.
    batch_invariant: bool = False
    # Decoded pixels one Score request may occupy (reference, candidates, and what the
    # metrics make of them, e.g. SSIM's resized candidates); larger requests get
    # RESOURCE_EXHAUSTED before any decoding.
    max_request_pixels: int = Field(256 * 1024 * 1024, ge=1)
    # Largest reference, in pixels (2048x2048, the generator's largest side): SSIM compares
    # at the reference's size, so a huge one would hold the worker for a minute. Larger
    # references get INVALID_ARGUMENT before any decoding; downscale them first.
    max_reference_pixels: int = Field(2048 * 2048, ge=1)

    @classmethod
    def tiny_preset(cls, models: Path) -> dict[str, Any]:
        return super().tiny_preset(models) | {"tiny_models": str(models), "batch_invariant": True}
