"""The BentoML generator service (`bentoml serve services/generator/service.py:Generator`)
with the tiny preset: its HTTP API and the gRPC server it starts in the same process
answer with the same images."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from PIL import Image
from support.bento_server import post, serve_bento

from regen.v1 import common_pb2, generator_pb2, generator_pb2_grpc

PROMPTS = [
    {"text": "a red fox sleeping in fresh snow, watercolor", "seed": 11},
    {"text": "a tall lighthouse on a rocky cliff at sunset", "seed": 12, "negative_prompt": "blurry"},
]


@pytest.fixture(scope="module")
def bento(tiny_models, tmp_path_factory) -> Iterator[tuple[str, str]]:
    workdir = tmp_path_factory.mktemp("generator-bento")
    with serve_bento("services/generator/service.py:Generator", "REGEN_GENERATOR_PORT", workdir) as addresses:
        yield addresses


@pytest.mark.slow
def test_http_and_grpc_give_the_same_images(bento) -> None:
    http_url, grpc_address = bento
    status, body = post(f"{http_url}/generate", {"prompts": PROMPTS, "steps": 3})
    assert status == 200, body
    images = json.loads(body)["images"]
    assert [image["index"] for image in images] == [0, 1]
    http_pngs = [base64.b64decode(image["png"]) for image in images]
    assert all(np.asarray(Image.open(io.BytesIO(png))).shape == (64, 64, 3) for png in http_pngs)
    assert images[0]["prompt_tokens"] > 2 and not images[0]["prompt_truncated"]

    status, body = post(f"{http_url}/generate_stream", {"prompts": PROMPTS, "steps": 3})
    assert status == 200, body
    streamed = {line["index"]: base64.b64decode(line["png"]) for line in map(json.loads, body.decode().splitlines())}
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
    assert http_info["prompt_token_budget"] == info.prompt_token_budget == 77
    assert http_info["model"]["revision"] == info.model.revision
    assert http_info["server"]["items"] == info.server.items >= 6  # HTTP and gRPC share one batcher


@pytest.mark.slow
def test_http_refuses_bad_requests_with_400(bento) -> None:
    http_url, _ = bento
    for body, expected in [
        ({"prompts": []}, "prompts: empty"),
        ({"prompts": PROMPTS, "steps": 0}, "steps: 0"),
        ({"prompts": PROMPTS, "width": 60}, "width: 60"),
        ({"prompts": [{"text": "a cat", "seed": -1}]}, "prompts[0].seed"),
    ]:
        for route in ("generate", "generate_stream"):
            status, reply = post(f"{http_url}/{route}", body)
            assert status == 400, (route, body, reply)
            assert expected in reply.decode(), reply
