"""Outbound fetches and secrets: the vendor Images engine fetches an answer's image URL
only over http(s), only from the API's host (or an allow-list), never from a private
address unless configured, following no redirect elsewhere and within the byte cap; an
API key an endpoint echoes in its errors is scrubbed from every error, log line and
written file, in the generator's and the describer's OpenAI integrations alike."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from support.fake_images_api import serve
from support.hostile_api import KEY_ENV, PLANTED_KEY, HostileAPI

from regen.common import secrets
from regen.common.errors import RegenError, UpstreamError
from regen.common.outbound import OutboundPolicy, OutboundRefused
from regen.common.settings import load_settings

MODEL = "regen-test-image-model"


@pytest.fixture(scope="module")
def api() -> Iterator[HostileAPI]:
    yield from serve(HostileAPI())


@pytest.fixture
def planted(monkeypatch) -> Iterator[str]:
    monkeypatch.setenv(KEY_ENV, PLANTED_KEY)
    yield PLANTED_KEY
    secrets.forget_all()


def engine(api: HostileAPI, **overrides):
    from regen.generator.engines.openai_images import OpenAIImagesEngine
    from regen.generator.settings import GeneratorSettings

    fields = {"engine": "openai", "model": MODEL, "api_base_url": api.base_url, "api_key_env": KEY_ENV}
    return OpenAIImagesEngine(load_settings(GeneratorSettings, **fields | {"width": 64, "height": 64} | overrides))


def render(engine, prompt: str):
    from regen.generator.engines.base import GenerationItem, RenderParams

    item = GenerationItem(0, prompt, "", 1, RenderParams(64, 64, 0, 0.0, uses_negative_prompt=False))
    [result] = engine.generate([item])
    return result


@pytest.mark.parametrize(
    "marker, words",
    [
        ("[url-file]", "scheme 'file' refused"),
        ("[url-other-host]", "host '169.254.169.254' is not an allowed host"),
        ("[url-redirect]", "redirect refused: host 'localhost' is not an allowed host"),
        ("[url-big]", "exceeds the limit of"),
    ],
)
def test_image_urls_outside_the_policy_are_not_fetched(api, planted, marker, words) -> None:
    vendor = engine(api, images={"max_bytes": 1024 * 1024})
    try:
        result = render(vendor, f"a fox {marker}")
    finally:
        vendor.close()
    assert isinstance(result, UpstreamError), result
    assert "the image URL was not fetched" in str(result) and words in str(result), result


def test_an_image_url_on_the_api_host_is_fetched(api, planted) -> None:
    vendor = engine(api)
    try:
        result = render(vendor, "a fox [url-ok]")
    finally:
        vendor.close()
    assert not isinstance(result, BaseException), result
    assert result.image.size == (64, 64)
    assert "/fine.png" in api.fetched


def test_private_addresses_need_configuring() -> None:
    policy = OutboundPolicy.for_api("https://api.example.invalid/v1", ["127.0.0.1", "localhost"])
    with pytest.raises(OutboundRefused, match=r"non-public address 127\.0\.0\.1"):
        policy.check("http://127.0.0.1:9/x.png")
    with pytest.raises(OutboundRefused, match="only http and https"):
        policy.check("ftp://api.example.invalid/x.png")
    OutboundPolicy.for_api("https://api.example.invalid/v1", ["127.0.0.1"], allow_private=True).check(
        "http://127.0.0.1:9/x.png"
    )
    # The configured API host is the operator's choice, even on a private address.
    OutboundPolicy.for_api("http://127.0.0.1:8080/v1").check("http://127.0.0.1:8080/img.png")


def test_the_generator_scrubs_an_echoed_key_from_errors_and_logs(api, planted, caplog) -> None:
    vendor = engine(api)
    caplog.set_level(logging.DEBUG)
    try:
        errors = [render(vendor, f"a fox {marker}") for marker in ("[echo]", "[echo-400]")]
    finally:
        vendor.close()
    for error in errors:
        assert isinstance(error, RegenError), error
        assert PLANTED_KEY not in str(error) and PLANTED_KEY[:14] not in str(error), error
        assert "[redacted]" in str(error)
        logging.getLogger("test").warning("failed: %s (%r)", error, PLANTED_KEY)
    assert PLANTED_KEY not in caplog.text and "[redacted]" in caplog.text


def test_the_describer_openai_backend_scrubs_an_echoed_key(api, planted) -> None:
    from regen.describer.backends.base import Message, ModelCall
    from regen.describer.backends.openai_backend import OpenAIBackend
    from regen.describer.settings import DescriberSettings

    settings = load_settings(
        DescriberSettings, backend="openai", model="gpt-test", api_base_url=api.base_url, api_key_env=KEY_ENV
    )
    backend = OpenAIBackend.from_settings(settings)
    texts = []
    try:
        for marker in ("[echo]", "[echo-400]"):
            messages = (Message("user", (f"describe {marker}",)),)
            call = ModelCall(messages, schema=None, schema_name="x", max_new_tokens=16)
            with pytest.raises(RegenError) as caught:
                asyncio.run(backend.complete(call))
            texts.append(str(caught.value))
    finally:
        asyncio.run(backend.aclose())
    assert all(PLANTED_KEY not in text and "[redacted]" in text for text in texts), texts


def test_scrub_covers_pieces_structures_and_tracebacks(planted) -> None:
    secrets.register(PLANTED_KEY)
    secrets.register("short")  # too short to be treated as a secret
    assert secrets.scrub(f"key={PLANTED_KEY}!") == "key=[redacted]!"
    assert PLANTED_KEY[:14] not in secrets.scrub(f"prefix {PLANTED_KEY[:14]}****")
    assert secrets.scrub("short and sweet, api.openai.com") == "short and sweet, api.openai.com"
    assert secrets.scrub_data({"a": [PLANTED_KEY, 1, None], PLANTED_KEY: 2.5}) == {
        "a": ["[redacted]", 1, None],
        "[redacted]": 2.5,
    }
    record = logging.getLogRecordFactory()("x", logging.ERROR, __file__, 1, "boom %s", (PLANTED_KEY,), None)
    assert record.getMessage() == "boom [redacted]"
    try:
        raise ValueError(PLANTED_KEY)
    except ValueError:
        import sys

        record = logging.getLogRecordFactory()("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert PLANTED_KEY not in logging.Formatter().format(record)


def test_the_orchestrator_registers_secret_looking_variables() -> None:
    try:
        secrets.register_environment({"OPENAI_API_KEY": "sk-abcdefghijkl", "HOME": "/root-is-not-a-secret"})
        assert secrets.scrub("sk-abcdefghijkl at /root-is-not-a-secret") == "[redacted] at /root-is-not-a-secret"
    finally:
        secrets.forget_all()
