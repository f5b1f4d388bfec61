"""Generator throughput: images/s at several batch sizes, in-process and through gRPC.

    python benchmarks/generator.py                  # tiny SD pipeline, CPU, 64x64, 4 steps
    python benchmarks/generator.py --shapes real    # SD1.5- and SDXL-shaped random weights, GPU
    python benchmarks/generator.py --shapes real --compile --models sd15 --batches 8
    python benchmarks/generator.py --shapes real --scale-down --device cpu --steps 1
                                                    # the real-shape code path, shrunk, on a CPU

For each model and batch size N:
  - in-process: back-to-back engine calls of N prompts (one pipeline call each: text
    encoding, denoising, VAE decode, PIL images), no transport, no PNG;
  - gRPC: a client in a child process sends Generate requests of N prompts, `--concurrency`
    at a time, to a real gRPC server on 127.0.0.1 in this process over the same engine
    (batcher max_batch = N, PNG encoding on the encoder threads, streaming);
  - ratio = gRPC / in-process (the service should keep >= 0.90).

`--shapes real` builds, in memory on the device (no download), random-weight pipelines of
the real architectures: SD1.5 (UNet 320/640/1280/1280, cross-attention 768, CLIP ViT-L/14
text encoder, PNDM, 512x512) and SDXL base (UNet 320/640/1280 with 1/2/10 transformer
layers, CLIP ViT-L + OpenCLIP bigG text encoders, Euler, 1024x1024); fp16 on a GPU, 30
steps with classifier-free guidance. The tokenizer is the tiny offline one (token ids are
all a text encoder needs). Reference (H100, same setup): SD1.5 1.24 / 3.5 / 4.8 images/s
at batch 1 / 3 / 8; SDXL 0.57 / 0.81 at batch 1 / 3.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_PATHS = [
    str(REPO_ROOT / p)
    for p in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["pythonpath"]
]
for _path in reversed(SOURCE_PATHS):
    if _path not in sys.path:
        sys.path.insert(0, _path)

# H100 reference, random weights, 30 steps with CFG (images/s by batch size).
REFERENCE = {"sd15": {1: 1.24, 3: 3.5, 8: 4.8}, "sdxl": {1: 0.57, 3: 0.81}}
PROMPTS = [
    "a red fox sleeping in fresh snow, soft morning light, watercolor",
    "a vintage blue car on a cobblestone street, film photograph",
    "a lighthouse on a rocky cliff at sunset, oil painting",
    "a bowl of lemons on a wooden table, studio lighting",
    "a child flying a kite on a windy beach, pastel colors",
    "an old library with tall shelves and warm lamps",
    "a snowy mountain village at night, long exposure",
    "a portrait of an elderly fisherman, dramatic side light",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--models", nargs="+", choices=("sd15", "sdxl"), default=["sd15", "sdxl"], help="real shapes")
    parser.add_argument("--device", default="auto", help="auto (cuda if any), cpu, cuda")
    parser.add_argument("--dtype", default="auto", help="auto (float16 on cuda), float32, float16, bfloat16")
    parser.add_argument("--batches", type=int, nargs="+", help="default: 1 3 8 (SDXL: 1 3)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: 30 real, 4 tiny)")
    parser.add_argument("--size", type=int, help="image side (default: 512 SD1.5, 1024 SDXL, 64 tiny/scaled)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per batch size and mode")
    parser.add_argument("--concurrency", type=int, default=2, help="gRPC requests in flight at once")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (GPU)")
    parser.add_argument("--scale-down", action="store_true", help="real shapes with tiny widths (CPU code-path check)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: the preset's, else torch's default)"
    )
    parser.add_argument("--skip-grpc", action="store_true", help="in-process only")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--client", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--client-request", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------- real-shaped pipelines


@dataclass(frozen=True)
class Dims:
    """Widths of the SD1.5 / SDXL architectures; `scaled()` keeps every block type."""

    sd15_unet: tuple[int, ...] = (320, 640, 1280, 1280)
    sd15_heads: int = 8
    sdxl_unet: tuple[int, ...] = (320, 640, 1280)
    sdxl_transformer_layers: tuple[int, ...] = (1, 2, 10)
    sdxl_head_dims: tuple[int, ...] = (5, 10, 20)
    vae: tuple[int, ...] = (128, 256, 512, 512)
    clip_l: tuple[int, int, int, int] = (768, 3072, 12, 12)  # hidden, mlp, layers, heads
    clip_g: tuple[int, int, int, int] = (1280, 5120, 32, 20)
    time_embed: int = 256

    @staticmethod
    def scaled() -> Dims:
        return Dims(
            sd15_unet=(32, 32, 64, 64),
            sd15_heads=4,
            sdxl_unet=(32, 64, 64),
            sdxl_transformer_layers=(1, 1, 2),
            sdxl_head_dims=(2, 4, 4),
            vae=(32, 32, 32, 32),
            clip_l=(32, 64, 2, 4),
            clip_g=(32, 64, 2, 4),
            time_embed=8,
        )


def _clip_text(dims: tuple[int, int, int, int], act: str, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    hidden, mlp, layers, heads = dims
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _vae(dims: Dims, sample_size: int, scaling: float, force_upcast: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=dims.vae,
        layers_per_block=2,
        latent_channels=4,
        sample_size=sample_size,
        scaling_factor=scaling,
        force_upcast=force_upcast,
    )


def build_real_pipeline(name: str, dims: Dims, device: str, dtype: str):
    """A random-weight pipeline of the real architecture, built directly on `device`."""
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    from regen.tiny_models.tokenizers import clip_tokenizer

    torch_dtype = getattr(torch, dtype)
    torch.manual_seed(0)
    betas = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
    tokenizer = clip_tokenizer()
    # Schedulers keep their tables on the CPU, as from_pretrained leaves them.
    pndm = PNDMScheduler(**betas, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    euler = EulerDiscreteScheduler(**betas, steps_offset=1, timestep_spacing="leading")
    # Weights are created (randomly initialised) directly on the device: seconds, not minutes.
    with torch.device(device):
        if name == "sd15":
            unet = UNet2DConditionModel(
                sample_size=64,
                layers_per_block=2,
                block_out_channels=dims.sd15_unet,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=dims.clip_l[0],
                attention_head_dim=dims.sd15_heads,
            )
            pipeline = StableDiffusionPipeline(
                vae=_vae(dims, 512, 0.18215, force_upcast=True),
                text_encoder=_clip_text(dims.clip_l, "quick_gelu", projection=False),
                tokenizer=tokenizer,
                unet=unet,
                scheduler=pndm,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        elif name == "sdxl":
            pooled = dims.clip_g[0]
            unet = UNet2DConditionModel(
                sample_size=128,
                layers_per_block=2,
                block_out_channels=dims.sdxl_unet,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=dims.sdxl_transformer_layers,
                attention_head_dim=dims.sdxl_head_dims,
                cross_attention_dim=dims.clip_l[0] + dims.clip_g[0],
                use_linear_projection=True,
                addition_embed_type="text_time",
                addition_time_embed_dim=dims.time_embed,
                projection_class_embeddings_input_dim=6 * dims.time_embed + pooled,
            )
            pipeline = StableDiffusionXLPipeline(
                vae=_vae(dims, 1024, 0.13025, force_upcast=True),
                text_encoder=_clip_text(dims.clip_l, "quick_gelu", projection=False),
                text_encoder_2=_clip_text(dims.clip_g, "gelu", projection=True),
                tokenizer=tokenizer,
                tokenizer_2=tokenizer,
                unet=unet,
                scheduler=euler,
            )
        else:
            raise ValueError(f"unknown real-shaped model {name!r}")
    return pipeline.to(device, torch_dtype)


# ----------------------------------------------------------------- measurement


@dataclass
class Case:
    name: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    batches: list[int]


@dataclass
class Row:
    model: str
    size: str
    batch: int
    in_process: float
    grpc: float | None
    reference: float | None

    @property
    def ratio(self) -> float | None:
        return None if self.grpc is None else self.grpc / self.in_process


def _request(case: Case, batch: int, steps: int | None = None):
    from regen.generator.core import GenerateRequest, PromptSpec

    return GenerateRequest(
        prompts=[PromptSpec(PROMPTS[i % len(PROMPTS)], seed=1000 + i) for i in range(batch)],
        width=case.width,
        height=case.height,
        steps=steps or case.steps,
        guidance_scale=case.guidance_scale,
    )


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def in_process(core, case: Case, batch: int, repeats: int) -> float:
    """images/s of back-to-back engine calls (one warm-up call first)."""
    engine = core.engine
    items = core.validate(_request(case, batch))
    engine.generate(items)  # warm-up: cuDNN/cuBLAS choices, compilation
    device = engine.info().device
    _sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        engine.generate(items)
    _sync(device)
    return batch * repeats / (time.perf_counter() - started)


def _request_json(case: Case, batch: int) -> str:
    request = _request(case, batch)
    return json.dumps(
        {
            "prompts": [{"text": p.text, "seed": p.seed} for p in request.prompts],
            "width": request.width,
            "height": request.height,
            "steps": request.steps,
            "guidance_scale": request.guidance_scale,
        }
    )


def through_grpc(address: str, case: Case, batch: int, repeats: int, concurrency: int) -> float:
    """images/s seen by a client process: `repeats` requests of `batch`, `concurrency` at a time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*SOURCE_PATHS, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, __file__, "--client", address, "--client-request", _request_json(case, batch)]
    command += ["--repeats", str(repeats), "--concurrency", str(concurrency)]
    answer = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if answer.returncode != 0:
        raise RuntimeError(f"benchmark client failed:\n{answer.stderr[-3000:]}")
    result = json.loads(answer.stdout.strip().splitlines()[-1])
    return result["images"] / result["seconds"]


def run_client(address: str, request_json: str, repeats: int, concurrency: int) -> None:
    """Child process: one warm-up request (1 step), then the timed requests."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from regen.common.grpc_server import channel_options
    from regen.v1 import generator_pb2, generator_pb2_grpc

    fields = json.loads(request_json)
    prompts = [generator_pb2.PromptSpec(**p) for p in fields.pop("prompts")]
    request = generator_pb2.GenerateRequest(prompts=prompts, **fields)
    warmup = generator_pb2.GenerateRequest(prompts=prompts, **{**fields, "steps": 1})
    with grpc.insecure_channel(address, options=channel_options()) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)

        def call(message) -> int:
            images = list(stub.Generate(message, timeout=1800))
            assert sorted(image.index for image in images) == list(range(len(prompts)))
            assert all(image.png.startswith(b"\x89PNG") for image in images)
            return len(images)

        call(warmup)
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            count = sum(pool.map(call, [request] * repeats))
        seconds = time.perf_counter() - started
    print(json.dumps({"images": count, "seconds": seconds}))


def measure(core, settings, case: Case, args: argparse.Namespace) -> list[Row]:
    from regen.generator.grpc_api import BackgroundServer

    rows: list[Row] = []
    server = None if args.skip_grpc else BackgroundServer(core, settings)
    if server is not None:
        server.start()
    try:
        for batch in case.batches:
            local = in_process(core, case, batch, args.repeats)
            remote = None
            if server is not None:
                core.batcher.max_batch = batch  # each engine call gets exactly `batch` prompts
                remote = through_grpc(server.address, case, batch, args.repeats, args.concurrency)
            reference = (
                REFERENCE.get(case.name, {}).get(batch) if args.shapes == "real" and not args.scale_down else None
            )
            row = Row(case.name, f"{case.width}x{case.height}", batch, local, remote, reference)
            rows.append(row)
            print_row(row, flush=True)
    finally:
        if server is not None:
            server.stop()
    return rows


HEADER = f"{'model':<6} {'size':>9} {'batch':>5} {'in-process':>11} {'gRPC':>8} {'gRPC/in':>8} {'H100 ref':>9}"


def print_row(row: Row, flush: bool = False) -> None:
    grpc_text = f"{row.grpc:8.3f}" if row.grpc is not None else f"{'-':>8}"
    ratio = f"{row.ratio:8.2f}" if row.ratio is not None else f"{'-':>8}"
    reference = f"{row.reference:9.2f}" if row.reference is not None else f"{'-':>9}"
    print(
        f"{row.model:<6} {row.size:>9} {row.batch:>5} {row.in_process:11.3f} {grpc_text} {ratio} {reference}",
        flush=flush,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client:
        run_client(args.client, args.client_request, args.repeats, args.concurrency)
        return 0

    import torch

    from regen.common.settings import load_settings, resolve_device, resolve_dtype
    from regen.generator.core import GeneratorCore
    from regen.generator.engines.diffusers_engine import DiffusersEngine
    from regen.generator.settings import GeneratorSettings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    common = {
        "device": device,
        "dtype": dtype,
        "compile": args.compile,
        "batch_invariant": False,  # measure batching (the tiny preset renders one by one)
        "max_steps": 1000,
        "max_wait_ms": 5.0,
        "max_side": 2048,
    }
    if args.threads:
        common["cpu_threads"] = args.threads  # else the preset's (tiny pins 1) or torch's default
    started = time.perf_counter()
    card = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    steps = args.steps or (4 if args.shapes == "tiny" else 30)
    print(
        f"device {device} ({card}), {dtype}, torch {torch.__version__}, compile={args.compile}, steps={steps}, "
        f"repeats={args.repeats}, gRPC concurrency={args.concurrency}",
        flush=True,
    )
    print(HEADER, flush=True)
    rows: list[Row] = []
    if args.shapes == "tiny":
        from regen.common.settings import tiny_models_dir

        os.environ.setdefault("REGEN_TINY_MODELS", str(REPO_ROOT / ".cache" / "tiny-models"))
        from regen.tiny_models import build_all

        build_all(tiny_models_dir())
        settings = load_settings(GeneratorSettings, preset="tiny", **{**common, "max_batch": 8})
        case = Case("tiny", args.size or 64, args.size or 64, args.steps or 4, 5.0, args.batches or [1, 3, 8])
        core = GeneratorCore(DiffusersEngine(settings), settings)
        rows += measure(core, settings, case, args)
    else:
        dims = Dims.scaled() if args.scale_down else Dims()
        for name in args.models:
            default_size = 64 if args.scale_down else {"sd15": 512, "sdxl": 1024}[name]
            size = args.size or default_size
            batches = args.batches or ([1, 3, 8] if name == "sd15" else [1, 3])
            guidance = 7.5 if name == "sd15" else 5.0
            case = Case(name, size, size, args.steps or 30, guidance, batches)
            built = time.perf_counter()
            pipeline = build_real_pipeline(name, dims, device, dtype)
            settings = load_settings(
                GeneratorSettings, **{**common, "model": f"{name}-shaped-random", "max_batch": max(batches)}
            )
            core = GeneratorCore(DiffusersEngine(settings, pipeline=pipeline), settings)
            print(f"# built {name}-shaped pipeline in {time.perf_counter() - built:.1f} s", flush=True)
            rows += measure(core, settings, case, args)
            del core, pipeline
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    print(f"# total {time.perf_counter() - started:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps([{**row.__dict__, "ratio": row.ratio} for row in rows], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
