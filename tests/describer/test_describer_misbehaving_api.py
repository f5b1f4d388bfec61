"""The describer's openai backend against a fake chat API that misbehaves one way at a
time (tests/support/fake_chat_api.py). For each way: the recorded outcome, the exact
number of requests made, and that nothing invalid is cached; a valid answer reports what
it cost, a failure carries the same facts in its metadata."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support import fake_chat_api
from support.fake_chat_api import FINGERPRINT, SERVED_MODEL, FakeChatAPI

from regen.common.errors import RegenError
from regen.common.settings import load_settings
from regen.conformance.describer import assert_call_infos_valid
from regen.describer import convert, review, schemas, templates
from regen.describer.answers import Difference, ImageUnderstandingTree
from regen.describer.backends.openai_backend import UNPINNED, OpenAIBackend
from regen.describer.cache import AnswerCache
from regen.describer.core import CoreOptions, DescriberCore, Result, greedy_seed
from regen.describer.settings import DescriberSettings

SECRET = "sk-regen-test-chat-0123456789"
KEY_ENV = "REGEN_TEST_CHAT_API_KEY"
MAX_REPAIRS = 2
ATTEMPTS = 1 + MAX_REPAIRS


def png(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def api() -> Iterator[FakeChatAPI]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, SECRET)
        yield from fake_chat_api.serve(FakeChatAPI())


def backend_for(api: FakeChatAPI, model: str = SERVED_MODEL, **settings: Any) -> OpenAIBackend:
    return OpenAIBackend.from_settings(
        load_settings(
            DescriberSettings,
            backend="openai",
            model=model,
            api_base_url=api.base_url,
            api_key_env=KEY_ENV,
            **settings,
        )
    )


def judge(api: FakeChatAPI, cache_dir: Path | None, **settings: Any) -> Result:
    """One Judge through a fresh core over the fake API (raises what the core raises)."""

    async def run() -> Result:
        core = DescriberCore(
            backend_for(api, **settings),
            CoreOptions(max_repairs=MAX_REPAIRS),
            cache=AnswerCache(cache_dir) if cache_dir else None,
        )
        try:
            return await core.judge(png(), png((20, 90, 30)))
        finally:
            await core.aclose()

    return asyncio.run(run())


def cache_entries(cache_dir: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(cache_dir.rglob("*.json"))]


def assert_entries_valid(cache_dir: Path) -> None:
    """Every cached answer passes the one validation, and its scores are integers."""
    for entry in cache_entries(cache_dir):
        answer = entry["answer"]
        _, problems = review.validate(
            schemas.judge_schema(schemas.AnswerBounds()), review.strings, answer, templates.instructions("judge")
        )
        assert problems == [], entry
        assert type(answer["content_consistency"]) is int and type(answer["perceptual_quality"]) is int


# behaviour -> (status, words of the message); None: a valid answer.
FAILURES: dict[str, tuple[str, str, int]] = {
    # behaviour: (status, words, requests)
    "prose": ("FAILED_PRECONDITION", "the answer contains no JSON object", ATTEMPTS),
    "length": ("FAILED_PRECONDITION", "cut off at the limit of", ATTEMPTS),
    "out_of_range": ("FAILED_PRECONDITION", "content_consistency: 7 is greater than the maximum of 5", ATTEMPTS),
    "string_score": ("FAILED_PRECONDITION", "content_consistency: '4' is not of type 'integer'", ATTEMPTS),
    "missing_key": ("FAILED_PRECONDITION", "'perceptual_quality' is a required property", ATTEMPTS),
    "extra_key": ("FAILED_PRECONDITION", "Additional properties are not allowed ('x' was unexpected)", ATTEMPTS),
    "empty_rationale": ("FAILED_PRECONDITION", "rationale: must be a non-empty text", ATTEMPTS),
    "long_rationale": ("FAILED_PRECONDITION", "rationale: must be a non-empty text of at most 400", ATTEMPTS),
    "float": ("FAILED_PRECONDITION", "content_consistency: 4.0 is not of type 'integer'", ATTEMPTS),
    "duplicate_keys": ("FAILED_PRECONDITION", "the key 'content_consistency' appears twice", ATTEMPTS),
    "template_echo": ("FAILED_PRECONDITION", "rationale: must be a non-empty text", ATTEMPTS),
    "placeholder": ("FAILED_PRECONDITION", "rationale: 'n/a' is a placeholder, not an answer", ATTEMPTS),
    "rubric_echo": ("FAILED_PRECONDITION", "copies the instructions instead of answering", ATTEMPTS),
    "control_chars": ("FAILED_PRECONDITION", "rationale: contains control characters", ATTEMPTS),
    # One request, never repeated: the model declined, or gave nothing to repair.
    "refusal": ("FAILED_PRECONDITION", "judge: the model refused to answer: I'm sorry, I can't help", 1),
    "empty_choices": ("FAILED_PRECONDITION", "answered without choices", 1),
    # The API's errors: one request each; the orchestrator decides on retries.
    "status_429": ("RESOURCE_EXHAUSTED", "is rate limiting (429)", 1),
    "status_500": ("UNAVAILABLE", "failed (500)", 1),
    "status_503": ("UNAVAILABLE", "failed (503)", 1),
    "status_400": ("FAILED_PRECONDITION", "refused the request the describer built", 1),
    "status_401": ("UNAUTHENTICATED", "refused the API key (401)", 1),
}
VALID = {"valid": (4, 5), "prose_around_json": (4, 5), "fences": (4, 5), "constant": (5, 5)}


def test_every_behaviour_is_covered():
    assert set(FAILURES) | set(VALID) == set(fake_chat_api.BEHAVIOURS)


@pytest.mark.parametrize("behaviour", sorted(FAILURES))
def test_a_misbehaving_api_fails_with_its_reason_after_exactly_so_many_requests(api, tmp_path, behaviour):
    status, words, requests = FAILURES[behaviour]
    api.play(behaviour)
    with pytest.raises(RegenError) as caught:
        judge(api, tmp_path)
    error = caught.value
    assert error.status == status, error
    assert words in str(error), error
    assert len(api.requests) == requests
    # What the failed request cost travels with the error (ErrorInfo metadata on the wire).
    assert error.metadata["attempts"] == str(requests) and error.metadata["api_calls"] == str(requests)
    assert error.metadata["repairs"] == str(requests - 1)
    assert api.authorizations == [f"Bearer {SECRET}"] * requests and SECRET not in str(error)
    assert cache_entries(tmp_path) == []


@pytest.mark.parametrize("behaviour", sorted(VALID))
def test_a_usable_answer_is_taken_in_one_request_and_cached(api, tmp_path, behaviour):
    api.play(behaviour)
    result = judge(api, tmp_path)
    judgement = result.answer
    assert (judgement.content_consistency, judgement.perceptual_quality) == VALID[behaviour]
    assert len(api.requests) == 1
    call = result.call
    assert (call.cached, call.attempts, call.repairs) == (False, 1, 0)
    assert (call.served_model, call.system_fingerprint) == (SERVED_MODEL, FINGERPRINT)
    assert call.usage.api_calls == 1 and call.usage.input_tokens > 0 and call.usage.output_tokens > 0
    assert [entry["key"] for entry in cache_entries(tmp_path)] == [call.cache_key]
    assert_entries_valid(tmp_path)


REPAIRABLE = sorted(b for b, (_status, _words, requests) in FAILURES.items() if requests == ATTEMPTS)


@pytest.mark.parametrize("behaviour", REPAIRABLE)
def test_one_bad_answer_is_repaired_in_one_more_request(api, tmp_path, behaviour):
    api.play(behaviour, "valid")
    result = judge(api, tmp_path)
    assert (result.answer.content_consistency, result.answer.perceptual_quality) == (4, 5)
    assert len(api.requests) == 2
    assert (result.call.attempts, result.call.repairs, result.call.usage.api_calls) == (2, 1, 2)
    assert_call_infos_valid(convert.call_info(result.call))
    # The repair request carries the problems and is sampled with the next seed.
    first, repair = api.requests
    assert repair["seed"] == first["seed"] + 1
    assert repair["messages"][-1]["content"].startswith("Your answer could not be used:")
    assert_entries_valid(tmp_path)


def test_a_cached_answer_costs_nothing_and_says_so(api, tmp_path):
    api.play("valid")
    fresh = judge(api, tmp_path)
    again = judge(api, tmp_path)
    assert len(api.requests) == 1
    call = again.call
    assert call.cached and call.attempts == 0 and call.repairs == 0
    assert call.usage.api_calls == call.usage.input_tokens == call.usage.output_tokens == 0
    # What the answer took, and who made it, are kept with it.
    assert (call.output_tokens, call.input_tokens) == (fresh.call.output_tokens, fresh.call.input_tokens)
    assert (call.served_model, call.system_fingerprint, call.seed) == (SERVED_MODEL, FINGERPRINT, fresh.call.seed)
    info = convert.call_info(call)
    assert info.cached and info.usage.api_calls == 0 and info.served_model == SERVED_MODEL
    assert_call_infos_valid(info, convert.call_info(fresh.call))


@pytest.mark.parametrize(
    ("poison", "why"),
    [
        (lambda answer: answer | {"content_consistency": 4.0}, "4.0 is not of type 'integer'"),
        (lambda answer: answer | {"rationale": "..."}, "rationale: must be a non-empty text"),
        (lambda answer: answer | {"content_consistency": 9}, "greater than the maximum"),
    ],
    ids=["float", "letterless", "out_of_range"],
)
def test_a_poisoned_cache_entry_is_removed_and_answered_afresh(api, tmp_path, caplog, poison, why):
    """An entry written before a rule existed (4.0 used to be cached, then failed the int32
    conversion on every later call) is a miss: removed, asked again, replaced."""
    api.play("valid")
    key = judge(api, tmp_path).call.cache_key
    path = tmp_path / key[:2] / f"{key}.json"
    entry = json.loads(path.read_text())
    entry["answer"] = poison(entry["answer"])
    path.write_text(json.dumps(entry))
    caplog.set_level(logging.WARNING)
    healed = judge(api, tmp_path)
    assert not healed.call.cached and healed.call.attempts == 1 and len(api.requests) == 2
    assert why in caplog.text and "removed, answering afresh" in caplog.text
    assert json.loads(path.read_text())["answer"]["content_consistency"] == 4
    assert_entries_valid(tmp_path)
    assert judge(api, tmp_path).call.cached and len(api.requests) == 2


def test_a_cache_entry_with_a_key_twice_is_unreadable_and_replaced(api, tmp_path):
    api.play("valid")
    key = judge(api, tmp_path).call.cache_key
    path = tmp_path / key[:2] / f"{key}.json"
    text = path.read_text()
    path.write_text(text.replace('"content_consistency": 4', '"content_consistency": 7, "content_consistency": 4'))
    assert not judge(api, tmp_path).call.cached and len(api.requests) == 2
    assert_entries_valid(tmp_path)


def test_every_task_reports_its_usage_and_every_request_is_seeded(api, tmp_path):
    api.play("valid")

    async def run() -> list[Result]:
        core = DescriberCore(backend_for(api), CoreOptions(max_repairs=MAX_REPAIRS), cache=AnswerCache(tmp_path))
        try:
            understood = await core.understand(png())
            iut: ImageUnderstandingTree = understood.answer
            return [
                understood,
                await core.write_prompt(iut, 77),
                await core.variants("red apple, wooden table", 3, 77, seed=11),
                await core.compare(png(), png((0, 0, 0)), "red apple"),
                await core.revise("red apple", [Difference("content", "darker table")], 77),
                await core.judge(png(), png((0, 0, 0))),
            ]
        finally:
            await core.aclose()

    results = asyncio.run(run())
    assert len(api.requests) == 6
    for result, request in zip(results, api.requests, strict=True):
        call = result.call
        assert (call.attempts, call.repairs, call.usage.api_calls) == (1, 0, 1)
        assert call.usage.input_tokens == call.input_tokens > 0 and call.usage.output_tokens == call.output_tokens > 0
        assert (call.served_model, call.system_fingerprint) == (SERVED_MODEL, FINGERPRINT)
        # Every request is seeded; a greedy one with a seed from its cache key.
        assert request["seed"] == call.seed
        assert request["temperature"] > 0 or call.seed == greedy_seed(call.cache_key)
        assert request["response_format"]["json_schema"]["strict"] is True
        # A local server takes max_tokens; OpenAI's own API gets max_completion_tokens.
        assert "max_tokens" in request and "max_completion_tokens" not in request
        info = convert.call_info(call)
        assert info.usage.api_calls == 1 and info.seed == call.seed and info.input_tokens == call.input_tokens
        assert_call_infos_valid(info)  # as `regen check describer` would see it
    assert results[2].call.seed == 11
    assert len(cache_entries(tmp_path)) == 6


def test_the_token_limit_field_follows_the_api(api, tmp_path):
    api.play("valid")
    judge(api, None, api_token_parameter="max_completion_tokens")
    (request,) = api.requests
    assert isinstance(request["max_completion_tokens"], int) and "max_tokens" not in request
    backend = OpenAIBackend("gpt-4o-2024-08-06", base_url=None, api_key=SECRET, revision="r", timeout_s=5)
    assert backend.token_param == "max_completion_tokens"


def test_a_dated_model_is_its_own_revision_and_an_alias_is_warned_about(api, caplog):
    caplog.set_level(logging.WARNING)
    assert backend_for(api, model="gpt-test-2024-08-06").identity.revision == "gpt-test-2024-08-06"
    assert "pin a dated model name" not in caplog.text.lower()
    alias = backend_for(api, model="gpt-test")
    assert alias.identity.revision == UNPINNED
    assert "Pin a dated model name" in caplog.text and "'gpt-test'" in caplog.text
    assert backend_for(api, model="gpt-test", revision="fp_abc").identity.revision == "fp_abc"


def test_a_pinned_fingerprint_that_changes_is_logged(api, tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    api.play("valid")
    judge(api, None, model="gpt-test", revision="fp_other")
    assert f"system_fingerprint {FINGERPRINT}, not fp_other" in caplog.text


def test_failure_metadata_reaches_the_grpc_error_details():
    from google.rpc import error_details_pb2, status_pb2

    from regen.common.errors import BadModelOutput
    from regen.common.grpc_server import rich_status

    error = BadModelOutput("judge: no valid answer", raw="x").with_metadata(attempts=3, api_calls=3)
    status = rich_status(error)
    details = dict(status.trailing_metadata)["grpc-status-details-bin"]
    info = error_details_pb2.ErrorInfo()
    status_pb2.Status.FromString(details).details[0].Unpack(info)
    assert info.reason == "FAILED_PRECONDITION" and dict(info.metadata) == {"attempts": "3", "api_calls": "3"}


def test_failure_metadata_reaches_the_http_error_body_too():
    """The same facts in the HTTP answer's ErrorInfo detail, scrubbed like the message, and
    on the last line of a stream that an error ends."""
    from regen.common import secrets
    from regen.common.bento import StreamAborted, error_response, exception_body, ndjson_stream
    from regen.common.errors import BadModelOutput

    secrets.register(SECRET)
    try:
        error = BadModelOutput("judge: no valid answer").with_metadata(attempts=3, api_calls=3, served_model=SECRET)
        response = error_response(error)
        body = json.loads(bytes(response.body))
    finally:
        secrets.forget_all()
    assert response.status_code == 422 and body["error"]["status"] == "FAILED_PRECONDITION"
    (info,) = body["error"]["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert (info["reason"], info["domain"]) == ("FAILED_PRECONDITION", "regen.v1")
    assert info["metadata"]["attempts"] == "3" and info["metadata"]["api_calls"] == "3"
    assert SECRET not in json.dumps(body)
    # An error without metadata has no detail.
    assert "details" not in exception_body(BadModelOutput("judge: no valid answer"))["error"]

    async def stream() -> list[str]:
        async def lines():
            yield '{"index": 0}\n'
            raise BadModelOutput("variants: no valid answer").with_metadata(attempts=3)

        response = await ndjson_stream(lines())
        seen: list[str] = []
        with pytest.raises(StreamAborted):
            async for chunk in response.body_iterator:
                seen.append(chunk)
        return seen

    first, last = asyncio.run(stream())
    assert json.loads(first) == {"index": 0}
    assert json.loads(last)["error"]["details"][0]["metadata"] == {"attempts": "3"}
