"""CLIP: cosine similarity of the projected image embeddings (`get_image_features`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from regen.scorer.metrics.embedding import CheckpointOptions, EmbeddingMetric, center_crop_processor


class ClipOptions(CheckpointOptions):
    model: str = "openai/clip-vit-base-patch32"


class ClipMetric(EmbeddingMetric):
    name: ClassVar[str] = "clip"
    Options = ClipOptions
    tiny_version: ClassVar[int] = 2

    @classmethod
    def definition(cls, options: Any) -> str:
        return "cosine similarity of the projected image embeddings (get_image_features)"

    @classmethod
    def check_model(cls, model: torch.nn.Module, options: Any) -> None:
        if not hasattr(model, "get_image_features"):
            raise ValueError(f"clip model {options.model!r} ({type(model).__name__}) has no get_image_features")

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self._network.get_image_features(pixel_values=pixels)
        # transformers 5 returns a model output whose pooler_output is projected.
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @classmethod
    def build_tiny(cls, out: Path, seed: int) -> None:
        """CLIPModel + CLIPProcessor shaped like openai/clip-vit-base-patch32 (224×224 input,
        patch 32), but hidden 32, 2 layers and projection 16."""
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor
        from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

        # The text tower needs a tokenizer; the tiny-model builder trains one offline.
        from regen.tiny_models.tokenizers import CLIP_MAX_LENGTH, clip_tokenizer

        tokenizer = clip_tokenizer()
        size = 224
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
                "image_size": size,
                "patch_size": 32,
            },
            projection_dim=16,
        )
        torch.manual_seed(seed)
        CLIPModel(config).eval().save_pretrained(out)
        image_processor = center_crop_processor(
            CLIPImageProcessor, resize_to=size, crop=size, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD
        )
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
        processor.save_pretrained(out)  # processor_config.json (+ tokenizer files)
        processor.image_processor.save_pretrained(out)  # preprocessor_config.json too, as real checkpoints have
