"""Generator pieces without a server: token budgets and size rules of other pipeline
families, request validation and batching keys, fixed sizes and capabilities, a failed
prompt that costs its siblings nothing, the engine registry (and an engine added as a
plugin), the scheduler override, and the benchmark's real-shape code path (shrunk, on
the CPU)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from regen.common.errors import InvalidInput, UpstreamError
from regen.common.settings import load_settings
from regen.generator.core import (
    GenerateRequest,
    GeneratorCapabilities,
    GeneratorCore,
    ImageSize,
    PromptSpec,
    validate,
)
from regen.generator.engines import REGISTRY
from regen.generator.engines.base import EngineInfo, GenerationResult, GeneratorEngine, Usage
from regen.generator.engines.diffusers_engine import DiffusersEngine, default_size, size_multiple, token_budget
from regen.generator.settings import GeneratorSettings

REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeTokenizer:
    def __init__(self, model_max_length: int) -> None:
        self.model_max_length = model_max_length


class CLIPTokenizer(FakeTokenizer):
    pass


class T5TokenizerFast(FakeTokenizer):
    pass


class PixArtLikePipeline:
    def __init__(self) -> None:
        self.tokenizer = T5TokenizerFast(512)

    def __call__(self, prompt: str, max_sequence_length: int = 120) -> None: ...


class FluxPipeline:
    vae_scale_factor = 8
    default_sample_size = 128
    transformer = SimpleNamespace(config=SimpleNamespace(patch_size=1))


def test_token_budget_of_clip_conditioned_pipelines_is_the_clip_limit() -> None:
    sdxl = SimpleNamespace(tokenizer=CLIPTokenizer(77), tokenizer_2=CLIPTokenizer(77))
    assert token_budget(sdxl)[1] == 77
    sd3 = SimpleNamespace(tokenizer=CLIPTokenizer(77), tokenizer_2=CLIPTokenizer(77), tokenizer_3=T5TokenizerFast(512))
    tokenizer, budget = token_budget(sd3)
    assert budget == 77 and isinstance(tokenizer, CLIPTokenizer)


def test_token_budget_without_clip_is_the_pipelines_max_sequence_length() -> None:
    assert token_budget(PixArtLikePipeline())[1] == 120
    no_limit = SimpleNamespace(tokenizer=T5TokenizerFast(int(1e30)), __call__=lambda prompt: None)
    assert token_budget(no_limit)[1] == 0
    assert token_budget(SimpleNamespace()) == (None, 0)


def test_sizes_follow_the_vae_and_the_transformer_patch() -> None:
    assert size_multiple(FluxPipeline()) == 16 and default_size(FluxPipeline()) == 1024
    sd3 = SimpleNamespace(vae_scale_factor=8, transformer=SimpleNamespace(config=SimpleNamespace(patch_size=2)))
    assert size_multiple(sd3) == 16
    tiny = SimpleNamespace(vae_scale_factor=2, unet=SimpleNamespace(config=SimpleNamespace(sample_size=32)))
    assert size_multiple(tiny) == 8 and default_size(tiny) == 64


def _info(**changes) -> EngineInfo:
    fields = {
        "model_id": "m",
        "revision": "r",
        "backend": "diffusers",
        "device": "cpu",
        "dtype": "float32",
        "prompt_token_budget": 77,
        "default_width": 512,
        "default_height": 512,
        "default_steps": 30,
        "default_guidance_scale": 7.5,
        "size_multiple": 8,
    }
    return EngineInfo(**{**fields, **changes})


def test_validation_applies_defaults_and_keys_batches_by_render_settings() -> None:
    settings = load_settings(GeneratorSettings, negative_prompt="")
    request = GenerateRequest([PromptSpec("a cat", seed=1), PromptSpec("a dog", "blurry", seed=2)])
    plain, negative = validate(request, _info(), settings)
    assert (plain.params.width, plain.params.height, plain.params.steps) == (512, 512, 30)
    assert plain.params.guidance_scale == 7.5 and not plain.params.uses_negative_prompt
    assert negative.params.uses_negative_prompt and negative.negative_prompt == "blurry"
    assert plain.params != negative.params  # never merged into one pipeline call
    again = validate(GenerateRequest([PromptSpec("a bird", seed=9)]), _info(), settings)[0]
    assert again.params == plain.params  # merged with other requests of equal settings
    other = validate(GenerateRequest([PromptSpec("a bird", seed=9)], steps=20), _info(), settings)[0]
    assert other.params != plain.params


def test_a_configured_negative_prompt_applies_to_every_prompt() -> None:
    settings = load_settings(GeneratorSettings, negative_prompt="lowres, watermark")
    item = validate(GenerateRequest([PromptSpec("a cat")]), _info(), settings)[0]
    assert item.negative_prompt == "lowres, watermark" and item.params.uses_negative_prompt


def test_vendor_requests_ignore_sampling_params_and_refuse_negative_prompts() -> None:
    settings = load_settings(GeneratorSettings)
    vendor = _info(backend="openai", supports_negative_prompt=False, supports_sampling_params=False)
    a = validate(GenerateRequest([PromptSpec("a cat")], steps=50), vendor, settings)[0]
    b = validate(GenerateRequest([PromptSpec("a dog")], guidance_scale=3.0), vendor, settings)[0]
    assert a.params == b.params and a.params.steps == 0
    with pytest.raises(InvalidInput, match=r"prompts\[0\]\.negative_prompt"):
        validate(GenerateRequest([PromptSpec("a cat", "blurry")]), vendor, settings)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (GenerateRequest([PromptSpec("a")], width=4), "width: 4 is out of range"),
        (GenerateRequest([PromptSpec("a")], height=4096), "height: 4096 is out of range"),
        (GenerateRequest([PromptSpec("a")], guidance_scale=float("nan")), "guidance_scale: nan"),
        (GenerateRequest([PromptSpec("a", "n" * 5000)]), r"prompts\[0\]\.negative_prompt: 5000 characters"),
    ],
)
def test_validation_messages_name_the_field(request_, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate(request_, _info(), load_settings(GeneratorSettings))


def test_fixed_sizes_are_the_only_sizes_accepted_and_capabilities_report_them() -> None:
    settings = load_settings(GeneratorSettings, max_side=2048)
    fixed = _info(default_width=1024, default_height=1024, sizes=((1024, 1024), (1792, 1024)), seeded=False)
    wide = validate(GenerateRequest([PromptSpec("a")], width=1792, height=1024), fixed, settings)[0]
    assert (wide.params.width, wide.params.height) == (1792, 1024)
    with pytest.raises(
        InvalidInput, match=r"^width: 512x1024 is not a size m renders; use one of 1024x1024, 1792x1024$"
    ):
        validate(GenerateRequest([PromptSpec("a")], width=512), fixed, settings)
    with pytest.raises(InvalidInput, match=r"^height: 1024x1792 is not a size m renders"):
        validate(GenerateRequest([PromptSpec("a")], height=1792), fixed, settings)
    capabilities = GeneratorCapabilities.of(fixed, settings)
    assert capabilities.sizes == (ImageSize(1024, 1024), ImageSize(1792, 1024)) and capabilities.max_side == 1792
    assert not capabilities.seeded and capabilities.negative_prompt and capabilities.sampling_params
    free = GeneratorCapabilities.of(_info(), settings)
    assert (free.sizes, free.max_side, free.seeded) == ((), 2048, True)


class FlakyEngine:
    """Flat images, except for prompts that say "fail"; counts its calls per prompt."""

    def __init__(self, **info) -> None:
        self._info = _info(default_width=16, default_height=16, **info)
        self.calls: Counter[str] = Counter()

    def info(self) -> EngineInfo:
        return self._info

    def generate(self, batch):
        results: list[GenerationResult | BaseException] = []
        for item in batch:
            self.calls[item.prompt] += 1
            if "fail" in item.prompt:
                results.append(UpstreamError(f"prompts[{item.index}] failed"))
            else:
                results.append(GenerationResult(Image.new("RGB", (16, 16)), usage=Usage(api_calls=1, images=1)))
        return results

    def steps_run(self) -> int:
        return 0

    def close(self) -> None:
        pass


def test_a_failed_prompt_costs_its_siblings_nothing() -> None:
    """The images that succeed all come (with the model and their usage), then the error
    of the lowest failing index; the good prompts ran once, and nothing was cancelled."""
    engine = FlakyEngine()
    core = GeneratorCore(engine, load_settings(GeneratorSettings, max_wait_ms=0, batch_invariant=True))
    texts = ["a fox", "fail here", "a car", "fail there", "a tower"]

    async def run() -> list:
        images = []
        with pytest.raises(UpstreamError, match=r"^prompts\[1\] failed$"):
            async for image in core.generate(GenerateRequest([PromptSpec(t, seed=i) for i, t in enumerate(texts)])):
                images.append(image)
        await core.close()
        return images

    images = asyncio.run(run())
    assert sorted(image.index for image in images) == [0, 2, 4]
    assert all((i.model_id, i.revision, i.usage) == ("m", "r", Usage(api_calls=1, images=1)) for i in images)
    assert engine.calls == Counter(texts)


def test_a_default_size_outside_the_fixed_sizes_is_refused_at_startup() -> None:
    engine = FlakyEngine(sizes=((1024, 1024),))
    with pytest.raises(
        ValueError, match=r"^the default size, width: 16x16 is not a size m renders; use one of 1024x1024"
    ):
        GeneratorCore(engine, load_settings(GeneratorSettings))


def test_every_registered_engine_is_importable_and_complete() -> None:
    assert REGISTRY.names()[:2] == ["diffusers", "openai"]
    for name in REGISTRY.names():
        engine_cls = REGISTRY.load(name)
        for method in ("info", "generate", "steps_run", "close"):
            assert callable(getattr(engine_cls, method)), (name, method)
        load_settings(GeneratorSettings, engine=name)  # every registered name is a valid setting


def test_an_unknown_engine_is_refused_naming_the_setting_and_the_choices() -> None:
    settings = load_settings(GeneratorSettings, engine="stable-difusion")
    with pytest.raises(ValueError, match=r"^engine: unknown engine 'stable-difusion'; choose one of diffusers, openai"):
        GeneratorCore.load(settings)


# An engine as a newcomer writes it: one file. Here it arrives as a plugin (an entry point
# of another distribution); a built-in one is the same file plus one line in REGISTRY.
TOY_ENGINE = """
from PIL import Image

from regen.generator.engines.base import EngineInfo, GenerationResult


class ToyEngine:
    \"\"\"Flat images whose colour comes from the seed.\"\"\"

    def __init__(self, settings):
        self._info = EngineInfo(
            model_id=settings.model, revision="toy-1", backend="toy", device="cpu", dtype="",
            prompt_token_budget=0, default_width=settings.width or 32, default_height=settings.height or 32,
            default_steps=1, default_guidance_scale=0.0, size_multiple=8, supports_negative_prompt=False,
        )

    def info(self):
        return self._info

    def generate(self, batch):
        size = (batch[0].params.width, batch[0].params.height)
        return [GenerationResult(Image.new("RGB", size, (item.seed % 256, 0, 0))) for item in batch]

    def steps_run(self):
        return 0

    def close(self):
        pass
"""


def test_an_engine_is_one_new_file_found_through_the_registry(tmp_path, monkeypatch) -> None:
    import importlib.metadata
    import io

    import grpc
    from PIL import Image

    from regen.generator.grpc_api import BackgroundServer
    from regen.v1 import common_pb2, generator_pb2, generator_pb2_grpc

    (tmp_path / "regen_toy_engine.py").write_text(TOY_ENGINE)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin = importlib.metadata.EntryPoint("toy", "regen_toy_engine:ToyEngine", REGISTRY.group)
    real_entry_points = importlib.metadata.entry_points

    def entry_points(**select):
        found = real_entry_points(**select)
        return [*found, plugin] if select.get("group") == REGISTRY.group else found

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert REGISTRY.names() == ["diffusers", "openai", "toy"]
    settings = load_settings(GeneratorSettings, engine="toy", model="toy-model")  # no settings edit needed
    core = GeneratorCore.load(settings)
    assert isinstance(core.engine, GeneratorEngine)
    with BackgroundServer(core, settings) as server, grpc.insecure_channel(server.address) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        info = stub.Info(common_pb2.InfoRequest(), timeout=30)
        request = generator_pb2.GenerateRequest(prompts=[generator_pb2.PromptSpec(text="a red square", seed=200)])
        (image,) = stub.Generate(request, timeout=30)
    assert (info.model.backend, info.model.model_id, info.default_width) == ("toy", "toy-model", 32)
    assert Image.open(io.BytesIO(image.png)).getpixel((0, 0)) == (200, 0, 0)


def test_scheduler_override_by_class_name(tiny_models) -> None:
    settings = load_settings(GeneratorSettings, preset="tiny", scheduler="EulerDiscreteScheduler")
    engine = DiffusersEngine(settings)
    assert type(engine.pipeline.scheduler).__name__ == "EulerDiscreteScheduler"
    assert engine.pipeline.scheduler.config.beta_schedule == "scaled_linear"  # kept from the model's config
    with pytest.raises(ValueError, match="unknown diffusers scheduler 'NoSuchScheduler'"):
        DiffusersEngine(load_settings(GeneratorSettings, preset="tiny", scheduler="NoSuchScheduler"))


@pytest.mark.slow
def test_benchmark_real_shapes_code_path_runs_scaled_down(tmp_path) -> None:
    """The GPU benchmark's pipeline builders, in-process timing and gRPC client, with the
    real SD1.5 / SDXL block structure at tiny widths, on the CPU."""
    out = tmp_path / "bench.json"
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "generator.py"), "--shapes", "real", "--scale-down"]
    command += ["--device", "cpu", "--steps", "1", "--repeats", "1", "--batches", "1", "2", "--json", str(out)]
    answer = subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert "sd15" in answer.stdout and "sdxl" in answer.stdout
    import json

    rows = json.loads(out.read_text())
    assert [(r["model"], r["batch"]) for r in rows] == [("sd15", 1), ("sd15", 2), ("sdxl", 1), ("sdxl", 2)]
    assert all(r["in_process"] > 0 and r["grpc"] > 0 for r in rows)
