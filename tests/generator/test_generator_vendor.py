"""The "vendor" generator engine (OpenAI-compatible Images API) against a local server on
127.0.0.1 that speaks POST /v1/images/generations, served through a real gRPC server.

The fake API answers with base64 PNGs and a `usage`, and counts its calls per prompt.
Markers in a prompt make it answer otherwise: "[401]", "[403]", "[404]", "[408]",
"[409]", "[429]", "[500]", "[503]" answer that status on every call, "[quota]" a 429
insufficient_quota, "[400-size]" a plain bad request, "[slow]" takes 2 s, "[cost]" adds a
stated cost to the usage; a prompt containing FORBIDDEN is refused under the content
policy, and a wrong key gets 401.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from PIL import Image
from support.fake_images_api import API_KEY, FORBIDDEN, KEY_ENV, MODEL, FakeImagesAPI
from support.fake_images_api import serve as _serve

from regen.common.grpc_server import channel_options
from regen.common.settings import load_settings
from regen.conformance import generator as generator_checks
from regen.conformance.outcome import run_check
from regen.generator.core import GeneratorCore
from regen.generator.engines.openai_images import FIXED_SIZES, OpenAIImagesEngine
from regen.generator.grpc_api import BackgroundServer
from regen.generator.settings import GeneratorSettings
from regen.v1 import common_pb2, generator_pb2, generator_pb2_grpc


@pytest.fixture(scope="module")
def fake_api() -> Iterator[FakeImagesAPI]:
    yield from _serve(FakeImagesAPI())


def vendor_settings(fake_api: FakeImagesAPI, **overrides) -> GeneratorSettings:
    """Settings of the vendor engine pointed at the fake API, the key read from KEY_ENV."""
    fields = {"model": MODEL, "api_base_url": fake_api.base_url, "api_key_env": KEY_ENV, **overrides}
    return load_settings(GeneratorSettings, engine="openai", **fields)


def _stub_for(settings: GeneratorSettings, monkeypatch_key: str | None = API_KEY) -> Iterator:
    with pytest.MonkeyPatch.context() as mp:
        if monkeypatch_key is None:
            mp.delenv(KEY_ENV, raising=False)
        else:
            mp.setenv(KEY_ENV, monkeypatch_key)
        core = GeneratorCore.load(settings)
    with (
        BackgroundServer(core, settings) as server,
        grpc.insecure_channel(server.address, options=channel_options()) as channel,
    ):
        yield generator_pb2_grpc.GeneratorStub(channel)


@pytest.fixture(scope="module")
def vendor(fake_api: FakeImagesAPI) -> Iterator[generator_pb2_grpc.GeneratorStub]:
    yield from _stub_for(vendor_settings(fake_api, width=256, height=256, api_timeout_s=0.5))


def _request(*texts: str, **fields) -> generator_pb2.GenerateRequest:
    return generator_pb2.GenerateRequest(
        prompts=[generator_pb2.PromptSpec(text=t, seed=i) for i, t in enumerate(texts)], **fields
    )


def _generate(stub, *texts: str, **fields) -> dict[int, generator_pb2.GeneratedImage]:
    return {image.index: image for image in stub.Generate(_request(*texts, **fields), timeout=60)}


def _partial(stub, *texts: str, **fields) -> tuple[dict[int, generator_pb2.GeneratedImage], grpc.RpcError | None]:
    """The images a stream gave before it ended, and the error it ended with (or None)."""
    images: dict[int, generator_pb2.GeneratedImage] = {}
    try:
        for image in stub.Generate(_request(*texts, **fields), timeout=60):
            images[image.index] = image
    except grpc.RpcError as err:
        return images, err
    return images, None


def _failure(stub, text: str) -> grpc.RpcError:
    images, err = _partial(stub, text)
    assert not images and err is not None, (images, err)
    return err


# ------------------------------------------------------------------ Info and images


def test_info_describes_the_vendor_model_and_its_capabilities(vendor) -> None:
    info = vendor.Info(common_pb2.InfoRequest())
    assert (info.model.backend, info.model.model_id, info.model.revision) == ("openai", MODEL, "unpinned")
    assert info.prompt_token_budget == 0  # counted by the vendor, not here
    assert (info.default_width, info.default_height) == (256, 256)
    assert info.default_steps == 0
    caps = info.capabilities
    assert (caps.seeded, caps.negative_prompt, caps.sampling_params) == (False, False, False)
    assert list(caps.sizes) == [] and caps.max_side == 2048  # a model of unknown sizes: the service's limit


def test_images_are_png_at_the_requested_size_with_model_and_usage(vendor, fake_api) -> None:
    images = _generate(vendor, "a lighthouse at dusk", "a bowl of lemons [cost]", width=512, height=256)
    info = vendor.Info(common_pb2.InfoRequest())
    assert sorted(images) == [0, 1]
    for image in images.values():
        assert image.png.startswith(b"\x89PNG\r\n\x1a\n")
        decoded = Image.open(io.BytesIO(image.png))
        assert decoded.size == (512, 256) and decoded.mode == "RGB"
        assert (image.width, image.height) == (512, 256) and not image.refused
        assert (image.model_id, image.revision) == (info.model.model_id, info.model.revision)
        usage = image.usage
        assert (usage.api_calls, usage.retries, usage.images, usage.output_tokens) == (1, 0, 1, 272)
    assert images[0].usage.input_tokens == 4 and not images[0].usage.HasField("cost_usd")
    assert images[1].usage.cost_usd == pytest.approx(0.042)
    sent = [b for b in fake_api.bodies if b["prompt"] == "a lighthouse at dusk"][-1]
    assert sent["model"] == MODEL and sent["size"] == "512x256" and sent["n"] == 1
    assert sent["output_format"] == "png" and "response_format" not in sent


def test_a_content_policy_refusal_is_a_refused_candidate(vendor, fake_api) -> None:
    images = _generate(vendor, "a quiet harbour", f"something {FORBIDDEN}", "a snowy forest")
    assert sorted(images) == [0, 1, 2]
    refused = images[1]
    assert refused.refused and refused.png == b""
    assert "safety system" in refused.refusal_reason
    assert (refused.usage.api_calls, refused.usage.images) == (1, 0)  # called, nothing billed
    assert fake_api.attempts[f"something {FORBIDDEN}"] == 1  # a refusal is final, not retried
    assert not images[0].refused and not images[2].refused
    assert np.asarray(Image.open(io.BytesIO(images[0].png))).shape == (256, 256, 3)


def test_negative_prompts_are_refused_not_dropped(vendor) -> None:
    request = generator_pb2.GenerateRequest(prompts=[generator_pb2.PromptSpec(text="a cat", negative_prompt="blur")])
    with pytest.raises(grpc.RpcError) as err:
        list(vendor.Generate(request, timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompts[0].negative_prompt" in err.value.details()


# ------------------------------------------------------------------ one retry layer


def test_a_failing_prompt_costs_its_siblings_nothing(vendor, fake_api) -> None:
    """One prompt always gets HTTP 500: the stream gives the two good images, then ends
    UNAVAILABLE. Asking again for the failed prompt only (as the orchestrator's retry
    does) is exactly one more API call, and every good prompt was called exactly once."""
    good = ["a green kite over dunes", "a brass compass on a map"]
    bad = "a kite that never renders [500]"
    images, err = _partial(vendor, good[0], bad, good[1])
    assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE, err
    assert "500" in err.details() and "generator: the images API at" in err.details()
    assert sorted(images) == [0, 2] and all(images[i].png for i in (0, 2))
    assert fake_api.attempts[bad] == 1  # no retries under the orchestrator's

    retried, err = _partial(vendor, bad)
    assert not retried and err is not None and err.code() == grpc.StatusCode.UNAVAILABLE
    assert fake_api.attempts[bad] == 2
    assert [fake_api.attempts[text] for text in good] == [1, 1]


@pytest.mark.parametrize(
    ("marker", "code", "words"),
    [
        ("[403]", grpc.StatusCode.PERMISSION_DENIED, f"denied this key the model {MODEL} (403)"),
        ("[429]", grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limiting (429)"),
        ("[quota]", grpc.StatusCode.PERMISSION_DENIED, "quota is spent (429)"),
        ("[400-size]", grpc.StatusCode.INVALID_ARGUMENT, "prompts[0]: generator: the images API at"),
        ("[404]", grpc.StatusCode.INVALID_ARGUMENT, "refused the request (404)"),
        ("[408]", grpc.StatusCode.UNAVAILABLE, "failed (408)"),
        ("[409]", grpc.StatusCode.UNAVAILABLE, "failed (409)"),
        ("[503]", grpc.StatusCode.UNAVAILABLE, "failed (503)"),
        ("[slow]", grpc.StatusCode.UNAVAILABLE, "did not answer: APITimeoutError"),
    ],
)
def test_api_answers_map_to_statuses_after_one_call(vendor, fake_api, marker, code, words) -> None:
    prompt = f"a red kite over hills {marker}"
    err = _failure(vendor, prompt)
    assert err.code() == code, (err.code(), err.details())
    assert words in err.details(), err.details()
    assert fake_api.attempts[prompt] == 1


def test_a_refused_key_is_unauthenticated_naming_the_setting(vendor, fake_api) -> None:
    err = _failure(vendor, "a key that the API refuses [401]")
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details() == (
        f"generator: the images API at {fake_api.base_url} refused the API key (401); "
        f"set a valid key in the environment variable {KEY_ENV} (setting api_key_env)"
    )


def test_an_unreachable_api_is_unavailable(fake_api) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    for stub in _stub_for(vendor_settings(fake_api, api_base_url=closed, width=64, height=64)):
        err = _failure(stub, "a bridge in fog")
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert f"generator: the images API at {closed} did not answer: APIConnectionError" in err.details()


# ------------------------------------------------------------------ fixed sizes


def test_known_models_list_their_fixed_sizes_and_refuse_others(fake_api) -> None:
    for stub in _stub_for(vendor_settings(fake_api, model="gpt-image-1")):
        info = stub.Info(common_pb2.InfoRequest())
        sizes = [(s.width, s.height) for s in info.capabilities.sizes]
        assert sizes == [(1024, 1024), (1536, 1024), (1024, 1536)] and info.capabilities.max_side == 1536
        for fields, field in [({"width": 512, "height": 256}, "width"), ({"width": 1024, "height": 1792}, "height")]:
            with pytest.raises(grpc.RpcError) as err:
                _generate(stub, "a wide harbour at noon", **fields)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            size = f"{fields['width']}x{fields['height']}"
            assert err.value.details() == (
                f"{field}: {size} is not a size gpt-image-1 renders; use one of 1024x1024, 1536x1024, 1024x1536"
            )
        assert fake_api.attempts["a wide harbour at noon"] == 0  # refused before any API call
        (image,) = _generate(stub, "a wide harbour at dusk", width=1536, height=1024).values()
        assert (image.width, image.height, image.model_id) == (1536, 1024, "gpt-image-1")


def test_every_known_model_reports_its_sizes() -> None:
    for model, sizes in FIXED_SIZES.items():
        engine = OpenAIImagesEngine(load_settings(GeneratorSettings, engine="openai", model=model), client=object())
        info = engine.info()
        assert info.sizes == sizes and not info.seeded and (info.default_width, info.default_height) == (1024, 1024)
    assert set(FIXED_SIZES) == {"gpt-image-1", "dall-e-3", "dall-e-2"}


def test_a_default_size_the_model_does_not_render_fails_at_startup(monkeypatch) -> None:
    monkeypatch.setenv(KEY_ENV, API_KEY)
    settings = load_settings(
        GeneratorSettings, engine="openai", model="dall-e-3", api_key_env=KEY_ENV, width=256, height=256
    )
    with pytest.raises(ValueError, match=r"^the default size, width: 256x256 is not a size dall-e-3 renders; use"):
        GeneratorCore.load(settings)


# ------------------------------------------------------------------ the key


def test_the_api_key_is_never_logged_or_reported(fake_api, caplog, monkeypatch) -> None:
    """A fresh engine with every logger at DEBUG, through a rate limit, a refusal and an
    authentication failure: the key appears in no log record, not in Info, and not in
    the UNAUTHENTICATED message, which names the setting instead."""
    caplog.set_level(logging.DEBUG)
    settings = vendor_settings(fake_api, width=64, height=64)
    for stub in _stub_for(settings):
        info = stub.Info(common_pb2.InfoRequest())
        images, err = _partial(stub, "a key check", f"key check {FORBIDDEN}", "a key check [429]")
        assert sorted(images) == [0, 1] and err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert API_KEY not in str(info) and API_KEY not in info.SerializeToString().decode("latin-1")

    wrong = "sk-wrong-key-5d7e"
    for stub in _stub_for(settings, wrong):
        err = _failure(stub, "a key check")
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert f"{KEY_ENV} (setting api_key_env)" in err.details() and wrong not in err.details()

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


def test_the_key_can_come_from_a_mounted_secret_file(fake_api, tmp_path) -> None:
    secret = tmp_path / "api-key"
    secret.write_text(API_KEY + "\n")
    settings = vendor_settings(fake_api, model="dall-e-2", api_key_file=str(secret), width=256, height=256)
    for stub in _stub_for(settings, monkeypatch_key=None):
        images = _generate(stub, "a paper crane from a secret")
        err = _failure(stub, "a paper crane [401]")
    assert images[0].png and not images[0].refused
    sent = [b for b in fake_api.bodies if b["prompt"] == "a paper crane from a secret"][-1]
    assert sent["response_format"] == "b64_json" and "output_format" not in sent  # DALL·E's parameter
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.details().endswith(f"set a valid key in the file {secret} (setting api_key_file)")


# ------------------------------------------------------------------ the contract


@pytest.fixture(scope="module")
def conformance_channel() -> Iterator[grpc.Channel]:
    """The vendor engine over a fake API that takes 0.1 s a call, so that a 0.05 s
    deadline passes before the images are done."""
    for api in _serve(FakeImagesAPI(delay_s=0.1)):
        settings = vendor_settings(api, width=128, height=128)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(KEY_ENV, API_KEY)
            core = GeneratorCore.load(settings)
        with (
            BackgroundServer(core, settings) as server,
            grpc.insecure_channel(server.address, options=channel_options()) as channel,
        ):
            yield channel


@pytest.mark.parametrize("check", generator_checks.CHECKS, ids=[c.__name__ for c in generator_checks.CHECKS])
def test_the_vendor_engine_passes_the_conformance_kit(conformance_channel, check) -> None:
    """Every check passes, the deadline one included; only determinism is skipped, since
    the engine says it is not seeded."""
    result = run_check(check, conformance_channel, refusal_prompt=f"a sign that reads {FORBIDDEN}")
    assert result.result == "PASS" or (result.result == "SKIP" and "not seeded" in result.reason), result


# ------------------------------------------------------------------ over HTTP


@pytest.mark.slow
def test_http_carries_capabilities_model_usage_and_partial_failures(fake_api, tmp_path) -> None:
    """The BentoML service over the vendor engine: /info has the capabilities, images name
    their model and usage, a stream gives the good images and then one error line, and a
    refused key is 401 UNAUTHENTICATED."""
    from support.bento_server import post, serve_bento

    env = {
        "REGEN_GENERATOR_ENGINE": "openai",
        "REGEN_GENERATOR_MODEL": MODEL,
        "REGEN_GENERATOR_API_BASE_URL": fake_api.base_url,
        "REGEN_GENERATOR_API_KEY_ENV": KEY_ENV,
        KEY_ENV: API_KEY,
    }
    with serve_bento("regen.generator.http_api:Generator", "REGEN_GENERATOR_PORT", tmp_path, env) as (url, _):
        status, body = post(f"{url}/info", {})
        assert status == 200, body
        info = json.loads(body)
        assert info["capabilities"] == {
            "seeded": False,
            "negative_prompt": False,
            "sampling_params": False,
            "sizes": [],
            "max_side": 2048,
        }
        prompts = [{"text": "an http heron", "seed": 1}, {"text": "an http otter [cost]", "seed": 2}]
        status, body = post(f"{url}/generate", {"prompts": prompts})
        assert status == 200, body
        images = json.loads(body)["images"]
        assert [(i["model_id"], i["revision"]) for i in images] == [(MODEL, "unpinned")] * 2
        usage = {"api_calls": 1, "retries": 0, "input_tokens": 3, "output_tokens": 272, "images": 1}
        assert images[0]["usage"] == usage | {"cost_usd": None}
        assert images[1]["usage"] == usage | {"input_tokens": 4, "cost_usd": 0.042}

        texts = ["an http crane", "an http crane that fails [500]", "an http stork"]
        # The stream ends abnormally after its error line: the client sees an incomplete body.
        with pytest.raises(http.client.IncompleteRead) as incomplete:
            post(f"{url}/generate_stream", {"prompts": [{"text": t} for t in texts]})
        body = incomplete.value.partial
        *lines, last = [json.loads(line) for line in body.decode().splitlines()]
        assert sorted(line["index"] for line in lines) == [0, 2]
        assert (last["error"]["code"], last["error"]["status"]) == (502, "UNAVAILABLE"), last
        assert [fake_api.attempts[t] for t in texts] == [1, 1, 1]

        status, body = post(f"{url}/generate", {"prompts": [{"text": "an http key check [401]"}]})
        error = json.loads(body)["error"]
        assert (status, error["status"]) == (401, "UNAUTHENTICATED") and "api_key_env" in error["message"]
