"""The scorer's settings: section `scorer` of the config file, REGEN_SCORER_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from regen.common.settings import ServiceSettings


class ScorerSettings(ServiceSettings):
    section: ClassVar[str] = "scorer"
    model_config = SettingsConfigDict(env_prefix="REGEN_SCORER_", env_nested_delimiter="__", extra="forbid")

    port: int = Field(50053, ge=0, le=65535)
    clip_model: str = "openai/clip-vit-base-patch32"
    clip_revision: str | None = None
    dinov2_model: str = "facebook/dinov2-base"
    dinov2_revision: str | None = None
    dinov2_pooling: Literal["mean", "cls"] = "mean"
    max_batch: int = Field(64, ge=1)
    max_candidates: int = Field(64, ge=1)
    reference_cache_size: int = Field(512, ge=0)
    # Embed every image on its own (batch of one), so a score never depends on what
    # else shared its forward pass: bit-exact reproducible runs at some throughput cost.
    batch_invariant: bool = False
    # Decoded pixels one Score request may occupy (reference + candidates + candidates
    # resized for SSIM); larger requests get RESOURCE_EXHAUSTED before any decoding.
    max_request_pixels: int = Field(256 * 1024 * 1024, ge=1)
    # Pixels per SSIM chunk: bounds SSIM's working memory (~60 bytes per pixel).
    ssim_chunk_pixels: int = Field(4 * 1024 * 1024, ge=1)

    @classmethod
    def tiny_preset(cls, models: Path) -> dict[str, Any]:
        return super().tiny_preset(models) | {
            "clip_model": str(models / "clip"),
            "dinov2_model": str(models / "dinov2"),
            "batch_invariant": True,
        }
