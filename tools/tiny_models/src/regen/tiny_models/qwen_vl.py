"""Tiny Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration` + `Qwen2_5_VLProcessor`).

Text: hidden 64, 2 layers, 4 heads (head_dim 16), 2 KV heads, M-RoPE sections
(2, 3, 3) (sum = head_dim / 2). Vision: depth 2, hidden 32, patch 14, spatial merge 2,
`out_hidden_size=64`, full attention in block 1. The vocab is the offline byte-level BPE
(`tokenizers.qwen_tokenizer`), with Qwen's special tokens right after it; the model's
`vocab_size` equals `len(tokenizer)`.

The image (and video) processor keeps each image between 56×56 and 112×112 pixels
(`min_pixels`/`max_pixels`), sides rounded to multiples of 28: a 56×56 image is 4×4
patches → 4 image tokens; a 512×512 one is scaled to 112×112 = 8×8 patches → 16 tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from regen.tiny_models.tokenizers import qwen_tokenizer

PATCH_SIZE = 14
MERGE_SIZE = 2
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112

# Qwen2.5-VL's own chat template: a system prompt is added when the first message is not
# one; content is a string or a list of {"type": "image"|"video"|"text", ...} parts.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Images and video frames are cut into the same patches.
VISION_PATCHING: dict[str, Any] = {
    "min_pixels": MIN_PIXELS,
    "max_pixels": MAX_PIXELS,
    "patch_size": PATCH_SIZE,
    "temporal_patch_size": 2,
    "merge_size": MERGE_SIZE,
    "image_mean": OPENAI_CLIP_MEAN,
    "image_std": OPENAI_CLIP_STD,
}


def image_processor() -> Qwen2VLImageProcessor:
    return Qwen2VLImageProcessor(**VISION_PATCHING)


def video_processor() -> Qwen2VLVideoProcessor:
    # cap_pixels_per_frame explicit, which also silences transformers' deprecation warning.
    return Qwen2VLVideoProcessor(cap_pixels_per_frame=False, **VISION_PATCHING)


def processor() -> Qwen2_5_VLProcessor:
    return Qwen2_5_VLProcessor(
        image_processor=image_processor(),
        tokenizer=qwen_tokenizer(CHAT_TEMPLATE),
        video_processor=video_processor(),
        chat_template=CHAT_TEMPLATE,
    )


def config(vocab_size: int, ids: dict[str, int]) -> Qwen2_5_VLConfig:
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "max_window_layers": 2,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": 2,
            "window_size": 112,
            "out_hidden_size": 64,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build(out: Path, seed: int) -> None:
    proc = processor()
    tok = proc.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>")}
    ids |= {t: tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>")}
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config(len(tok), ids)).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    model.save_pretrained(out)
    proc.save_pretrained(out)  # processor_config.json, tokenizer files, chat_template.jinja
    # Standalone preprocessor_config.json / video_preprocessor_config.json too, as real checkpoints have.
    proc.image_processor.save_pretrained(out)
    proc.video_processor.save_pretrained(out)
