"""One reference image through the regeneration loop (SPEC §2).

Understand -> WritePrompt -> rounds r = 1..R:
    Variants(prompt, N) -> Generate(N images, one batch) -> Score(all candidates)
    -> the round's best, and the best over all rounds so far
    -> (not after the last round) Compare(reference, best so far, its prompt)
       -> Revise(best-so-far prompt, differences) = the next round's prompt
-> Judge(reference, best over all rounds).

"Best prompt" is the prompt of the best candidate over all rounds so far, so a round
that does worse than an earlier one does not steer the revision away from what worked.
Candidates and rounds are numbered from 1 in files and seeds alike.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict

from regen.orchestrator.clients import Clients, ServiceError
from regen.orchestrator.config import GenerationParams
from regen.orchestrator.dataset import Case, load_reference_png
from regen.orchestrator.results import RunLayout, atomic_write_bytes, atomic_write_json
from regen.orchestrator.seeds import candidate_seed, variants_seed
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
)
JUDGE_METRICS: tuple[str, ...] = ("judge_content", "judge_quality", "judge_mean")


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
    generator_max_batch: int = 0
    scorer_max_candidates: int = 0

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
    round: int
    candidate: Candidate

    def record(self) -> dict[str, Any]:
        c = self.candidate
        return {"round": self.round, "candidate": c.index, "selection": c.selection, "prompt": c.prompt, "seed": c.seed}


def _call_record(call: describer_pb2.CallInfo) -> dict[str, Any]:
    return {"cached": call.cached, "attempts": call.attempts, "output_tokens": call.output_tokens}


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
        self.settings = settings
        self.layout = layout
        self.case = case
        self.on_stage = on_stage or (lambda _case, _stage: None)
        self.timings: dict[str, float] = {}
        self.stage = "load"
        self.round: int | None = None

    def _enter(self, stage: str) -> float:
        self.stage = stage
        self.on_stage(self.case.id, stage)
        return time.perf_counter()

    def _leave(self, stage: str, started: float) -> float:
        elapsed = time.perf_counter() - started
        self.timings[stage] = self.timings.get(stage, 0.0) + elapsed
        return elapsed

    async def run(self) -> dict[str, Any]:
        try:
            return await self._run()
        except CaseFailed:
            raise
        except ServiceError as exc:
            raise CaseFailed(self.stage, str(exc), round_index=self.round, cause=exc) from exc
        except Exception as exc:  # one broken case must not stop the run
            raise CaseFailed(self.stage, f"{type(exc).__name__}: {exc}", round_index=self.round, cause=exc) from exc

    async def _run(self) -> dict[str, Any]:
        s, case, describer = self.settings, self.case, self.clients.describer
        started_case = time.perf_counter()

        t = self._enter("load")
        reference = await asyncio.to_thread(load_reference_png, case)
        self._leave("load", t)

        t = self._enter("understand")
        understood = await describer.understand(reference)
        self._leave("understand", t)
        iut = understood.iut
        await self._write_json(self.layout.iut_file(case.id), MessageToDict(iut, preserving_proto_field_name=True))

        t = self._enter("write_prompt")
        prompt = (await describer.write_prompt(iut, s.token_budget)).prompt
        self._leave("write_prompt", t)
        prompt_source = "write_prompt"

        best: Best | None = None
        best_so_far_curve: list[float | None] = []
        round_best_curve: list[float | None] = []
        for r in range(1, s.rounds + 1):
            self.round = r
            round_timings: dict[str, float] = {}
            metadata: dict[str, Any] = {"case": case.id, "round": r, "prompt": prompt, "prompt_source": prompt_source}

            t = self._enter("variants")
            seed = variants_seed(s.run_seed, case.id, r)
            variants = await describer.variants(prompt, s.candidates, s.token_budget, seed)
            round_timings["variants_s"] = self._leave("variants", t)
            prompts = list(variants.prompts)
            if len(prompts) != s.candidates:
                raise CaseFailed(
                    "variants", f"describer returned {len(prompts)} variants, asked for {s.candidates}", round_index=r
                )
            metadata["variants_seed"] = seed
            calls = {"variants": _call_record(variants.call)}

            candidates = [
                Candidate(index=k, prompt=p, seed=candidate_seed(s.run_seed, case.id, r, k))
                for k, p in enumerate(prompts, start=1)
            ]
            t = self._enter("generate")
            await self._generate(candidates)
            round_timings["generate_s"] = self._leave("generate", t)
            iteration = self.layout.iteration_dir(case.id, r)
            await asyncio.to_thread(_write_images, {iteration / c.file: c.png for c in candidates if c.png})

            t = self._enter("score")
            await self._score(reference, candidates)
            round_timings["score_s"] = self._leave("score", t)

            scored = [c for c in candidates if c.selection is not None]
            # max() keeps the first of equal scores: ties go to the lowest candidate index.
            round_best = Best(r, max(scored, key=lambda c: c.selection)) if scored else None
            if round_best and (best is None or round_best.candidate.selection > best.candidate.selection):
                best = round_best
            round_best_curve.append(round_best.candidate.selection if round_best else None)
            best_so_far_curve.append(best.candidate.selection if best else None)
            if round_best:
                await asyncio.to_thread(atomic_write_bytes, iteration / "best_image.png", round_best.candidate.png)
            metadata["candidates"] = [c.record() for c in candidates]
            metadata["best"] = round_best.record() if round_best else None
            metadata["best_so_far"] = best.record() if best else None

            metadata["compared"] = None
            metadata["differences"] = []
            metadata["revised_prompt"] = None
            if r < s.rounds and best is not None:
                t = self._enter("compare")
                compared = await describer.compare(reference, best.candidate.png, best.candidate.prompt)
                round_timings["compare_s"] = self._leave("compare", t)
                differences = list(compared.differences)

                t = self._enter("revise")
                revised = await describer.revise(best.candidate.prompt, differences, s.token_budget)
                round_timings["revise_s"] = self._leave("revise", t)
                metadata["compared"] = {"round": best.round, "candidate": best.candidate.index}
                metadata["differences"] = [{"aspect": d.aspect, "description": d.description} for d in differences]
                metadata["revised_prompt"] = revised.prompt
                calls.update(compare=_call_record(compared.call), revise=_call_record(revised.call))
                prompt = revised.prompt
                prompt_source = f"revise(iteration_{r})"
            # With every candidate refused there is nothing to compare: the next round
            # draws new variants of the same prompt (their seed changes with the round).
            metadata["describer_calls"] = calls
            metadata["timings"] = round_timings
            await self._write_json(iteration / "metadata.json", metadata)

        self.round = None
        if best is None:
            raise CaseFailed("generate", f"the generator refused every candidate in all {s.rounds} rounds")

        t = self._enter("judge")
        judged = await describer.judge(reference, best.candidate.png)
        self._leave("judge", t)
        content, quality = judged.content_consistency, judged.perceptual_quality
        for label, value in (("content_consistency", content), ("perceptual_quality", quality)):
            if not 1 <= value <= 5:
                raise CaseFailed("judge", f"describer.Judge returned {label}={value}, outside 1..5")

        metrics = {name: best.candidate.scores[name] for name in sorted(best.candidate.scores)}
        metrics["selection"] = best.candidate.selection
        metrics["judge_content"] = content
        metrics["judge_quality"] = quality
        metrics["judge_mean"] = (content + quality) / 2
        final = {
            "case": case.id,
            "category": case.category,
            "status": "done",
            "reference": {"file": case.path.name, "sha256": case.sha256},
            "best": {**best.record(), "file": f"iteration_{best.round}/{best.candidate.file}"},
            "metrics": metrics,
            "metric_ids": s.metric_ids,
            "judge": {"content_consistency": content, "perceptual_quality": quality, "rationale": judged.rationale},
            "best_selection_by_round": best_so_far_curve,
            "round_best_selection": round_best_curve,
            "timings": {"stages_s": self.timings, "total_s": time.perf_counter() - started_case},
        }
        final_dir = self.layout.final_dir(case.id)
        await asyncio.to_thread(atomic_write_bytes, final_dir / "best_image.png", best.candidate.png)
        # Last: its existence marks the case as finished.
        await self._write_json(self.layout.final_metrics_file(case.id), final)
        return final

    async def _generate(self, candidates: list[Candidate]) -> None:
        s = self.settings
        g = s.generation
        chunk = s.generator_max_batch or len(candidates)
        requests = []
        for start in range(0, len(candidates), chunk):
            part = candidates[start : start + chunk]
            request = generator_pb2.GenerateRequest(
                prompts=[
                    generator_pb2.PromptSpec(text=c.prompt, negative_prompt=g.negative_prompt, seed=c.seed)
                    for c in part
                ]
            )
            for name in ("width", "height", "steps", "guidance_scale"):
                if getattr(g, name) is not None:
                    setattr(request, name, getattr(g, name))
            requests.append((part, request))
        answers = await asyncio.gather(*(self.clients.generator.generate(req) for _, req in requests))
        for (part, _), images in zip(requests, answers, strict=True):
            for candidate, image in zip(part, images, strict=True):
                if image.seed != candidate.seed:
                    raise CaseFailed(
                        "generate",
                        f"generator answered seed {image.seed} for seed {candidate.seed}",
                        round_index=self.round,
                    )
                if not image.refused and not image.png:
                    raise CaseFailed(
                        "generate", f"generator sent no image for candidate {candidate.index}", round_index=self.round
                    )
                candidate.png = b"" if image.refused else image.png
                candidate.refused = image.refused
                candidate.refusal_reason = image.refusal_reason
                candidate.prompt_truncated = image.prompt_truncated
                candidate.prompt_tokens = image.prompt_tokens
                candidate.width, candidate.height = image.width, image.height

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
                    raise CaseFailed("score", f"scorer returned no {', '.join(missing)} score", round_index=self.round)
                candidate.scores = dict(sorted(by_name.items()))
                candidate.selection = s.selection(by_name)

    async def _write_json(self, path: Path, data: Any) -> None:
        await asyncio.to_thread(atomic_write_json, path, data)
