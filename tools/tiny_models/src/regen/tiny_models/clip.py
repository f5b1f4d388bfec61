"""Tiny CLIP (`CLIPModel` + `CLIPProcessor`), shaped like openai/clip-vit-base-patch32:
224×224 input, patch 32 (7×7 patches), but hidden 32, 2 layers and projection 16."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from regen.tiny_models.tokenizers import CLIP_MAX_LENGTH, clip_tokenizer

IMAGE_SIZE = 224
PROJECTION_DIM = 16


def image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    )


def build(out: Path, seed: int) -> None:
    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": CLIP_MAX_LENGTH,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": 32,
        },
        projection_dim=PROJECTION_DIM,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(out)
    processor = CLIPProcessor(image_processor=image_processor(), tokenizer=tokenizer)
    processor.save_pretrained(out)  # processor_config.json (+ tokenizer files)
    processor.image_processor.save_pretrained(out)  # preprocessor_config.json too, as real checkpoints have
