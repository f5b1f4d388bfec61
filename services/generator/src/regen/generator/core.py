"""The generator's request path, with no transport inside: both adapters (gRPC, BentoML
HTTP) call the same `GeneratorCore`.

`GeneratorCore` validates a request against the loaded engine's limits, queues its
prompts on a MicroBatcher that merges concurrent requests with equal render settings
into one engine call, encodes each finished image as PNG on a small thread pool (so the
model worker starts the next batch at once), and yields images as they are ready. A
prompt that fails does not stop the others: every image that succeeds is yielded, then
the failure of the lowest failing index is raised, so a client retries only the missing
indexes.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from regen.common.batching import BatchStats, MicroBatcher
from regen.common.errors import InvalidInput
from regen.common.images import encode_png
from regen.generator.engines.base import (
    EngineInfo,
    GenerationItem,
    GenerationResult,
    GeneratorEngine,
    RenderParams,
    Usage,
)
from regen.generator.settings import GeneratorSettings

# Seeds are int64 on the wire (regen.v1.PromptSpec.seed); every adapter accepts this range.
MAX_SEED = 2**63 - 1


@dataclass
class PromptSpec:
    text: str
    negative_prompt: str = ""
    seed: int = 0


@dataclass
class GenerateRequest:
    """Unset (None) width / height / steps / guidance_scale take the model's defaults."""

    prompts: list[PromptSpec] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None


@dataclass
class GeneratedImage:
    """One finished image; the fields are regen.v1.GeneratedImage's."""

    index: int
    png: bytes
    seed: int
    elapsed_s: float
    width: int
    height: int
    prompt_tokens: int = 0
    prompt_truncated: bool = False
    refused: bool = False
    refusal_reason: str = ""
    # Info's model id and revision: which model rendered it.
    model_id: str = ""
    revision: str = ""
    usage: Usage = field(default_factory=Usage)


@dataclass(frozen=True)
class ImageSize:
    width: int
    height: int


@dataclass(frozen=True)
class GeneratorCapabilities:
    """What the model can do; regen.v1.GeneratorCapabilities' names."""

    seeded: bool
    negative_prompt: bool
    sampling_params: bool
    # The only sizes rendered; empty: any multiple of size_multiple up to max_side.
    sizes: tuple[ImageSize, ...]
    max_side: int

    @classmethod
    def of(cls, info: EngineInfo, settings: GeneratorSettings) -> GeneratorCapabilities:
        sizes = tuple(ImageSize(width, height) for width, height in info.sizes)
        return cls(
            seeded=info.seeded,
            negative_prompt=info.supports_negative_prompt,
            sampling_params=info.supports_sampling_params,
            sizes=sizes,
            max_side=min(settings.max_side, max(max(s.width, s.height) for s in sizes)) if sizes else settings.max_side,
        )


@dataclass(frozen=True)
class GeneratorFigures:
    """The numbers Info reports besides the model and the server; regen.v1.GeneratorInfo's names."""

    prompt_token_budget: int
    default_width: int
    default_height: int
    default_steps: int
    default_guidance_scale: float
    max_batch: int
    size_multiple: int
    steps_run: int


@dataclass(frozen=True)
class GeneratorDescription:
    """What Info answers: the engine's identity, its figures, its capabilities and the
    batching statistics."""

    model: EngineInfo
    figures: GeneratorFigures
    capabilities: GeneratorCapabilities
    stats: BatchStats


def _check_size(name: str, value: int | None, default: int, info: EngineInfo, max_side: int) -> int:
    if value is None:
        return default
    if value < info.size_multiple or value > max_side:
        raise InvalidInput(f"{name}: {value} is out of range; use {info.size_multiple} to {max_side}")
    if value % info.size_multiple:
        raise InvalidInput(f"{name}: {value} is not a multiple of {info.size_multiple}")
    return value


def _check_prompt(index: int, spec: PromptSpec, settings: GeneratorSettings) -> None:
    where = f"prompts[{index}]"
    if not spec.text.strip():
        raise InvalidInput(f"{where}.text: empty; every prompt needs text")
    for name, text in (("text", spec.text), ("negative_prompt", spec.negative_prompt)):
        if len(text) > settings.max_prompt_chars:
            raise InvalidInput(
                f"{where}.{name}: {len(text)} characters exceeds the limit of {settings.max_prompt_chars}"
            )
    if spec.seed < 0:
        raise InvalidInput(f"{where}.seed: {spec.seed} is negative; seeds must be >= 0")
    if spec.seed > MAX_SEED:
        raise InvalidInput(f"{where}.seed: {spec.seed} is out of range; seeds must be <= {MAX_SEED}")


def check_fixed_size(width: int, height: int, info: EngineInfo) -> None:
    """InvalidInput naming width (or height, when the width is one the model has) unless
    the model renders any size or this one is among its fixed sizes."""
    if not info.sizes or (width, height) in info.sizes:
        return
    name = "height" if any(width == w for w, _ in info.sizes) else "width"
    choices = ", ".join(f"{w}x{h}" for w, h in info.sizes)
    raise InvalidInput(f"{name}: {width}x{height} is not a size {info.model_id} renders; use one of {choices}")


def _render_params(request: GenerateRequest, info: EngineInfo, settings: GeneratorSettings) -> RenderParams:
    """The request's size, steps and guidance (defaults filled in), without the negative-prompt flag."""
    width = _check_size("width", request.width, info.default_width, info, settings.max_side)
    height = _check_size("height", request.height, info.default_height, info, settings.max_side)
    steps = info.default_steps if request.steps is None else request.steps
    if request.steps is not None and not 1 <= request.steps <= settings.max_steps:
        raise InvalidInput(
            f"steps: {request.steps} is out of range; use 1 to {settings.max_steps}, "
            f"or leave it unset for the model's default ({info.default_steps})"
        )
    guidance = info.default_guidance_scale if request.guidance_scale is None else request.guidance_scale
    if not math.isfinite(guidance) or not 0 <= guidance <= 100:
        raise InvalidInput(f"guidance_scale: {guidance} is out of range; use 0 to 100")
    check_fixed_size(width, height, info)
    if not info.supports_sampling_params:
        steps, guidance = 0, 0.0  # ignored by the engine; keep batches mergeable
    return RenderParams(width, height, steps, guidance, uses_negative_prompt=False)


def validate(request: GenerateRequest, info: EngineInfo, settings: GeneratorSettings) -> list[GenerationItem]:
    """The request as engine items, or InvalidInput naming the field (and index)."""
    prompts = request.prompts
    if not prompts:
        raise InvalidInput("prompts: empty; send at least one prompt")
    if len(prompts) > settings.max_batch:
        raise InvalidInput(
            f"prompts: {len(prompts)} prompts exceed this generator's max_batch of {settings.max_batch}; "
            "split the request"
        )
    params = _render_params(request, info, settings)
    items: list[GenerationItem] = []
    for index, spec in enumerate(prompts):
        _check_prompt(index, spec, settings)
        negative = spec.negative_prompt or settings.negative_prompt
        if negative and not info.supports_negative_prompt:
            raise InvalidInput(
                f"prompts[{index}].negative_prompt: the {info.backend} engine ({info.model_id}) has none"
            )
        item_params = replace(params, uses_negative_prompt=bool(negative))
        items.append(GenerationItem(index, spec.text, negative, spec.seed, item_params))
    return items


def load_engine(settings: GeneratorSettings) -> GeneratorEngine:
    """The engine `settings.engine` names, built from the settings; any registered name works."""
    from regen.generator.engines import REGISTRY

    try:
        engine_class = REGISTRY.load(settings.engine)
    except ValueError as exc:
        raise ValueError(f"engine: {exc}") from None
    return engine_class(settings)


class GeneratorCore:
    """One loaded engine behind a cross-request batcher; share it between adapters."""

    def __init__(self, engine: GeneratorEngine, settings: GeneratorSettings) -> None:
        info = engine.info()
        try:
            check_fixed_size(info.default_width, info.default_height, info)
        except InvalidInput as exc:
            raise ValueError(f"the default size, {exc}; set the width and height settings to one of them") from None
        self.engine = engine
        self.settings = settings
        self.batcher: MicroBatcher[GenerationItem, GenerationResult] = MicroBatcher(
            engine.generate,
            max_batch=1 if settings.batch_invariant else settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000,
            max_queue=settings.max_queue,
            # Everything that must be equal within one pipeline call.
            key=lambda item: item.params,
            name="generator",
        )
        self._encoder = ThreadPoolExecutor(settings.png_threads, thread_name_prefix="png-encode")

    @classmethod
    def load(cls, settings: GeneratorSettings) -> GeneratorCore:
        """Load the configured engine for serving."""
        return cls(load_engine(settings), settings)

    def describe(self) -> GeneratorDescription:
        info = self.engine.info()
        figures = GeneratorFigures(
            prompt_token_budget=info.prompt_token_budget,
            default_width=info.default_width,
            default_height=info.default_height,
            default_steps=info.default_steps,
            default_guidance_scale=info.default_guidance_scale,
            max_batch=self.settings.max_batch,
            size_multiple=info.size_multiple,
            steps_run=self.engine.steps_run(),
        )
        capabilities = GeneratorCapabilities.of(info, self.settings)
        return GeneratorDescription(model=info, figures=figures, capabilities=capabilities, stats=self.batcher.stats)

    def validate(self, request: GenerateRequest) -> list[GenerationItem]:
        return validate(request, self.engine.info(), self.settings)

    def _encode(self, result: GenerationResult) -> bytes:
        if result.image is None:
            return b""
        return encode_png(result.image, self.settings.png_compress_level)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[GeneratedImage]:
        """Yield one image per prompt as soon as it is encoded (any order; see `index`).

        A prompt that fails (its engine call or its encoding) does not cancel the others:
        every image that succeeds is yielded, then the failure of the lowest failing index
        is raised, so a retry asks only for the missing indexes and nothing is rendered (or
        billed) twice. Closing the iterator (client gone, deadline passed) cancels the request's queued
        items and marks its in-flight ones, so the engine stops a batch nobody waits for."""
        arrived = time.monotonic()
        items = self.validate(request)
        model = self.engine.info()
        loop = asyncio.get_running_loop()
        rendering: dict[asyncio.Future, GenerationItem] = dict(zip(self.batcher.submit(items), items, strict=True))
        encoding: dict[asyncio.Future, tuple[GenerationItem, GenerationResult]] = {}
        failures: dict[int, Exception] = {}
        try:
            while rendering or encoding:
                done, _ = await asyncio.wait([*rendering, *encoding], return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    if future in rendering:
                        item = rendering.pop(future)
                        try:
                            result = future.result()  # the item's error, if it failed
                        except Exception as exc:
                            failures[item.index] = exc
                            continue
                        encoding[loop.run_in_executor(self._encoder, self._encode, result)] = (item, result)
                        continue
                    item, result = encoding.pop(future)
                    try:
                        png = future.result()
                    except Exception as exc:
                        failures[item.index] = exc
                        continue
                    yield _finished(item, result, png, time.monotonic() - arrived, model)
        finally:
            for item in items:
                item.cancelled.set()
            for future in rendering:
                future.cancel()
        if failures:
            raise failures[min(failures)]

    async def generate_all(self, request: GenerateRequest) -> list[GeneratedImage]:
        """Every image, in prompt order."""
        images = [image async for image in self.generate(request)]
        return sorted(images, key=lambda image: image.index)

    async def close(self) -> None:
        await self.batcher.close()
        self._encoder.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.engine.close)


def _finished(
    item: GenerationItem, result: GenerationResult, png: bytes, elapsed_s: float, model: EngineInfo
) -> GeneratedImage:
    image = result.image
    return GeneratedImage(
        index=item.index,
        png=png,
        seed=item.seed,
        elapsed_s=elapsed_s,
        width=image.width if image is not None else item.params.width,
        height=image.height if image is not None else item.params.height,
        prompt_tokens=result.prompt_tokens,
        prompt_truncated=result.prompt_truncated,
        refused=result.refused,
        refusal_reason=result.refusal_reason,
        model_id=model.model_id,
        revision=model.revision,
        usage=result.usage,
    )
