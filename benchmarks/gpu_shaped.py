# ruff: noqa: E402 - the source-checkout fallback must run before regen is imported
"""The real orchestrator against GPU-shaped services, without a GPU.

Fake regen.v1 servers stand in for the models: the generator sleeps for the batch times
measured on an H100 (fp16), batching concurrent requests up to its max_batch; the
describer answers after a vLLM-like latency (prefill plus output tokens at a per-token
time, the same for up to 64 concurrent sequences); the scorer is cheap. A time scale
shrinks every sleep so a run takes seconds; ratios are unaffected. For each generator
shape (SD1.5 512², SDXL 1024²) and 1, 2 and 4 generator replicas, one run of 100 cases ×
3 rounds × 3 candidates at the orchestrator's default settings prints the wall time
against the generator-bound floor (900 images ÷ the best images/s of the shape ×
replicas), the generators' busy fraction, their mean batch and the split over replicas.
Each configuration runs twice: as it comes, and after `regen prepare` (the pre-pass of a
leaderboard, which leaves the describer's answers for every case's first steps in its
cache; the fake describer caches like the real one). A paper-style sequential loop (one
case at a time, one call after another) on a few
cases, scaled to 100, is the baseline in the same run. Wall time is the cases' (the
run's timings.cases_wall_s): connecting, and writing report.html afterwards, are not
part of the loop.

    python benchmarks/gpu_shaped.py                   # both shapes, 1/2/4 replicas
    python benchmarks/gpu_shaped.py --shapes sd15 --replicas 1 4 --cases 40
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
try:
    import regen.orchestrator  # noqa: F401 - installed
except ModuleNotFoundError:  # a source checkout
    sys.path[:0] = [
        str(REPO / p)
        for p in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["pythonpath"]
    ]

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from PIL import Image

from regen.common.batching import MicroBatcher
from regen.orchestrator.runner import prepare
from regen.orchestrator.runner import run as run_orchestrator
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


@dataclass(frozen=True)
class Shape:
    name: str
    max_batch: int
    # Measured batch times (seconds) by batch size, H100, fp16.
    batch_s: dict[int, float]
    scale: float  # default time scale: a 1-replica run's floor of about a minute

    def seconds(self, batch: int) -> float:
        """Batch time, linear between the measured sizes."""
        sizes = sorted(self.batch_s)
        if batch in self.batch_s:
            return self.batch_s[batch]
        lower = max(s for s in sizes if s < batch)
        upper = min(s for s in sizes if s > batch)
        t = (batch - lower) / (upper - lower)
        return self.batch_s[lower] + t * (self.batch_s[upper] - self.batch_s[lower])

    @property
    def best_images_per_s(self) -> float:
        return max(size / seconds for size, seconds in self.batch_s.items())


SHAPES = {
    "sd15": Shape("SD1.5 512², 30 steps", 16, {1: 0.81, 3: 0.85, 8: 1.68, 16: 3.24}, scale=0.25),
    "sdxl": Shape("SDXL 1024², 30 steps", 8, {1: 1.75, 3: 3.70, 8: 9.52}, scale=0.05),
}
# vLLM-like describer latency per task: (prefill seconds, output tokens); 12 ms a token.
DESCRIBER_TASKS = {
    "Understand": (0.15, 300),
    "WritePrompt": (0.05, 80),
    "Variants": (0.05, 240),
    "Compare": (0.15, 150),
    "Revise": (0.05, 80),
    "Judge": (0.15, 60),
}
TOKEN_S = 0.012
DESCRIBER_SEQUENCES = 64
SIDE = 64  # the PNGs on the wire are small: only the timing is GPU-shaped


def _png(seed: int) -> bytes:
    image = Image.new("RGB", (SIDE, SIDE), (seed % 251, (seed >> 8) % 251, (seed >> 16) % 251))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class FakeGenerator(generator_pb2_grpc.GeneratorServicer):
    def __init__(self, shape: Shape, scale: float, name: str) -> None:
        self.shape, self.scale, self.name = shape, scale, name
        self.busy_s = 0.0
        self.batches: list[int] = []
        self.batcher: MicroBatcher[int, bytes] = MicroBatcher(
            self._render, max_batch=shape.max_batch, max_wait_s=0.002, max_queue=100_000, name=name
        )

    def _render(self, seeds: list[int]) -> list[bytes]:
        seconds = self.shape.seconds(len(seeds)) * self.scale
        time.sleep(seconds)
        self.busy_s += seconds
        self.batches.append(len(seeds))
        return [_png(seed) for seed in seeds]

    async def Info(self, request, context):
        return generator_pb2.GeneratorInfo(
            model=common_pb2.ModelInfo(model_id=f"fake-{self.shape.name}", revision="r1", backend="fake"),
            server=common_pb2.ServerInfo(busy_s=self.busy_s, batches=len(self.batches), items=sum(self.batches)),
            prompt_token_budget=77,
            default_width=SIDE,
            default_height=SIDE,
            default_steps=30,
            default_guidance_scale=7.5,
            max_batch=self.shape.max_batch,
            size_multiple=8,
            capabilities=generator_pb2.GeneratorCapabilities(seeded=True, sampling_params=True, max_side=2048),
        )

    async def Generate(self, request, context):
        started = time.monotonic()
        futures = self.batcher.submit([spec.seed for spec in request.prompts])
        pending = dict(zip(futures, range(len(futures)), strict=True))
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                spec = request.prompts[index]
                yield generator_pb2.GeneratedImage(
                    index=index,
                    png=future.result(),
                    seed=spec.seed,
                    elapsed_s=time.monotonic() - started,
                    width=SIDE,
                    height=SIDE,
                    prompt_tokens=20,
                    model_id=f"fake-{self.shape.name}",
                    revision="r1",
                )


class FakeDescriber(describer_pb2_grpc.DescriberServicer):
    """Answers like the real describer with its answer cache: a request seen before (the
    same task and bytes) is answered at once."""

    def __init__(self, scale: float) -> None:
        self.scale = scale
        self.sequences = asyncio.Semaphore(DESCRIBER_SEQUENCES)
        self.seen: set[tuple[str, bytes]] = set()

    async def _think(self, task: str, request: Any = None) -> describer_pb2.CallInfo:
        key = (task, request.SerializeToString(deterministic=True) if request is not None else b"")
        if key in self.seen:
            return describer_pb2.CallInfo(cached=True)
        prefill, tokens = DESCRIBER_TASKS[task]
        async with self.sequences:
            await asyncio.sleep((prefill + tokens * TOKEN_S) * self.scale)
        self.seen.add(key)
        return describer_pb2.CallInfo(output_tokens=tokens, attempts=1)

    async def Info(self, request, context):
        return describer_pb2.DescriberInfo(
            model=common_pb2.ModelInfo(model_id="fake-qwen2.5-vl", revision="r1", backend="fake"),
            server=common_pb2.ServerInfo(),
            template_version="fake",
        )

    async def Understand(self, request, context):
        call = await self._think("Understand", request)
        iut = describer_pb2.ImageUnderstandingTree(
            global_description="a scene",
            objects=[describer_pb2.SceneObject(name="thing", type=describer_pb2.OBJECT_TYPE_OBJECT)],
        )
        return describer_pb2.UnderstandResponse(iut=iut, call=call)

    async def WritePrompt(self, request, context):
        return describer_pb2.PromptResponse(prompt="a scene, a thing", call=await self._think("WritePrompt", request))

    async def Variants(self, request, context):
        call = await self._think("Variants", request)
        prompts = [f"{request.prompt}, take {k} {request.seed}" for k in range(request.n)]
        return describer_pb2.VariantsResponse(prompts=prompts, call=call)

    async def Compare(self, request, context):
        call = await self._think("Compare", request)
        difference = describer_pb2.Difference(aspect="content", description="more things")
        return describer_pb2.CompareResponse(differences=[difference], call=call)

    async def Revise(self, request, context):
        return describer_pb2.PromptResponse(prompt=f"{request.prompt}, more", call=await self._think("Revise", request))

    async def Judge(self, request, context):
        call = await self._think("Judge", request)
        return describer_pb2.JudgeResponse(content_consistency=3, perceptual_quality=4, rationale="fake", call=call)


class FakeScorer(scorer_pb2_grpc.ScorerServicer):
    METRICS = ("clip", "dinov2", "ssim")

    async def Info(self, request, context):
        return scorer_pb2.ScorerInfo(
            models=[],
            server=common_pb2.ServerInfo(),
            metrics=[scorer_pb2.MetricInfo(id=f"{m}:fake", name=m, definition="fake") for m in self.METRICS],
            max_candidates=64,
        )

    async def Score(self, request, context):
        await asyncio.sleep(0.002)
        return scorer_pb2.ScoreResponse(
            candidates=[
                scorer_pb2.CandidateScores(index=i, scores={f"{m}:fake": (len(png) % 97) / 97 for m in self.METRICS})
                for i, png in enumerate(request.candidate_pngs)
            ]
        )


async def _server(add, servicer) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 1 << 28)])
    add(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


def serve_fakes(shape_key: str, replicas: int, scale: float, ports, stats, stop) -> None:
    """The fake services, in a process of their own so the orchestrator's CPU time does not
    stretch their sleeps; publishes ports, then the generators' statistics on `stop`."""

    async def main() -> None:
        shape = SHAPES[shape_key]
        generators = [FakeGenerator(shape, scale, f"replica-{i + 1}") for i in range(replicas)]
        servers = [await _server(generator_pb2_grpc.add_GeneratorServicer_to_server, g) for g in generators]
        describer = await _server(describer_pb2_grpc.add_DescriberServicer_to_server, FakeDescriber(scale))
        scorer = await _server(scorer_pb2_grpc.add_ScorerServicer_to_server, FakeScorer())
        ports.put({"generator": [port for _, port in servers], "describer": describer[1], "scorer": scorer[1]})
        while not stop.is_set():
            await asyncio.sleep(0.05)
        stats.put([(g.name, g.busy_s, list(g.batches)) for g in generators])

    asyncio.run(main())


def write_dataset(folder: Path, cases: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(cases):
        Image.new("RGB", (SIDE, SIDE), (k * 7 % 256, k * 13 % 256, k * 29 % 256)).save(folder / f"case_{k + 1}.png")
    return folder


@dataclass
class Result:
    label: str
    wall_s: float
    floor_s: float
    busy: float
    mean_batch: float
    split: str


def run_once(
    shape_key: str, replicas: int, cases: int, scale: float, workdir: Path, *, prepared: bool = False
) -> Result:
    shape = SHAPES[shape_key]
    context = multiprocessing.get_context("spawn")
    ports, stats, stop = context.Queue(), context.Queue(), context.Event()
    process = context.Process(target=serve_fakes, args=(shape_key, replicas, scale, ports, stats, stop))
    process.start()
    try:
        where = ports.get(timeout=120)
        generators = ",".join(f"127.0.0.1:{port}" for port in where["generator"])
        settings = OrchestratorSettings(
            dataset=str(write_dataset(workdir / "dataset", cases)),
            out=workdir / "runs",
            run_name=f"{shape_key}-{replicas}-{time.monotonic_ns()}",
            describer=f"127.0.0.1:{where['describer']}",
            generator=generators,
            scorer=f"127.0.0.1:{where['scorer']}",
            progress="none",
        )
        if prepared:
            prepare(settings)  # the leaderboard's pre-pass: fills the describer's cache, not timed
        summary = run_orchestrator(settings)
        # The cases' wall time: from the first call to the last case's end (the report
        # written afterwards is not part of the loop).
        wall = summary.benchmark["timings"]["cases_wall_s"]
        stop.set()
        replica_stats = stats.get(timeout=60)
    finally:
        stop.set()
        process.join(timeout=30)
    images = cases * 9
    floor = images / (shape.best_images_per_s * replicas) * scale
    busy = sum(b for _, b, _ in replica_stats) / (wall * replicas)
    sizes = [size for _, _, batches in replica_stats for size in batches]
    split = "/".join(str(sum(batches)) for _, _, batches in replica_stats)
    label = f"{shape.name}, {replicas} replica{'s' if replicas > 1 else ''}{', prepared' if prepared else ''}"
    return Result(label, wall, floor, busy, statistics.fmean(sizes) if sizes else 0.0, split)


async def _sequential_case(stubs, case: int) -> None:
    """The paper's loop for one case: each call waits for the one before; one image per
    Generate call and one Score call per image."""
    describer, generator, scorer = stubs
    reference = _png(case)
    understood = await describer.Understand(describer_pb2.UnderstandRequest(image_png=reference))
    prompt = (await describer.WritePrompt(describer_pb2.WritePromptRequest(iut=understood.iut))).prompt
    for _round in range(3):
        variants = await describer.Variants(describer_pb2.VariantsRequest(prompt=prompt, n=3, seed=case))
        images = []
        for k, text in enumerate(variants.prompts):
            request = generator_pb2.GenerateRequest(prompts=[generator_pb2.PromptSpec(text=text, seed=k)])
            images += [image.png async for image in generator.Generate(request)]
        for png in images:
            await scorer.Score(scorer_pb2.ScoreRequest(reference_png=reference, candidate_pngs=[png]))
        compared = await describer.Compare(describer_pb2.CompareRequest(reference_png=reference, candidate_png=png))
        revise = describer_pb2.ReviseRequest(prompt=prompt, differences=compared.differences)
        prompt = (await describer.Revise(revise)).prompt
    await describer.Judge(describer_pb2.JudgeRequest(reference_png=reference, candidate_png=images[0]))


def sequential_baseline(shape_key: str, cases: int, scale: float, sample: int) -> Result:
    """One case after another on one replica, `sample` cases, scaled to `cases`."""
    shape = SHAPES[shape_key]
    context = multiprocessing.get_context("spawn")
    ports, stats, stop = context.Queue(), context.Queue(), context.Event()
    process = context.Process(target=serve_fakes, args=(shape_key, 1, scale, ports, stats, stop))
    process.start()
    try:
        where = ports.get(timeout=120)

        async def main() -> float:
            channels = [grpc.aio.insecure_channel(f"127.0.0.1:{where[n]}") for n in ("describer", "scorer")]
            generator_channel = grpc.aio.insecure_channel(f"127.0.0.1:{where['generator'][0]}")
            stubs = (
                describer_pb2_grpc.DescriberStub(channels[0]),
                generator_pb2_grpc.GeneratorStub(generator_channel),
                scorer_pb2_grpc.ScorerStub(channels[1]),
            )
            started = time.monotonic()
            for case in range(sample):
                await _sequential_case(stubs, case)
            return (time.monotonic() - started) * cases / sample

        wall = asyncio.run(main())
        stop.set()
        replica_stats = stats.get(timeout=60)
    finally:
        stop.set()
        process.join(timeout=30)
    floor = cases * 9 / shape.best_images_per_s * scale
    sizes = [size for _, _, batches in replica_stats for size in batches]
    busy = replica_stats[0][1] * cases / sample / wall
    return Result(f"{shape.name}, paper-style sequential", wall, floor, busy, statistics.fmean(sizes), "-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["sd15", "sdxl"])
    parser.add_argument("--replicas", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--scale", type=float, default=None, help="time scale (default per shape)")
    parser.add_argument("--baseline-sample", type=int, default=4, help="cases the sequential baseline runs")
    args = parser.parse_args()
    os.environ.setdefault("REGEN_LOG_LEVEL", "WARNING")
    rows: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="regen-gpu-shaped-") as tmp:
        for shape_key in args.shapes:
            scale = args.scale or SHAPES[shape_key].scale
            rows.append(sequential_baseline(shape_key, args.cases, scale, args.baseline_sample))
            print(_row(rows[-1]), flush=True)
            for replicas in args.replicas:
                for prepared in (False, True):
                    workdir = Path(tmp) / f"{shape_key}{replicas}{'p' if prepared else ''}"
                    rows.append(run_once(shape_key, replicas, args.cases, scale, workdir, prepared=prepared))
                    print(_row(rows[-1]), flush=True)
    print(f"\n{args.cases} cases × 3 rounds × 3 candidates, default orchestrator settings; times scaled")
    print(HEADER)
    for row in rows:
        print(_row(row))


HEADER = (
    f"{'generator shape, replicas':<52} {'wall s':>8} {'floor s':>8} {'wall/floor':>10} "
    f"{'busy':>6} {'mean batch':>10}  split"
)


def _row(r: Result) -> str:
    return (
        f"{r.label:<52} {r.wall_s:>8.1f} {r.floor_s:>8.1f} {r.wall_s / r.floor_s:>9.2f}× "
        f"{r.busy:>6.0%} {r.mean_batch:>10.1f}  {r.split}"
    )


if __name__ == "__main__":
    main()
