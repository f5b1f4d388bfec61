"""The BentoML generator service (`bentoml serve regen.generator.http_api:Generator`) with
the tiny preset: its HTTP API and the gRPC server it starts in the same process answer
with the same images, refuse what gRPC refuses, and describe themselves on /docs.json."""

from __future__ import annotations

import base64
import io
import json
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from PIL import Image
from support.bento_server import post, serve_bento

from regen.conformance import generator as contract_checks
from regen.v1 import common_pb2, generator_pb2, generator_pb2_grpc

PROMPTS = [
    {"text": "a red fox sleeping in fresh snow, watercolor", "seed": 11},
    {"text": "a tall lighthouse on a rocky cliff at sunset", "seed": 12, "negative_prompt": "blurry"},
]
ROUTES = ("generate", "generate_stream")
MAX_SEED = 2**63 - 1


@pytest.fixture(scope="module")
def bento(tiny_models, tmp_path_factory) -> Iterator[tuple[str, str]]:
    workdir = tmp_path_factory.mktemp("generator-bento")
    with serve_bento("regen.generator.http_api:Generator", "REGEN_GENERATOR_PORT", workdir) as addresses:
        yield addresses


def error_of(reply: bytes) -> dict:
    """The one error shape: {"error": {"code", "status", "message", ("details")}}."""
    body = json.loads(reply)
    assert set(body) == {"error"}, body
    assert {"code", "status", "message"} <= set(body["error"]), body
    return body["error"]


def stream_lines(reply: bytes) -> list[dict]:
    from regen.generator.http_api import ImageBody

    lines = [json.loads(line) for line in reply.decode().splitlines()]
    for line in lines:
        ImageBody.model_validate(line)
    return lines


@pytest.mark.slow
def test_http_and_grpc_give_the_same_images(bento) -> None:
    from regen.generator.http_api import GeneratorInfoBody, ImagesBody

    http_url, grpc_address = bento
    status, body = post(f"{http_url}/generate", {"prompts": PROMPTS, "steps": 3})
    assert status == 200, body
    images = json.loads(body)["images"]
    ImagesBody.model_validate(json.loads(body))
    assert [image["index"] for image in images] == [0, 1]
    http_pngs = [base64.b64decode(image["png"]) for image in images]
    assert all(np.asarray(Image.open(io.BytesIO(png))).shape == (64, 64, 3) for png in http_pngs)
    assert images[0]["prompt_tokens"] > 2 and not images[0]["prompt_truncated"]
    zero = {"api_calls": 0, "retries": 0, "input_tokens": 0, "output_tokens": 0, "images": 0, "cost_usd": None}
    assert all(image["usage"] == zero for image in images)  # a local model

    status, body = post(f"{http_url}/generate_stream", {"prompts": PROMPTS, "steps": 3})
    assert status == 200, body
    streamed = {line["index"]: base64.b64decode(line["png"]) for line in stream_lines(body)}
    assert [streamed[0], streamed[1]] == http_pngs

    with grpc.insecure_channel(grpc_address) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        request = generator_pb2.GenerateRequest(prompts=[generator_pb2.PromptSpec(**p) for p in PROMPTS], steps=3)
        grpc_pngs = {image.index: image.png for image in stub.Generate(request, timeout=120)}
        info = stub.Info(common_pb2.InfoRequest(), timeout=30)
    assert [grpc_pngs[0], grpc_pngs[1]] == http_pngs

    status, body = post(f"{http_url}/info", {})
    assert status == 200
    http_info = json.loads(body)
    GeneratorInfoBody.model_validate(http_info)
    assert http_info["prompt_token_budget"] == info.prompt_token_budget == 77
    assert http_info["model"]["revision"] == info.model.revision
    assert http_info["server"]["items"] == info.server.items >= 6  # HTTP and gRPC share one batcher
    assert [(i["model_id"], i["revision"]) for i in images] == [(info.model.model_id, info.model.revision)] * 2
    caps = info.capabilities
    assert http_info["capabilities"] == {
        "seeded": caps.seeded,
        "negative_prompt": caps.negative_prompt,
        "sampling_params": caps.sampling_params,
        "sizes": [],
        "max_side": caps.max_side,
    }
    assert caps.seeded and caps.negative_prompt and caps.max_side == 2048


@pytest.mark.slow
def test_http_refusesbad_requests_with_400(bento) -> None:
    http_url, _ = bento
    for body, expected in [
        ({"prompts": []}, "prompts: empty"),
        ({"prompts": PROMPTS, "steps": 0}, "steps: 0"),
        ({"prompts": PROMPTS, "width": 60}, "width: 60"),
        ({"prompts": [{"text": "a cat", "seed": -1}]}, "prompts[0].seed"),
    ]:
        for route in ROUTES:
            status, reply = post(f"{http_url}/{route}", body)
            assert status == 400, (route, body, reply)
            assert expected in reply.decode(), reply
            assert error_of(reply)["status"] == "INVALID_ARGUMENT"


@pytest.mark.slow
def test_http_refuses_what_grpc_refuses_naming_the_same_field(bento) -> None:
    """Every malformed request of the contract checks, sent over HTTP to both routes."""
    http_url, grpc_address = bento
    with grpc.insecure_channel(grpc_address) as channel:
        info = generator_pb2_grpc.GeneratorStub(channel).Info(common_pb2.InfoRequest(), timeout=30)
    for what, prompts, fields, field in contract_checks.bad_requests(info):
        body = {
            "prompts": [{"text": p.text, "negative_prompt": p.negative_prompt, "seed": p.seed} for p in prompts],
            **fields,
        }
        for route in ROUTES:
            status, reply = post(f"{http_url}/{route}", body)
            assert status == 400, (what, route, reply)
            error = error_of(reply)
            assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT"), (what, route, error)
            assert field in error["message"], (what, route, error)


@pytest.mark.slow
def test_a_misspelt_field_is_refused_naming_it(bento) -> None:
    http_url, _ = bento
    for route, body, field in [
        ("generate", {"prompts": PROMPTS, "stepz": 3}, "stepz"),
        ("generate_stream", {"prompts": PROMPTS, "stepz": 3}, "stepz"),
        ("generate", {"prompts": [{"text": "a cat", "sead": 3}]}, "prompts[0].sead"),
        ("info", {"verbose": True}, "verbose"),
    ]:
        status, reply = post(f"{http_url}/{route}", body)
        assert status == 400, (route, body, reply)
        error = error_of(reply)
        assert error["status"] == "INVALID_ARGUMENT" and field in error["message"], error
        [violation] = error["details"][0]["fieldViolations"]
        assert violation["field"] == field, violation


@pytest.mark.slow
def test_seeds_are_capped_at_int64_like_grpc(bento) -> None:
    """Seeds gRPC cannot carry (over int64, or negative) never reach a batch over HTTP; the
    largest one gives gRPC's image."""
    http_url, grpc_address = bento
    for seed in (MAX_SEED + 1, 2**64 - 1, 2**64, -1):
        for route in ROUTES:
            status, reply = post(f"{http_url}/{route}", {"prompts": [{"text": "a cat", "seed": seed}]})
            assert status == 400, (seed, route, reply)
            assert "prompts[0].seed" in error_of(reply)["message"], reply
    status, reply = post(f"{http_url}/generate", {"prompts": [{"text": "a cat", "seed": MAX_SEED}], "steps": 2})
    assert status == 200, reply
    [image] = json.loads(reply)["images"]
    assert image["seed"] == MAX_SEED
    with grpc.insecure_channel(grpc_address) as channel:
        prompts = [generator_pb2.PromptSpec(text="a cat", seed=MAX_SEED)]
        request = generator_pb2.GenerateRequest(prompts=prompts, steps=2)
        [over_grpc] = generator_pb2_grpc.GeneratorStub(channel).Generate(request, timeout=120)
    assert base64.b64decode(image["png"]) == over_grpc.png


@pytest.mark.slow
def test_the_openapi_page_renders_and_its_examples_succeed(bento) -> None:
    from regen.generator.http_api import GeneratorInfoBody, ImagesBody

    http_url, _ = bento
    with urllib.request.urlopen(f"{http_url}/docs.json", timeout=30) as reply:
        assert reply.status == 200
        spec = json.loads(reply.read())
    posted = {}
    for route in ("generate", "generate_stream", "info"):
        schema = spec["paths"][f"/{route}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        example = schema.get("example", {})
        assert route == "info" or example, f"/{route} has no example request"
        status, reply = post(f"{http_url}/{route}", example)
        assert status == 200, (route, example, reply)
        posted[route] = reply
    ImagesBody.model_validate(json.loads(posted["generate"]))
    assert len(stream_lines(posted["generate_stream"])) == len(json.loads(posted["generate"])["images"])
    GeneratorInfoBody.model_validate(json.loads(posted["info"]))
