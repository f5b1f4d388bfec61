"""The BentoML scorer service: its HTTP API and the gRPC server its startup hook starts
answer alike, over the same loaded models."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image, ImageFilter
from support.bento_server import post_json, serve_bento

from regen.common.grpc_server import channel_options
from regen.common.images import encode_png
from regen.v1 import scorer_pb2, scorer_pb2_grpc


@pytest.fixture(scope="module")
def bento(tiny_models, tmp_path_factory) -> Iterator[tuple[str, str]]:
    workdir = tmp_path_factory.mktemp("scorer-bento")
    extra_env = {"REGEN_SCORER_CPU_THREADS": "1"}
    with serve_bento("services/scorer/service.py:Scorer", "REGEN_SCORER_PORT", workdir, extra_env) as addresses:
        yield addresses


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.slow
def test_http_and_grpc_give_the_same_scores(bento, evalref: Path) -> None:
    http_url, grpc_address = bento
    reference_img = Image.open(evalref / "scene_2.png").convert("RGB")
    reference = encode_png(reference_img)
    candidates = [reference, encode_png(reference_img.filter(ImageFilter.GaussianBlur(3)))]
    candidates.append(encode_png(Image.open(evalref / "portrait_2.png")))

    status, body = post_json(
        f"{http_url}/score", {"reference_png": b64(reference), "candidate_pngs": [b64(c) for c in candidates]}
    )
    assert status == 200, body
    over_http = [c["scores"] for c in body["candidates"]]
    assert [c["index"] for c in body["candidates"]] == [0, 1, 2]

    with grpc.insecure_channel(grpc_address, options=channel_options()) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        reply = stub.Score(scorer_pb2.ScoreRequest(reference_png=reference, candidate_pngs=candidates), timeout=120)
    over_grpc = [dict(c.scores) for c in reply.candidates]

    assert len(over_http) == len(over_grpc) == 3
    for http_scores, grpc_scores in zip(over_http, over_grpc, strict=True):
        assert http_scores.keys() == grpc_scores.keys()
        assert len(http_scores) == 3
        for metric_id, value in http_scores.items():
            assert value == pytest.approx(grpc_scores[metric_id], abs=1e-6)
    assert all(v == pytest.approx(1.0, abs=1e-5) for v in over_http[0].values())

    # Same semantics for bad input: 400 naming the candidate, and HTTP info matches gRPC ids.
    status, body = post_json(
        f"{http_url}/score", {"reference_png": b64(reference), "candidate_pngs": [b64(reference), b64(b"")]}
    )
    assert status == 400
    assert "candidate 1: empty (0 bytes)" in json.dumps(body)
    status, info = post_json(f"{http_url}/info", {})
    assert status == 200
    assert {m["id"] for m in info["metrics"]} == set(over_grpc[0])
    assert info["server"]["items"] >= 5  # both adapters fed the same batcher
