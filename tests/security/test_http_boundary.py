"""The generator's BentoML HTTP API over the vendor engine, against a hostile fake API:
answers a client can act on (429 with Retry-After when the queue is full, a stream that
fails mid-way ends abnormally after an error line, application/x-ndjson, one error
shape, 5xx messages kept), 4xx logged at INFO without a traceback, no planted key in any
answer or log line, a bad value in one request never failing another's, and the HTTP
server bound to 127.0.0.1 by default."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.bento_server import post, serve_bento
from support.fake_images_api import serve
from support.hostile_api import KEY_ENV, PLANTED_KEY, HostileAPI

MODEL = "regen-test-image-model"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api() -> Iterator[HostileAPI]:
    yield from serve(HostileAPI())


@pytest.fixture(scope="module")
def bento(api, tmp_path_factory) -> Iterator[tuple[str, str, Path]]:
    workdir = tmp_path_factory.mktemp("generator-bento")
    env = {
        "REGEN_GENERATOR_ENGINE": "openai",
        "REGEN_GENERATOR_MODEL": MODEL,
        "REGEN_GENERATOR_API_BASE_URL": api.base_url,
        "REGEN_GENERATOR_API_KEY_ENV": KEY_ENV,
        "REGEN_GENERATOR_WIDTH": "64",
        "REGEN_GENERATOR_HEIGHT": "64",
        # Two queued prompts at most, and one API call at a time: easy to fill.
        "REGEN_GENERATOR_MAX_QUEUE": "2",
        "REGEN_GENERATOR_MAX_BATCH": "2",
        "REGEN_GENERATOR_API_CONCURRENCY": "1",
        KEY_ENV: PLANTED_KEY,
    }
    with serve_bento("regen.generator.http_api:Generator", "REGEN_GENERATOR_PORT", workdir, env) as (url, grpc_addr):
        yield url, grpc_addr, workdir / "bentoml.log"


def raw_post(url: str, path: str, body: dict) -> tuple[int, dict[str, str], bytes, bool]:
    """(status, headers, body, complete): `complete` is False when the chunked body ended
    without its last chunk (what makes curl exit non-zero)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    reply = conn.getresponse()
    headers = {k.lower(): v for k, v in reply.getheaders()}
    try:
        data, complete = reply.read(), True
    except http.client.IncompleteRead as partial:
        data, complete = partial.partial, False
    conn.close()
    return reply.status, headers, data, complete


def error_of(data: bytes) -> dict:
    body = json.loads(data)
    assert set(body) == {"error"} and {"code", "status", "message"} <= set(body["error"]), body
    return body["error"]


def test_a_stream_is_ndjson_and_one_failing_mid_way_ends_abnormally(bento, api) -> None:
    url, _, _ = bento
    prompts = [{"text": "a heron"}, {"text": "a heron that fails [500]"}]
    status, headers, data, complete = raw_post(url, "/generate_stream", {"prompts": prompts})
    assert status == 200 and headers["content-type"].startswith("application/x-ndjson"), headers
    first, last = (json.loads(line) for line in data.decode().splitlines())
    assert first["index"] == 0 and first["png"]
    assert (last["error"]["code"], last["error"]["status"]) == (502, "UNAVAILABLE"), last
    assert "status 500 as asked" in last["error"]["message"], "the 5xx message is kept"
    assert not complete, "a failed stream must not end like a successful one"

    status, headers, data, complete = raw_post(url, "/generate_stream", {"prompts": [{"text": "a fine heron"}]})
    assert (status, complete) == (200, True) and headers["content-type"].startswith("application/x-ndjson")


def test_curl_exits_non_zero_on_a_failed_stream(bento) -> None:
    url, _, _ = bento
    body = json.dumps({"prompts": [{"text": "an ok crane"}, {"text": "a crane [500]"}]})
    done = subprocess.run(
        [
            "curl",
            "-sS",
            "-N",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            f"{url}/generate_stream",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0, (done.returncode, done.stdout, done.stderr)
    assert '"error"' in done.stdout.splitlines()[-1]


def test_errors_before_the_first_line_have_their_status_and_one_shape(bento) -> None:
    url, _, _ = bento
    for route in ("/generate", "/generate_stream"):
        status, headers, data, _ = raw_post(url, route, {"prompts": [{"text": "x [500]"}]})
        error = error_of(data)
        assert (status, error["status"]) == (502, "UNAVAILABLE"), (route, data)
        assert "status 500 as asked" in error["message"], "BentoML must not replace a 5xx message"
        status, headers, data, _ = raw_post(url, route, {"prompts": []})
        assert (status, error_of(data)["status"]) == (400, "INVALID_ARGUMENT")
        assert headers["content-type"] == "application/json"
        status, _, data, _ = raw_post(url, route, {"prompts": [{"text": "x", "seed": "nope"}]})
        assert (status, error_of(data)["status"]) == (400, "INVALID_ARGUMENT"), data


def test_a_full_queue_is_429_with_retry_after_on_both_routes(bento) -> None:
    url, _, _ = bento
    slow = {"prompts": [{"text": "a slow owl [slow]"}, {"text": "another slow owl [slow]"}]}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(raw_post, url, "/generate", slow) for _ in range(2)]
        time.sleep(1.0)
        answers = [raw_post(url, route, slow) for route in ("/generate", "/generate_stream")]
        for future in busy:
            future.result()
    for status, headers, data, _ in answers:
        assert status == 429, data
        assert headers.get("retry-after") == "1", headers
        assert error_of(data)["status"] == "RESOURCE_EXHAUSTED"


def test_a_bad_value_in_one_request_never_fails_another(bento) -> None:
    """A seed over int64 beside good requests in one batch window: the bad one is refused
    alone; the good ones, over HTTP and gRPC at the same moment, succeed."""
    import grpc

    from regen.v1 import generator_pb2, generator_pb2_grpc

    url, grpc_address, _ = bento
    good = {"prompts": [{"text": "a good wren", "seed": 3}]}
    bad = {"prompts": [{"text": "a bad wren", "seed": 2**63}]}

    def over_grpc() -> int:
        with grpc.insecure_channel(grpc_address) as channel:
            request = generator_pb2.GenerateRequest(prompts=[generator_pb2.PromptSpec(text="a grpc wren", seed=4)])
            return len(list(generator_pb2_grpc.GeneratorStub(channel).Generate(request, timeout=60)))

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        replies = [pool.submit(post, f"{url}/generate", body) for body in (bad, good)]
        grpc_images = pool.submit(over_grpc)
        (bad_status, bad_reply), (good_status, good_reply) = (r.result() for r in replies)
        assert grpc_images.result() == 1
    assert bad_status == 400 and "prompts[0].seed" in error_of(bad_reply)["message"]
    assert good_status == 200, good_reply


def test_4xx_are_logged_at_info_without_a_traceback(bento) -> None:
    url, _, log = bento
    raw_post(url, "/generate", {"prompts": [{"text": "x", "sead": 1}]})
    raw_post(url, "/generate", {"prompts": []})
    time.sleep(0.5)
    text = log.read_text()
    refusals = [line for line in text.splitlines() if "refused with 400" in line]
    assert refusals and all("INFO" in line or "info" in line.lower() for line in refusals), refusals
    assert "Traceback" not in text.split("Application startup complete")[-1], text[-3000:]


def test_the_planted_key_is_in_no_answer_and_no_log_line(bento, api) -> None:
    url, grpc_address, log = bento
    import grpc

    from regen.v1 import generator_pb2, generator_pb2_grpc

    seen = []
    for route in ("/generate", "/generate_stream"):
        for marker in ("[echo]", "[echo-400]"):
            status, _, data, _ = raw_post(url, route, {"prompts": [{"text": f"leak {marker}"}]})
            assert status >= 400
            seen.append(data.decode())
    with grpc.insecure_channel(grpc_address) as channel:
        for marker in ("[echo]", "[echo-400]"):
            request = generator_pb2.GenerateRequest(prompts=[generator_pb2.PromptSpec(text=f"leak {marker}")])
            with pytest.raises(grpc.RpcError) as caught:
                list(generator_pb2_grpc.GeneratorStub(channel).Generate(request, timeout=60))
            seen.append(caught.value.details())
    assert any("[redacted]" in text for text in seen), seen
    time.sleep(0.5)
    for text in [*seen, log.read_text()]:
        assert PLANTED_KEY not in text and PLANTED_KEY[:14] not in text


def test_the_http_server_binds_127_0_0_1_by_default() -> None:
    from regen.common.bento import SERVICE_CONFIG
    from regen.describer.http_api import Describer
    from regen.generator.http_api import Generator
    from regen.scorer.http_api import Scorer

    assert SERVICE_CONFIG["http"]["host"] == "127.0.0.1"
    for service in (Describer, Generator, Scorer):
        assert service.config.get("http", {}).get("host") == "127.0.0.1", service.name
