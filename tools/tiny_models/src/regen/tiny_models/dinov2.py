"""Tiny DINOv2 (`Dinov2Model` + `BitImageProcessor`, the processor facebook/dinov2-base
uses): hidden 32, 2 layers, patch 14; images are resized to 64 and center-cropped to
56×56 (4×4 patches) instead of 256 → 224."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import BitImageProcessor, Dinov2Config, Dinov2Model
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

CROP_SIZE = 56
RESIZE_TO = 64
PATCH_SIZE = 14


def image_processor() -> BitImageProcessor:
    return BitImageProcessor(
        do_resize=True,
        size={"shortest_edge": RESIZE_TO},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": CROP_SIZE, "width": CROP_SIZE},
        do_rescale=True,
        do_normalize=True,
        image_mean=IMAGENET_DEFAULT_MEAN,
        image_std=IMAGENET_DEFAULT_STD,
        do_convert_rgb=True,
    )


def build(out: Path, seed: int) -> None:
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=PATCH_SIZE,
        image_size=CROP_SIZE,
    )
    torch.manual_seed(seed)
    model = Dinov2Model(config).eval()
    model.save_pretrained(out)
    image_processor().save_pretrained(out)
