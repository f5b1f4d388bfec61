"""The BentoML scorer service: its HTTP API and the gRPC server its startup hook starts
answer alike, over the same loaded models."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator

import grpc
import pytest
from PIL import ImageFilter
from support.bento_server import post_json, serve_bento
from support.scenes import scene

from regen.common.grpc_server import channel_options
from regen.common.images import encode_png
from regen.scorer.http_api import ScorerInfoBody, ScoresBody
from regen.v1 import scorer_pb2, scorer_pb2_grpc


@pytest.fixture(scope="module")
def bento(tiny_models, tmp_path_factory) -> Iterator[tuple[str, str]]:
    workdir = tmp_path_factory.mktemp("scorer-bento")
    extra_env = {"REGEN_SCORER_CPU_THREADS": "1"}
    with serve_bento("regen.scorer.http_api:Scorer", "REGEN_SCORER_PORT", workdir, extra_env) as addresses:
        yield addresses


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.slow
def test_http_and_grpc_give_the_same_scores(bento) -> None:
    http_url, grpc_address = bento
    reference_img = scene("scene_2", (128, 128))
    reference = encode_png(reference_img)
    candidates = [reference, encode_png(reference_img.filter(ImageFilter.GaussianBlur(3)))]
    candidates.append(encode_png(scene("portrait_2", (128, 128))))

    status, body = post_json(
        f"{http_url}/score", {"reference_png": b64(reference), "candidate_pngs": [b64(c) for c in candidates]}
    )
    assert status == 200, body
    ScoresBody.model_validate(body)
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
    assert body["error"]["status"] == "INVALID_ARGUMENT"
    assert body["error"]["message"].startswith("candidate 1: empty (0 bytes)")
    status, info = post_json(f"{http_url}/info", {})
    assert status == 200
    ScorerInfoBody.model_validate(info)
    assert {m["higher_is_better"] for m in info["metrics"]} == {True}
    assert {m["id"] for m in info["metrics"]} == set(over_grpc[0])
    assert info["server"]["items"] >= 5  # both adapters fed the same batcher


def test_unknown_fields_and_bad_values_get_one_error_shape(bento) -> None:
    http_url, _ = bento
    reference = b64(encode_png(scene("object_1", (32, 32))))
    status, body = post_json(
        f"{http_url}/score", {"reference_png": reference, "candidate_pngs": [reference], "metricz": []}
    )
    assert status == 400
    assert body["error"]["status"] == "INVALID_ARGUMENT" and "metricz" in body["error"]["message"]
    [violations] = body["error"]["details"]
    assert violations["fieldViolations"][0]["field"] == "metricz"

    status, body = post_json(f"{http_url}/score", {"reference_png": "not base64!", "candidate_pngs": [reference]})
    assert status == 400 and body["error"]["message"].startswith("reference_png: not valid base64")
    # A field the core names is a field violation too, as in gRPC's BadRequest detail.
    [violations] = body["error"]["details"]
    assert violations["fieldViolations"][0]["field"] == "reference_png"

    status, body = post_json(f"{http_url}/score", {"reference_png": reference, "candidate_pngs": [reference] * 65})
    assert status == 429 and body["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_the_openapi_example_works_as_is(bento) -> None:
    http_url, _ = bento
    with urllib.request.urlopen(f"{http_url}/docs.json", timeout=30) as reply:
        spec = json.loads(reply.read())
    schema = spec["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    status, body = post_json(f"{http_url}/score", schema["example"])
    assert status == 200, body
    assert len(ScoresBody.model_validate(body).candidates) == len(schema["example"]["candidate_pngs"])


def test_metrics_count_grpc_and_http_alike(bento) -> None:
    http_url, grpc_address = bento
    reference = encode_png(scene("object_2", (32, 32)))
    post_json(f"{http_url}/score", {"reference_png": b64(reference), "candidate_pngs": [b64(reference)]})
    post_json(f"{http_url}/score", {"reference_png": b64(reference), "candidate_pngs": []})
    with grpc.insecure_channel(grpc_address, options=channel_options()) as channel:
        stub = scorer_pb2_grpc.ScorerStub(channel)
        stub.Score(scorer_pb2.ScoreRequest(reference_png=reference, candidate_pngs=[reference]), timeout=60)
        with pytest.raises(grpc.RpcError):
            stub.Score(scorer_pb2.ScoreRequest(reference_png=reference), timeout=60)
    with urllib.request.urlopen(f"{http_url}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    for labels in (
        'code="OK",method="Score",service="scorer",transport="grpc"',
        'code="INVALID_ARGUMENT",method="Score",service="scorer",transport="grpc"',
        'code="OK",method="score",service="scorer",transport="http"',
        'code="INVALID_ARGUMENT",method="score",service="scorer",transport="http"',
    ):
        assert f"regen_requests_total{{{labels}}}" in text, labels
    for name in ("regen_busy_seconds_total", "regen_items_total", "regen_batch_size_bucket", "regen_queue_depth"):
        assert f"{name}{{" in text and 'service="scorer"' in text, name
