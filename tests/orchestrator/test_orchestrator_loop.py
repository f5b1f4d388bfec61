"""The loop, the runner, resume and the `regen run` command against small in-process
gRPC fakes of the three services (real grpc.aio servers on 127.0.0.1; the fakes answer
instantly and deterministically and can inject faults). The real services are in
tests/test_e2e_run.py."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from PIL import Image
from support.heavy_imports import HEAVY_MODULES, run_regen_cli

from regen.common.errors import BadModelOutput, Overloaded, RegenError
from regen.common.grpc_server import GrpcHost, Registration, grpc_errors
from regen.orchestrator.clients import ConnectError
from regen.orchestrator.identity import RunMismatch
from regen.orchestrator.reliability import judge_seed
from regen.orchestrator.results import read_json
from regen.orchestrator.runner import RunError, run
from regen.orchestrator.seeds import candidate_seed, variants_seed
from regen.orchestrator.settings import OrchestratorSettings
from regen.v1 import (
    common_pb2,
    describer_pb2,
    describer_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    scorer_pb2,
    scorer_pb2_grpc,
)


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("|".join(map(str, parts)).encode()).digest()


class Faults:
    """Mutable fault plan shared by the fakes (set from the test thread)."""

    def __init__(self) -> None:
        self.generate_unavailable = 0  # fail this many Generate calls with UNAVAILABLE
        self.score_invalid_for: set[bytes] = set()  # reference PNGs the scorer rejects
        self.refuse_containing: set[str] = set()  # the generator refuses prompts containing any of these
        self.calls: Counter[str] = Counter()
        self.generate_sizes: list[int] = []
        # Per Generate call: the request's image parameters and the call's deadline (s).
        self.generate_requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        # How the fake describer judges (FakeDescriber.Judge): "hash" (a digest of the
        # ordered pair), "fair" (symmetric, controls 1), "constant" (always 5/5),
        # "control_blind" (fair, but two references rate 5); Info's judge_temperature;
        # reference PNGs whose Judge fails (FAILED_PRECONDITION after 3 model calls).
        self.judge_mode = "hash"
        self.judge_temperature = 0.0
        self.judge_fail_for: set[bytes] = set()
        # reference PNGs whose Judge fails with INTERNAL (the describer's server broke).
        self.judge_crash_for: set[bytes] = set()
        self.judge_seeds: list[int] = []
        # Answer this many Judge calls RESOURCE_EXHAUSTED (a rate-limited chat API behind).
        self.judge_rate_limited = 0


class FakeDescriber(describer_pb2_grpc.DescriberServicer):
    def __init__(self, faults: Faults) -> None:
        self.faults = faults

    @grpc_errors
    async def Info(self, request, context):
        return describer_pb2.DescriberInfo(
            model=common_pb2.ModelInfo(model_id="fake-mllm", revision="r1", backend="fake"),
            server=common_pb2.ServerInfo(regen_version="0", busy_s=0.25 * self.faults.calls["describer"]),
            template_version="t1",
            judge_temperature=self.faults.judge_temperature,
        )

    @grpc_errors
    async def Understand(self, request, context):
        self.faults.calls["Understand"] += 1
        self.faults.calls["describer"] += 1
        tag = _digest(request.image_png).hex()[:6]
        return describer_pb2.UnderstandResponse(
            iut=describer_pb2.ImageUnderstandingTree(
                global_description=f"scene {tag}",
                global_features=describer_pb2.GlobalFeatures(style="photo", lighting="soft"),
                objects=[describer_pb2.SceneObject(name="cat", type=describer_pb2.OBJECT_TYPE_ANIMAL)],
            )
        )

    @grpc_errors
    async def WritePrompt(self, request, context):
        self.faults.calls["describer"] += 1
        assert request.token_budget == 77
        return describer_pb2.PromptResponse(prompt=f"a photo, {request.iut.global_description}")

    @grpc_errors
    async def Variants(self, request, context):
        self.faults.calls["describer"] += 1
        return describer_pb2.VariantsResponse(
            prompts=[f"{request.prompt}, take {i} s{request.seed % 997}" for i in range(request.n)]
        )

    @grpc_errors
    async def Compare(self, request, context):
        self.faults.calls["describer"] += 1
        return describer_pb2.CompareResponse(
            differences=[describer_pb2.Difference(aspect="content", description=f"differs ({len(request.prompt)})")]
        )

    @grpc_errors
    async def Revise(self, request, context):
        self.faults.calls["describer"] += 1
        assert request.differences and request.token_budget == 77
        return describer_pb2.PromptResponse(prompt=request.prompt.split(", take")[0] + ", refined")

    @grpc_errors
    async def Judge(self, request, context):
        faults = self.faults
        faults.calls["describer"] += 1
        faults.calls["Judge"] += 1
        faults.judge_seeds.append(request.seed)
        if faults.judge_rate_limited > 0:
            faults.judge_rate_limited -= 1
            raise Overloaded("describer: the chat API is rate limiting (429)").with_metadata(attempts=1, api_calls=1)
        if request.reference_png in faults.judge_crash_for:
            raise RegenError("describer: the model server crashed").with_metadata(attempts=1, api_calls=1)
        if request.reference_png in faults.judge_fail_for:
            raise BadModelOutput("judge: the model gave no valid answer in 3 attempts").with_metadata(
                attempts=3, repairs=2, api_calls=3, input_tokens=900, output_tokens=60
            )
        call = describer_pb2.CallInfo(
            attempts=1, input_tokens=300, output_tokens=20, usage=common_pb2.Usage(api_calls=1)
        )
        if faults.judge_mode == "constant":
            return describer_pb2.JudgeResponse(content_consistency=5, perceptual_quality=5, rationale="fake", call=call)
        if faults.judge_mode == "hash":
            d = _digest(request.reference_png, request.candidate_png)
            return describer_pb2.JudgeResponse(
                content_consistency=1 + d[0] % 5, perceptual_quality=1 + d[1] % 5, rationale="fake", call=call
            )
        # Two references (24x24; generated images are 16x16): the control pair.
        control = all(
            Image.open(io.BytesIO(png)).size == (24, 24) for png in (request.reference_png, request.candidate_png)
        )
        pair = sorted([request.reference_png, request.candidate_png])
        d = _digest(*pair)
        content = 2 + d[0] % 4
        if control:
            content = 5 if faults.judge_mode == "control_blind" else 1
        return describer_pb2.JudgeResponse(
            content_consistency=content,
            perceptual_quality=1 + _digest(request.candidate_png)[0] % 5,
            rationale="fake",
            call=call,
        )


class FakeGenerator(generator_pb2_grpc.GeneratorServicer):
    """Pixel (0,0)'s red value counts ", refined" in the prompt; the fake scorer punishes
    it, so later rounds score worse and the best must come from round 1."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults

    @grpc_errors
    async def Info(self, request, context):
        return generator_pb2.GeneratorInfo(
            model=common_pb2.ModelInfo(model_id="/models/fake-sd", revision="sha256:abc", backend="fake"),
            server=common_pb2.ServerInfo(busy_s=1.5 * len(self.faults.generate_sizes)),
            prompt_token_budget=77,
            max_batch=2,
            default_width=16,
            default_height=16,
        )

    @grpc_errors
    async def Generate(self, request, context):
        faults = self.faults
        faults.calls["Generate"] += 1
        if faults.generate_unavailable > 0:
            faults.generate_unavailable -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        faults.generate_sizes.append(len(request.prompts))
        faults.generate_requests.append(
            {
                **{
                    name: getattr(request, name) if request.HasField(name) else None
                    for name in ("width", "height", "steps", "guidance_scale")
                },
                "negative_prompts": {p.negative_prompt for p in request.prompts},
                "time_remaining": context.time_remaining(),
            }
        )
        faults.in_flight += 1
        faults.max_in_flight = max(faults.max_in_flight, faults.in_flight)
        try:
            await asyncio.sleep(0.02)  # let other cases' calls overlap
            width = request.width if request.HasField("width") else 16
            height = request.height if request.HasField("height") else 16
            # Answer out of order, as the contract allows.
            for index in reversed(range(len(request.prompts))):
                spec = request.prompts[index]
                if any(text in spec.text for text in faults.refuse_containing):
                    yield generator_pb2.GeneratedImage(
                        index=index,
                        refused=True,
                        refusal_reason="content policy",
                        seed=spec.seed,
                        model_id="/models/fake-sd",
                        revision="sha256:abc",
                    )
                    continue
                d = _digest(spec.text, spec.seed)
                img = Image.new("RGB", (width, height), (d[0], d[1], d[2]))
                img.putpixel((0, 0), (spec.text.count(", refined"), 0, 0))
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                yield generator_pb2.GeneratedImage(
                    index=index,
                    png=buf.getvalue(),
                    seed=spec.seed,
                    width=width,
                    height=height,
                    prompt_tokens=9,
                    model_id="/models/fake-sd",
                    revision="sha256:abc",
                )
        finally:
            faults.in_flight -= 1


class FakeScorer(scorer_pb2_grpc.ScorerServicer):
    def __init__(self, faults: Faults) -> None:
        self.faults = faults

    @grpc_errors
    async def Info(self, request, context):
        return scorer_pb2.ScorerInfo(
            models=[common_pb2.ModelInfo(model_id="fake-clip", revision="c1")],
            metrics=[
                scorer_pb2.MetricInfo(id="clip/fake-clip", name="clip", checkpoint="fake-clip"),
                scorer_pb2.MetricInfo(id="dinov2/fake-dino", name="dinov2", checkpoint="fake-dino"),
                scorer_pb2.MetricInfo(id="ssim", name="ssim"),
            ],
            max_candidates=2,
        )

    @grpc_errors
    async def Score(self, request, context):
        self.faults.calls["Score"] += 1
        if request.reference_png in self.faults.score_invalid_for:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "reference_png: fake rejection")
        candidates = []
        for index, png in enumerate(request.candidate_pngs):
            img = Image.open(io.BytesIO(png)).convert("RGB")
            refined = img.getpixel((0, 0))[0]
            d = _digest(request.reference_png, png)
            base = 0.5 - 0.2 * refined
            candidates.append(
                scorer_pb2.CandidateScores(
                    index=index,
                    scores={
                        "clip/fake-clip": base + d[0] / 2560,
                        "dinov2/fake-dino": base + d[1] / 2560,
                        "ssim": d[2] / 255,
                    },
                )
            )
        return scorer_pb2.ScoreResponse(candidates=candidates)


class FakeServices:
    """The three fakes, each on its own port, served from one background event loop."""

    def __init__(self) -> None:
        self.faults = Faults()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.hosts: dict[str, GrpcHost] = {}
        self.addresses: dict[str, str] = {}

    def __enter__(self) -> FakeServices:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    async def _start(self) -> None:
        servicers = {
            "describer": (describer_pb2_grpc.add_DescriberServicer_to_server, FakeDescriber, "regen.v1.Describer"),
            "generator": (generator_pb2_grpc.add_GeneratorServicer_to_server, FakeGenerator, "regen.v1.Generator"),
            "scorer": (scorer_pb2_grpc.add_ScorerServicer_to_server, FakeScorer, "regen.v1.Scorer"),
        }
        for name, (add, cls, full_name) in servicers.items():
            host = GrpcHost("127.0.0.1", 0)
            await host.start([Registration(add, cls(self.faults), full_name)])
            self.hosts[name] = host
            self.addresses[name] = f"127.0.0.1:{host.port}"

    def __exit__(self, *exc) -> None:
        async def stop() -> None:
            for host in self.hosts.values():
                await host.stop(0)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def fakes() -> Iterator[FakeServices]:
    with FakeServices() as services:
        yield services


@pytest.fixture
def dataset(tmp_path) -> Path:
    """Five small references in three categories."""
    root = tmp_path / "refs"
    root.mkdir()
    for i, name in enumerate(["cat_1", "cat_2", "dog_1", "dog_2", "bird_1"]):
        Image.new("RGB", (24, 24), (40 * i, 255 - 40 * i, 90)).save(root / f"{name}.png")
    return root


def _config(fakes: FakeServices, dataset: Path, out: Path, **overrides) -> OrchestratorSettings:
    values = dict(
        dataset=str(dataset),
        out=out,
        rounds=3,
        candidates=3,
        concurrency=4,
        bootstrap_resamples=500,
        **fakes.addresses,
    )
    values.update(overrides)
    return OrchestratorSettings(**values)


def _numbers(benchmark: dict) -> dict:
    return {key: value for key, value in benchmark.items() if key != "timings"}


def test_full_run_layout_and_consistent_numbers(fakes, dataset, tmp_path):
    summary = run(_config(fakes, dataset, tmp_path / "out"))
    assert (summary.total, summary.done, summary.failed) == (5, 5, 0)
    root = summary.run_dir
    assert root.parent == tmp_path / "out" and root.name.startswith("refs-fake-sd-seed0-")
    run_info = read_json(root / "run.json")
    bench = read_json(root / "benchmark_final.json")
    assert run_info["models"]["generator"]["model_id"] == "/models/fake-sd"
    assert bench["models"] == run_info["models"]
    assert bench["metric_ids"] == {"clip": "clip/fake-clip", "dinov2": "dinov2/fake-dino", "ssim": "ssim"}

    finals = {}
    for case in ["cat_1", "cat_2", "dog_1", "dog_2", "bird_1"]:
        folder = root / case
        assert read_json(folder / "iut.json")["global_description"].startswith("scene ")
        all_candidates = []
        for r in (1, 2, 3):
            it = folder / f"iteration_{r}"
            meta = read_json(it / "metadata.json")
            assert sorted(p.name for p in it.iterdir()) == [
                "best_image.png",
                "candidate_1.png",
                "candidate_2.png",
                "candidate_3.png",
                "metadata.json",
            ]
            assert meta["variants_seed"] == variants_seed(0, case, r)
            for cand in meta["candidates"]:
                assert cand["seed"] == candidate_seed(0, case, r, cand["index"])
                assert cand["selection"] == pytest.approx(0.5 * cand["scores"]["clip"] + 0.5 * cand["scores"]["dinov2"])
                assert set(cand["scores"]) == {"clip", "dinov2", "ssim"}
                all_candidates.append((cand["selection"], r, cand["index"]))
            best = max(meta["candidates"], key=lambda c: c["selection"])
            assert meta["best"]["candidate"] == best["index"]
            assert (it / "best_image.png").read_bytes() == (it / f"candidate_{best['index']}.png").read_bytes()
            if r < 3:
                assert meta["differences"] and meta["revised_prompt"].endswith(", refined")
                # The revised prompt feeds the next round.
                assert read_json(folder / f"iteration_{r + 1}" / "metadata.json")["prompt"] == meta["revised_prompt"]
            else:
                assert meta["revised_prompt"] is None and meta["differences"] == []
            assert set(meta["timings"]) >= {"variants_s", "generate_s", "score_s"}
        final = read_json(folder / "final" / "final_metrics.json")
        finals[case] = final
        top = max(all_candidates, key=lambda t: (t[0], -t[1], -t[2]))
        # The best over all rounds (the fake makes round 1 best), not the last round's.
        assert (final["best"]["round"], final["best"]["candidate"]) == (top[1], top[2]) and top[1] == 1
        assert final["metrics"]["selection"] == top[0]
        assert (folder / "final" / "best_image.png").read_bytes() == (
            folder / f"iteration_{top[1]}" / f"candidate_{top[2]}.png"
        ).read_bytes()
        assert (
            final["metrics"]["judge_mean"]
            == (final["metrics"]["judge_content"] + final["metrics"]["judge_quality"]) / 2
        )
        curve = final["best_selection_by_round"]
        assert curve == sorted(curve) and curve[-1] == top[0]

    assert bench["cases"] == {"total": 5, "done": 5, "refused": 0, "failed": 0, "pending": 0}
    assert bench["complete"] and bench["coverage"] == 1.0
    assert bench["candidates"] == {"total": 45, "refused": 0, "truncated": 0, "refusal_rate": 0.0}
    for metric in ("clip", "dinov2", "ssim", "selection", "judge_content", "judge_quality", "judge_mean"):
        values = [f["metrics"][metric] for f in finals.values()]
        stat = bench["metrics"][metric]
        assert stat["n"] == 5 and stat["mean"] == pytest.approx(sum(values) / 5)
        assert stat["ci_low"] <= stat["mean"] <= stat["ci_high"]
    assert sorted(bench["categories"]) == ["bird", "cat", "dog"]
    assert bench["categories"]["cat"]["metrics"]["selection"]["mean"] == pytest.approx(
        (finals["cat_1"]["metrics"]["selection"] + finals["cat_2"]["metrics"]["selection"]) / 2
    )
    assert [r["round"] for r in bench["rounds"]] == [1, 2, 3]
    assert bench["rounds"][2]["mean_best_selection"] == pytest.approx(bench["metrics"]["selection"]["mean"])
    assert bench["timings"]["services"]["generator"]["busy_s"] > 0
    assert not list(root.rglob(".*tmp-*"))
    # The generator's max_batch (2) splits each round's 3 images; cases overlap.
    assert max(fakes.faults.generate_sizes) == 2
    assert fakes.faults.max_in_flight > 1


def test_same_seed_same_numbers_other_seed_other_numbers(fakes, dataset, tmp_path):
    a = run(_config(fakes, dataset, tmp_path / "a", concurrency=5))
    b = run(_config(fakes, dataset, tmp_path / "b", concurrency=1))
    c = run(_config(fakes, dataset, tmp_path / "c", seed=1))
    assert a.run_dir.name == b.run_dir.name != c.run_dir.name
    assert _numbers(a.benchmark) == _numbers(b.benchmark)
    assert _numbers(a.benchmark)["metrics"] != _numbers(c.benchmark)["metrics"]


def test_retries_unavailable_then_succeeds(fakes, dataset, tmp_path):
    fakes.faults.generate_unavailable = 2
    config = _config(fakes, dataset, tmp_path / "out", limit=1, rounds=1, candidates=1)
    config.retry = config.retry.model_copy(update={"initial_backoff_s": 0.01})
    summary = run(config)
    assert summary.done == 1
    assert fakes.faults.calls["Generate"] == 3


def test_failed_case_is_recorded_then_redone_on_resume(fakes, dataset, tmp_path):
    reference = (dataset / "dog_1.png").read_bytes()
    from regen.common.images import decode_image, encode_png

    fakes.faults.score_invalid_for.add(encode_png(decode_image(reference)))
    config = _config(fakes, dataset, tmp_path / "out", rounds=2, candidates=2)
    first = run(config)
    assert (first.done, first.failed) == (4, 1)
    error = read_json(first.run_dir / "dog_1" / "error.json")
    assert error["failure"]["stage"] == "score" and error["failure"]["code"] == "INVALID_ARGUMENT"
    assert "fake rejection" in error["failure"]["error"] and error["failure"]["attempts"] == 1
    assert first.benchmark["failed"][0]["case"] == "dog_1"
    assert first.benchmark["cases"]["failed"] == 1 and first.benchmark["categories"]["dog"]["failed"] == 1

    fakes.faults.score_invalid_for.clear()
    understood = fakes.faults.calls["Understand"]
    second = run(config)
    assert (second.done, second.failed, second.skipped) == (5, 0, 4)
    assert fakes.faults.calls["Understand"] == understood + 1, "only the failed case runs again"
    assert not (second.run_dir / "dog_1" / "error.json").exists()
    clean = run(_config(fakes, dataset, tmp_path / "clean", rounds=2, candidates=2))
    assert _numbers(second.benchmark) == _numbers(clean.benchmark)


def test_a_case_refused_throughout_is_finished_and_counted_with_penalties(fakes, dataset, tmp_path):
    """Every prompt of dog_1 carries its scene tag; refusing that tag refuses the case.
    It is a finished case (kept on resume) that counts at the penalty values."""
    config = _config(fakes, dataset, tmp_path / "out", rounds=2, candidates=2)
    tags = {}
    for case in ("dog_1", "cat_1"):
        reference = (dataset / f"{case}.png").read_bytes()
        from regen.common.images import decode_image, encode_png

        tags[case] = "scene " + _digest(encode_png(decode_image(reference))).hex()[:6]
    fakes.faults.refuse_containing.add(tags["dog_1"])
    first = run(config)
    assert (first.done, first.refused, first.failed) == (4, 1, 0) and first.complete
    final = read_json(first.run_dir / "dog_1" / "final" / "final_metrics.json")
    assert final["status"] == "refused" and final["metrics"] == {} and final["best"] is None
    assert final["candidates"] == {"total": 4, "refused": 4, "truncated": 0}
    assert final["refusal_reasons"] == ["content policy"]
    assert not (first.run_dir / "dog_1" / "final" / "best_image.png").exists()
    bench = first.benchmark
    assert bench["cases"] == {"total": 5, "done": 4, "refused": 1, "failed": 0, "pending": 0}
    assert bench["coverage"] == pytest.approx(0.8)
    assert bench["candidates"]["refused"] == 4 and bench["candidates"]["refusal_rate"] == pytest.approx(4 / 20)
    assert bench["refused"] == [{"case": "dog_1", "category": "dog", "candidates": 4, "reasons": ["content policy"]}]
    answered = ("cat_1", "cat_2", "dog_2", "bird_1")
    done = [read_json(first.run_dir / c / "final" / "final_metrics.json") for c in answered]
    for metric, penalty in (("selection", 0.0), ("clip", 0.0), ("judge_content", 1.0), ("judge_mean", 1.0)):
        values = [f["metrics"][metric] for f in done]
        assert bench["metrics"][metric]["n"] == 5
        assert bench["metrics"][metric]["mean"] == pytest.approx((sum(values) + penalty) / 5)
        assert bench["answered"]["metrics"][metric]["n"] == 4
        assert bench["answered"]["metrics"][metric]["mean"] == pytest.approx(sum(values) / 4)
    assert bench["categories"]["dog"]["refused"] == 1 and bench["categories"]["dog"]["coverage"] == 0.5
    # The curve counts the refused case at the selection penalty in every round.
    for r, point in enumerate(bench["rounds"]):
        assert point["n"] == 5
        assert point["mean_best_selection"] == pytest.approx(sum(f["best_selection_by_round"][r] for f in done) / 5)
    assert (first.run_dir / "report.html").is_file()

    # A refusal is the model's answer: resuming keeps it (nothing runs again).
    fakes.faults.refuse_containing.clear()
    understood = fakes.faults.calls["Understand"]
    again = run(config)
    assert (again.refused, again.skipped) == (1, 5) and fakes.faults.calls["Understand"] == understood

    # Some refused candidates in a case that still gets an image: done, with the rate counted.
    fakes.faults.refuse_containing.add(tags["cat_1"] + ", take 0")
    partial = run(_config(fakes, dataset, tmp_path / "partial", rounds=2, candidates=2))
    assert (partial.done, partial.refused) == (5, 0)
    counts = read_json(partial.run_dir / "cat_1" / "final" / "final_metrics.json")["candidates"]
    assert counts["refused"] >= 1 and counts["total"] == 4
    assert partial.benchmark["candidates"]["refused"] == counts["refused"]


def _reference_png(dataset: Path, case: str) -> bytes:
    from regen.common.images import decode_image, encode_png

    return encode_png(decode_image((dataset / f"{case}.png").read_bytes()))


def test_a_failed_judge_leaves_the_similarity_metrics_standing(fakes, dataset, tmp_path):
    """The describer's judge failing is not the generator's failure: the case is done, its
    similarity metrics count, its judge metrics are missing with the reason recorded, and
    the aggregates say how many cases each metric covers."""
    fakes.faults.judge_mode = "fair"
    fakes.faults.judge_fail_for.add(_reference_png(dataset, "dog_1"))
    summary = run(_config(fakes, dataset, tmp_path / "out", rounds=1, candidates=2, judge_checks=0))
    assert (summary.done, summary.failed) == (5, 0) and summary.complete
    final = read_json(summary.run_dir / "dog_1" / "final" / "final_metrics.json")
    assert final["status"] == "done" and final["judge"] is None
    assert set(final["metrics"]) == {"clip", "dinov2", "ssim", "selection"}
    failure = final["judge_failure"]
    assert failure["stage"] == "judge" and failure["code"] == "FAILED_PRECONDITION" and failure["attempts"] == 1
    assert failure["service_cost"] == {
        "api_calls": 3,
        "attempts": 3,
        "input_tokens": 900,
        "output_tokens": 60,
        "repairs": 2,
    }
    bench = summary.benchmark
    assert bench["metrics"]["clip"]["n"] == 5 and bench["metrics"]["judge_content"]["n"] == 4
    assert bench["metric_coverage"]["clip"] == {"cases": 5, "of": 5, "missing": []}
    assert bench["metric_coverage"]["judge_mean"] == {"cases": 4, "of": 5, "missing": ["dog_1"]}
    assert [(f["case"], f["code"]) for f in bench["judge_failed"]] == [("dog_1", "FAILED_PRECONDITION")]
    # What the failed call cost is in the usage: one gRPC call, three model calls behind it.
    judge_usage = read_json(summary.run_dir / "dog_1" / "final" / "final_metrics.json")["usage"]["describer"]["Judge"]
    assert (judge_usage["calls"], judge_usage["model_calls"], judge_usage["api_calls"]) == (1, 3, 3)
    assert judge_usage["repairs"] == 2 and judge_usage["input_tokens"] == 900
    totals = bench["usage"]["services"]["describer"]["by_method"]["Judge"]
    assert (totals["calls"], totals["model_calls"], totals["api_calls"]) == (5, 4 + 3, 4 + 3)
    assert (summary.run_dir / "report.html").read_text().count("Judge failed") >= 2


def test_a_resumed_run_judges_again_only_where_the_judge_failed_transiently(fakes, dataset, tmp_path):
    """A judge that broke (INTERNAL) is asked again on resume, on the same image with the
    same seed, and nothing else of the case runs again; a judge whose answer stayed invalid
    (FAILED_PRECONDITION) is not: asking again would only re-roll it."""
    fakes.faults.judge_mode = "fair"
    fakes.faults.judge_crash_for.add(_reference_png(dataset, "dog_1"))
    fakes.faults.judge_fail_for.add(_reference_png(dataset, "cat_2"))
    config = _config(fakes, dataset, tmp_path / "out", rounds=1, candidates=2, judge_checks=0)
    first = run(config)
    path = first.run_dir / "dog_1" / "final" / "final_metrics.json"
    before = read_json(path)
    assert before["judge_failure"]["code"] == "INTERNAL" and first.benchmark["metrics"]["judge_mean"]["n"] == 3
    seeds, generated = list(fakes.faults.judge_seeds), fakes.faults.calls["Generate"]

    fakes.faults.judge_crash_for.clear()
    again = run(config)
    assert (again.done, again.skipped, again.benchmark["timings"]["cases_rejudged"]) == (5, 4, 1)
    assert again.report is not None and again.report_error is None
    assert fakes.faults.calls["Generate"] == generated, "only the judge runs again"
    after = read_json(path)
    dog_seed = judge_seed(config.seed, "dog_1")
    assert fakes.faults.judge_seeds[len(seeds) :] == [dog_seed] and dog_seed in seeds, "the same seed as before"
    assert "judge_failure" not in after and after["judge"]["content_consistency"] >= 1
    assert after["judge_retried"] == [before["judge_failure"]]
    judge_metrics = {"judge_content", "judge_quality", "judge_mean"}
    assert set(after["metrics"]) == set(before["metrics"]) | judge_metrics
    assert {k: v for k, v in after["metrics"].items() if k not in judge_metrics} == before["metrics"]
    assert after["best"] == before["best"]
    # Both Judge calls are paid for: the one that broke and the one that answered.
    assert after["usage"]["describer"]["Judge"]["calls"] == 2
    assert after["timings"]["total_s"] > before["timings"]["total_s"]
    bench = again.benchmark
    assert [(f["case"], f["code"]) for f in bench["judge_failed"]] == [("cat_2", "FAILED_PRECONDITION")]
    assert bench["metric_coverage"]["judge_mean"] == {"cases": 4, "of": 5, "missing": ["cat_2"]}

    # Nothing left that a resume would judge again.
    judged = fakes.faults.calls["Judge"]
    third = run(config)
    assert third.skipped == 5 and fakes.faults.calls["Judge"] == judged


def test_every_request_behind_a_retried_judge_is_counted(fakes, dataset, tmp_path):
    """Each RESOURCE_EXHAUSTED the orchestrator retries cost the describer an API request:
    the usage shows them all, not only the call that answered."""
    fakes.faults.judge_mode = "fair"
    fakes.faults.judge_rate_limited = 2
    config = _config(fakes, dataset, tmp_path / "out", limit=1, rounds=1, candidates=1, judge_checks=0)
    config.retry = config.retry.model_copy(update={"initial_backoff_s": 0.01})
    summary = run(config)
    assert summary.done == 1 and fakes.faults.calls["Judge"] == 3
    (case,) = summary.benchmark["usage"]["per_case"]
    judge = read_json(summary.run_dir / case / "final" / "final_metrics.json")["usage"]["describer"]["Judge"]
    assert (judge["calls"], judge["retries"], judge["api_calls"], judge["model_calls"]) == (3, 2, 3, 3)


def _reliability(fakes, dataset, out: Path, mode: str, **overrides) -> dict:
    fakes.faults.judge_mode = mode
    summary = run(_config(fakes, dataset, out, rounds=1, candidates=2, **overrides))
    assert summary.done == 5
    return summary.benchmark["judge_reliability"]


def test_a_fair_judge_passes_its_reliability_checks_at_a_stated_cost(fakes, dataset, tmp_path):
    reliability = _reliability(fakes, dataset, tmp_path / "out", "fair")
    assert reliability["passed"] is True and reliability["flags"] == []
    assert reliability["sample"] == {"size": 8, "checked": 5, "check_errors": 0}
    assert reliability["swap"]["n"] == 5 and reliability["swap"]["within_one"] == 1.0
    assert reliability["control"]["n"] == 5 and reliability["control"]["mean_control"] == 1.0
    assert reliability["repeat"] == {"skipped": reliability["repeat"]["skipped"]} and "greedily" in str(
        reliability["repeat"]
    )
    # One judgement per case, then a swap and a control each: 15 Judge calls, 10 of them checks.
    assert fakes.faults.calls["Judge"] == 15
    bench = read_json(next((tmp_path / "out").iterdir()) / "benchmark_final.json")
    cost = bench["usage"]["services"]["describer"]["by_method"]["Judge:reliability"]
    assert (cost["calls"], cost["model_calls"], cost["api_calls"]) == (10, 10, 10)
    assert "The checks cost 10 describer calls" in (next((tmp_path / "out").iterdir()) / "report.html").read_text()


def test_a_constant_judge_is_flagged_and_compare_will_not_rank_on_it(fakes, dataset, tmp_path):
    reliability = _reliability(fakes, dataset, tmp_path / "out", "constant")
    assert reliability["passed"] is False
    flags = {f["flag"] for f in reliability["flags"]}
    assert flags == {"constant_judge_content", "constant_judge_quality", "control_blind"}
    assert any("all 5 judged cases content_consistency 5" in w for w in reliability["warnings"])
    assert reliability["scores"]["judge_content"]["std"] == 0

    from regen.orchestrator.compare import write_leaderboard
    from regen.orchestrator.report.terminal import judge_lines

    (run_dir,) = list((tmp_path / "out").iterdir())
    assert (
        "warning: the judge's scores are not reliable"
        in judge_lines(read_json(run_dir / "benchmark_final.json"))[0].plain
    )
    board, _ = write_leaderboard([run_dir], tmp_path / "board")
    assert board["judge"]["withheld"] and "judge_mean" not in board["metrics"]
    assert "constant_judge_content" in board["judge"]["note"] and "--trust-judge" in board["judge"]["note"]
    assert all(m not in board["pairwise"] for m in ("judge_content", "judge_quality", "judge_mean"))
    trusted, _ = write_leaderboard([run_dir], tmp_path / "trusted", trust_judge=True)
    assert "judge_mean" in trusted["metrics"] and trusted["judge"]["trusted_by_request"]
    assert "judge-unreliable" in (run_dir / "report.html").read_text()


def test_a_control_blind_judge_is_flagged(fakes, dataset, tmp_path):
    reliability = _reliability(fakes, dataset, tmp_path / "out", "control_blind")
    assert reliability["passed"] is False
    assert [f["flag"] for f in reliability["flags"]] == ["control_blind"]
    assert reliability["control"]["mean_control"] == 5.0 > reliability["control"]["mean_candidate"]
    assert "unrelated references" in reliability["warnings"][0]


def test_a_sampling_judge_is_asked_again_with_another_seed(fakes, dataset, tmp_path):
    from regen.orchestrator.reliability import judge_seed

    fakes.faults.judge_temperature = 0.7
    reliability = _reliability(fakes, dataset, tmp_path / "out", "fair", judge_checks=2)
    assert reliability["passed"] is True and reliability["sample"]["checked"] == 2
    for score in ("content_consistency", "perceptual_quality"):
        assert reliability["repeat"][score]["n"] == 2 and reliability["repeat"][score]["within_one"] == 1.0
    assert fakes.faults.calls["Judge"] == 5 + 2 * 3
    cases = ["cat_1", "cat_2", "dog_1", "dog_2", "bird_1"]
    seeds = Counter(fakes.faults.judge_seeds)
    assert all(seeds[judge_seed(0, case)] >= 1 for case in cases)
    assert sum(seeds[judge_seed(0, case, repeat=True)] for case in cases) == 2


def test_interrupted_case_is_redone_from_scratch(fakes, dataset, tmp_path):
    config = _config(fakes, dataset, tmp_path / "out", rounds=2, candidates=2)
    full = run(config)
    # Simulate a kill during cat_2's judge: no final_metrics.json, a stray temp file.
    (full.run_dir / "cat_2" / "final" / "final_metrics.json").unlink()
    (full.run_dir / "cat_2" / "final" / ".final_metrics.json.tmp-x").write_text("{")
    (full.run_dir / "benchmark_final.json").unlink()
    understood = fakes.faults.calls["Understand"]
    resumed = run(config)
    assert resumed.skipped == 4 and fakes.faults.calls["Understand"] == understood + 1
    assert _numbers(resumed.benchmark) == _numbers(full.benchmark)
    assert not list((full.run_dir / "cat_2").rglob(".*tmp-*"))


def test_resume_with_other_configuration_is_refused(fakes, dataset, tmp_path):
    run(_config(fakes, dataset, tmp_path / "out", run_name="mine", rounds=2, candidates=2, limit=2))
    with pytest.raises(RunMismatch, match=r"different configuration \(config\.rounds was 2, now 3\)"):
        run(_config(fakes, dataset, tmp_path / "out", run_name="mine", rounds=3, candidates=2, limit=2))


def test_unknown_selection_metric_fails_fast(fakes, dataset, tmp_path):
    with pytest.raises(RunError, match="scorer offers only: clip, dinov2, ssim"):
        run(_config(fakes, dataset, tmp_path / "out", selection_weights={"lpips": 1.0}))


def test_dead_service_fails_fast_naming_it(fakes, dataset, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(ConnectError, match=f"cannot reach the generator at {dead} within 2 s"):
        run(_config(fakes, dataset, tmp_path / "out", generator=dead, connect_timeout_s=2))
    with pytest.raises(ConnectError, match=r"does not answer regen\.v1\.Generator\.Info.*generator's address"):
        run(_config(fakes, dataset, tmp_path / "out", generator=fakes.addresses["scorer"]))


def test_cli_run_prints_results_and_never_imports_heavy_modules(fakes, dataset, tmp_path):
    args = ["run", "--dataset", str(dataset), "--out", str(tmp_path / "out"), "--limit", "3"]
    args += ["--rounds", "2", "--candidates", "2", "--progress", "plain"]
    args += [f"--{name}={address}" for name, address in fakes.addresses.items()]
    done = run_regen_cli(args)
    assert done.returncode == 0, done.stderr
    assert "HEAVY=\n" in done.stderr, done.stderr
    assert "3 of 3 cases done" in done.stdout
    results = Path(done.stdout.split("results: ")[1].split()[0])
    assert (results / "benchmark_final.json").is_file()
    assert "cat_1: done, selection" in done.stderr  # plain progress lines


def test_cli_misconfiguration_messages(fakes, dataset, tmp_path):
    done = run_regen_cli(["run", "--dataset", str(tmp_path / "nope"), "--progress", "none"])
    assert done.returncode == 2
    assert f"dataset {tmp_path / 'nope'}: no such folder" in done.stderr
    done = run_regen_cli(["run", "--dataset", str(dataset), "--rounds", "0", "--progress", "none"])
    assert done.returncode == 2 and "--rounds: Input should be greater than or equal to 1" in done.stderr
    done = run_regen_cli(
        [
            "run",
            "--dataset",
            str(dataset),
            "--out",
            str(tmp_path / "o"),
            "--progress",
            "none",
            "--scorer",
            "127.0.0.1:1",
            "--connect-timeout",
            "2",
        ]
        + [f"--{n}={a}" for n, a in fakes.addresses.items() if n != "scorer"]
    )
    assert done.returncode == 2 and "cannot reach the scorer at 127.0.0.1:1" in done.stderr


def test_iut_and_differences_files_use_the_one_json_form(fakes, dataset, tmp_path):
    """iut.json and metadata.json's differences are in the describer's schema-shaped JSON
    form ("type": "animal", never a protobuf enum name), which reads back as the same
    messages (what the describer's HTTP API accepts)."""
    from regen.common.describer_json import differences_from_json, iut_from_json, iut_to_json

    summary = run(_config(fakes, dataset, tmp_path / "out", limit=1, rounds=2, candidates=1))
    (folder,) = (p.parent for p in summary.run_dir.glob("*/iut.json"))
    text = (folder / "iut.json").read_text()
    assert "OBJECT_TYPE" not in text
    iut = json.loads(text)
    assert iut["objects"] == [
        {
            "name": "cat",
            "type": "animal",
            "attributes": dict.fromkeys(
                ("color", "material", "position", "texture", "species", "posture", "expression"), ""
            ),
        }
    ]
    assert iut["global_features"] == {"style": "photo", "lighting": "soft", "color_palette": "", "composition": ""}
    assert iut_to_json(iut_from_json(iut)) == iut
    differences = read_json(folder / "iteration_1" / "metadata.json")["differences"]
    assert differences == [{"aspect": "content", "description": differences[0]["description"]}]
    assert [(d.aspect, d.description) for d in differences_from_json(differences)] == [
        ("content", differences[0]["description"])
    ]


def _cli_run(fakes: FakeServices, args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    args = ["run", "--progress", "none", *args, *(f"--{name}={address}" for name, address in fakes.addresses.items())]
    return run_regen_cli(args, env={**os.environ, **(env or {})})


def test_file_env_and_flags_set_the_generate_request_in_that_order(fakes, dataset, tmp_path):
    """Size, steps, guidance and the deadline come from the config file's orchestrator
    section, a REGEN_ORCHESTRATOR_* variable overrides the file, and a flag overrides both."""
    config = tmp_path / "regen.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "orchestrator": {
                    "dataset": str(dataset),
                    "out": str(tmp_path / "out"),
                    "limit": 1,
                    "rounds": 1,
                    "candidates": 2,
                    "generation": {"width": 24, "height": 20, "steps": 3, "guidance_scale": 2.5},
                    "retry": {"rpc_timeout_s": 40},
                }
            }
        )
    )
    env = {"REGEN_ORCHESTRATOR_GENERATION__STEPS": "5", "REGEN_ORCHESTRATOR_RETRY__RPC_TIMEOUT_S": "30"}
    done = _cli_run(fakes, ["--config", str(config), "--width", "32", "--negative-prompt", "blurry"], env)
    assert done.returncode == 0, done.stderr
    assert "1 of 1 cases done" in done.stdout
    (request,) = fakes.faults.generate_requests
    deadline = request.pop("time_remaining")
    assert request == {
        "width": 32,
        "height": 20,
        "steps": 5,
        "guidance_scale": 2.5,
        "negative_prompts": {"blurry"},
    }
    assert 20 < deadline < 35  # the variable's 30 s, not the file's 40 s (give or take clock slack)
    run_info = read_json(Path(done.stdout.split("results: ")[1].split()[0]) / "run.json")
    assert run_info["config"]["generation"] == {
        "width": 32,
        "height": 20,
        "steps": 5,
        "guidance_scale": 2.5,
        "negative_prompt": "blurry",
    }
    assert (run_info["config"]["rounds"], run_info["config"]["candidates"], run_info["config"]["limit"]) == (1, 2, 1)


def test_retries_are_set_by_file_and_flag(fakes, dataset, tmp_path):
    config = tmp_path / "regen.yaml"
    retry = {"outage_budget_s": 30, "initial_backoff_s": 0.01, "max_backoff_s": 0.05}
    config.write_text(yaml.safe_dump({"orchestrator": {"retry": retry}}))
    fakes.faults.generate_unavailable = 3
    args = ["--dataset", str(dataset), "--out", str(tmp_path / "out"), "--limit", "1", "--rounds", "1"]
    args += ["--candidates", "1", "--config", str(config), "--outage-budget", "0"]
    done = _cli_run(fakes, args)
    # Past the outage budget the run stops (exit 3); the case is not counted as failed.
    assert done.returncode == 3, done.stderr
    assert "(0 s, the outage budget)" in done.stderr and "run the same command again" in done.stderr
    assert not list((tmp_path / "out").rglob("error.json"))
    assert fakes.faults.calls["Generate"] == 1

    fakes.faults.generate_unavailable = 3
    args[args.index("--out") + 1] = str(tmp_path / "again")
    done = _cli_run(fakes, args[:-2])  # the file's 30 s budget outlasts 3 quick failures
    assert done.returncode == 0, done.stderr
    assert fakes.faults.calls["Generate"] == 1 + 4


def test_cli_settings_errors_name_their_source(fakes, dataset, tmp_path):
    config = tmp_path / "regen.yaml"

    def fails(section: dict, *args: str, env: dict[str, str] | None = None) -> str:
        config.write_text(yaml.safe_dump(section))
        done = _cli_run(fakes, ["--config", str(config), "--out", str(tmp_path / "out"), *args], env)
        assert done.returncode == 2, done.stdout + done.stderr
        assert not (tmp_path / "out").exists()
        return done.stderr

    with_dataset = {"dataset": str(dataset)}
    stderr = fails({"orchestrator": {**with_dataset, "roundz": 2}})
    assert f"{config}: unknown setting orchestrator.roundz" in stderr
    stderr = fails({"orchestrator": {**with_dataset, "generation": {"widht": 64}}})
    assert f"{config}: orchestrator.generation.widht: Extra inputs are not permitted" in stderr
    stderr = fails({"orchestrater": {"rounds": 2}}, "--dataset", str(dataset))
    assert f"{config}: unknown section 'orchestrater'" in stderr
    stderr = fails({"orchestrator": {**with_dataset, "rounds": 0}})
    assert f"{config}: orchestrator.rounds: Input should be greater than or equal to 1" in stderr
    stderr = fails({"orchestrator": {**with_dataset, "rounds": 0}}, "--rounds", "-1")
    assert "--rounds: Input should be greater than or equal to 1" in stderr
    stderr = fails({"orchestrator": with_dataset}, env={"REGEN_ORCHESTRATOR_RETRY__RPC_TIMEOUT_S": "0"})
    assert "REGEN_ORCHESTRATOR_RETRY__RPC_TIMEOUT_S: Input should be greater than 0" in stderr
    stderr = fails({"orchestrator": {"rounds": 2}})
    assert "--dataset (or orchestrator.dataset in the config file): Field required" in stderr
    stderr = fails({}, "--dataset", str(dataset), "--weights", "clip")
    assert "--weights: Value error, selection weights 'clip': expected name=weight pairs" in stderr


def test_orchestrator_modules_import_no_heavy_libraries():
    import regen.orchestrator

    package = Path(regen.orchestrator.__file__).parent
    modules = [f"regen.orchestrator.{p.stem}" for p in sorted(package.glob("*.py")) if p.stem != "__init__"]
    code = "import sys\n" + "".join(f"import {m}\n" for m in [*modules, "regen.cli.main"])
    code += f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
