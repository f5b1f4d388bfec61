"""Generator engines: the models behind the generator, chosen by `GeneratorSettings.engine`.

Adding an engine is one module with a class that takes `(settings)` and satisfies
`regen.generator.engines.base.GeneratorEngine`, plus one line below (or, from another
distribution, an entry point in the group "regen.generator.engines"). Engines are
imported only when chosen, so an engine's libraries are needed only where it runs.
"""

from __future__ import annotations

from regen.common.registry import Registry
from regen.generator.engines.base import EngineClass

REGISTRY: Registry[EngineClass] = Registry(
    "regen.generator.engines",
    "engine",
    {
        "diffusers": "regen.generator.engines.diffusers_engine:DiffusersEngine",
        "openai": "regen.generator.engines.openai_images:OpenAIImagesEngine",
    },
)
