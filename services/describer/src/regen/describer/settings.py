"""The describer's settings: section `describer` of the config file, REGEN_DESCRIBER_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from regen.common.settings import ServiceSettings


class DescriberSettings(ServiceSettings):
    section: ClassVar[str] = "describer"

    port: int = Field(50051, ge=0, le=65535)
    # A name in regen.describer.backends.REGISTRY (built in: transformers, vllm, openai)
    # or of an installed plugin; checked when the core is built.
    backend: str = "transformers"
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    # Part of every cache key. For an API model, pin a dated model name
    # (gpt-4o-2024-08-06) or set this: an undated alias may move to another model.
    revision: str | None = None
    # Cap on generated tokens per model call; each task's own limit is the longest answer
    # its schema allows, so a larger value never lets an answer run on.
    max_new_tokens: int = Field(2048, ge=16)
    max_repairs: int = Field(2, ge=0)
    variants_temperature: float = Field(0.8, ge=0)
    # Judge's sampling temperature; 0: greedy. Above 0, each request's seed draws its own
    # judgement (the orchestrator's repeat-agreement check asks again with another seed).
    judge_temperature: float = Field(0.0, ge=0)
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
    # The request field of the token limit: auto is max_completion_tokens for OpenAI's own
    # API (its newer models refuse max_tokens) and max_tokens for other servers.
    api_token_parameter: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"

    @classmethod
    def tiny_preset(cls, models: Path) -> dict[str, Any]:
        # Short answer bounds keep the random-weight model's constrained answers (which
        # often run to every length limit) to a few hundred tokens.
        return super().tiny_preset(models) | {
            "model": str(models / "qwen2.5-vl"),
            "max_new_tokens": 1536,
            "image_max_side": 56,
            "max_text_chars": 32,
            "max_field_chars": 8,
            "max_relationships": 2,
            "max_differences": 2,
            "max_variants": 4,
            "max_batch": 4,
        }
