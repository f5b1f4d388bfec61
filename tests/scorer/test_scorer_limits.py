"""Oversized requests against a real scorer process started with small limits."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from PIL import Image
from support.scenes import scene

from regen.common.grpc_server import channel_options
from regen.common.images import encode_png
from regen.v1 import scorer_pb2, scorer_pb2_grpc

MAX_CANDIDATES = 4
MAX_MESSAGE_BYTES = 3 * 1024 * 1024
MAX_IMAGE_PIXELS = 600 * 600
MAX_REQUEST_PIXELS = 1_500_000
LIMITS_ENV = {
    "REGEN_SCORER_MAX_CANDIDATES": str(MAX_CANDIDATES),
    "REGEN_SCORER_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
    "REGEN_SCORER_IMAGES__MAX_PIXELS": str(MAX_IMAGE_PIXELS),
    "REGEN_SCORER_MAX_REQUEST_PIXELS": str(MAX_REQUEST_PIXELS),
}


@pytest.fixture(scope="module")
def stub(tiny_models) -> Iterator[scorer_pb2_grpc.ScorerStub]:
    from regen.orchestrator.launcher import LocalServices

    with (
        LocalServices(names=("scorer",), preset="tiny", env=LIMITS_ENV, startup_timeout_s=600) as services,
        grpc.insecure_channel(services.address("scorer"), options=channel_options()) as channel,
    ):
        yield scorer_pb2_grpc.ScorerStub(channel)


def request(reference: bytes, candidates: list[bytes], metrics: tuple[str, ...] = ()) -> scorer_pb2.ScoreRequest:
    return scorer_pb2.ScoreRequest(reference_png=reference, candidate_pngs=candidates, metrics=list(metrics))


def noise_png(seed: int, side: int = 512) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    return encode_png(Image.fromarray(pixels))


def scene_png(name: str) -> bytes:
    """A test-made 512x512 reference (tests/support/scenes.py)."""
    return encode_png(scene(name, (512, 512)))


def test_more_candidates_than_allowed_is_resource_exhausted(stub) -> None:
    small = encode_png(Image.new("RGB", (32, 32), (10, 200, 30)))
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(request(small, [small] * (MAX_CANDIDATES + 1)), timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"{MAX_CANDIDATES + 1} candidates exceeds this scorer's limit of {MAX_CANDIDATES}" in err.value.details()


def test_message_over_the_size_limit_is_refused_by_grpc(stub) -> None:
    images = [noise_png(seed) for seed in range(5)]
    assert sum(map(len, images)) > MAX_MESSAGE_BYTES
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(request(images[0], images[1:]), timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in err.value.details()
    # The server is unharmed and still scores a request within the limit.
    reference = scene_png("scene_1")
    reply = stub.Score(request(reference, [reference], ("clip",)), timeout=60)
    assert len(reply.candidates) == 1


def test_image_over_the_pixel_limit_is_refused_before_decoding(stub) -> None:
    reference = scene_png("scene_1")
    big = encode_png(Image.new("RGB", (700, 700), (255, 255, 255)))
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(request(reference, [reference, big]), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(
        f"candidate 1: 700x700 = 490000 pixels exceeds the limit of {MAX_IMAGE_PIXELS} pixels"
    )


def test_request_pixel_budget_counts_ssim_resizes(stub) -> None:
    reference = scene_png("portrait_1")
    candidates = [scene_png(name) for name in ("portrait_2", "object_1", "scene_1", "complex_1")]
    # With SSIM each 512x512 candidate also gets a reference-sized copy: 9 x 262144 pixels.
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(request(reference, candidates), timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"need {9 * 512 * 512} decoded pixels" in err.value.details()
    assert f"limit of {MAX_REQUEST_PIXELS}" in err.value.details()
    # Embeddings alone need 5 x 262144 pixels, within the budget.
    reply = stub.Score(request(reference, candidates, ("clip", "dinov2")), timeout=120)
    assert len(reply.candidates) == len(candidates)
