"""The describer's BentoML service (`bentoml serve regen.describer.http_api:Describer`)
with the tiny model: its HTTP API answers like its gRPC server over the same core, with
the same checks and limits, one error shape, typed bodies, and the IUT in its one JSON
form both ways."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import jsonschema
import pytest
from support.bento_server import post_json, serve_bento

from regen.common import bento, describer_json
from regen.common.grpc_server import channel_options
from regen.conformance import describer as contract_checks
from regen.describer import schemas
from regen.v1 import common_pb2, describer_pb2, describer_pb2_grpc

http_api = pytest.importorskip("regen.describer.http_api", reason="bentoml is not installed")

pytestmark = pytest.mark.slow

# Each endpoint's request and response bodies.
ENDPOINTS: dict[str, tuple[type, type]] = {
    "info": (bento.NoBody, http_api.DescriberInfoBody),
    "understand": (http_api.UnderstandBody, http_api.UnderstoodBody),
    "write_prompt": (http_api.WritePromptBody, http_api.PromptBody),
    "variants": (http_api.VariantsBody, http_api.PromptsBody),
    "compare": (http_api.CompareBody, http_api.DifferencesBody),
    "revise": (http_api.ReviseBody, http_api.PromptBody),
    "judge": (http_api.JudgeBody, http_api.JudgementBody),
}
REFERENCE = contract_checks.REFERENCE
CANDIDATE = contract_checks.CANDIDATE


@pytest.fixture(scope="module")
def bento(tiny_models, tmp_path_factory) -> Iterator[tuple[str, str]]:
    workdir = tmp_path_factory.mktemp("describer-bento")
    extra_env = {"REGEN_DESCRIBER_CACHE_DIR": str(workdir / "cache"), "REGEN_DESCRIBER_CPU_THREADS": "1"}
    with serve_bento(
        "regen.describer.http_api:Describer", "REGEN_DESCRIBER_PORT", workdir, extra_env, startup_timeout_s=300
    ) as addresses:
        yield addresses


@pytest.fixture(scope="module")
def stub(bento) -> Iterator[describer_pb2_grpc.DescriberStub]:
    with grpc.insecure_channel(bento[1], options=channel_options()) as channel:
        yield describer_pb2_grpc.DescriberStub(channel)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def call(bento, endpoint: str, body: dict[str, Any]) -> tuple[int, Any]:
    """POST to an endpoint; a 200 answer is checked against the endpoint's response body."""
    status, reply = post_json(f"{bento[0]}/{endpoint}", body)
    if status == 200:
        ENDPOINTS[endpoint][1].model_validate(reply)
    return status, reply


def refused(reply: Any, field: str) -> bool:
    """The one error shape, naming `field` in its message or in a field violation."""
    error = reply["error"]
    assert set(error) <= {"code", "status", "message", "details"} and error["status"] == "INVALID_ARGUMENT"
    violations = [v["field"] for d in error.get("details", []) for v in d["fieldViolations"]]
    return error["message"].startswith(field + ":") or field in violations


def test_http_and_grpc_give_the_same_answer_from_one_core(bento, stub):
    over_grpc = stub.Judge(describer_pb2.JudgeRequest(reference_png=REFERENCE, candidate_png=CANDIDATE))
    status, over_http = call(bento, "judge", {"reference_png": b64(REFERENCE), "candidate_png": b64(CANDIDATE)})
    assert status == 200, over_http
    assert over_http["content_consistency"] == over_grpc.content_consistency
    assert over_http["perceptual_quality"] == over_grpc.perceptual_quality
    assert over_http["rationale"] == over_grpc.rationale
    # One core and one cache behind both: the HTTP call was a hit on the gRPC answer.
    assert over_http["call"]["cached"] and over_http["call"]["cache_key"] == over_grpc.call.cache_key
    status, info = call(bento, "info", {})
    assert status == 200 and info["model"]["backend"] == "transformers" and info["server"]["items"] >= 1


def test_the_iut_has_one_json_form_both_ways(bento, stub):
    status, understood = call(bento, "understand", {"image_png": b64(REFERENCE)})
    assert status == 200, understood
    iut = understood["iut"]
    jsonschema.validate(iut, schemas.iut_form_schema())
    # The same form as the gRPC answer written out by describer_json (what iut.json holds).
    over_grpc = stub.Understand(describer_pb2.UnderstandRequest(image_png=REFERENCE))
    assert describer_json.iut_to_json(over_grpc.iut) == iut
    # Sent back unchanged, it is accepted, and means what it means over gRPC.
    status, written = call(bento, "write_prompt", {"iut": iut, "token_budget": 77})
    assert status == 200, written
    same = stub.WritePrompt(describer_pb2.WritePromptRequest(iut=over_grpc.iut, token_budget=77))
    assert written["prompt"] == same.prompt and written["call"]["cache_key"] == same.call.cache_key

    enum_names = json.loads(json.dumps(iut))
    enum_names["objects"][0]["type"] = "OBJECT_TYPE_" + iut["objects"][0]["type"].upper()
    status, reply = call(bento, "write_prompt", {"iut": enum_names})
    assert status == 400 and refused(reply, "iut.objects[0].type"), reply
    foreign = json.loads(json.dumps(iut))
    other = "clothing" if iut["objects"][0]["type"] != "person" else "species"
    foreign["objects"][0]["attributes"][other] = "x"
    status, reply = call(bento, "write_prompt", {"iut": foreign})
    assert status == 400 and refused(reply, f"iut.objects[0].attributes.{other}"), reply


@pytest.mark.parametrize(
    ("endpoint", "body", "field"),
    [
        ("variants", {"prompt": "an apple", "n": 2, "seedz": 1}, "seedz"),
        ("variants", {"prompt": "an apple", "n": 2, "seed": 1 << 63}, "seed"),
        ("variants", {"prompt": "an apple", "n": 2, "seed": -(1 << 63) - 1}, "seed"),
        ("variants", {"prompt": "an apple", "n": 1 << 31}, "n"),
        ("variants", {"prompt": "an apple", "n": 2, "token_budget": 1 << 31}, "token_budget"),
        ("variants", {"prompt": "an apple", "n": 0}, "n"),
        ("variants", {"prompt": "an apple", "n": 2, "token_budget": 7}, "token_budget"),
        ("variants", {"prompt": " ", "n": 2}, "prompt"),
        ("understand", {"image_png": "not base64!"}, "image_png"),
        ("understand", {"image_png": b64(b"not an image")}, "image_png"),
        ("understand", {}, "image_png"),
        ("judge", {"reference_png": b64(REFERENCE), "candidate_png": b64(CANDIDATE), "rationale": "x"}, "rationale"),
        ("revise", {"prompt": "an apple", "differences": []}, "differences"),
        (
            "revise",
            {"prompt": "an apple", "differences": [{"aspect": "mood", "description": "x"}]},
            "differences[0].aspect",
        ),
        ("revise", {"prompt": "an apple", "differences": [{"aspect": "style", "text": "x"}]}, "differences[0].text"),
        ("write_prompt", {"iut": {"global_description": "apple", "mood": "calm"}}, "iut.mood"),
        ("info", {"verbose": True}, "verbose"),
    ],
)
def test_bad_requests_get_400_in_the_one_error_shape_naming_the_field(bento, stub, endpoint, body, field):
    items = stub.Info(common_pb2.InfoRequest()).server.items
    status, reply = call(bento, endpoint, body)
    assert status == 400 and refused(reply, field), reply
    assert stub.Info(common_pb2.InfoRequest()).server.items == items


def test_the_largest_int64_seed_is_accepted_as_over_grpc(bento, stub):
    body = {"prompt": "red apple, wooden table", "n": 1, "token_budget": 0, "seed": (1 << 63) - 1}
    status, reply = call(bento, "variants", body)
    assert status == 200, reply
    over_grpc = stub.Variants(describer_pb2.VariantsRequest(**body))
    assert reply["prompts"] == list(over_grpc.prompts) and over_grpc.call.cached


def test_the_openapi_page_renders_and_its_examples_succeed(bento):
    with urllib.request.urlopen(f"{bento[0]}/docs.json", timeout=30) as reply:
        spec = json.loads(reply.read())
    for endpoint, (request_body, response_body) in ENDPOINTS.items():
        operation = spec["paths"][f"/{endpoint}"]["post"]
        assert operation["description"], endpoint
        example = operation["requestBody"]["content"]["application/json"]["schema"]["example"]
        request_body.model_validate(example)
        status, reply = call(bento, endpoint, example)
        assert status == 200, (endpoint, reply)
        # The response example is a valid response body too.
        response_body.model_validate(response_body.model_json_schema()["example"])
