"""Scorer throughput: images/s at several batch sizes, in-process and through gRPC.

    python benchmarks/scorer.py                 # tiny models, CPU
    python benchmarks/scorer.py --shapes real   # random weights, real checkpoint shapes, GPU if any

Tables:
  1. model forward only: images/s of each embedder on ready pixel tensors (for real
     shapes, comparable with CLIP ViT-B/32 ~10,700 and DINOv2-base ~5,700 images/s
     measured on an H100 at batch 64 with random weights);
  2. end to end: one Score request of N candidates (512x512 PNGs) at a time, called
     in-process (decode, batcher, models) and through a gRPC server in a child process on
     127.0.0.1; the ratio gRPC / in-process is the transport overhead;
  3. coalescing: the same candidates sent as many concurrent 3-candidate requests.
The reference's embeddings are cached after the first call, as in rounds 2..R.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import sys
import tempfile
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in reversed(
    tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["pythonpath"]
):
    if str(REPO_ROOT / _path) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / _path))

from PIL import Image, ImageEnhance, ImageFilter  # noqa: E402

from regen.common.images import encode_png  # noqa: E402
from regen.common.settings import load_settings, resolve_device, resolve_dtype  # noqa: E402
from regen.scorer.settings import ScorerSettings  # noqa: E402

ALL_METRICS = ("clip", "dinov2", "ssim")
EMBEDDINGS = ("clip", "dinov2")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--device", default="auto", help="auto (cuda if any), cpu, cuda")
    parser.add_argument("--batches", type=int, nargs="+", help="candidates per request (default 1 8 32 [64 on GPU])")
    parser.add_argument("--size", type=int, default=512, help="side of the candidate and reference images")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="time each measurement at least this long")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="batcher wait (the service default is 10)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--skip-grpc", action="store_true", help="in-process only")
    return parser.parse_args()


# ---------------------------------------------------------------- models


def write_real_shaped_models(folder: Path) -> dict[str, dict[str, str]]:
    """CLIP ViT-B/32 and DINOv2-base shapes with random weights, saved once into `folder`
    and loaded back with from_pretrained like real checkpoints; returns metric_options."""
    import torch
    from transformers import BitImageProcessor, CLIPConfig, CLIPImageProcessor, CLIPModel, Dinov2Config, Dinov2Model
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    clip_dir, dinov2_dir = folder / "random-clip-vit-base-patch32", folder / "random-dinov2-base"
    if not (clip_dir / "config.json").exists():
        torch.manual_seed(0)
        clip_config = CLIPConfig(
            text_config={
                "vocab_size": 49408,
                "hidden_size": 512,
                "intermediate_size": 2048,
                "num_hidden_layers": 12,
                "num_attention_heads": 8,
                "max_position_embeddings": 77,
            },
            vision_config={
                "hidden_size": 768,
                "intermediate_size": 3072,
                "num_hidden_layers": 12,
                "num_attention_heads": 12,
                "image_size": 224,
                "patch_size": 32,
            },
            projection_dim=512,
        )
        CLIPModel(clip_config).save_pretrained(clip_dir)
        CLIPImageProcessor().save_pretrained(clip_dir)
    if not (dinov2_dir / "config.json").exists():
        torch.manual_seed(0)
        dinov2_config = Dinov2Config(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            mlp_ratio=4,
            patch_size=14,
            image_size=518,
            layerscale_value=1.0,
        )
        Dinov2Model(dinov2_config).save_pretrained(dinov2_dir)
        BitImageProcessor(
            size={"shortest_edge": 256},
            crop_size={"height": 224, "width": 224},
            image_mean=IMAGENET_DEFAULT_MEAN,
            image_std=IMAGENET_DEFAULT_STD,
            resample=3,
        ).save_pretrained(dinov2_dir)
    return {"clip": {"model": str(clip_dir)}, "dinov2": {"model": str(dinov2_dir)}}


def make_settings(args: argparse.Namespace) -> ScorerSettings:
    preset = "tiny" if args.shapes == "tiny" else None
    overrides: dict[str, object] = {"device": args.device, "max_wait_ms": args.max_wait_ms, "cpu_threads": args.threads}
    if args.shapes == "tiny" and args.device == "auto":
        overrides["device"] = "cpu"
    if args.shapes == "real":
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "regen" / "bench-scorer"
        overrides["metric_options"] = write_real_shaped_models(cache)
    return load_settings(ScorerSettings, preset=preset, **overrides)


def serve_child(settings_json: str, port_file: str) -> None:
    """The gRPC server process: the same core, behind `run_service` as `regen serve` runs it."""
    from regen.common.serving import run_service
    from regen.scorer.grpc_api import DEFINITION

    settings = ScorerSettings.model_validate_json(settings_json)
    run_service(settings, DEFINITION.build_core, DEFINITION.registrations, port_file=Path(port_file))


# ---------------------------------------------------------------- inputs


def test_images(size: int, count: int) -> tuple[bytes, list[bytes]]:
    """A reference and `count` different candidates, as PNG bytes (EvalRef-100 if present)."""
    evalref = Path(os.environ.get("REGEN_EVALREF_DIR", REPO_ROOT.parent / "shared" / "data" / "EvalRef-100"))
    sources = sorted(evalref.glob("*.png"))[:8] if evalref.is_dir() else []
    if sources:
        images = [Image.open(p).convert("RGB").resize((size, size)) for p in sources]
    else:
        images = [
            Image.effect_mandelbrot((size, size), (-2 + k / 4, -1.5, 1, 1.5), 60).convert("RGB") for k in range(8)
        ]
    variants = [
        lambda img: img,
        lambda img: img.filter(ImageFilter.GaussianBlur(2)),
        lambda img: ImageEnhance.Color(img).enhance(0.4),
        lambda img: img.rotate(7),
    ]
    candidates = [encode_png(variants[k % 4](images[k % len(images)])) for k in range(count)]
    buf = io.BytesIO()
    images[0].save(buf, format="PNG", compress_level=1)
    return buf.getvalue(), candidates


# ---------------------------------------------------------------- timing


async def images_per_second(call: Callable[[], Awaitable[object]], images_per_call: int, min_seconds: float) -> float:
    await call()  # warm-up (and the reference's embeddings get cached)
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < min_seconds:
        await call()
        calls += 1
    return calls * images_per_call / (time.perf_counter() - start)


def forward_table(core, batches: list[int], min_seconds: float) -> list[tuple[str, int, float, float]]:
    import torch

    from regen.scorer.metrics.embedding import EmbeddingMetric

    rows = []
    image = Image.effect_noise((512, 512), 64).convert("RGB")
    for embedder in [m for m in core.metrics if isinstance(m, EmbeddingMetric)]:
        for batch in batches:
            pixels = embedder.preprocess([image] * batch)

            def run(pixels=pixels, embedder=embedder) -> None:
                embedder.embed_pixels(pixels)
                if pixels.is_cuda:
                    torch.cuda.synchronize()

            for _ in range(3):
                run()
            calls, start = 0, time.perf_counter()
            while calls < 3 or time.perf_counter() - start < min_seconds:
                run()
                calls += 1
            elapsed = time.perf_counter() - start
            rows.append((embedder.info.checkpoint, batch, calls * batch / elapsed, 1000 * elapsed / calls))
    return rows


async def end_to_end(args, settings, core, batches: list[int], address: str | None):
    import grpc

    from regen.common.grpc_server import channel_options
    from regen.scorer.core import ScorerCore
    from regen.v1 import scorer_pb2, scorer_pb2_grpc

    scorer = ScorerCore(core.metrics, settings)  # a batcher of its own, in this event loop
    channel = grpc.aio.insecure_channel(address, options=channel_options()) if address else None
    stub = scorer_pb2_grpc.ScorerStub(channel) if channel else None
    reference, candidates = test_images(args.size, max(batches))
    rows = []
    for metrics in (EMBEDDINGS, ALL_METRICS):
        for batch in batches:
            chosen = candidates[:batch]
            local = await images_per_second(
                lambda chosen=chosen, metrics=metrics: scorer.score(reference, chosen, metrics), batch, args.min_seconds
            )
            remote = None
            if stub is not None:
                request = scorer_pb2.ScoreRequest(reference_png=reference, candidate_pngs=chosen, metrics=metrics)
                remote = await images_per_second(
                    lambda request=request: stub.Score(request, timeout=600), batch, args.min_seconds
                )
            rows.append(("+".join(metrics), batch, local, remote))

    # Coalescing: many 3-candidate requests at once vs the same requests one at a time.
    per_request, concurrent = 3, 16
    groups = [
        [candidates[(k * per_request + j) % len(candidates)] for j in range(per_request)] for k in range(concurrent)
    ]

    async def one_at_a_time(score):
        for group in groups:
            await score(group)

    async def all_at_once(score):
        await asyncio.gather(*(score(group) for group in groups))

    coalescing = []
    modes = [("in-process", lambda g: scorer.score(reference, g, EMBEDDINGS))]
    if stub is not None:
        modes.append(
            (
                "gRPC",
                lambda g: stub.Score(
                    scorer_pb2.ScoreRequest(reference_png=reference, candidate_pngs=g, metrics=EMBEDDINGS), timeout=600
                ),
            )
        )
    for label, score in modes:
        images = concurrent * per_request
        sequential = await images_per_second(lambda score=score: one_at_a_time(score), images, args.min_seconds)
        together = await images_per_second(lambda score=score: all_at_once(score), images, args.min_seconds)
        coalescing.append((label, sequential, together))
    if channel is not None:
        await channel.close()
    await scorer.close()
    return rows, coalescing


def start_server(settings: ScorerSettings) -> tuple[multiprocessing.Process, str]:
    from regen.orchestrator.launcher import wait_for_serving

    port_file = Path(tempfile.mkdtemp(prefix="regen-scorer-bench-")) / "port"
    server_settings = settings.model_copy(update={"host": "127.0.0.1", "port": 0})
    context = multiprocessing.get_context("spawn")
    proc = context.Process(target=serve_child, args=(server_settings.model_dump_json(), str(port_file)))
    proc.start()
    deadline = time.monotonic() + 300
    while not port_file.exists():
        if not proc.is_alive() or time.monotonic() > deadline:
            raise SystemExit(f"the gRPC scorer did not start (exit code {proc.exitcode})")
        time.sleep(0.05)
    address = f"127.0.0.1:{int(port_file.read_text())}"
    wait_for_serving(address, timeout_s=300, service="scorer")
    return proc, address


def print_table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))))
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))


def main() -> None:
    args = parse_args()
    logging_quiet()
    if args.shapes == "tiny":
        from regen.common.settings import tiny_models_dir
        from regen.tiny_models import build_all

        build_all(tiny_models_dir(), only=["clip", "dinov2"])
    settings = make_settings(args)
    device = resolve_device(settings.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    batches = args.batches or ([1, 8, 32, 64] if device.startswith("cuda") else [1, 8, 32])
    if args.shapes == "real" and not device.startswith("cuda"):
        print("note: no CUDA GPU; real shapes run on the CPU (slow)", file=sys.stderr)
    from regen.scorer.core import ScorerCore

    core = ScorerCore.load(settings)
    gpu = ""
    if device.startswith("cuda"):
        import torch

        gpu = f", {torch.cuda.get_device_name(0)}"
    print(
        f"scorer benchmark: {args.shapes} shapes on {device}{gpu}, dtype {resolve_dtype(settings.dtype, device)}, "
        f"{args.size}x{args.size} PNG candidates, batcher wait {args.max_wait_ms} ms"
    )

    forward = forward_table(core, batches, args.min_seconds)
    print_table(
        "model forward only (pixel tensors ready on the device)",
        ("model", "batch", "images/s", "ms/batch"),
        [(model, str(b), f"{ips:,.0f}", f"{ms:.2f}") for model, b, ips, ms in forward],
    )

    proc, address = (None, None) if args.skip_grpc else start_server(settings)
    try:
        rows, coalescing = asyncio.run(end_to_end(args, settings, core, batches, address))
    finally:
        if proc is not None:
            proc.terminate()
            proc.join(30)
    print_table(
        "end to end: one Score request at a time (reference embeddings cached)",
        ("metrics", "batch", "in-process img/s", "gRPC img/s", "gRPC/in-process"),
        [
            (
                m,
                str(b),
                f"{local:,.1f}",
                "-" if remote is None else f"{remote:,.1f}",
                "-" if remote is None else f"{remote / local:.2f}",
            )
            for m, b, local, remote in rows
        ],
    )
    print_table(
        "coalescing: 16 requests of 3 candidates (clip+dinov2)",
        ("mode", "one at a time img/s", "concurrent img/s", "speed-up"),
        [(label, f"{seq:,.1f}", f"{conc:,.1f}", f"{conc / seq:.2f}") for label, seq, conc in coalescing],
    )


def logging_quiet() -> None:
    import logging

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("REGEN_LOG_LEVEL", "WARNING")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


if __name__ == "__main__":
    main()
