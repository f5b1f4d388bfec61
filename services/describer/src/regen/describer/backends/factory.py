"""Build the configured describer backend: transformers, vllm or openai."""

from __future__ import annotations

from regen.common.identity import model_revision
from regen.common.settings import resolve_device, resolve_dtype
from regen.describer.backends.base import Backend
from regen.describer.settings import DescriberSettings


def create_backend(settings: DescriberSettings) -> Backend:
    """Load the configured backend (slow: loads weights or starts an engine)."""
    if settings.backend == "openai":
        from regen.describer.backends.openai_backend import OpenAIBackend, read_api_key

        return OpenAIBackend(
            settings.model,
            base_url=settings.api_base_url,
            api_key=read_api_key(settings.api_key_env, settings.api_key_file),
            revision=settings.revision or (model_revision(settings.model) if _is_local(settings.model) else "api"),
            timeout_s=settings.api_timeout_s,
            max_retries=settings.api_max_retries,
        )
    revision = model_revision(settings.model, settings.revision)
    if settings.backend == "vllm":
        from regen.describer.backends.vllm_backend import VLLMBackend

        dtype = "bfloat16" if settings.dtype == "auto" else settings.dtype
        return VLLMBackend(
            settings.model,
            revision=settings.revision,
            model_revision=revision,
            dtype=dtype,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            max_model_len=settings.max_model_len,
            image_max_side=settings.image_max_side,
        )
    from regen.describer.backends.transformers_backend import TransformersBackend

    if settings.cpu_threads:
        import torch

        torch.set_num_threads(settings.cpu_threads)
    device = resolve_device(settings.device)
    return TransformersBackend(
        settings.model,
        revision=settings.revision,
        device=device,
        dtype=resolve_dtype(settings.dtype, device),
        model_revision=revision,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
    )


def _is_local(model: str) -> bool:
    from pathlib import Path

    return Path(model).expanduser().exists()
