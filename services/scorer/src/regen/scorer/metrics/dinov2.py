"""DINOv2: cosine similarity of the mean (or the CLS token) of `last_hidden_state`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from regen.scorer.metrics.embedding import CheckpointOptions, EmbeddingMetric, center_crop_processor

POOLED = {"mean": "the mean of last_hidden_state over all tokens", "cls": "the CLS token of last_hidden_state"}


class Dinov2Options(CheckpointOptions):
    model: str = "facebook/dinov2-base"
    pooling: Literal["mean", "cls"] = "mean"


class Dinov2Metric(EmbeddingMetric):
    name: ClassVar[str] = "dinov2"
    Options = Dinov2Options
    tiny_version: ClassVar[int] = 1

    @classmethod
    def definition(cls, options: Any) -> str:
        return f"cosine similarity of {POOLED[options.pooling]}"

    @classmethod
    def id_params(cls, options: Any) -> dict[str, str]:
        return {"pool": options.pooling}

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self._network(pixel_values=pixels).last_hidden_state
        return hidden.mean(dim=1) if self.options.pooling == "mean" else hidden[:, 0]

    @classmethod
    def build_tiny(cls, out: Path, seed: int) -> None:
        """Dinov2Model + the BitImageProcessor facebook/dinov2-base uses: hidden 32, 2 layers,
        patch 14; images resized to 64 and center-cropped to 56×56 (4×4 patches)."""
        from transformers import BitImageProcessor, Dinov2Config, Dinov2Model
        from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        crop = 56
        config = Dinov2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14, image_size=crop
        )
        torch.manual_seed(seed)
        Dinov2Model(config).eval().save_pretrained(out)
        center_crop_processor(
            BitImageProcessor, resize_to=64, crop=crop, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD
        ).save_pretrained(out)
