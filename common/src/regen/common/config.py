"""Settings of every regen part, from (highest first): explicit values (CLI flags),
environment variables, a YAML config file, then a preset.

Environment variables are prefixed per part: REGEN_SCORER_DEVICE=cuda,
REGEN_GENERATOR_MODEL=stabilityai/sdxl-turbo, REGEN_DESCRIBER_BACKEND=openai, ...
The config file (`--config FILE` or REGEN_CONFIG) has one section per part:

    generator:
      model: stabilityai/stable-diffusion-xl-base-1.0
      dtype: float16
    scorer:
      device: cuda

Presets: `default` uses the real checkpoints; `tiny` uses the random-weight models
that `regen tiny-models` builds (in REGEN_TINY_MODELS, or ~/.cache/regen/tiny-models),
on the CPU, at sizes that make a whole run take seconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, InitSettingsSource, SettingsConfigDict

PresetName = Literal["tiny", "default"]
PRESETS: tuple[str, ...] = ("tiny", "default")


def tiny_models_dir() -> Path:
    env = os.environ.get("REGEN_TINY_MODELS")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "regen" / "tiny-models"


class ImageLimitSettings(BaseModel):
    max_bytes: int = Field(32 * 1024 * 1024, gt=0)
    max_pixels: int = Field(4096 * 4096, gt=0)

    def limits(self):
        from regen.common.images import ImageLimits

        return ImageLimits(max_bytes=self.max_bytes, max_pixels=self.max_pixels)


class ServiceSettings(BaseSettings):
    """What every model service has: where it listens, where it runs, its limits."""

    section: ClassVar[str] = ""
    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535)
    # "auto": cuda when available, else cpu.
    device: str = "auto"
    # "auto": float16 on cuda, float32 on cpu.
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_message_bytes: int = Field(256 * 1024 * 1024, gt=0)
    images: ImageLimitSettings = Field(default_factory=ImageLimitSettings)
    # Batching across concurrent requests.
    max_batch: int = Field(8, ge=1)
    max_wait_ms: float = Field(10.0, ge=0)
    max_queue: int = Field(1024, ge=1)
    # Threads torch may use on the CPU; 0 leaves torch's default. Pinning makes CPU
    # results bit-exact across runs.
    cpu_threads: int = Field(0, ge=0)


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


class GeneratorSettings(ServiceSettings):
    section: ClassVar[str] = "generator"
    model_config = SettingsConfigDict(env_prefix="REGEN_GENERATOR_", env_nested_delimiter="__", extra="forbid")

    port: int = Field(50052, ge=0, le=65535)
    # "diffusers": any model AutoPipelineForText2Image loads; "openai": an Images API.
    engine: Literal["diffusers", "openai"] = "diffusers"
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    revision: str | None = None
    variant: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int = Field(30, ge=1)
    guidance_scale: float = 7.5
    negative_prompt: str = ""
    # Class name of a diffusers scheduler to use instead of the model's, e.g. "EulerDiscreteScheduler".
    scheduler: str | None = None
    # torch.compile the UNet / transformer (GPU; the first batch of each shape compiles).
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    max_batch: int = Field(8, ge=1)
    # Render every image in its own pipeline call, so an image never depends on what else
    # shared its batch: bit-exact reproducible runs at the cost of batching's throughput.
    # Off, batch composition moves pixels by float rounding only (<= 1 level on the CPU).
    batch_invariant: bool = False
    max_prompt_chars: int = Field(4000, ge=1)
    # Largest accepted request values (a huge size or step count would hold the GPU for minutes).
    max_steps: int = Field(500, ge=1)
    max_side: int = Field(2048, ge=8)
    png_compress_level: int = Field(1, ge=0, le=9)
    # Threads that encode PNGs while the model runs the next batch.
    png_threads: int = Field(2, ge=1)
    # OpenAI-compatible Images API (engine "openai"); `model` is the API's model name.
    api_base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    # A file holding the key (e.g. a mounted Kubernetes secret); used when the env var is unset.
    api_key_file: str | None = None
    api_timeout_s: float = Field(120.0, gt=0)
    # Retries of 429, 408/409 and 5xx answers and connection errors, with the openai client's
    # exponential backoff (0.5 s doubling to 8 s, or the server's Retry-After up to 2 min).
    api_max_retries: int = Field(4, ge=0)
    # Requests in flight at once to the API.
    api_concurrency: int = Field(4, ge=1)
    # Extra fields sent with every images.generate call, e.g. {"quality": "high"}.
    api_options: dict[str, Any] = Field(default_factory=dict)


class DescriberSettings(ServiceSettings):
    section: ClassVar[str] = "describer"
    model_config = SettingsConfigDict(env_prefix="REGEN_DESCRIBER_", env_nested_delimiter="__", extra="forbid")

    port: int = Field(50051, ge=0, le=65535)
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    revision: str | None = None
    # Cap on generated tokens per model call; each task's own limit is the longest answer
    # its schema allows, so a larger value never lets an answer run on.
    max_new_tokens: int = Field(2048, ge=16)
    max_repairs: int = Field(2, ge=0)
    variants_temperature: float = Field(0.8, ge=0)
    # Longest text input (prompt, difference, IUT field) a request may carry.
    max_prompt_chars: int = Field(4000, ge=1)
    # Longest side the image is resized to before the model sees it.
    image_max_side: int = Field(448, ge=14)
    # Answer bounds, written into every JSON schema (and so into the cache key):
    # long texts (global description, prompts, rationale) and short fields (features,
    # names, attributes, relationships, differences).
    max_text_chars: int = Field(400, ge=8)
    max_field_chars: int = Field(120, ge=4)
    max_relationships: int = Field(8, ge=0)
    max_differences: int = Field(8, ge=1)
    max_variants: int = Field(8, ge=1)
    # Hugging Face tokenizer (id or path) that counts prompt tokens exactly, e.g. the
    # generator's CLIP tokenizer; unset: a conservative word-based estimate.
    budget_tokenizer: str | None = None
    # Content-addressed answer cache; default folder ~/.cache/regen/describer.
    cache_enabled: bool = True
    cache_dir: Path | None = None
    # vLLM
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_model_len: int = Field(8192, ge=256)
    # OpenAI-compatible chat completions. The key is read from the environment variable
    # named by api_key_env, else from api_key_file (e.g. a mounted secret); never stored.
    api_base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    api_key_file: Path | None = None
    api_timeout_s: float = Field(120.0, gt=0)
    api_max_retries: int = Field(4, ge=0)


def preset_values(preset: str) -> dict[str, dict[str, Any]]:
    if preset == "default":
        return {}
    if preset != "tiny":
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    root = tiny_models_dir()
    # One thread: bit-exact CPU results across runs, and no oversubscription when the
    # three services share a small machine.
    cpu = {"device": "cpu", "dtype": "float32", "cpu_threads": 1}
    return {
        "scorer": {
            **cpu,
            "clip_model": str(root / "clip"),
            "dinov2_model": str(root / "dinov2"),
            "batch_invariant": True,
        },
        "generator": {
            **cpu,
            "model": str(root / "stable-diffusion"),
            "width": 64,
            "height": 64,
            "steps": 4,
            "guidance_scale": 5.0,
            "batch_invariant": True,
        },
        # Short answer bounds keep the random-weight model's constrained answers (which
        # often run to every length limit) to a few hundred tokens.
        "describer": {
            **cpu,
            "model": str(root / "qwen2.5-vl"),
            "max_new_tokens": 1536,
            "image_max_side": 56,
            "max_text_chars": 32,
            "max_field_chars": 8,
            "max_relationships": 2,
            "max_differences": 2,
            "max_variants": 4,
            "max_batch": 4,
        },
    }


def read_config_file(path: str | os.PathLike | None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except OSError as exc:
        raise ValueError(f"{p}: cannot read config file: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: the config file must be a mapping of sections")
    return data


S = TypeVar("S", bound=BaseSettings)


def load_settings(
    cls: type[S],
    *,
    preset: str | None = None,
    config_file: str | os.PathLike | None = None,
    **overrides: Any,
) -> S:
    """Build settings with precedence overrides > env > config file > preset > defaults.

    `preset` and `config_file` fall back to REGEN_PRESET and REGEN_CONFIG."""
    preset = preset or os.environ.get("REGEN_PRESET") or "default"
    config_file = config_file or os.environ.get("REGEN_CONFIG") or None  # empty means none
    section = getattr(cls, "section", "")
    preset_layer = preset_values(preset).get(section, {})
    file_layer = read_config_file(config_file).get(section, {}) or {}
    overrides = {k: v for k, v in overrides.items() if v is not None}

    class Configured(cls):  # type: ignore[valid-type, misc]
        @classmethod
        def settings_customise_sources(
            cls_, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
        ):
            return (
                init_settings,
                env_settings,
                InitSettingsSource(settings_cls, init_kwargs=dict(file_layer)),
                InitSettingsSource(settings_cls, init_kwargs=dict(preset_layer)),
            )

    Configured.__name__ = cls.__name__
    Configured.__qualname__ = cls.__qualname__
    return Configured(**overrides)


def resolve_device(device: str) -> str:
    """`auto` -> cuda if torch sees a GPU, else cpu. Imports torch only when asked."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    if dtype != "auto":
        return dtype
    return "float16" if device.startswith("cuda") else "float32"
