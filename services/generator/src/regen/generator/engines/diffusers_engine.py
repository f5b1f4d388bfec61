"""Any text-to-image model that `diffusers.AutoPipelineForText2Image` loads.

One pipeline call per batch, with one seeded CPU `torch.Generator` per image: the initial
noise of an image depends only on its own seed, so it does not matter which other
prompts share its batch, and it is the same on every device.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from regen.common.identity import model_revision
from regen.common.settings import resolve_device, resolve_dtype
from regen.generator.engines.base import EngineInfo, GenerationItem, GenerationResult, Interrupted
from regen.generator.settings import GeneratorSettings

log = logging.getLogger(__name__)

# Special-token-inclusive limit reported when a tokenizer declares none (transformers'
# VERY_LARGE_INTEGER) and the pipeline has no `max_sequence_length` default either.
_UNLIMITED = 1_000_000


def hub_revision(model: str, revision: str | None) -> str:
    """The commit a hub model resolved to (from the local cache), else model_revision()."""
    if Path(model).expanduser().exists():
        return model_revision(model, revision)
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model, revision=revision, local_files_only=True))
        if re.fullmatch(r"[0-9a-f]{40}", folder.name):
            return folder.name
    except Exception:
        pass
    return model_revision(model, revision)


def _is_clip(tokenizer: Any) -> bool:
    return "CLIP" in type(tokenizer).__name__


def token_budget(pipeline: Any) -> tuple[Any | None, int]:
    """(tokenizer to count with, tokens kept including special tokens; 0 = unlimited).

    CLIP text encoders keep `model_max_length` (77) tokens, and every CLIP-conditioned
    pipeline (SD1.x/2.x, SDXL, SD3, FLUX) cuts there; SD3 and FLUX also feed the prompt to
    a T5 encoder with a longer limit, but the CLIP budget is the one that binds first.
    Pipelines without CLIP (PixArt: T5 only) cut at their `max_sequence_length`."""
    found = (getattr(pipeline, name, None) for name in ("tokenizer", "tokenizer_2", "tokenizer_3"))
    tokenizers: list[Any] = [t for t in found if t is not None]
    if not tokenizers:
        return None, 0
    clip = [t for t in tokenizers if _is_clip(t)]
    if clip:
        tokenizer = min(clip, key=lambda t: t.model_max_length)
        return tokenizer, int(tokenizer.model_max_length)
    tokenizer = tokenizers[0]
    default = inspect.signature(pipeline.__call__).parameters.get("max_sequence_length")
    if default is not None and isinstance(default.default, int):
        return tokenizer, default.default
    limit = int(getattr(tokenizer, "model_max_length", _UNLIMITED) or _UNLIMITED)
    return tokenizer, 0 if limit >= _UNLIMITED else limit


def default_size(pipeline: Any) -> int:
    scale = int(getattr(pipeline, "vae_scale_factor", 8))
    sample: Any = getattr(pipeline, "default_sample_size", None)
    if sample is None:
        # No `or`: a torch.compile'd module refuses truth tests (it has no len()).
        denoiser = getattr(pipeline, "unet", None)
        if denoiser is None:
            denoiser = getattr(pipeline, "transformer", None)
        sample = getattr(getattr(denoiser, "config", None), "sample_size", 64)
    if isinstance(sample, list | tuple):
        sample = sample[0]
    return int(sample) * scale


def size_multiple(pipeline: Any) -> int:
    """Latent diffusion needs sizes divisible by the VAE's downscaling (8 for every real
    model), times the transformer's patch (FLUX packs 2x2 latent patches)."""
    scale = int(getattr(pipeline, "vae_scale_factor", 8))
    transformer = getattr(pipeline, "transformer", None)
    patch = int(getattr(getattr(transformer, "config", None), "patch_size", 1) or 1)
    if type(pipeline).__name__.startswith("Flux"):
        patch = max(patch, 2)
    return max(8, scale * patch)


class DiffusersEngine:
    """A loaded diffusers pipeline. Pass `pipeline` to serve one built in memory."""

    def __init__(self, settings: GeneratorSettings, pipeline: Any | None = None) -> None:
        import torch

        if settings.cpu_threads:
            torch.set_num_threads(settings.cpu_threads)
        self._torch = torch
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        torch_dtype = getattr(torch, self.dtype)
        if pipeline is None:
            from diffusers import AutoPipelineForText2Image

            kwargs: dict[str, Any] = {_dtype_argument(): torch_dtype}
            if settings.revision:
                kwargs["revision"] = settings.revision
            if settings.variant:
                kwargs["variant"] = settings.variant
            log.info("loading %s (%s on %s)", settings.model, self.dtype, self.device)
            pipeline = AutoPipelineForText2Image.from_pretrained(settings.model, **kwargs)
        pipeline.to(self.device)
        if settings.scheduler:
            pipeline.scheduler = _scheduler(settings.scheduler, pipeline.scheduler)
        pipeline.set_progress_bar_config(disable=True)
        if settings.compile:
            _compile_denoiser(pipeline, settings.compile_mode)
        self.pipeline = pipeline

        call_params = inspect.signature(pipeline.__call__).parameters
        self._accepts_step_callback = "callback_on_step_end" in call_params
        self._tokenizer, budget = token_budget(pipeline)
        size = default_size(pipeline)
        self._info = EngineInfo(
            model_id=settings.model,
            revision=hub_revision(settings.model, settings.revision),
            backend="diffusers",
            device=self.device,
            dtype=self.dtype,
            prompt_token_budget=budget,
            default_width=settings.width or size,
            default_height=settings.height or size,
            default_steps=settings.steps,
            default_guidance_scale=settings.guidance_scale,
            size_multiple=size_multiple(pipeline),
            supports_negative_prompt="negative_prompt" in call_params,
            libraries=("torch", "diffusers", "transformers"),
        )
        self._steps_run = 0

    def info(self) -> EngineInfo:
        return self._info

    def steps_run(self) -> int:
        return self._steps_run

    def count_tokens(self, prompt: str) -> tuple[int, bool]:
        """(tokens including start/end, whether the pipeline will cut the prompt).

        The pipelines tokenize with `truncation=True, max_length=model_max_length`, so a
        prompt is cut exactly when its special-token-inclusive length exceeds the budget;
        the pipeline does the cutting itself, we only report it."""
        if self._tokenizer is None:
            return 0, False
        ids = self._tokenizer(prompt, truncation=False, add_special_tokens=True, verbose=False)["input_ids"]
        budget = self._info.prompt_token_budget
        return len(ids), bool(budget) and len(ids) > budget

    def generate(self, batch: Sequence[GenerationItem]) -> list[GenerationResult | BaseException]:
        torch = self._torch
        if all(item.cancelled.is_set() for item in batch):
            raise Interrupted("every request of this batch was cancelled before it started")
        params = batch[0].params
        counts = [self.count_tokens(item.prompt) for item in batch]
        kwargs: dict[str, Any] = {
            "prompt": [item.prompt for item in batch],
            "width": params.width,
            "height": params.height,
            "num_inference_steps": params.steps,
            "guidance_scale": params.guidance_scale,
            "generator": [torch.Generator("cpu").manual_seed(item.seed) for item in batch],
            "output_type": "pil",
        }
        if params.uses_negative_prompt:
            kwargs["negative_prompt"] = [item.negative_prompt for item in batch]
        if self._accepts_step_callback:

            def on_step_end(_pipe: Any, _step: int, _timestep: Any, _tensors: dict) -> dict:
                self._steps_run += 1
                if all(item.cancelled.is_set() for item in batch):
                    raise Interrupted(f"every request of this batch was cancelled after {_step + 1} steps")
                return {}

            kwargs["callback_on_step_end"] = on_step_end
        with torch.inference_mode():
            output = self.pipeline(**kwargs)
        if not self._accepts_step_callback:
            self._steps_run += params.steps
        flagged = getattr(output, "nsfw_content_detected", None) or [False] * len(batch)
        results: list[GenerationResult | BaseException] = []
        for image, (tokens, truncated), nsfw in zip(output.images, counts, flagged, strict=True):
            if nsfw:
                results.append(
                    GenerationResult(
                        image=None,
                        prompt_tokens=tokens,
                        prompt_truncated=truncated,
                        refused=True,
                        refusal_reason="the pipeline's safety checker flagged the image",
                    )
                )
            else:
                results.append(GenerationResult(image=image, prompt_tokens=tokens, prompt_truncated=truncated))
        return results

    def close(self) -> None:
        self.pipeline = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()


def _dtype_argument() -> str:
    """diffusers renamed `torch_dtype` to `dtype` (the old name warns)."""
    try:
        from diffusers.utils.deprecation_utils import _TORCH_DTYPE_DEPRECATION_MESSAGE  # noqa: F401
    except ImportError:
        return "torch_dtype"
    return "dtype"


def _scheduler(name: str, current: Any) -> Any:
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_config"):
        known = sorted(n for n in dir(diffusers) if n.endswith("Scheduler"))
        raise ValueError(f"scheduler: unknown diffusers scheduler {name!r}; choose one of {', '.join(known)}")
    return cls.from_config(current.config)


def _compile_denoiser(pipeline: Any, mode: str) -> None:
    import torch

    if getattr(pipeline, "unet", None) is not None:
        pipeline.unet.to(memory_format=torch.channels_last)
        pipeline.unet = torch.compile(pipeline.unet, mode=mode, fullgraph=False)
    elif getattr(pipeline, "transformer", None) is not None:
        pipeline.transformer = torch.compile(pipeline.transformer, mode=mode, fullgraph=False)
    else:
        raise ValueError("compile: this pipeline has neither a unet nor a transformer to compile")
