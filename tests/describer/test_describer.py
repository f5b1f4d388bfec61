"""The describer through real servers on 127.0.0.1 with the tiny random-weight Qwen2.5-VL:
`regen serve describer` (transformers backend), the openai backend against
`transformers serve`. The tiny model's words mean nothing; its answers must still be
schema-valid (constrained decoding) or, where decoding is not constrained, either valid
or a clear FAILED_PRECONDITION with the raw text. What any describer must do is in
regen.conformance.describer (run by tests/contract and `regen check describer`); the HTTP API is tested in
test_describer_http.py."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import grpc
import pytest
from support.bento_server import free_port, stop_process_group

from regen.common.grpc_server import channel_options
from regen.common.settings import load_settings
from regen.conformance import describer as contract_checks
from regen.describer import convert, schemas
from regen.describer.answers import ImageUnderstandingTree
from regen.describer.budget import EstimatedTokens
from regen.describer.settings import DescriberSettings
from regen.orchestrator.launcher import LocalServices
from regen.v1 import common_pb2, describer_pb2, describer_pb2_grpc

SECRET = "sk-regen-test-secret-0123456789"


@dataclass(frozen=True)
class Served:
    address: str
    cache_dir: Path
    log_path: Path


def tiny_settings() -> DescriberSettings:
    return load_settings(DescriberSettings, preset="tiny")


def tiny_bounds() -> schemas.AnswerBounds:
    s = tiny_settings()
    return schemas.AnswerBounds(s.max_text_chars, s.max_field_chars, s.max_relationships, s.max_differences)


def stub_for(address: str) -> describer_pb2_grpc.DescriberStub:
    return describer_pb2_grpc.DescriberStub(grpc.insecure_channel(address, options=channel_options()))


@pytest.fixture(scope="session")
def describer(tiny_models, tmp_path_factory) -> Iterator[Served]:
    """A describer of its own (not conftest's), so its cache is a fresh temporary folder."""
    cache_dir = tmp_path_factory.mktemp("describer-cache")
    env = {"REGEN_DESCRIBER_CACHE_DIR": str(cache_dir), "REGEN_DESCRIBER_CPU_THREADS": "1"}
    with LocalServices(names=("describer",), preset="tiny", env=env, startup_timeout_s=600) as services:
        svc = services.services["describer"]
        yield Served(svc.address, cache_dir, svc.log_path)


@pytest.fixture(scope="session")
def stub(describer) -> describer_pb2_grpc.DescriberStub:
    return stub_for(describer.address)


@pytest.fixture(scope="session")
def images(scenes) -> dict[str, bytes]:
    return {name: scenes[name] for name in ("object_1", "scene_1", "portrait_1", "complex_1")}


def model_calls(stub) -> int:
    return stub.Info(common_pb2.InfoRequest()).server.items


def assert_iut_valid(iut: describer_pb2.ImageUnderstandingTree, bounds: schemas.AnswerBounds) -> None:
    value = convert.iut_from_proto(iut).to_json()
    assert schemas.schema_problems(schemas.iut_schema(bounds), value) == []
    if len(iut.objects) < 2:
        assert list(iut.relationships) == []
    # The round trip proto -> IUT -> proto loses nothing.
    assert convert.iut_to_proto(convert.iut_from_proto(iut)) == iut


def assert_prompt_valid(prompt: str, budget: int, bounds: schemas.AnswerBounds) -> None:
    assert schemas.schema_problems(schemas.prompt_schema(bounds, budget), {"prompt": prompt}) == []
    assert prompt == prompt.strip() and prompt
    assert EstimatedTokens().count(prompt) <= budget


# ---------------------------------------------------------------- transformers backend


def test_info_names_model_backend_and_templates(stub, tiny_models):
    info = stub.Info(common_pb2.InfoRequest())
    assert info.model.backend == "transformers"
    assert info.model.model_id == str(tiny_models / "qwen2.5-vl")
    assert info.model.revision.startswith("sha256:")
    assert (info.model.device, info.model.dtype) == ("cpu", "float32")
    assert info.template_version
    assert "xgrammar" in info.server.library_versions


def test_every_task_returns_schema_valid_output(stub, images):
    bounds = tiny_bounds()
    budget = 77
    understood = stub.Understand(describer_pb2.UnderstandRequest(image_png=images["object_1"]))
    assert_iut_valid(understood.iut, bounds)
    assert understood.call.attempts >= 1 and understood.call.output_tokens > 0
    assert len(understood.call.cache_key) == 64

    first = stub.WritePrompt(describer_pb2.WritePromptRequest(iut=understood.iut, token_budget=budget))
    assert_prompt_valid(first.prompt, budget, bounds)

    variants = stub.Variants(describer_pb2.VariantsRequest(prompt=first.prompt, n=3, token_budget=budget, seed=11))
    assert len(variants.prompts) == 3
    assert len({" ".join(p.casefold().split()) for p in variants.prompts}) == 3
    for prompt in variants.prompts:
        assert_prompt_valid(prompt, budget, bounds)

    compared = stub.Compare(
        describer_pb2.CompareRequest(
            reference_png=images["object_1"], candidate_png=images["scene_1"], prompt=variants.prompts[0]
        )
    )
    assert 1 <= len(compared.differences) <= bounds.differences
    for difference in compared.differences:
        assert difference.aspect in schemas.ASPECTS
        assert difference.description and len(difference.description) <= bounds.field_chars

    revised = stub.Revise(
        describer_pb2.ReviseRequest(prompt=variants.prompts[0], differences=compared.differences, token_budget=budget)
    )
    assert_prompt_valid(revised.prompt, budget, bounds)

    judged = stub.Judge(describer_pb2.JudgeRequest(reference_png=images["object_1"], candidate_png=images["scene_1"]))
    assert 1 <= judged.content_consistency <= 5 and 1 <= judged.perceptual_quality <= 5
    assert judged.rationale and len(judged.rationale) <= bounds.text_chars
    for call in (first.call, variants.call, compared.call, revised.call, judged.call):
        assert not call.cached and call.attempts >= 1


def test_cache_hit_returns_identical_results_without_calling_the_model(stub, describer, images):
    request = describer_pb2.UnderstandRequest(image_png=images["portrait_1"])
    first = stub.Understand(request)
    assert not first.call.cached and first.call.attempts >= 1
    calls_before = model_calls(stub)
    second = stub.Understand(request)
    assert model_calls(stub) == calls_before
    assert second.call.cached and second.call.attempts == 0
    assert second.call.cache_key == first.call.cache_key
    assert second.iut == first.iut
    assert second.call.output_tokens == first.call.output_tokens
    # The entry is on disk, under its content address.
    entry = describer.cache_dir / first.call.cache_key[:2] / f"{first.call.cache_key}.json"
    stored = json.loads(entry.read_text())
    assert convert.iut_to_proto(ImageUnderstandingTree.from_json(stored["answer"])) == first.iut

    # Sampled variants are cached per seed: the same seed is a hit, another is not.
    variants = describer_pb2.VariantsRequest(prompt="red apple, wooden table", n=2, token_budget=0, seed=3)
    one = stub.Variants(variants)
    calls_before = model_calls(stub)
    again = stub.Variants(variants)
    assert model_calls(stub) == calls_before and again.call.cached and list(again.prompts) == list(one.prompts)
    variants.seed = 4
    other = stub.Variants(variants)
    assert not other.call.cached and other.call.cache_key != one.call.cache_key
    assert model_calls(stub) > calls_before


def _bad_requests_of_these_settings() -> list[tuple[str, object, str]]:
    """Refusals that depend on the tiny settings (max_prompt_chars, max_variants); every
    describer's refusals are contract_checks.bad_requests()."""
    settings = tiny_settings()
    too_long = "x" * (settings.max_prompt_chars + 1)
    png = contract_checks.REFERENCE
    V, C, R = describer_pb2.VariantsRequest, describer_pb2.CompareRequest, describer_pb2.ReviseRequest
    return [
        ("Variants", V(prompt="an apple", n=settings.max_variants + 1), "n"),
        ("Variants", V(prompt=too_long, n=2), "prompt"),
        ("Compare", C(reference_png=png, candidate_png=png, prompt=too_long), "prompt"),
        (
            "Revise",
            R(prompt="an apple", differences=[describer_pb2.Difference(aspect="style", description=too_long)]),
            "differences[0].description",
        ),
        (
            "WritePrompt",
            describer_pb2.WritePromptRequest(iut=contract_checks.iut_message(global_description=too_long)),
            "iut.global_description",
        ),
    ]


def test_bad_requests_are_refused_with_invalid_argument_naming_the_field(stub):
    calls_before = model_calls(stub)
    contract_checks.assert_refused(stub, contract_checks.bad_requests() + _bad_requests_of_these_settings())
    assert model_calls(stub) == calls_before


# ---------------------------------------------------------------- batching, in-process


@pytest.fixture(scope="module")
def tiny_backend(tiny_models):
    import torch

    from regen.describer.backends.transformers_backend import TransformersBackend

    torch.set_num_threads(1)
    return TransformersBackend(
        str(tiny_models / "qwen2.5-vl"),
        revision=None,
        device="cpu",
        dtype="float32",
        model_revision="test",
        max_batch=4,
        max_wait_s=0.05,
    )


def _calls(images: dict[str, bytes]):
    from PIL import Image

    from regen.describer import templates
    from regen.describer.backends.base import ModelCall

    bounds = tiny_bounds()
    picture = Image.open(io.BytesIO(images["object_1"])).convert("RGB").resize((56, 56))
    sampled = ModelCall(
        templates.variants("red apple, table", 2, 0, bounds),
        schemas.variants_schema(bounds, 2, 0),
        "variants",
        200,
        temperature=0.8,
        seed=5,
    )
    judge = ModelCall(templates.judge(picture, picture, bounds), schemas.judge_schema(bounds), "judge", 200)
    understand = ModelCall(templates.understand(picture, bounds), schemas.iut_schema(bounds), "understand", 1300)
    return sampled, judge, understand


def test_batched_rows_match_single_rows_and_samples_follow_their_seed(tiny_backend, images):
    from dataclasses import replace

    sampled, judge, understand = _calls(images)
    alone = [tiny_backend.generate_batch([call])[0] for call in (sampled, judge, understand)]
    together = tiny_backend.generate_batch([judge, sampled, understand])
    assert [together[1].text, together[0].text, together[2].text] == [c.text for c in alone]
    for completion in together:
        _value, problem = schemas.parse_json_answer(completion.text)
        assert problem is None and not completion.truncated
    reseeded = tiny_backend.generate_batch([replace(sampled, seed=6)])[0]
    assert reseeded.text != alone[0].text


def test_concurrent_calls_share_one_generate(tiny_backend, images):
    sampled, judge, understand = _calls(images)

    async def concurrently():
        batches_before = tiny_backend.stats().batches
        try:
            results = await asyncio.gather(*(tiny_backend.complete(c) for c in (judge, sampled, understand, judge)))
        finally:
            await tiny_backend.aclose()
        return results, tiny_backend.stats().batches - batches_before

    results, batches = asyncio.run(concurrently())
    assert batches == 1
    assert results[0].text == results[3].text


# ---------------------------------------------------------------- openai backend


@pytest.fixture(scope="session")
def transformers_serve(tiny_models, tmp_path_factory) -> Iterator[str]:
    """`transformers serve` with the tiny Qwen2.5-VL on a free 127.0.0.1 port."""
    executable = Path(sys.executable).parent / "transformers"
    if not executable.exists():
        pytest.skip(
            f"transformers serve cannot start here: {executable} not found (pip install 'transformers[serving]')"
        )
    port = free_port()
    log_path = tmp_path_factory.mktemp("transformers-serve") / "serve.log"
    model = str(tiny_models / "qwen2.5-vl")
    cmd = [str(executable), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", model]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-1500:]
                pytest.skip(f"transformers serve cannot start here (exit {proc.returncode}): {tail}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.skip("transformers serve cannot start here: no /health answer within 180 s")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process_group(proc)


@pytest.mark.slow
def test_openai_backend_against_transformers_serve(transformers_serve, tiny_models, images, tmp_path):
    """`transformers serve` ignores response_format, so the tiny model's answers are
    unconstrained garbage: each task must end as a valid answer or FAILED_PRECONDITION
    carrying the raw text, after exactly 1 + max_repairs model calls."""
    model = str(tiny_models / "qwen2.5-vl")
    env = {
        "REGEN_DESCRIBER_API_BASE_URL": transformers_serve,
        "REGEN_DESCRIBER_CACHE_DIR": str(tmp_path / "cache"),
        "REGEN_DESCRIBER_MAX_REPAIRS": "1",
        "OPENAI_API_KEY": SECRET,
    }
    extra = {"describer": ["--backend", "openai", "--model", model]}
    with LocalServices(names=("describer",), preset="tiny", env=env, extra_args=extra, startup_timeout_s=300) as svc:
        stub = stub_for(svc.address("describer"))
        info = stub.Info(common_pb2.InfoRequest())
        assert (info.model.backend, info.model.model_id, info.model.device) == ("openai", model, "remote")
        bounds = tiny_bounds()
        diff = describer_pb2.Difference(aspect="content", description="no apple")
        requests = [
            ("Understand", describer_pb2.UnderstandRequest(image_png=images["object_1"])),
            ("WritePrompt", describer_pb2.WritePromptRequest(iut=contract_checks.iut_message(), token_budget=77)),
            ("Variants", describer_pb2.VariantsRequest(prompt="red apple, table", n=2, token_budget=77, seed=1)),
            (
                "Compare",
                describer_pb2.CompareRequest(reference_png=images["object_1"], candidate_png=images["scene_1"]),
            ),
            ("Revise", describer_pb2.ReviseRequest(prompt="red apple", differences=[diff], token_budget=77)),
            ("Judge", describer_pb2.JudgeRequest(reference_png=images["object_1"], candidate_png=images["scene_1"])),
        ]
        outcomes = {}
        for method, request in requests:
            calls_before = model_calls(stub)
            try:
                reply = getattr(stub, method)(request)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, (method, exc.code(), exc.details())
                assert "no valid answer in 2 attempts" in exc.details() and "raw output: " in exc.details()
                assert model_calls(stub) - calls_before == 2
                outcomes[method] = "invalid"
                continue
            assert 1 <= reply.call.attempts <= 2 and model_calls(stub) - calls_before == reply.call.attempts
            if method == "Understand":
                assert_iut_valid(reply.iut, bounds)
            elif method in ("WritePrompt", "Revise"):
                assert_prompt_valid(reply.prompt, 77, bounds)
            elif method == "Judge":
                assert 1 <= reply.content_consistency <= 5 and 1 <= reply.perceptual_quality <= 5
            outcomes[method] = "valid"
        assert len(outcomes) == len(requests)
        log_text = svc.services["describer"].log_path.read_text(errors="replace")
    # The key never reaches the logs or the stored results.
    assert SECRET not in log_text
    for entry in (tmp_path / "cache").rglob("*.json"):
        assert SECRET not in entry.read_text()


class _ChatAPI(BaseHTTPRequestHandler):
    """Answers each call with the next status of `replies` (200 when empty): a valid
    completion, or an error (429 "quota": insufficient_quota); records the keys it saw."""

    replies: ClassVar[list[int | str]] = []
    seen_keys: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).seen_keys.append(self.headers.get("authorization", ""))
        reply = type(self).replies.pop(0) if type(self).replies else 200
        status = 429 if reply == "quota" else int(reply)
        if status == 200:
            content = json.dumps({"prompt": "red apple, wooden table"})
            payload = {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17},
            }
        else:
            code = "insufficient_quota" if reply == "quota" else None
            payload = {"error": {"message": f"status {status} as asked", "type": "test", "code": code}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        return None


@pytest.fixture(scope="module")
def chat_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _revise(backend) -> object:
    from regen.describer.answers import Difference
    from regen.describer.core import CoreOptions, DescriberCore

    return asyncio.run(DescriberCore(backend, CoreOptions()).revise("an apple", [Difference("content", "a table")], 77))


def _backend(base_url: str, **kwargs):
    from regen.describer.backends import openai_backend

    return openai_backend.OpenAIBackend(
        "gpt-test", base_url=base_url, api_key=SECRET, revision="api", timeout_s=5, **kwargs
    )


def test_openai_backend_answers_with_the_key_in_one_call(chat_api):
    _ChatAPI.replies, _ChatAPI.seen_keys = [], []
    backend = _backend(chat_api)
    result = _revise(backend)
    assert result.answer == "red apple, wooden table" and result.call.output_tokens == 7
    assert backend.stats().items == 1 and _ChatAPI.seen_keys == [f"Bearer {SECRET}"]


@pytest.mark.parametrize(
    ("reply", "status", "words"),
    [
        (503, "UNAVAILABLE", "failed (503): status 503 as asked"),
        (500, "UNAVAILABLE", "failed (500)"),
        (408, "UNAVAILABLE", "failed (408)"),
        (429, "RESOURCE_EXHAUSTED", "rate limiting (429)"),
        ("quota", "PERMISSION_DENIED", "the account's quota is spent (429)"),
        (401, "UNAUTHENTICATED", "refused the API key (401); set a valid key in the environment variable"),
        (403, "PERMISSION_DENIED", "denied this key the model gpt-test (403)"),
        (400, "FAILED_PRECONDITION", "refused the request the describer built for model gpt-test (400)"),
        (404, "FAILED_PRECONDITION", "(404)"),
    ],
)
def test_openai_backend_maps_each_answer_after_exactly_one_call(chat_api, reply, status, words):
    """One retry layer: the orchestrator's. The backend makes one call whatever the answer
    (the 503 and 429 that it used to retry included), and names the service and the API."""
    from regen.common.errors import RegenError

    _ChatAPI.replies, _ChatAPI.seen_keys = [reply], []
    backend = _backend(chat_api, key_setting="the environment variable OPENAI_API_KEY (setting api_key_env)")
    with pytest.raises(RegenError) as info:
        _revise(backend)
    assert info.value.status == status, info.value
    assert str(info.value).startswith(f"describer: the chat API at {chat_api} ") and words in str(info.value)
    assert SECRET not in str(info.value)
    assert len(_ChatAPI.seen_keys) == 1 and backend.stats().items == 1


def test_openai_backend_names_where_the_refused_key_came_from(chat_api, tmp_path, monkeypatch):
    from regen.common.errors import Unauthenticated
    from regen.describer.backends.openai_backend import OpenAIBackend

    secret = tmp_path / "key"
    secret.write_text(SECRET)
    monkeypatch.delenv("REGEN_TEST_NO_SUCH_KEY", raising=False)
    settings = load_settings(
        DescriberSettings,
        backend="openai",
        model="gpt-test",
        api_base_url=chat_api,
        api_key_env="REGEN_TEST_NO_SUCH_KEY",
        api_key_file=str(secret),
    )
    _ChatAPI.replies, _ChatAPI.seen_keys = [401], []
    with pytest.raises(Unauthenticated) as info:
        _revise(OpenAIBackend.from_settings(settings))
    assert str(info.value).endswith(f"(401); set a valid key in the file {secret} (setting api_key_file)")
    assert _ChatAPI.seen_keys == [f"Bearer {SECRET}"]


def test_openai_backend_unreachable_is_unavailable():
    from regen.common.errors import UpstreamError

    closed = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(UpstreamError, match=r"^describer: the chat API at .* did not answer: APIConnectionError$"):
        _revise(_backend(closed))


def test_openai_request_carries_images_as_data_urls_and_the_schema():
    from PIL import Image

    from regen.describer import templates
    from regen.describer.backends import openai_backend
    from regen.describer.backends.base import ModelCall

    backend = openai_backend.OpenAIBackend("gpt-4o", base_url=None, api_key=SECRET, revision="api", timeout_s=5)
    bounds = tiny_bounds()
    picture = Image.new("RGB", (32, 32), (10, 20, 30))
    call = ModelCall(templates.judge(picture, picture, bounds), schemas.judge_schema(bounds), "judge", 100)
    request = backend._request(call)
    user = request["messages"][1]["content"]
    assert [part["type"] for part in user] == ["image_url", "image_url", "text"]
    assert user[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert request["response_format"]["json_schema"] == {"name": "judge", "schema": call.schema, "strict": True}
    # Greedy calls are seeded too; OpenAI's own API gets max_completion_tokens.
    assert request["temperature"] == 0 and request["seed"] == call.seed
    assert request["max_completion_tokens"] == 100 and "max_tokens" not in request
    assert SECRET not in json.dumps(request)
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        openai_backend.OpenAIBackend("gpt-4o", base_url=None, api_key=None, revision="api", timeout_s=5)


# ---------------------------------------------------------------- vLLM


def _vllm_unavailable() -> str | None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vLLM is not installed (optional extra regen-describer[vllm], GPU only)"
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU and none is visible"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_vllm_unavailable() is not None, reason=str(_vllm_unavailable()))
def test_vllm_backend_answers_every_task_schema_valid(tiny_models, images):
    from regen.describer.backends.vllm_backend import VLLMBackend
    from regen.describer.core import CoreOptions, DescriberCore

    settings = tiny_settings()
    backend = VLLMBackend(
        str(tiny_models / "qwen2.5-vl"),
        revision=None,
        model_revision="test",
        dtype="bfloat16",
        gpu_memory_utilization=0.3,
        max_model_len=4096,
        max_num_seqs=8,
        image_max_side=settings.image_max_side,
    )
    core = DescriberCore(backend, CoreOptions.from_settings(settings))
    bounds = tiny_bounds()

    async def run():
        understood = await core.understand(images["object_1"])
        prompt = await core.write_prompt(understood.answer, 77)
        variants = await asyncio.gather(*(core.variants(prompt.answer, 3, 77, seed) for seed in (1, 1, 2)))
        judged = await core.judge(images["object_1"], images["scene_1"])
        await core.aclose()
        return understood, prompt, variants, judged

    understood, prompt, variants, judged = asyncio.run(run())
    assert schemas.schema_problems(schemas.iut_schema(bounds), understood.answer.to_json()) == []
    assert_prompt_valid(prompt.answer, 77, bounds)
    assert variants[0].answer == variants[1].answer and len(variants[2].answer) == 3
    assert 1 <= judged.answer.content_consistency <= 5
