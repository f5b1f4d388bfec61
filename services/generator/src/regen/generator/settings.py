"""The generator's settings: section `generator` of the config file, REGEN_GENERATOR_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from regen.common.settings import ServiceSettings


class GeneratorSettings(ServiceSettings):
    section: ClassVar[str] = "generator"

    port: int = Field(50052, ge=0, le=65535)
    # A name in regen.generator.engines.REGISTRY, checked when the engine loads: "diffusers"
    # (any model AutoPipelineForText2Image loads), "openai" (an Images API), or a plugin's.
    engine: str = "diffusers"
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
    # The measured best for the default SD1.5-class model on an H100 (16 images of 512² in
    # 3.24 s); SDXL at 1024² does best at 8, and memory may ask for less.
    max_batch: int = Field(16, ge=1)
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
    # Seconds one API call may take. Each prompt is one call, never retried here: the
    # orchestrator retries UNAVAILABLE and RESOURCE_EXHAUSTED, asking only for what is missing.
    api_timeout_s: float = Field(120.0, gt=0)
    # Requests in flight at once to the API.
    api_concurrency: int = Field(4, ge=1)
    # Extra fields sent with every images.generate call, e.g. {"quality": "high"}.
    api_options: dict[str, Any] = Field(default_factory=dict)
    # An answer's image URL is fetched only from the API's host or these hosts, and never
    # from a private, loopback or link-local address unless api_fetch_private.
    api_fetch_hosts: list[str] = Field(default_factory=list)
    api_fetch_private: bool = False

    @classmethod
    def tiny_preset(cls, models: Path) -> dict[str, Any]:
        return super().tiny_preset(models) | {
            "model": str(models / "stable-diffusion"),
            "width": 64,
            "height": 64,
            "steps": 4,
            "guidance_scale": 5.0,
            "batch_invariant": True,
        }
