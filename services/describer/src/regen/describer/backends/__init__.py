"""Describer backends: one module each, behind `base.Backend`. The core builds the one
that the setting `backend` names; installed plugins add theirs under the entry-point
group "regen.describer.backends"."""

from __future__ import annotations

from regen.common.registry import Registry
from regen.describer.backends.base import Backend

REGISTRY: Registry[type[Backend]] = Registry(
    "regen.describer.backends",
    "backend",
    {
        "transformers": "regen.describer.backends.transformers_backend:TransformersBackend",
        "vllm": "regen.describer.backends.vllm_backend:VLLMBackend",
        "openai": "regen.describer.backends.openai_backend:OpenAIBackend",
    },
)
