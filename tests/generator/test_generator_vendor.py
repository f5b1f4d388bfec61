"""The "vendor" generator engine (OpenAI-compatible Images API) against a local server on
127.0.0.1 that speaks POST /v1/images/generations, served through a real gRPC server.

The fake API answers with base64 PNGs; prompts carry instructions for it: "[429]" and
"[500]" make the first attempt fail with that status, "[400-size]" is a plain bad
request, and a prompt containing FORBIDDEN is refused under the content policy.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest
from PIL import Image

from regen.common.settings import load_settings
from regen.generator.core import GeneratorCore
from regen.generator.grpc_api import BackgroundServer
from regen.generator.settings import GeneratorSettings
from regen.v1 import common_pb2, generator_pb2, generator_pb2_grpc

API_KEY = "sk-test-4f1c9e2a7b-never-log-me"
KEY_ENV = "REGEN_TEST_IMAGES_API_KEY"
FORBIDDEN = "FORBIDDEN"


class FakeImagesAPI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.attempts: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: FakeImagesAPI

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def _reply(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None, kind: str, headers=None) -> None:
        self._reply(status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, headers)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/images/generations":
            return self._error(404, f"no route {self.path}", None, "invalid_request_error")
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            return self._error(401, "Incorrect API key provided", "invalid_api_key", "invalid_request_error")
        prompt = body["prompt"]
        with self.server.lock:
            self.server.attempts[prompt] += 1
            self.server.bodies.append(body)
            attempt = self.server.attempts[prompt]
        if "[429]" in prompt and attempt == 1:
            return self._error(429, "Rate limit reached", "rate_limit_exceeded", "requests", {"retry-after-ms": "20"})
        if "[500]" in prompt and attempt == 1:
            return self._error(500, "The server had an error", None, "server_error", {"retry-after-ms": "20"})
        if "[400-size]" in prompt:
            return self._error(400, "Invalid size", "invalid_size", "invalid_request_error")
        if FORBIDDEN in prompt:
            return self._error(
                400,
                "Your request was rejected as a result of our safety system.",
                "content_policy_violation",
                "invalid_request_error",
            )
        width, height = (int(v) for v in body["size"].split("x"))
        shade = sum(prompt.encode()) % 256
        buf = io.BytesIO()
        Image.new("RGBA", (width, height), (shade, 255 - shade, 128, 255)).save(buf, format="PNG")
        self._reply(200, {"created": 1, "data": [{"b64_json": base64.b64encode(buf.getvalue()).decode()}]})


@pytest.fixture(scope="module")
def fake_api() -> Iterator[FakeImagesAPI]:
    server = FakeImagesAPI()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def vendor_settings(fake_api: FakeImagesAPI, **overrides) -> GeneratorSettings:
    """Settings of the vendor engine pointed at the fake API, the key read from KEY_ENV."""
    return load_settings(
        GeneratorSettings,
        engine="openai",
        model="gpt-image-1",
        api_base_url=fake_api.base_url,
        api_key_env=KEY_ENV,
        **overrides,
    )


@pytest.fixture(scope="module")
def vendor(fake_api: FakeImagesAPI) -> Iterator[generator_pb2_grpc.GeneratorStub]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, API_KEY)
        settings = vendor_settings(fake_api, api_max_retries=3, width=256, height=256)
        core = GeneratorCore.load(settings)
    with BackgroundServer(core, settings) as server, grpc.insecure_channel(server.address) as channel:
        yield generator_pb2_grpc.GeneratorStub(channel)


def _generate(stub, *texts: str, **fields) -> dict[int, generator_pb2.GeneratedImage]:
    request = generator_pb2.GenerateRequest(
        prompts=[generator_pb2.PromptSpec(text=t, seed=i) for i, t in enumerate(texts)], **fields
    )
    return {image.index: image for image in stub.Generate(request, timeout=60)}


def test_info_describes_the_vendor_model(vendor) -> None:
    info = vendor.Info(common_pb2.InfoRequest())
    assert info.model.backend == "openai"
    assert info.model.model_id == "gpt-image-1"
    assert info.prompt_token_budget == 0  # counted by the vendor, not here
    assert (info.default_width, info.default_height) == (256, 256)
    assert info.default_steps == 0


def test_images_come_back_as_png_at_the_requested_size(vendor, fake_api) -> None:
    images = _generate(vendor, "a lighthouse at dusk", "a bowl of lemons", width=512, height=256)
    assert sorted(images) == [0, 1]
    for image in images.values():
        assert image.png.startswith(b"\x89PNG\r\n\x1a\n")
        decoded = Image.open(io.BytesIO(image.png))
        assert decoded.size == (512, 256) and decoded.mode == "RGB"
        assert (image.width, image.height) == (512, 256) and not image.refused
    sent = [b for b in fake_api.bodies if b["prompt"] == "a lighthouse at dusk"][-1]
    assert sent["model"] == "gpt-image-1" and sent["size"] == "512x256" and sent["n"] == 1
    assert sent["output_format"] == "png" and "response_format" not in sent


@pytest.mark.parametrize("marker", ["[429]", "[500]"])
def test_rate_limits_and_server_errors_are_retried(vendor, fake_api, marker) -> None:
    prompt = f"a red kite over hills {marker}"
    images = _generate(vendor, prompt)
    assert fake_api.attempts[prompt] == 2  # one failure, one retry that succeeded
    assert not images[0].refused and images[0].png


def test_content_policy_refusal_is_a_refused_candidate(vendor, fake_api) -> None:
    images = _generate(vendor, "a quiet harbour", f"something {FORBIDDEN}", "a snowy forest")
    assert sorted(images) == [0, 1, 2]
    refused = images[1]
    assert refused.refused and refused.png == b""
    assert "safety system" in refused.refusal_reason
    assert fake_api.attempts[f"something {FORBIDDEN}"] == 1  # a refusal is final, not retried
    assert not images[0].refused and not images[2].refused
    assert np.asarray(Image.open(io.BytesIO(images[0].png))).shape == (256, 256, 3)


def test_a_plain_bad_request_is_invalid_argument(vendor) -> None:
    with pytest.raises(grpc.RpcError) as err:
        _generate(vendor, "a boat [400-size]")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompts[0]" in err.value.details() and "Invalid size" in err.value.details()


def test_negative_prompts_are_refused_not_dropped(vendor) -> None:
    request = generator_pb2.GenerateRequest(prompts=[generator_pb2.PromptSpec(text="a cat", negative_prompt="blur")])
    with pytest.raises(grpc.RpcError) as err:
        list(vendor.Generate(request, timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompts[0].negative_prompt" in err.value.details()


def test_the_api_key_is_never_logged_or_reported(fake_api, caplog, monkeypatch) -> None:
    """A fresh engine with every logger at DEBUG, through retries, a refusal and an
    authentication failure: the key appears in no log record and not in Info."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, API_KEY)
    settings = vendor_settings(fake_api, width=64, height=64)
    core = GeneratorCore.load(settings)
    with BackgroundServer(core, settings) as server, grpc.insecure_channel(server.address) as channel:
        stub = generator_pb2_grpc.GeneratorStub(channel)
        info = stub.Info(common_pb2.InfoRequest())
        _generate(stub, "a key check [429]", f"key check {FORBIDDEN}")
    assert API_KEY not in str(info) and API_KEY not in info.SerializeToString().decode("latin-1")

    wrong = "sk-wrong-key-5d7e"
    monkeypatch.setenv(KEY_ENV, wrong)
    core = GeneratorCore.load(settings)
    with (
        BackgroundServer(core, settings) as server,
        grpc.insecure_channel(server.address) as channel,
        pytest.raises(grpc.RpcError) as err,
    ):
        _generate(generator_pb2_grpc.GeneratorStub(channel), "a key check")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "authentication failed" in err.value.details() and wrong not in err.value.details()

    assert caplog.records, "expected log records (openai/httpx debug logging)"
    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records)
    assert API_KEY not in logged and wrong not in logged


def test_a_missing_key_fails_at_startup(monkeypatch) -> None:
    monkeypatch.delenv("REGEN_TEST_NO_SUCH_KEY", raising=False)
    settings = load_settings(
        GeneratorSettings, engine="openai", model="gpt-image-1", api_key_env="REGEN_TEST_NO_SUCH_KEY"
    )
    with pytest.raises(ValueError, match="REGEN_TEST_NO_SUCH_KEY"):
        GeneratorCore.load(settings)


def test_the_key_can_come_from_a_mounted_secret_file(fake_api, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("REGEN_TEST_NO_SUCH_KEY", raising=False)
    secret = tmp_path / "api-key"
    secret.write_text(API_KEY + "\n")
    settings = load_settings(
        GeneratorSettings,
        engine="openai",
        model="dall-e-3",
        api_base_url=fake_api.base_url,
        api_key_env="REGEN_TEST_NO_SUCH_KEY",
        api_key_file=str(secret),
        width=64,
        height=64,
    )
    core = GeneratorCore.load(settings)
    with BackgroundServer(core, settings) as server, grpc.insecure_channel(server.address) as channel:
        images = _generate(generator_pb2_grpc.GeneratorStub(channel), "a paper crane from a secret")
    assert images[0].png and not images[0].refused
    sent = [b for b in fake_api.bodies if b["prompt"] == "a paper crane from a secret"][-1]
    assert sent["response_format"] == "b64_json" and "output_format" not in sent  # DALL·E's parameter
