"""The describer's request path over any backend: input checks, cache, validation and repair.

Every task follows the same path (`DescriberCore._answer`):
  1. the inputs are checked (`inputs`), before any model call;
  2. the cache key is computed from the backend identity, template version, task, schema,
     inputs and sampling settings; a cached answer is returned without a model call, and
     identical requests in flight share one model call;
  3. the model answers under the task's JSON schema, every call seeded (a greedy task's
     seed derives from the cache key); the answer goes through the one validation
     (`review.check_answer`: parsed with duplicate keys refused, checked against the
     schema with integers meaning integers, no placeholders or copied instructions,
     then the task's own rules: distinct variants, prompts within the token budget, ...);
  4. an invalid answer is sent back with the list of problems (bounded by max_repairs);
     one that stays invalid raises BadModelOutput (FAILED_PRECONDITION) with the raw
     text, never a guessed value; a refusal fails at once with the model's words;
  5. a valid answer is cached. A cached answer is validated again when read; one that
     fails is removed and answered afresh.
Every answer reports what it cost (CallReport: attempts, repairs, tokens, API calls, the
model that served it); a failure carries the same facts in its metadata.
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

from regen.common import metrics
from regen.common.errors import BadModelOutput, RegenError
from regen.common.images import ImageLimits
from regen.describer import inputs, review, templates
from regen.describer.answers import Difference, ImageUnderstandingTree, Judgement
from regen.describer.backends import REGISTRY
from regen.describer.backends.base import Backend, BackendIdentity, Completion, Message, ModelCall
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
    judge_temperature: float = 0.0
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
            judge_temperature=settings.judge_temperature,
            max_prompt_chars=settings.max_prompt_chars,
            max_variants=settings.max_variants,
            image_max_side=settings.image_max_side,
            image_limits=settings.images.limits(),
        )


@dataclass(frozen=True)
class CallUsage:
    """What one request cost now (regen.v1.Usage): zero when served from the cache or by
    an identical request already in flight."""

    # Remote API requests (each model call of an API backend is one; the describer
    # never repeats one: the orchestrator is the one retry layer, so retries stay 0).
    api_calls: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class CallReport:
    """How an answer was produced (CallInfo on the wire)."""

    cached: bool
    cache_key: str
    # Tokens the answer took, every model call of it (repairs included), also when it
    # comes from the cache; what this request cost is `usage`.
    output_tokens: int
    elapsed_s: float
    # Model calls spent on this request, repairs included; 0 when served from the cache
    # or by an identical request already in flight.
    attempts: int
    # Of those, calls that asked the model to repair an invalid answer.
    repairs: int = 0
    input_tokens: int = 0
    # The first model call's seed (repair k used seed + k).
    seed: int = 0
    # The model that answered and the API's system_fingerprint (recorded with a cached answer).
    served_model: str = ""
    system_fingerprint: str = ""
    usage: CallUsage = field(default_factory=CallUsage)


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


@dataclass
class _Spent:
    """What the model calls of one request took so far."""

    attempts: int = 0
    api_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    served_model: str = ""
    system_fingerprint: str = ""

    def add(self, completion: Completion) -> None:
        self.api_calls += completion.api_calls
        self.input_tokens += completion.input_tokens
        self.output_tokens += completion.output_tokens
        self.served_model = completion.served_model or self.served_model
        self.system_fingerprint = completion.system_fingerprint or self.system_fingerprint

    @property
    def repairs(self) -> int:
        # Every model call after the first answered an invalid answer's repair request.
        return max(0, self.attempts - 1)

    def usage(self) -> CallUsage:
        return CallUsage(self.api_calls, 0, self.input_tokens, self.output_tokens)

    def failed(self, error: RegenError) -> RegenError:
        """`error` with what the request cost in its metadata (ErrorInfo on the wire)."""
        return error.with_metadata(
            attempts=self.attempts,
            repairs=self.repairs,
            api_calls=self.api_calls,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            served_model=self.served_model,
            system_fingerprint=self.system_fingerprint,
        )


@dataclass(frozen=True)
class _Fresh:
    answer: Any
    spent: _Spent


def greedy_seed(key: str) -> int:
    """The seed of a greedy task's calls, from its cache key: the same request always
    sends the same seed (an API may sample a little even at temperature 0)."""
    return int(key[:8], 16) & 0x7FFF_FFFF


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

    async def judge(self, reference_png: bytes, candidate_png: bytes, seed: int = 0) -> Result[Judgement]:
        """A sampling judge (judge_temperature > 0) draws with `seed`; a greedy one ignores it."""
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
                temperature=self.options.judge_temperature,
                seed=seed,
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
        seed = task.seed if task.temperature > 0 else greedy_seed(key)
        if self.cache is not None:
            hit = await asyncio.to_thread(self.cache.get, key)
            if hit is not None:
                instructions = templates.instructions(task.name)
                value, problems = review.validate(task.schema, task.review, hit.answer, instructions)
                if not problems:
                    report = CallReport(
                        cached=True,
                        cache_key=key,
                        output_tokens=hit.output_tokens,
                        elapsed_s=time.monotonic() - started,
                        attempts=0,
                        input_tokens=hit.input_tokens,
                        seed=seed,
                        served_model=hit.served_model,
                        system_fingerprint=hit.system_fingerprint,
                    )
                    metrics.DESCRIBER_CACHE.labels("hit").inc()
                    return Result(task.load(value), report)
                log.warning(
                    "%s: cached answer %s fails validation (%s); removed, answering afresh",
                    task.name,
                    key[:16],
                    "; ".join(problems[:3]),
                )
                await asyncio.to_thread(self.cache.remove, key)
        metrics.DESCRIBER_CACHE.labels("miss").inc()
        fresh, shared = await self._join(key, lambda: self._fresh(task, key, fields, seed))
        spent = fresh.spent
        report = CallReport(
            cached=shared,
            cache_key=key,
            output_tokens=spent.output_tokens,
            elapsed_s=time.monotonic() - started,
            attempts=0 if shared else spent.attempts,
            repairs=0 if shared else spent.repairs,
            input_tokens=spent.input_tokens,
            seed=seed,
            served_model=spent.served_model,
            system_fingerprint=spent.system_fingerprint,
            usage=CallUsage() if shared else spent.usage(),
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

    async def _fresh(self, task: _Task, key: str, fields: dict[str, Any], seed: int) -> _Fresh:
        limit = self._token_limit(task.schema)
        instructions = templates.instructions(task.name)
        messages = task.messages
        # A local backend's served model is the one it loaded; an API names its own.
        spent = _Spent(served_model=self.identity.model_id)
        raw = ""
        problems: list[str] = []
        attempts = 1 + self.options.max_repairs
        for attempt in range(1, attempts + 1):
            spent.attempts = attempt
            call = ModelCall(
                messages=messages,
                schema=task.schema,
                schema_name=task.name,
                max_new_tokens=limit,
                temperature=task.temperature,
                # A repair samples afresh: the same seed could repeat the same mistake.
                seed=seed + attempt - 1,
            )
            try:
                completion = await self.backend.complete(call)
            except RegenError as exc:
                spent.api_calls += int(exc.metadata.get("api_calls", 0))
                raise spent.failed(exc) from None
            spent.add(completion)
            raw = completion.text
            if completion.refusal:
                # A refusal is the model's decision, not a malformed answer: asking again
                # would only be refused again.
                raise spent.failed(
                    BadModelOutput(f"{task.name}: the model refused to answer: {completion.refusal}", raw=raw)
                )
            value, problems = review.check_answer(task.schema, task.review, raw, instructions)
            if completion.truncated and problems:
                problems.insert(0, f"the answer was cut off at the limit of {limit} tokens; make it shorter")
            if not problems:
                if self.cache is not None:
                    entry = CachedAnswer(
                        value,
                        spent.output_tokens,
                        attempt,
                        spent.input_tokens,
                        spent.served_model,
                        spent.system_fingerprint,
                    )
                    await asyncio.to_thread(self.cache.put, key, fields, entry)
                return _Fresh(value, spent)
            log.info("%s: attempt %d/%d invalid: %s", task.name, attempt, attempts, "; ".join(problems[:5]))
            if attempt < attempts:
                metrics.DESCRIBER_REPAIRS.labels(task.name).inc()
            messages = templates.repair(task.messages, raw, problems)
        raise spent.failed(
            BadModelOutput(
                f"{task.name}: the model gave no valid answer in {attempts} attempts; last problems: "
                + "; ".join(problems[:8]),
                raw=raw,
            )
        )

    async def _image(self, data: bytes, field: str) -> tuple[Image.Image, str]:
        return await asyncio.to_thread(
            inputs.image, data, field, max_side=self.options.image_max_side, limits=self.options.image_limits
        )
