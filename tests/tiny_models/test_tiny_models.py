"""regen.tiny_models: the four tiny models build offline, reload through the same path a
real checkpoint takes, run, and are built deterministically, atomically and only once."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from regen.tiny_models import build as build_mod
from regen.tiny_models import build_all, build_models, cli_main, main, model_names, model_specs, read_manifest

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    # On a busy two-core machine, torch's default two intra-op threads make the SD forward pass
    # ~20x slower (spinning threads contend with other processes); one thread keeps it fast.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("tiny-a"))


def _image(w: int = 96, h: int = 64, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")


def test_build_all_layout(built: dict[str, Path]) -> None:
    assert set(built) == {"clip", "dinov2", "stable-diffusion", "qwen2.5-vl"} == set(model_names())
    out = next(iter(built.values())).parent
    manifest = read_manifest(out)
    for name, path in built.items():
        assert path == out / name and path.is_dir()
        entry = manifest["models"][name]
        assert entry["builder_version"] == model_specs()[name].version and entry["seed"] == 0
        assert entry["files"] == build_mod.file_hashes(path)
        assert any(f.endswith(".safetensors") for f in entry["files"])
        assert 10_000 < entry["size_bytes"] < 16_000_000, (name, entry["size_bytes"])
    assert not list(out.glob(".*.tmp")) and not list(out.glob(".*.old"))


def test_clip_reloads_and_embeds(built: dict[str, Path]) -> None:
    from transformers import AutoProcessor, CLIPImageProcessor, CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(built["clip"]).eval()
    processor = AutoProcessor.from_pretrained(built["clip"])
    assert isinstance(processor, CLIPProcessor)
    assert isinstance(CLIPImageProcessor.from_pretrained(built["clip"]), CLIPImageProcessor)
    assert model.config.text_config.vocab_size == len(processor.tokenizer)

    inputs = processor(
        images=[_image(), _image(300, 200, 1)],
        text=["a red car", "two dogs on a beach"],
        padding=True,
        return_tensors="pt",
    )
    assert inputs["pixel_values"].shape == (2, 3, 224, 224)
    with torch.no_grad():
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    # transformers 5 returns a model output; the projected embedding is its pooler_output.
    image = getattr(image, "pooler_output", image)
    text = getattr(text, "pooler_output", text)
    assert image.shape == (2, 16) and text.shape == (2, 16)
    assert torch.isfinite(image).all() and not torch.allclose(image[0], image[1])


def test_dinov2_reloads_and_runs(built: dict[str, Path]) -> None:
    from transformers import AutoImageProcessor, AutoModel, BitImageProcessor, Dinov2Model

    model = AutoModel.from_pretrained(built["dinov2"]).eval()
    processor = AutoImageProcessor.from_pretrained(built["dinov2"])
    assert isinstance(model, Dinov2Model) and isinstance(processor, BitImageProcessor)
    pixels = processor(images=[_image(), _image(40, 120, 2)], return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, 56, 56)
    with torch.no_grad():
        hidden = model(pixel_values=pixels).last_hidden_state
    assert hidden.shape == (2, 1 + 4 * 4, 32)  # CLS + 4×4 patches of 14 px
    assert torch.isfinite(hidden).all()


def test_stable_diffusion_reloads_and_generates(built: dict[str, Path]) -> None:
    import numpy as np
    from diffusers import AutoPipelineForText2Image, DDIMScheduler, StableDiffusionPipeline

    pipe = AutoPipelineForText2Image.from_pretrained(built["stable-diffusion"])
    assert isinstance(pipe, StableDiffusionPipeline) and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.steps_offset == 1 and pipe.safety_checker is None
    assert pipe.tokenizer.model_max_length == 77 and len(pipe.tokenizer) == pipe.text_encoder.config.vocab_size
    pipe.set_progress_bar_config(disable=True)

    def run(seed: int) -> list:
        gens = [torch.Generator().manual_seed(seed + i) for i in range(2)]
        return pipe(["a red car", "a cat on a sofa"], num_inference_steps=2, generator=gens).images

    images = run(0)
    assert [im.size for im in images] == [(64, 64), (64, 64)] and images[0].mode == "RGB"
    assert np.asarray(images[0]).std() > 0
    assert np.array_equal(np.asarray(run(0)[1]), np.asarray(images[1]))


def test_clip_tokenizer_round_trips(built: dict[str, Path]) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(built["stable-diffusion"] / "tokenizer")
    ids = tok("A Red car, parked on the street!")["input_ids"]
    assert ids[0] == tok.bos_token_id == tok.convert_tokens_to_ids("<|startoftext|>")
    assert ids[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.unk_token_id not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True) == "a red car , parked on the street !"
    assert len(ids) < 15  # merges learned: most words are one token


def test_qwen_reloads_and_generates_from_chat(built: dict[str, Path]) -> None:
    from transformers import (
        AutoProcessor,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    path = built["qwen2.5-vl"]
    processor = AutoProcessor.from_pretrained(path)
    assert isinstance(processor, Qwen2_5_VLProcessor)  # not a bare tokenizer (needs torchvision)
    assert isinstance(processor.image_processor, Qwen2VLImageProcessor)
    assert isinstance(processor.video_processor, Qwen2VLVideoProcessor)
    tok = processor.tokenizer
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path).eval()
    assert model.config.text_config.vocab_size == len(tok) > 2000
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n<|im_start|>assistant\n"
    )
    inputs = processor(text=[text], images=[_image(512, 512)], return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]  # scaled down to 112×112
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16  # 8×8 patches / merge 2×2
    small = processor(text=[text], images=[_image(56, 56)], return_tensors="pt")
    assert small["image_grid_thw"].tolist() == [[1, 4, 4]]

    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert new.shape == (6,) and int(new.max()) < len(tok)
    assert isinstance(processor.batch_decode(out[:, inputs["input_ids"].shape[1] :])[0], str)


def test_qwen_tokenizer_is_lossless_and_spells_words(built: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(built["qwen2.5-vl"])
    text = '{"caption": "A red car parked on the street", "count": 3, "ok": true}\n\tÜnïcode ✓'
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert len(ids) < len(text) // 2  # real merges, not bytes
    for word in ("caption", "Ġred", "Ġstreet", '":'):
        assert word in tok.get_vocab(), word


def test_builds_are_deterministic(built: dict[str, Path], tmp_path: Path) -> None:
    first = read_manifest(next(iter(built.values())).parent)["models"]
    build_all(tmp_path / "b")
    second = read_manifest(tmp_path / "b")["models"]
    for name in model_names():
        assert first[name]["files"] == second[name]["files"], name
    build_all(tmp_path / "c", seed=1, only=["dinov2"])
    other = read_manifest(tmp_path / "c")["models"]["dinov2"]["files"]
    assert other["model.safetensors"] != first["dinov2"]["files"]["model.safetensors"]
    assert other["preprocessor_config.json"] == first["dinov2"]["files"]["preprocessor_config.json"]


def test_tokenizer_training_is_deterministic_across_processes() -> None:
    # Equal-count merges must not be ordered by hash-map iteration order (which changes per process).
    code = (
        "import hashlib, json; from regen.tiny_models import tokenizers as t; "
        "print(hashlib.sha256(json.dumps([t.clip_vocab_and_merges(), t.qwen_vocab_and_merges()]).encode()).hexdigest())"
    )
    from regen.tiny_models import tokenizers as t

    here = hashlib.sha256(json.dumps([t.clip_vocab_and_merges(), t.qwen_vocab_and_merges()]).encode()).hexdigest()
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert there == here


def test_current_models_are_skipped_and_stale_ones_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (r,) = build_models(tmp_path, only=["dinov2"])
    assert r.built
    weights = tmp_path / "dinov2" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    (r,) = build_models(tmp_path, only=["dinov2"])
    assert not r.built and weights.stat().st_mtime_ns == mtime
    assert build_models(tmp_path, only=["dinov2"], force=True)[0].built

    weights.write_bytes(b"truncated")  # a damaged folder no longer matches the manifest
    assert build_models(tmp_path, only=["dinov2"])[0].built
    assert read_manifest(tmp_path)["models"]["dinov2"]["files"] == build_mod.file_hashes(tmp_path / "dinov2")

    assert build_models(tmp_path, only=["dinov2"], seed=3)[0].built  # another seed is another model
    current = model_specs()["dinov2"]
    bumped = build_mod.ModelSpec("dinov2", current.builder, current.version + 1)
    monkeypatch.setattr(build_mod, "model_specs", lambda: {"dinov2": bumped})
    assert build_models(tmp_path, only=["dinov2"], seed=3)[0].built  # new builder version
    assert read_manifest(tmp_path)["models"]["dinov2"]["builder_version"] == bumped.version

    with pytest.raises(ValueError, match="unknown tiny model"):
        build_all(tmp_path, only=["nope"])


def test_interrupted_build_leaves_no_half_written_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from regen.scorer.metrics.dinov2 import Dinov2Metric

    real_build = Dinov2Metric.build_tiny

    def crashing_build(out: Path, seed: int) -> None:
        real_build(out, seed)
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Dinov2Metric, "build_tiny", crashing_build)
    with pytest.raises(KeyboardInterrupt):
        build_all(tmp_path / "fresh", only=["dinov2"])
    assert not (tmp_path / "fresh" / "dinov2").exists()
    assert "dinov2" not in read_manifest(tmp_path / "fresh")["models"]
    assert not list((tmp_path / "fresh").glob(".dinov2.*"))

    monkeypatch.setattr(Dinov2Metric, "build_tiny", real_build)
    build_all(tmp_path / "old", only=["dinov2"])
    before = build_mod.file_hashes(tmp_path / "old" / "dinov2")
    monkeypatch.setattr(Dinov2Metric, "build_tiny", crashing_build)
    with pytest.raises(KeyboardInterrupt):
        build_all(tmp_path / "old", only=["dinov2"], force=True)
    assert build_mod.file_hashes(tmp_path / "old" / "dinov2") == before  # old model untouched
    assert read_manifest(tmp_path / "old")["models"]["dinov2"]["files"] == before
    assert not list((tmp_path / "old").glob(".dinov2.*"))

    (tmp_path / "stray" / "dinov2").mkdir(parents=True)  # a folder the manifest doesn't vouch for
    (tmp_path / "stray" / "dinov2" / "config.json").write_text("{}")
    monkeypatch.setattr(Dinov2Metric, "build_tiny", real_build)
    assert build_models(tmp_path / "stray", only=["dinov2"])[0].built
    assert (tmp_path / "stray" / "dinov2" / "model.safetensors").stat().st_size > 1000


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli_main(tmp_path, only=["dinov2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("dinov2") and "MB" in line and " s " in line and str(tmp_path / "dinov2") in line

    monkeypatch.setenv("REGEN_TINY_MODELS", str(tmp_path / "env"))
    assert main(["--only", "dinov2"]) == 0
    assert "current" not in capsys.readouterr().out
    assert (tmp_path / "env" / "dinov2" / "config.json").exists()
    assert main(["--only", "dinov2"]) == 0
    assert "current" in capsys.readouterr().out

    assert cli_main(tmp_path, only=["bogus"]) == 2
    assert "unknown tiny model" in capsys.readouterr().err


def test_import_is_light() -> None:
    heavy = ["torch", "transformers", "diffusers"]
    code = f"import json, sys, regen.tiny_models; print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
