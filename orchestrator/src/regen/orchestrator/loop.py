"""One reference image through the regeneration loop.

Understand -> WritePrompt -> rounds r = 1..R:
    Variants(prompt, N) -> Generate(N images, one batch) -> Score(all candidates)
    -> the round's best, and the best over all rounds so far
    -> (not after the last round) Compare(reference, best so far, its prompt)
       -> Revise(best-so-far prompt, differences) = the next round's prompt
-> Judge(reference, best over all rounds)
-> for a sample of cases, the judge's reliability checks (order swap, control pair,
   repeat; regen.orchestrator.reliability).

A failed Judge does not fail the case: the similarity metrics stand, the judge's are
missing, and the reason is recorded ("judge_failure"). Understand, WritePrompt, Variants,
Compare and Revise still fail the case: the loop cannot go on without them.

"Best prompt" is the prompt of the best candidate over all rounds so far, so a round
that does worse than an earlier one does not steer the revision away from what worked.
Candidates and rounds are numbered from 1 in files and seeds alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from regen.common.describer_json import differences_to_json, iut_to_json
from regen.orchestrator import outcomes, usage
from regen.orchestrator.clients import Clients, RunInterrupted, ServiceError
from regen.orchestrator.dataset import Case, load_reference_png
from regen.orchestrator.reliability import CheckPlan, judge_seed
from regen.orchestrator.replies import ContractViolation, ExpectedImage
from regen.orchestrator.results import RunLayout, atomic_write_bytes, atomic_write_json
from regen.orchestrator.seeds import candidate_seed, variants_seed
from regen.orchestrator.settings import GenerationParams
from regen.v1 import describer_pb2, generator_pb2

STAGES: tuple[str, ...] = (
    "load",
    "understand",
    "write_prompt",
    "variants",
    "generate",
    "score",
    "compare",
    "revise",
    "judge",
    "judge_checks",
)
T = TypeVar("T")


class CaseFailed(Exception):
    """A case could not finish; `stage` and `round` say where."""

    def __init__(self, stage: str, message: str, *, round_index: int | None = None, cause: BaseException | None = None):
        super().__init__(message)
        self.stage = stage
        self.round = round_index
        self.cause = cause

    def record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"stage": self.stage, "round": self.round, "error": str(self)}
        if isinstance(self.cause, ServiceError):
            record.update(
                service=self.cause.service,
                method=self.cause.method,
                code=self.cause.code.name,
                attempts=self.cause.attempts,
            )
            if self.cause.cost:
                # What the failed attempts cost the service (e.g. the describer's model
                # calls and API requests behind them), as it reported.
                record["service_cost"] = dict(sorted(self.cause.cost.items()))
        elif isinstance(self.cause, ContractViolation):
            record.update(service=self.cause.service, method=self.cause.method, code="CONTRACT_VIOLATION")
        elif self.cause is not None:
            record.update(exception=type(self.cause).__name__)
        return record


@dataclass(frozen=True)
class LoopSettings:
    """What every case needs to know, fixed for the whole run."""

    run_seed: int
    rounds: int
    candidates: int
    token_budget: int
    generation: GenerationParams
    # Scorer metric id -> short name ("clip/openai/..." -> "clip").
    metric_names: dict[str, str]
    # Short metric name -> weight in the selection score.
    selection_weights: dict[str, float]
    # The size every image must have (the request's, else the generator's default), and
    # the model that must have rendered it (the generator's Info).
    image_width: int = 0
    image_height: int = 0
    generator_model_id: str = ""
    generator_revision: str = ""
    generator_max_batch: int = 0
    scorer_max_candidates: int = 0
    # The cases that get the judge's reliability checks, with their controls.
    judge_plan: CheckPlan = field(default_factory=lambda: CheckPlan({}, repeat=False))

    def selection(self, scores: dict[str, float]) -> float:
        return sum(weight * scores[name] for name, weight in self.selection_weights.items())

    @property
    def metric_ids(self) -> dict[str, str]:
        return {name: metric_id for metric_id, name in self.metric_names.items()}


@dataclass
class Candidate:
    index: int  # 1-based
    prompt: str
    seed: int
    png: bytes = b""
    refused: bool = False
    refusal_reason: str = ""
    prompt_truncated: bool = False
    prompt_tokens: int = 0
    width: int = 0
    height: int = 0
    scores: dict[str, float] = field(default_factory=dict)
    selection: float | None = None

    @property
    def file(self) -> str:
        return f"candidate_{self.index}.png"

    def record(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "file": self.file if self.png else None,
            "prompt": self.prompt,
            "seed": self.seed,
            "refused": self.refused,
            "refusal_reason": self.refusal_reason,
            "prompt_truncated": self.prompt_truncated,
            "prompt_tokens": self.prompt_tokens,
            "width": self.width,
            "height": self.height,
            "scores": self.scores,
            "selection": self.selection,
        }


@dataclass
class Best:
    """A scored candidate and its round."""

    round: int
    candidate: Candidate

    @property
    def selection(self) -> float:
        assert self.candidate.selection is not None, "only a scored candidate can be a best"
        return self.candidate.selection

    def record(self) -> dict[str, Any]:
        c = self.candidate
        return {"round": self.round, "candidate": c.index, "selection": c.selection, "prompt": c.prompt, "seed": c.seed}


def round_best(round_index: int, candidates: list[Candidate]) -> Best | None:
    """The round's best scored candidate; ties go to the lowest candidate index (max()
    keeps the first of equal keys)."""
    scored = [Best(round_index, c) for c in candidates if c.selection is not None]
    return max(scored, key=lambda best: best.selection) if scored else None


def better(previous: Best | None, new: Best | None) -> Best | None:
    """The best so far after a round: the new one only when it is strictly better."""
    if new is not None and (previous is None or new.selection > previous.selection):
        return new
    return previous


@dataclass
class RoundRecord:
    """One round, as written to iteration_<r>/metadata.json."""

    case: str
    round: int
    # The round's input prompt and where it came from: write_prompt or revise(iteration_<r-1>).
    prompt: str
    prompt_source: str
    variants_seed: int
    candidates: list[Candidate] = field(default_factory=list)
    best: Best | None = None
    best_so_far: Best | None = None
    # The best so far that Compare looked at; None when Compare did not run (last round,
    # or nothing rendered yet).
    compared: Best | None = None
    differences: list[describer_pb2.Difference] = field(default_factory=list)
    revised_prompt: str | None = None
    describer_calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        compared = self.compared
        return {
            "case": self.case,
            "round": self.round,
            "prompt": self.prompt,
            "prompt_source": self.prompt_source,
            "variants_seed": self.variants_seed,
            "candidates": [c.record() for c in self.candidates],
            "best": self.best.record() if self.best else None,
            "best_so_far": self.best_so_far.record() if self.best_so_far else None,
            "compared": {"round": compared.round, "candidate": compared.candidate.index} if compared else None,
            "differences": differences_to_json(self.differences),
            "revised_prompt": self.revised_prompt,
            "describer_calls": self.describer_calls,
            "timings": self.timings,
        }


@dataclass
class Prepared:
    """A case's generator-independent start: its reference, and round 1 with its
    variants drawn (CaseRunner.prepare)."""

    reference: bytes
    first_round: RoundRecord
    # perf_counter() when the case started, for its total time.
    started: float


def _call_record(call: describer_pb2.CallInfo) -> dict[str, Any]:
    """What a describer answer cost and who made it (CallInfo)."""
    return {
        "cached": call.cached,
        "attempts": call.attempts,
        "repairs": call.repairs,
        "input_tokens": call.input_tokens,
        "output_tokens": call.output_tokens,
        "api_calls": call.usage.api_calls,
        "elapsed_s": call.elapsed_s,
        "served_model": call.served_model,
        "system_fingerprint": call.system_fingerprint,
        "seed": call.seed,
    }


def _judgement(judged: describer_pb2.JudgeResponse) -> dict[str, Any]:
    return {
        "content_consistency": judged.content_consistency,
        "perceptual_quality": judged.perceptual_quality,
        "rationale": judged.rationale,
        "call": _call_record(judged.call),
    }


def _judge_metrics(judged: describer_pb2.JudgeResponse) -> dict[str, float]:
    content, quality = judged.content_consistency, judged.perceptual_quality
    return {"judge_content": content, "judge_quality": quality, "judge_mean": (content + quality) / 2}


def _check_scores(judged: describer_pb2.JudgeResponse) -> None:
    for label, value in (
        ("content_consistency", judged.content_consistency),
        ("perceptual_quality", judged.perceptual_quality),
    ):
        if not 1 <= value <= 5:
            raise ContractViolation("describer", "Judge", f"answered {label}={value}, outside 1..5")


StageCallback = Callable[[str, str], None]


def _write_images(files: dict[Path, bytes]) -> None:
    for path, data in files.items():
        atomic_write_bytes(path, data)


class CaseRunner:
    """Runs one case, writing its folder as it goes; returns final_metrics.json's content."""

    def __init__(
        self,
        clients: Clients,
        settings: LoopSettings,
        layout: RunLayout,
        case: Case,
        on_stage: StageCallback | None = None,
    ) -> None:
        self.clients = clients
        self.describer = clients.describer
        self.settings = settings
        self.layout = layout
        self.case = case
        self.on_stage = on_stage or (lambda _case, _stage: None)
        self.timings: dict[str, float] = {}
        self.stage = "load"
        self.round: int | None = None
        self.usage = usage.CaseUsage()
        # CallInfo of the case's describer answers outside the rounds.
        self.describer_calls: dict[str, dict[str, Any]] = {}

    async def run(self) -> dict[str, Any]:
        """The whole case; returns final_metrics.json's content."""
        return await self.finish(await self.prepare())

    async def prepare(self) -> Prepared:
        """What does not depend on the generator: the reference, its IUT, the first prompt
        and round 1's variants. A run does this ahead for upcoming cases, so the generator
        is fed from its first second."""
        return await self._guarded(self._prepare())

    async def finish(self, prepared: Prepared) -> dict[str, Any]:
        """The rounds (round 1 from `prepared`), the judge and final_metrics.json."""
        return await self._guarded(self._finish(prepared))

    async def _guarded(self, work: Awaitable[T]) -> T:
        usage.CURRENT.set(self.usage)  # this case's task: every call it makes is counted here
        try:
            return await work
        except (CaseFailed, RunInterrupted):
            raise
        except (ServiceError, ContractViolation) as exc:
            raise CaseFailed(self.stage, str(exc), round_index=self.round, cause=exc) from exc
        except Exception as exc:  # one broken case must not stop the run
            raise CaseFailed(self.stage, f"{type(exc).__name__}: {exc}", round_index=self.round, cause=exc) from exc

    async def _stage(self, stage: str, call: Awaitable[T], round_timings: dict[str, float] | None = None) -> T:
        """Await one stage's work, reporting the stage and adding up its time."""
        self.stage = stage
        self.on_stage(self.case.id, stage)
        started = time.perf_counter()
        result = await call
        elapsed = time.perf_counter() - started
        self.timings[stage] = self.timings.get(stage, 0.0) + elapsed
        if round_timings is not None:
            round_timings[f"{stage}_s"] = elapsed
        return result

    async def _prepare(self) -> Prepared:
        started = time.perf_counter()
        reference = await self._stage("load", asyncio.to_thread(load_reference_png, self.case))
        understood = await self._stage("understand", self.describer.understand(reference))
        iut = understood.iut
        self.describer_calls["understand"] = _call_record(understood.call)
        await self._write_json(self.layout.iut_file(self.case.id), iut_to_json(iut))
        written = await self._stage("write_prompt", self.describer.write_prompt(iut, self.settings.token_budget))
        self.describer_calls["write_prompt"] = _call_record(written.call)
        self.round = 1
        first = self._new_round(1, written.prompt, "write_prompt")
        first.candidates = await self._variants(first)
        return Prepared(reference, first, started)

    async def _finish(self, prepared: Prepared) -> dict[str, Any]:
        reference = prepared.reference
        rounds = await self._rounds(reference, prepared.first_round)
        self.round = None
        best = rounds[-1].best_so_far
        if best is None:
            # The model's answer, not a failure: a finished case that counts with penalties.
            refused = self._refused_record(rounds, prepared.started)
            await self._write_json(self.layout.final_metrics_file(self.case.id), refused)
            return refused
        judged, failure = await self._judge(reference, best.candidate.png)
        checks = None
        if judged is not None and self.case.id in self.settings.judge_plan:
            checks = await self._stage("judge_checks", self._judge_checks(reference, best.candidate.png))
        final = self._final_record(best, judged, failure, checks, rounds, prepared.started)
        await asyncio.to_thread(
            atomic_write_bytes, self.layout.final_dir(self.case.id) / "best_image.png", best.candidate.png
        )
        # Last: its existence marks the case as finished.
        await self._write_json(self.layout.final_metrics_file(self.case.id), final)
        return final

    def _new_round(self, r: int, prompt: str, source: str) -> RoundRecord:
        return RoundRecord(self.case.id, r, prompt, source, variants_seed(self.settings.run_seed, self.case.id, r))

    async def _rounds(self, reference: bytes, first: RoundRecord) -> list[RoundRecord]:
        records: list[RoundRecord] = []
        best: Best | None = None
        record = first
        for r in range(1, self.settings.rounds + 1):
            self.round = r
            if r > 1:
                # With every candidate refused there is nothing to compare: the next round
                # draws new variants of the same prompt (their seed changes with the round).
                previous = records[-1]
                prompt, source = previous.prompt, previous.prompt_source
                if previous.revised_prompt is not None:
                    prompt, source = previous.revised_prompt, f"revise(iteration_{r - 1})"
                record = self._new_round(r, prompt, source)
                record.candidates = await self._variants(record)
            await self._round(record, reference, best)
            await self._write_json(self.layout.iteration_dir(self.case.id, r) / "metadata.json", record.record())
            records.append(record)
            best = record.best_so_far
        return records

    async def _round(self, record: RoundRecord, reference: bytes, best_before: Best | None) -> None:
        """Generate -> Score -> the round's best -> (not last) Compare -> Revise."""
        r = record.round
        await self._stage("generate", self._generate(record.candidates), record.timings)
        iteration = self.layout.iteration_dir(self.case.id, r)
        await asyncio.to_thread(_write_images, {iteration / c.file: c.png for c in record.candidates if c.png})
        await self._stage("score", self._score(reference, record.candidates), record.timings)
        record.best = round_best(r, record.candidates)
        record.best_so_far = better(best_before, record.best)
        if record.best:
            await asyncio.to_thread(atomic_write_bytes, iteration / "best_image.png", record.best.candidate.png)
        if r < self.settings.rounds and record.best_so_far is not None:
            await self._revise(reference, record.best_so_far, record)

    async def _variants(self, record: RoundRecord) -> list[Candidate]:
        s = self.settings
        call = self.describer.variants(record.prompt, s.candidates, s.token_budget, record.variants_seed)
        variants = await self._stage("variants", call, record.timings)
        prompts = list(variants.prompts)
        if len(prompts) != s.candidates:
            raise ContractViolation("describer", "Variants", f"answered {len(prompts)} variants for n={s.candidates}")
        record.describer_calls["variants"] = _call_record(variants.call)
        return [
            Candidate(index=k, prompt=p, seed=candidate_seed(s.run_seed, self.case.id, record.round, k))
            for k, p in enumerate(prompts, start=1)
        ]

    async def _revise(self, reference: bytes, best: Best, record: RoundRecord) -> None:
        """Compare the best so far with the reference, and revise its prompt."""
        prompt = best.candidate.prompt
        compared = await self._stage(
            "compare", self.describer.compare(reference, best.candidate.png, prompt), record.timings
        )
        differences = list(compared.differences)
        revise = self.describer.revise(prompt, differences, self.settings.token_budget)
        revised = await self._stage("revise", revise, record.timings)
        record.compared = best
        record.differences = differences
        record.revised_prompt = revised.prompt
        record.describer_calls.update(compare=_call_record(compared.call), revise=_call_record(revised.call))

    async def _judge(
        self, reference: bytes, candidate: bytes
    ) -> tuple[describer_pb2.JudgeResponse, None] | tuple[None, dict[str, Any]]:
        """The judgement, or, when the describer fails or breaks the contract, what went
        wrong: the case stands on its similarity metrics (a run that can go on at all
        is not stopped: RunInterrupted passes)."""
        seed = judge_seed(self.settings.run_seed, self.case.id)
        try:
            judged = await self._stage("judge", self.describer.judge(reference, candidate, seed))
            _check_scores(judged)
        except (ServiceError, ContractViolation) as exc:
            if isinstance(exc, RunInterrupted):
                raise
            return None, CaseFailed("judge", str(exc), cause=exc).record()
        self.describer_calls["judge"] = _call_record(judged.call)
        return judged, None

    async def rejudge(self, final: dict[str, Any]) -> dict[str, Any]:
        """A finished case whose judge failed for a passing reason (`transient_judge_failure`):
        the judge again, on the same best image with the same seed; its reliability checks
        too where the plan has the case. final_metrics.json is rewritten in place, with
        what the earlier attempt cost kept in "usage" and its failure in "judge_retried"."""
        return await self._guarded(self._rejudge(final))

    async def _rejudge(self, final: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        final_dir = self.layout.final_dir(self.case.id)
        reference = await self._stage("load", asyncio.to_thread(load_reference_png, self.case))
        candidate = await asyncio.to_thread((final_dir / "best_image.png").read_bytes)
        judged, failure = await self._judge(reference, candidate)
        checks = None
        if judged is not None and self.case.id in self.settings.judge_plan:
            checks = await self._stage("judge_checks", self._judge_checks(reference, candidate))
        record = dict(final)
        metrics = {k: v for k, v in record["metrics"].items() if k not in outcomes.JUDGE_METRICS}
        record.pop("judge_failure", None)
        record["judge"] = None
        if judged is not None:
            metrics.update(_judge_metrics(judged))
            record["judge"] = _judgement(judged)
        else:
            record["judge_failure"] = failure
        if checks is not None:
            record["judge_checks"] = checks
        record["metrics"] = metrics
        record["judge_retried"] = [*final.get("judge_retried", []), final["judge_failure"]]
        spent = usage.CaseUsage.from_record(final.get("usage", {}))
        spent.add(self.usage)
        record["usage"] = spent.record()
        record["describer_calls"] = {**final.get("describer_calls", {}), **self.describer_calls}
        stages = dict(final["timings"]["stages_s"])
        for stage, seconds in self.timings.items():
            stages[stage] = stages.get(stage, 0.0) + seconds
        total = final["timings"]["total_s"] + time.perf_counter() - started
        record["timings"] = {**final["timings"], "stages_s": stages, "total_s": total}
        await self._write_json(self.layout.final_metrics_file(self.case.id), record)
        return record

    async def _judge_checks(self, reference: bytes, candidate: bytes) -> dict[str, Any]:
        """The reliability checks of this case's judgement: the images swapped, the
        reference against its control, and (a sampling judge) a repeat with another
        seed. A failed check is recorded, never fails the case. Their calls are counted
        apart ("Judge:reliability") and in the record's "usage"."""
        plan, run_seed, case = self.settings.judge_plan, self.settings.run_seed, self.case.id
        checks: dict[str, Any] = {}
        spent = usage.CaseUsage()
        token = usage.CURRENT.set(spent)
        try:
            seed = judge_seed(run_seed, case)
            checks["swap"] = await self._check(self.describer.judge(candidate, reference, seed))
            control = plan.controls.get(case)
            checks["control"] = None
            if control is not None:
                try:
                    control_png = await asyncio.to_thread(load_reference_png, control)
                except Exception as exc:  # an unreadable control is the check's failure, not the case's
                    checks["control"] = {"case": control.id, "error": f"{type(exc).__name__}: {exc}"}
                else:
                    answer = await self._check(self.describer.judge(reference, control_png, seed))
                    checks["control"] = {"case": control.id, **answer}
            checks["repeat"] = None
            if plan.repeat:
                again = judge_seed(run_seed, case, repeat=True)
                checks["repeat"] = {
                    "seed": again,
                    **await self._check(self.describer.judge(reference, candidate, again)),
                }
        finally:
            usage.CURRENT.reset(token)
        self.usage.add(spent, ":reliability")
        checks["usage"] = spent.record()
        return checks

    async def _check(self, call: Awaitable[describer_pb2.JudgeResponse]) -> dict[str, Any]:
        try:
            judged = await call
            _check_scores(judged)
        except (ServiceError, ContractViolation) as exc:
            if isinstance(exc, RunInterrupted):
                raise
            return {"error": str(exc)}
        return _judgement(judged)

    def _final_record(
        self,
        best: Best,
        judged: describer_pb2.JudgeResponse | None,
        judge_failure: dict[str, Any] | None,
        checks: dict[str, Any] | None,
        rounds: list[RoundRecord],
        started: float,
    ) -> dict[str, Any]:
        """final_metrics.json's content. Without a judgement the judge's metrics are
        missing (not a penalty: the failure is the describer's, not the model's)."""
        case, scores = self.case, best.candidate.scores
        metrics: dict[str, float] = {name: scores[name] for name in sorted(scores)}
        metrics["selection"] = best.selection
        if judged is not None:
            metrics.update(_judge_metrics(judged))
        extra: dict[str, Any] = {}
        if judge_failure is not None:
            extra["judge_failure"] = judge_failure
        if checks is not None:
            extra["judge_checks"] = checks
        return {
            "case": case.id,
            "category": case.category,
            "status": "done",
            "reference": {"file": case.path.name, "sha256": case.sha256},
            "best": {**best.record(), "file": f"iteration_{best.round}/{best.candidate.file}"},
            "metrics": metrics,
            "metric_ids": self.settings.metric_ids,
            "judge": _judgement(judged) if judged is not None else None,
            **extra,
            **self._rounds_record(rounds, started),
        }

    def _refused_record(self, rounds: list[RoundRecord], started: float) -> dict[str, Any]:
        """final_metrics.json's content for a case whose every candidate was refused."""
        case = self.case
        reasons = sorted({c.refusal_reason for r in rounds for c in r.candidates if c.refusal_reason})
        return {
            "case": case.id,
            "category": case.category,
            "status": outcomes.REFUSED,
            "reference": {"file": case.path.name, "sha256": case.sha256},
            "best": None,
            "metrics": {},
            "metric_ids": self.settings.metric_ids,
            "judge": None,
            "refusal_reasons": reasons,
            **self._rounds_record(rounds, started),
        }

    def _rounds_record(self, rounds: list[RoundRecord], started: float) -> dict[str, Any]:
        candidates = [c for r in rounds for c in r.candidates]
        return {
            "candidates": {
                "total": len(candidates),
                "refused": sum(1 for c in candidates if c.refused),
                "truncated": sum(1 for c in candidates if c.prompt_truncated),
            },
            "best_selection_by_round": [r.best_so_far.selection if r.best_so_far else None for r in rounds],
            "round_best_selection": [r.best.selection if r.best else None for r in rounds],
            "usage": self.usage.record(),
            "describer_calls": self.describer_calls,
            "timings": {"stages_s": self.timings, "total_s": time.perf_counter() - started},
        }

    async def _generate(self, candidates: list[Candidate]) -> None:
        """All candidates' images, in one Generate call per generator batch; the client
        checks every image against what was asked (see clients.GeneratorClient.generate)."""
        chunk = self.settings.generator_max_batch or len(candidates)
        parts = [candidates[i : i + chunk] for i in range(0, len(candidates), chunk)]
        answers = await asyncio.gather(*(self._generate_part(part) for part in parts))
        for part, images in zip(parts, answers, strict=True):
            for candidate, image in zip(part, images, strict=True):
                candidate.png = b"" if image.refused else image.png
                candidate.refused = image.refused
                candidate.refusal_reason = image.refusal_reason
                candidate.prompt_truncated = image.prompt_truncated
                candidate.prompt_tokens = image.prompt_tokens
                candidate.width, candidate.height = image.width, image.height

    async def _generate_part(self, candidates: list[Candidate]) -> list[generator_pb2.GeneratedImage]:
        s, g = self.settings, self.settings.generation
        prompts = [
            generator_pb2.PromptSpec(text=c.prompt, negative_prompt=g.negative_prompt, seed=c.seed) for c in candidates
        ]
        expected = [
            ExpectedImage(
                name=f"candidate {c.index}",
                seed=c.seed,
                width=s.image_width,
                height=s.image_height,
                model_id=s.generator_model_id,
                revision=s.generator_revision,
            )
            for c in candidates
        ]
        # Unset parameters stay unset: the generator uses its model's defaults.
        fields = {name: getattr(g, name) for name in ("width", "height", "steps", "guidance_scale")}
        return await self.clients.generator.generate(
            prompts, expected, **{name: value for name, value in fields.items() if value is not None}
        )

    async def _score(self, reference: bytes, candidates: list[Candidate]) -> None:
        s = self.settings
        rendered = [c for c in candidates if c.png]
        if not rendered:
            return
        chunk = s.scorer_max_candidates or len(rendered)
        parts = [rendered[i : i + chunk] for i in range(0, len(rendered), chunk)]
        answers = await asyncio.gather(*(self.clients.scorer.score(reference, [c.png for c in part]) for part in parts))
        for part, scores in zip(parts, answers, strict=True):
            for candidate, by_id in zip(part, scores, strict=True):
                by_name = {s.metric_names[mid]: value for mid, value in by_id.items() if mid in s.metric_names}
                missing = sorted(set(s.selection_weights) - set(by_name))
                if missing:
                    raise ContractViolation(
                        "scorer", "Score", f"image {candidate.index}: no {', '.join(missing)} score, which Info lists"
                    )
                candidate.scores = dict(sorted(by_name.items()))
                candidate.selection = s.selection(by_name)

    async def _write_json(self, path: Path, data: Any) -> None:
        await asyncio.to_thread(atomic_write_json, path, data)
