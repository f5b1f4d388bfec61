"""Generator engines, keyed by `GeneratorSettings.engine`.

Adding an engine: write a module with a class that takes `(settings)` and satisfies
`regen.generator.engines.base.GeneratorEngine`, then add its "module:Class" here (and the
name to `GeneratorSettings.engine`). Engines are imported only when chosen, so an
engine's libraries are needed only where it runs.
"""

from __future__ import annotations

import importlib

from regen.generator.engines.base import (
    EngineInfo,
    GenerationItem,
    GenerationResult,
    GeneratorEngine,
    Interrupted,
    RenderParams,
)
from regen.generator.settings import GeneratorSettings

ENGINES: dict[str, str] = {
    "diffusers": "regen.generator.engines.diffusers_engine:DiffusersEngine",
    "openai": "regen.generator.engines.openai_images:OpenAIImagesEngine",
}


def load_engine(settings: GeneratorSettings) -> GeneratorEngine:
    try:
        target = ENGINES[settings.engine]
    except KeyError:
        raise ValueError(f"engine: unknown engine {settings.engine!r}; choose one of {', '.join(ENGINES)}") from None
    module_name, class_name = target.split(":")
    engine_cls = getattr(importlib.import_module(module_name), class_name)
    return engine_cls(settings)


__all__ = [
    "ENGINES",
    "EngineInfo",
    "GenerationItem",
    "GenerationResult",
    "GeneratorEngine",
    "Interrupted",
    "RenderParams",
    "load_engine",
]
