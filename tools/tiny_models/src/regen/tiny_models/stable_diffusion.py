"""Tiny Stable Diffusion 1.x pipeline (`StableDiffusionPipeline`): UNet
`block_out_channels=(32, 64)`, `AutoencoderKL` `[32, 64]` (VAE scale factor 2, 4 latent
channels), `CLIPTextModel` hidden 32 with the offline CLIP tokenizer, DDIM scheduler with
SD 1.5's betas and `steps_offset=1`, no safety checker. UNet `sample_size=32` makes the
pipeline's default output 64×64 (sample_size × VAE scale factor)."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from regen.tiny_models.tokenizers import CLIP_MAX_LENGTH, clip_tokenizer

HIDDEN = 32
LATENT_SIZE = 32  # UNet sample_size; images default to 2 × this (VAE scale factor 2)


def unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=32,
    )


def vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=2 * LATENT_SIZE,
    )


def text_encoder(vocab_size: int, bos: int, eos: int, pad: int) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        layer_norm_eps=1e-5,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    return CLIPTextModel(config).eval()


def scheduler() -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def build(out: Path, seed: int) -> None:
    tokenizer = clip_tokenizer()
    torch.manual_seed(seed)
    components = {
        "unet": unet().eval(),
        "vae": vae().eval(),
        "text_encoder": text_encoder(
            len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        ),
    }
    pipe = StableDiffusionPipeline(
        **components,
        tokenizer=tokenizer,
        scheduler=scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
