"""What every generator engine provides, whatever runs the model.

An engine renders one batch at a time on the service's single model worker thread; the
service around it (validation, cross-request batching, PNG encoding, streaming) is the
same for every engine. A new engine is one module with a class that satisfies
`GeneratorEngine`, plus a line in `regen.generator.engines.REGISTRY`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from PIL import Image

from regen.generator.settings import GeneratorSettings


@dataclass(frozen=True)
class RenderParams:
    """Settings shared by every image of one engine call (the batching key)."""

    width: int
    height: int
    steps: int
    guidance_scale: float
    uses_negative_prompt: bool


@dataclass
class GenerationItem:
    """One image to render. `cancelled` is set when nobody waits for it any more."""

    index: int
    prompt: str
    negative_prompt: str
    seed: int
    params: RenderParams
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Usage:
    """What rendering one image cost (regen.v1.Usage): remote API calls (retries among
    them), and what the API billed, as it reported it. All zero for a local model."""

    api_calls: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    images: int = 0
    # US dollars, only where the API states the cost.
    cost_usd: float | None = None


@dataclass
class GenerationResult:
    """An image, or a refusal (content policy / safety checker) with its reason."""

    image: Image.Image | None
    prompt_tokens: int = 0
    prompt_truncated: bool = False
    refused: bool = False
    refusal_reason: str = ""
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class EngineInfo:
    model_id: str
    revision: str
    backend: str
    device: str
    dtype: str
    # Tokens the text encoder keeps, special tokens included (77 for CLIP); 0 = unlimited.
    prompt_token_budget: int
    default_width: int
    default_height: int
    # 0 when the engine has no such knob (vendor APIs).
    default_steps: int
    default_guidance_scale: float
    size_multiple: int
    supports_negative_prompt: bool = True
    # Whether `steps` / `guidance_scale` change anything (vendor APIs ignore them).
    supports_sampling_params: bool = True
    # Whether the same prompt, settings and seed give the same image (vendor APIs: no).
    seeded: bool = True
    # The only (width, height) pairs the model renders (a vendor's fixed sizes); empty:
    # any multiple of size_multiple up to the service's max_side.
    sizes: tuple[tuple[int, int], ...] = ()
    libraries: tuple[str, ...] = ()


class Interrupted(Exception):
    """Every item of the batch was cancelled, so the engine stopped early."""


@runtime_checkable
class GeneratorEngine(Protocol):
    """A text-to-image model. `generate` runs on one worker thread, one batch at a time."""

    def info(self) -> EngineInfo: ...

    def generate(self, batch: Sequence[GenerationItem]) -> list[GenerationResult | BaseException]:
        """One result per item, in order. All items share `params`. A per-item exception
        fails only that item; raising fails the whole batch."""
        ...

    def steps_run(self) -> int:
        """Denoising steps run since start (0 where the engine cannot tell)."""
        ...

    def close(self) -> None: ...


# What the registry holds: a class (or any callable) that builds an engine from the settings.
EngineClass = Callable[[GeneratorSettings], GeneratorEngine]
