"""The scorer through a real `regen serve scorer --preset tiny` process on 127.0.0.1."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image, ImageChops, ImageEnhance, ImageFilter
from skimage.metrics import structural_similarity
from support.scenes import scene

from regen.common.grpc_server import channel_options
from regen.common.identity import model_revision
from regen.common.images import encode_png
from regen.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc

SSIM_ID = "ssim;win=11;sigma=1.5;range=1;color=rgb;resize=bicubic"
# One reference per category.
REFERENCES = ("portrait_1", "object_2", "scene_3", "complex_4")


@pytest.fixture(scope="module")
def stub(scorer_address: str) -> Iterator[scorer_pb2_grpc.ScorerStub]:
    with grpc.insecure_channel(scorer_address, options=channel_options()) as channel:
        yield scorer_pb2_grpc.ScorerStub(channel)


@pytest.fixture(scope="module")
def info(stub) -> scorer_pb2.ScorerInfo:
    return stub.Info(common_pb2.InfoRequest(), timeout=30)


def load(name: str) -> Image.Image:
    """A test-made reference (tests/support/scenes.py) at 128x128."""
    return scene(name, (128, 128))


def png(img: Image.Image) -> bytes:
    return encode_png(img)


def score(stub, reference: bytes, candidates: list[bytes], metrics: tuple[str, ...] = ()) -> list[dict[str, float]]:
    reply = stub.Score(
        scorer_pb2.ScoreRequest(reference_png=reference, candidate_pngs=candidates, metrics=list(metrics)), timeout=120
    )
    assert [c.index for c in reply.candidates] == list(range(len(candidates)))
    return [dict(c.scores) for c in reply.candidates]


def shifted(img: Image.Image, dx: int, dy: int) -> Image.Image:
    return ImageChops.offset(img, dx, dy)


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


TRANSFORMS = {
    "blur": lambda img: img.filter(ImageFilter.GaussianBlur(2)),
    "shift": lambda img: shifted(img, 9, -5),
    "jpeg": lambda img: jpeg(img, 35),
    "colour": lambda img: ImageEnhance.Color(img).enhance(0.3),
    "downscaled": lambda img: img.resize((96, 96), Image.Resampling.LANCZOS),
}


def skimage_ssim(reference: Image.Image, candidate: Image.Image) -> float:
    if candidate.size != reference.size:
        candidate = candidate.resize(reference.size, Image.Resampling.BICUBIC)
    a = np.asarray(reference, dtype=np.float64) / 255.0
    b = np.asarray(candidate, dtype=np.float64) / 255.0
    return float(
        structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1, data_range=1
        )
    )


def test_metric_ids_carry_their_checkpoints(info, tiny_models: Path) -> None:
    by_name = {m.name: m for m in info.metrics}
    assert set(by_name) == {"clip", "dinov2", "ssim"}
    for name, folder in (("clip", "clip"), ("dinov2", "dinov2")):
        revision = model_revision(str(tiny_models / folder))
        assert revision.startswith("sha256:")
        assert by_name[name].revision == revision
        assert by_name[name].checkpoint == str(tiny_models / folder)
    assert by_name["clip"].id == f"clip:clip@{model_revision(str(tiny_models / 'clip'))}"
    assert by_name["dinov2"].id == f"dinov2:dinov2@{model_revision(str(tiny_models / 'dinov2'))};pool=mean"
    assert by_name["ssim"].id == SSIM_ID
    assert {m.revision for m in info.models} == {by_name["clip"].revision, by_name["dinov2"].revision}
    assert {m.backend for m in info.models} == {"transformers"}
    assert {(m.device, m.dtype) for m in info.models} == {("cpu", "float32")}
    assert info.max_candidates == 64
    assert all(m.definition for m in info.metrics)


def test_identical_images_score_one_on_every_metric(stub, info) -> None:
    for name in REFERENCES:
        reference = png(load(name))
        [scores] = score(stub, reference, [reference])
        assert set(scores) == {m.id for m in info.metrics}
        for metric_id, value in scores.items():
            assert value == pytest.approx(1.0, abs=1e-5), (name, metric_id)


def test_different_images_score_below_one(stub) -> None:
    reference = png(load("scene_3"))
    [scores] = score(stub, reference, [png(load("portrait_1"))])
    assert all(value < 0.99 for value in scores.values()), scores


def test_batched_equals_one_at_a_time(stub) -> None:
    reference_img = load("object_2")
    reference = png(reference_img)
    candidates = [png(t(reference_img)) for t in TRANSFORMS.values()]
    candidates += [png(load(name)) for name in ("portrait_1", "scene_3", "complex_4")]
    batched = score(stub, reference, candidates)
    singles = [score(stub, reference, [candidate])[0] for candidate in candidates]
    for i, (together, alone) in enumerate(zip(batched, singles, strict=True)):
        assert together.keys() == alone.keys()
        for metric_id in together:
            assert together[metric_id] == pytest.approx(alone[metric_id], abs=1e-4), (i, metric_id)


def test_batch_invariant_scores_are_bit_identical(stub) -> None:
    """The tiny preset sets batch_invariant: a score must not change in its last bit with
    the batch it shared, including batches coalesced from concurrent requests."""
    from concurrent.futures import ThreadPoolExecutor

    reference_img = load("complex_4")
    reference = png(reference_img)
    candidates = [png(t(reference_img)) for t in TRANSFORMS.values()]
    alone = [score(stub, reference, [candidate])[0] for candidate in candidates]
    assert score(stub, reference, candidates) == alone
    with ThreadPoolExecutor(4) as pool:
        concurrent = list(pool.map(lambda c: score(stub, reference, [c, *candidates[:2]])[0], candidates))
    assert concurrent == alone


def test_ssim_agrees_with_scikit_image(stub) -> None:
    for name in REFERENCES:
        reference = load(name)
        candidates = {label: transform(reference) for label, transform in TRANSFORMS.items()}
        served = score(stub, png(reference), [png(c) for c in candidates.values()], metrics=("ssim",))
        for (label, candidate), scores in zip(candidates.items(), served, strict=True):
            assert list(scores) == [SSIM_ID]
            expected = skimage_ssim(reference, candidate)
            assert scores[SSIM_ID] == pytest.approx(expected, abs=1e-3), (name, label)
            assert scores[SSIM_ID] < 0.999, (name, label)  # the transform really changed the image


def corrupt_png() -> bytes:
    data = png(load("object_2"))
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    ("label", "bad", "mentions"),
    [
        ("corrupt PNG", corrupt_png, "truncated or corrupt"),
        ("zero size", lambda: b"", "empty (0 bytes)"),
        ("non-image", lambda: b"%PDF-1.7 not an image at all", "not a recognised image format"),
    ],
)
def test_bad_candidate_fails_the_request_naming_its_index(stub, label, bad, mentions) -> None:
    reference_img = load("object_2")
    good = [png(reference_img), png(TRANSFORMS["blur"](reference_img))]
    candidates = [good[0], bad(), good[1]]
    with pytest.raises(grpc.RpcError) as err:
        score(stub, png(reference_img), candidates)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, label
    assert err.value.details().startswith("candidate 1: "), err.value.details()
    assert mentions in err.value.details()
    # Documented choice: no partial scores. The good candidates score once resent alone.
    assert len(score(stub, png(reference_img), good)) == 2


def test_every_bad_candidate_is_named(stub) -> None:
    reference = png(load("object_2"))
    with pytest.raises(grpc.RpcError) as err:
        score(stub, reference, [reference, b"", reference, b"GIF89a?", corrupt_png()])
    details = err.value.details()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("3 of 5 candidates are unusable")
    for index in (1, 3, 4):
        assert f"candidate {index}: " in details
    for index in (0, 2):
        assert f"candidate {index}: " not in details


def test_tiny_reference_cannot_take_ssim(stub) -> None:
    small = png(Image.new("RGB", (8, 8), (200, 10, 10)))
    with pytest.raises(grpc.RpcError) as err:
        score(stub, small, [small])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ssim's 11x11 minimum" in err.value.details()
    [scores] = score(stub, small, [small], metrics=("clip", "dinov2"))
    assert all(value == pytest.approx(1.0, abs=1e-5) for value in scores.values())


def test_info_reports_batching_statistics(stub) -> None:
    """Beyond the contract's item count: batches, busy time and the libraries."""
    before = stub.Info(common_pb2.InfoRequest(), timeout=30).server
    reference = png(load("complex_4"))
    score(stub, reference, [reference, reference, reference], metrics=("clip",))
    after = stub.Info(common_pb2.InfoRequest(), timeout=30).server
    assert after.items - before.items == 3
    assert after.batches > before.batches
    assert after.busy_s > before.busy_s
    assert {"torch", "transformers", "torchmetrics", "grpcio"} <= set(after.library_versions)
