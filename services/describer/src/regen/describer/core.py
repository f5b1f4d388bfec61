"""The describer's request path over any backend: input checks, cache, validation and repair.

Every task follows the same path (`DescriberCore._answer`):
  1. the inputs are checked (`inputs`), before any model call;
  2. the cache key is computed from the backend identity, template version, task, schema,
     inputs and sampling settings; a cached answer is returned without a model call, and
     identical requests in flight share one model call;
  3. the model answers under the task's JSON schema; the answer is parsed, checked
     against the schema and then by the task's own rules (`review`: distinct variants,
     prompts within the token budget, ...);
  4. an invalid answer is sent back with the list of problems (bounded by max_repairs);
     one that stays invalid raises BadModelOutput (FAILED_PRECONDITION) with the raw
     text, never a guessed value;
  5. a valid answer is cached.
No transport code here: the gRPC and HTTP adapters (`grpc_api`, `http_api`) both call this.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from PIL import Image

from regen.common.errors import BadModelOutput
from regen.common.images import ImageLimits
from regen.describer import inputs, review, templates
from regen.describer.answers import Difference, ImageUnderstandingTree, Judgement
from regen.describer.backends import REGISTRY
from regen.describer.backends.base import Backend, BackendIdentity, Message, ModelCall
from regen.describer.budget import EstimatedTokens, TokenCounter, token_counter
from regen.describer.cache import AnswerCache, CachedAnswer, cache_key, default_cache_dir
from regen.describer.review import Review
from regen.describer.schemas import (
    AnswerBounds,
    compare_schema,
    iut_schema,
    judge_schema,
    max_answer_bytes,
    prompt_schema,
    schema_digest,
    variants_schema,
)
from regen.describer.settings import DescriberSettings

log = logging.getLogger(__name__)

T = TypeVar("T")


def load_backend(settings: DescriberSettings) -> Backend:
    """The backend `settings.backend` names, built from the settings (slow: loads weights,
    starts an engine or opens a client). An unknown name is a ValueError naming the
    setting and the registered choices."""
    try:
        backend_class = REGISTRY.load(settings.backend)
    except ValueError as exc:
        raise ValueError(f"describer.backend: {exc}") from None
    return backend_class.from_settings(settings)


@dataclass(frozen=True)
class CoreOptions:
    bounds: AnswerBounds = field(default_factory=AnswerBounds)
    max_new_tokens: int = 2048
    max_repairs: int = 2
    variants_temperature: float = 0.8
    max_prompt_chars: int = 4000
    max_variants: int = 8
    image_max_side: int = 448
    image_limits: ImageLimits = field(default_factory=ImageLimits)

    @classmethod
    def from_settings(cls, settings: DescriberSettings) -> CoreOptions:
        return cls(
            bounds=AnswerBounds(
                text_chars=settings.max_text_chars,
                field_chars=settings.max_field_chars,
                relationships=settings.max_relationships,
                differences=settings.max_differences,
            ),
            max_new_tokens=settings.max_new_tokens,
            max_repairs=settings.max_repairs,
            variants_temperature=settings.variants_temperature,
            max_prompt_chars=settings.max_prompt_chars,
            max_variants=settings.max_variants,
            image_max_side=settings.image_max_side,
            image_limits=settings.images.limits(),
        )


@dataclass(frozen=True)
class CallReport:
    """How an answer was produced (CallInfo on the wire)."""

    cached: bool
    cache_key: str
    output_tokens: int
    elapsed_s: float
    # Model calls spent on this request, repairs included; 0 when served from the cache
    # or by an identical request already in flight.
    attempts: int


@dataclass(frozen=True)
class Result(Generic[T]):
    answer: T
    call: CallReport


@dataclass(frozen=True)
class _Task(Generic[T]):
    name: str
    schema: dict[str, Any]
    messages: tuple[Message, ...]
    inputs: dict[str, Any]
    review: Review
    load: Callable[[Any], T]
    temperature: float = 0.0
    seed: int = 0


@dataclass
class _Flight:
    task: asyncio.Task
    waiters: int = 0


@dataclass(frozen=True)
class _Fresh:
    answer: Any
    output_tokens: int
    attempts: int


class DescriberCore:
    def __init__(
        self,
        backend: Backend,
        options: CoreOptions | None = None,
        *,
        cache: AnswerCache | None = None,
        token_counter: TokenCounter | None = None,
    ) -> None:
        self.backend = backend
        self.options = options or CoreOptions()
        self.cache = cache
        self.tokens = token_counter or EstimatedTokens()
        self.template_version = templates.TEMPLATE_VERSION
        self._inflight: dict[str, _Flight] = {}

    @classmethod
    def from_settings(cls, settings: DescriberSettings) -> DescriberCore:
        """Load the configured backend (slow) and wrap it in the core with its cache and
        token counter."""
        backend = load_backend(settings)
        cache = None
        if settings.cache_enabled:
            cache = AnswerCache(Path(settings.cache_dir or default_cache_dir()).expanduser())
        core = cls(
            backend,
            CoreOptions.from_settings(settings),
            cache=cache,
            token_counter=token_counter(settings.budget_tokenizer),
        )
        identity = backend.identity
        log.info(
            "describer ready: backend %s, model %s (%s) on %s, templates %s, cache %s",
            identity.backend,
            identity.model_id,
            identity.revision,
            identity.device,
            core.template_version,
            cache.root if cache else "off",
        )
        return core

    @property
    def identity(self) -> BackendIdentity:
        return self.backend.identity

    async def aclose(self) -> None:
        await self.backend.aclose()

    # ------------------------------------------------------------------ tasks

    async def understand(self, image_png: bytes) -> Result[ImageUnderstandingTree]:
        image, digest = await self._image(image_png, "image_png")
        bounds = self.options.bounds
        return await self._answer(
            _Task(
                name="understand",
                schema=iut_schema(bounds),
                messages=templates.understand(image, bounds),
                inputs={"image": digest},
                review=review.iut,
                load=ImageUnderstandingTree.from_json,
            )
        )

    async def write_prompt(self, iut: ImageUnderstandingTree, token_budget: int) -> Result[str]:
        inputs.iut(iut, "iut", self.options.max_prompt_chars)
        inputs.token_budget(token_budget)
        bounds = self.options.bounds
        return await self._answer(
            _Task(
                name="write_prompt",
                schema=prompt_schema(bounds, token_budget),
                messages=templates.write_prompt(iut, token_budget, bounds),
                inputs={"iut": iut.to_json(), "token_budget": token_budget},
                review=review.prompt(token_budget, self.tokens),
                load=lambda value: value["prompt"],
            )
        )

    async def variants(self, prompt: str, n: int, token_budget: int, seed: int) -> Result[list[str]]:
        prompt = inputs.text(prompt, "prompt", self.options.max_prompt_chars)
        inputs.variant_count(n, self.options.max_variants)
        inputs.token_budget(token_budget)
        bounds = self.options.bounds
        return await self._answer(
            _Task(
                name="variants",
                schema=variants_schema(bounds, n, token_budget),
                messages=templates.variants(prompt, n, token_budget, bounds),
                inputs={"prompt": prompt, "n": n, "token_budget": token_budget},
                review=review.variants(token_budget, self.tokens),
                load=lambda value: list(value["prompts"]),
                temperature=self.options.variants_temperature,
                seed=seed,
            )
        )

    async def compare(self, reference_png: bytes, candidate_png: bytes, prompt: str) -> Result[list[Difference]]:
        prompt = inputs.text(prompt, "prompt", self.options.max_prompt_chars, required=False)
        (reference, ref_digest), (candidate, cand_digest) = await asyncio.gather(
            self._image(reference_png, "reference_png"), self._image(candidate_png, "candidate_png")
        )
        bounds = self.options.bounds
        return await self._answer(
            _Task(
                name="compare",
                schema=compare_schema(bounds),
                messages=templates.compare(reference, candidate, prompt, bounds),
                inputs={"reference": ref_digest, "candidate": cand_digest, "prompt": prompt},
                review=review.strings,
                load=lambda value: [Difference(d["aspect"], d["description"]) for d in value["differences"]],
            )
        )

    async def revise(self, prompt: str, differences: Sequence[Difference], token_budget: int) -> Result[str]:
        prompt = inputs.text(prompt, "prompt", self.options.max_prompt_chars)
        differences = inputs.differences(differences, self.options.max_prompt_chars)
        inputs.token_budget(token_budget)
        bounds = self.options.bounds
        return await self._answer(
            _Task(
                name="revise",
                schema=prompt_schema(bounds, token_budget),
                messages=templates.revise(prompt, differences, token_budget, bounds),
                inputs={
                    "prompt": prompt,
                    "differences": [[d.aspect, d.description] for d in differences],
                    "token_budget": token_budget,
                },
                review=review.prompt(token_budget, self.tokens),
                load=lambda value: value["prompt"],
            )
        )

    async def judge(self, reference_png: bytes, candidate_png: bytes) -> Result[Judgement]:
        (reference, ref_digest), (candidate, cand_digest) = await asyncio.gather(
            self._image(reference_png, "reference_png"), self._image(candidate_png, "candidate_png")
        )
        bounds = self.options.bounds
        return await self._answer(
            _Task(
                name="judge",
                schema=judge_schema(bounds),
                messages=templates.judge(reference, candidate, bounds),
                inputs={"reference": ref_digest, "candidate": cand_digest},
                review=review.strings,
                load=lambda value: Judgement(
                    value["content_consistency"], value["perceptual_quality"], value["rationale"]
                ),
            )
        )

    # ------------------------------------------------------------ the one path

    def _key_fields(self, task: _Task) -> dict[str, Any]:
        identity = self.backend.identity
        return {
            "backend": identity.backend,
            "model": identity.model_id,
            "revision": identity.revision,
            "backend_extra": identity.extra,
            "templates": self.template_version,
            "task": task.name,
            "schema": schema_digest(task.schema),
            "inputs": task.inputs,
            "sampling": {
                "temperature": task.temperature,
                "seed": task.seed if task.temperature > 0 else None,
                "max_new_tokens": self._token_limit(task.schema),
                "max_repairs": self.options.max_repairs,
                "image_max_side": self.options.image_max_side,
                "dtype": identity.dtype,
            },
            "token_counter": self.tokens.name,
        }

    def _token_limit(self, schema: dict[str, Any]) -> int:
        # +1 for the end-of-answer token.
        return min(self.options.max_new_tokens, max_answer_bytes(schema) + 1)

    async def _answer(self, task: _Task[T]) -> Result[T]:
        started = time.monotonic()
        fields = self._key_fields(task)
        key = cache_key(fields)
        if self.cache is not None:
            hit = await asyncio.to_thread(self.cache.get, key)
            if hit is not None:
                return Result(
                    task.load(hit.answer),
                    CallReport(True, key, hit.output_tokens, time.monotonic() - started, 0),
                )
        fresh, shared = await self._join(key, lambda: self._fresh(task, key, fields))
        report = CallReport(
            cached=shared,
            cache_key=key,
            output_tokens=fresh.output_tokens,
            elapsed_s=time.monotonic() - started,
            attempts=0 if shared else fresh.attempts,
        )
        return Result(task.load(fresh.answer), report)

    async def _join(self, key: str, start: Callable[[], Any]) -> tuple[_Fresh, bool]:
        """Run `start()` once per key at a time; later identical requests wait for it.
        The work is cancelled only when every request waiting for it has gone."""
        flight = self._inflight.get(key)
        shared = flight is not None
        if flight is None:
            flight = _Flight(asyncio.ensure_future(start()))
            self._inflight[key] = flight
            flight.task.add_done_callback(functools.partial(self._landed, key, flight))
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task), shared
        except asyncio.CancelledError:
            if flight.task.done():
                raise
            flight.waiters -= 1
            if flight.waiters == 0:
                flight.task.cancel()
            raise

    def _landed(self, key: str, flight: _Flight, _task: asyncio.Future) -> None:
        if self._inflight.get(key) is flight:
            self._inflight.pop(key)

    async def _fresh(self, task: _Task, key: str, fields: dict[str, Any]) -> _Fresh:
        limit = self._token_limit(task.schema)
        messages = task.messages
        tokens = 0
        raw = ""
        problems: list[str] = []
        attempts = 1 + self.options.max_repairs
        for attempt in range(1, attempts + 1):
            completion = await self.backend.complete(
                ModelCall(
                    messages=messages,
                    schema=task.schema,
                    schema_name=task.name,
                    max_new_tokens=limit,
                    temperature=task.temperature,
                    # A repair samples afresh: the same seed could repeat the same mistake.
                    seed=task.seed + attempt - 1,
                )
            )
            tokens += completion.output_tokens
            raw = completion.text
            value, problems = review.check_answer(task.schema, task.review, raw)
            if completion.truncated and problems:
                problems.insert(0, f"the answer was cut off at the limit of {limit} tokens; make it shorter")
            if not problems:
                if self.cache is not None:
                    await asyncio.to_thread(self.cache.put, key, fields, CachedAnswer(value, tokens, attempt))
                return _Fresh(value, tokens, attempt)
            log.info("%s: attempt %d/%d invalid: %s", task.name, attempt, attempts, "; ".join(problems[:5]))
            messages = templates.repair(task.messages, raw, problems)
        raise BadModelOutput(
            f"{task.name}: the model gave no valid answer in {attempts} attempts; last problems: "
            + "; ".join(problems[:8]),
            raw=raw,
        )

    async def _image(self, data: bytes, field: str) -> tuple[Image.Image, str]:
        return await asyncio.to_thread(
            inputs.image, data, field, max_side=self.options.image_max_side, limits=self.options.image_limits
        )
