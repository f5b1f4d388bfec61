"""The describer's tasks over any backend: input checks, cache, validation and repair.

Every task follows the same path (`Describer._answer`):
  1. the cache key is computed from the backend identity, template version, task, schema,
     inputs and sampling settings; a cached answer is returned without a model call, and
     identical requests in flight share one model call;
  2. the model answers under the task's JSON schema; the answer is parsed, checked
     against the schema and then by the task's own rules (distinct variants, prompts
     within the token budget, ...);
  3. an invalid answer is sent back with the list of problems (bounded by max_repairs);
     one that stays invalid raises BadModelOutput (FAILED_PRECONDITION) with the raw
     text, never a guessed value;
  4. a valid answer is cached.
No transport code here: the gRPC servicer and the BentoML service both call this.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from PIL import Image

from regen.common.errors import BadModelOutput, InvalidInput
from regen.common.images import ImageLimits, decode_image
from regen.describer import templates
from regen.describer.answers import Difference, ImageUnderstandingTree, Judgement
from regen.describer.backends.base import Backend, Message, ModelCall
from regen.describer.budget import EstimatedTokens, TokenCounter, budget_problem
from regen.describer.cache import AnswerCache, CachedAnswer, cache_key
from regen.describer.schemas import (
    ASPECTS,
    MAX_OBJECTS,
    AnswerBounds,
    attributes_of,
    compare_schema,
    iut_schema,
    judge_schema,
    max_answer_bytes,
    parse_json_answer,
    prompt_schema,
    schema_digest,
    schema_problems,
    variants_schema,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# A budget below this cannot hold a useful prompt (2 of it are the start and end tokens).
MIN_TOKEN_BUDGET = 8
MAX_TOKEN_BUDGET = 1 << 20
MAX_INPUT_DIFFERENCES = 64
MAX_INPUT_RELATIONSHIPS = 64
# Images smaller than this on a side, or longer than this ratio, are not described.
MIN_IMAGE_SIDE = 8
MAX_ASPECT_RATIO = 50
# Vision models tile images in 28-pixel units; smaller images are scaled up to it.
MIN_MODEL_SIDE = 28


@dataclass(frozen=True)
class EngineOptions:
    bounds: AnswerBounds = field(default_factory=AnswerBounds)
    max_new_tokens: int = 2048
    max_repairs: int = 2
    variants_temperature: float = 0.8
    max_prompt_chars: int = 4000
    max_variants: int = 8
    image_max_side: int = 448
    image_limits: ImageLimits = field(default_factory=ImageLimits)

    @classmethod
    def from_settings(cls, settings: Any) -> EngineOptions:
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
    # Schema-valid JSON -> (normalised JSON, problems). Problems send the answer to repair.
    review: Callable[[Any], tuple[Any, list[str]]]
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


class Describer:
    def __init__(
        self,
        backend: Backend,
        options: EngineOptions | None = None,
        *,
        cache: AnswerCache | None = None,
        token_counter: TokenCounter | None = None,
    ) -> None:
        self.backend = backend
        self.options = options or EngineOptions()
        self.cache = cache
        self.tokens = token_counter or EstimatedTokens()
        self.template_version = templates.TEMPLATE_VERSION
        self._inflight: dict[str, _Flight] = {}

    @property
    def identity(self):
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
                review=_review_iut,
                load=ImageUnderstandingTree.from_json,
            )
        )

    async def write_prompt(self, iut: ImageUnderstandingTree, token_budget: int) -> Result[str]:
        self._check_iut(iut, "iut")
        self._check_budget(token_budget)
        bounds = self.options.bounds
        return await self._answer(
            _Task(
                name="write_prompt",
                schema=prompt_schema(bounds, token_budget),
                messages=templates.write_prompt(iut, token_budget, bounds),
                inputs={"iut": iut.to_json(), "token_budget": token_budget},
                review=self._prompt_review(token_budget),
                load=lambda value: value["prompt"],
            )
        )

    async def variants(self, prompt: str, n: int, token_budget: int, seed: int) -> Result[list[str]]:
        prompt = self._check_text(prompt, "prompt")
        if not 1 <= n <= self.options.max_variants:
            raise InvalidInput(f"n: {n} is out of range; ask for 1 to {self.options.max_variants} variants")
        self._check_budget(token_budget)
        bounds = self.options.bounds
        return await self._answer(
            _Task(
                name="variants",
                schema=variants_schema(bounds, n, token_budget),
                messages=templates.variants(prompt, n, token_budget, bounds),
                inputs={"prompt": prompt, "n": n, "token_budget": token_budget},
                review=self._variants_review(token_budget),
                load=lambda value: list(value["prompts"]),
                temperature=self.options.variants_temperature,
                seed=seed,
            )
        )

    async def compare(self, reference_png: bytes, candidate_png: bytes, prompt: str) -> Result[list[Difference]]:
        prompt = self._check_text(prompt, "prompt", required=False)
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
                review=_review_strings,
                load=lambda value: [Difference(d["aspect"], d["description"]) for d in value["differences"]],
            )
        )

    async def revise(self, prompt: str, differences: Sequence[Difference], token_budget: int) -> Result[str]:
        prompt = self._check_text(prompt, "prompt")
        differences = self._check_differences(differences)
        self._check_budget(token_budget)
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
                review=self._prompt_review(token_budget),
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
                review=_review_strings,
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
            flight.task.add_done_callback(
                lambda _t, f=flight: self._inflight.pop(key) if self._inflight.get(key) is f else None
            )
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
            value, problems = _check_answer(task, raw)
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

    # ------------------------------------------------------------ answer rules

    def _prompt_review(self, token_budget: int) -> Callable[[Any], tuple[Any, list[str]]]:
        def review(value: Any) -> tuple[Any, list[str]]:
            value, problems = _review_strings(value)
            if (problem := budget_problem("prompt", value["prompt"], token_budget, self.tokens)) is not None:
                problems.append(problem)
            return value, problems

        return review

    def _variants_review(self, token_budget: int) -> Callable[[Any], tuple[Any, list[str]]]:
        def review(value: Any) -> tuple[Any, list[str]]:
            value, problems = _review_strings(value)
            seen: dict[str, int] = {}
            for index, prompt in enumerate(value["prompts"]):
                normal = " ".join(prompt.casefold().split())
                if normal in seen:
                    problems.append(f"prompts[{index}]: repeats prompts[{seen[normal]}]; every variant must differ")
                seen.setdefault(normal, index)
                if (problem := budget_problem(f"prompts[{index}]", prompt, token_budget, self.tokens)) is not None:
                    problems.append(problem)
            return value, problems

        return review

    # ------------------------------------------------------------ input checks

    def _check_text(self, value: str, field: str, *, required: bool = True) -> str:
        if required and not value.strip():
            raise InvalidInput(f"{field}: empty; send a non-empty text")
        if len(value) > self.options.max_prompt_chars:
            raise InvalidInput(f"{field}: {len(value)} characters exceeds the limit of {self.options.max_prompt_chars}")
        return value.strip()

    def _check_budget(self, token_budget: int) -> None:
        if token_budget != 0 and not MIN_TOKEN_BUDGET <= token_budget <= MAX_TOKEN_BUDGET:
            raise InvalidInput(
                f"token_budget: {token_budget} is out of range; use 0 (unlimited) or "
                f"{MIN_TOKEN_BUDGET} to {MAX_TOKEN_BUDGET} tokens"
            )

    def _check_differences(self, differences: Sequence[Difference]) -> list[Difference]:
        if not differences:
            raise InvalidInput("differences: empty; give at least one difference to revise the prompt with")
        if len(differences) > MAX_INPUT_DIFFERENCES:
            raise InvalidInput(f"differences: {len(differences)} items exceeds the limit of {MAX_INPUT_DIFFERENCES}")
        checked = []
        for index, difference in enumerate(differences):
            if difference.aspect not in ASPECTS:
                raise InvalidInput(
                    f"differences[{index}].aspect: {difference.aspect!r} is not one of {', '.join(ASPECTS)}"
                )
            description = self._check_text(difference.description, f"differences[{index}].description")
            checked.append(Difference(difference.aspect, description))
        return checked

    def _check_iut(self, iut: ImageUnderstandingTree, field: str) -> None:
        self._check_text(iut.global_description, f"{field}.global_description")
        for name in ("style", "lighting", "color_palette", "composition"):
            self._check_text(getattr(iut.global_features, name), f"{field}.global_features.{name}", required=False)
        if len(iut.objects) > MAX_OBJECTS:
            raise InvalidInput(f"{field}.objects: {len(iut.objects)} objects exceeds the limit of {MAX_OBJECTS}")
        for index, obj in enumerate(iut.objects):
            where = f"{field}.objects[{index}]"
            self._check_text(obj.name, f"{where}.name")
            allowed = set(attributes_of(obj.type))
            for name, value in vars(obj.attributes).items():
                self._check_text(value, f"{where}.attributes.{name}", required=False)
                if value and name not in allowed:
                    raise InvalidInput(f"{where}.attributes.{name}: not an attribute of type {obj.type}")
        if len(iut.relationships) > MAX_INPUT_RELATIONSHIPS:
            raise InvalidInput(
                f"{field}.relationships: {len(iut.relationships)} items exceeds the limit of {MAX_INPUT_RELATIONSHIPS}"
            )
        for index, relationship in enumerate(iut.relationships):
            self._check_text(relationship, f"{field}.relationships[{index}]")

    async def _image(self, data: bytes, field: str) -> tuple[Image.Image, str]:
        return await asyncio.to_thread(self._prepare_image, data, field)

    def _prepare_image(self, data: bytes, field: str) -> tuple[Image.Image, str]:
        """Decode (InvalidInput naming the field on any problem), hash the pixels, and
        scale for the model: longest side at most image_max_side, shortest at least 28."""
        image = decode_image(data, self.options.image_limits, what=field)
        width, height = image.size
        if min(width, height) < MIN_IMAGE_SIDE:
            raise InvalidInput(
                f"{field}: {width}x{height} is too small to describe; at least {MIN_IMAGE_SIDE} pixels a side"
            )
        if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
            raise InvalidInput(f"{field}: {width}x{height} is too elongated; aspect ratio at most {MAX_ASPECT_RATIO}:1")
        digest = hashlib.sha256(f"{width}x{height}:".encode() + image.tobytes()).hexdigest()
        scale = min(1.0, self.options.image_max_side / max(width, height))
        scale = max(scale, MIN_MODEL_SIDE / min(width, height))
        if scale != 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = image.resize(size, Image.Resampling.BICUBIC)
        return image, "sha256:" + digest


# ---------------------------------------------------------------- answer checks


def _check_answer(task: _Task, raw: str) -> tuple[Any, list[str]]:
    value, problem = parse_json_answer(raw)
    if problem is not None:
        return None, [problem]
    problems = schema_problems(task.schema, value)
    if problems:
        return None, problems
    return task.review(value)


def _strip(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return [_strip(v) for v in value]
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items()}
    return value


def _blank_required(value: Any, where: str = "") -> list[str]:
    """Required texts (pattern starting with a non-space) may still be blank after
    stripping odd Unicode spaces; report them."""
    problems: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "attributes":
                problems += _blank_required(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems += _blank_required(item, f"{where}[{index}]")
    elif isinstance(value, str) and not value:
        problems.append(f"{where}: empty")
    return problems


def _review_strings(value: Any) -> tuple[Any, list[str]]:
    value = _strip(value)
    return value, _blank_required(value)


def _review_iut(value: Any) -> tuple[Any, list[str]]:
    value, problems = _review_strings(value)
    # SPEC: relationships exist only between two or more objects. With fewer, the
    # phrases cannot be about the listed objects, so they are dropped, not repaired.
    if len(value["objects"]) < 2:
        value["relationships"] = []
    return value, problems
