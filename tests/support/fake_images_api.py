"""A fake OpenAI-compatible Images API on 127.0.0.1 (POST /v1/images/generations), for the
tests of the vendor engine and of runs that use it. Markers in a prompt choose its answer:
"[401]", "[403]", "[404]", "[408]", "[409]", "[429]", "[500]", "[503]" that status; "[quota]"
an insufficient_quota 429; "[400-size]" a plain 400; "FORBIDDEN" a content-policy refusal;
"[slow]" two seconds late; "[cost]" a stated cost. Anything else gets a PNG of the size asked.
A request without the right key gets 401.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TypeVar

from PIL import Image

API_KEY = "sk-test-4f1c9e2a7b-never-log-me"
KEY_ENV = "REGEN_TEST_IMAGES_API_KEY"
FORBIDDEN = "FORBIDDEN"
# A model the engine knows no fixed sizes of: any multiple of 8 goes.
MODEL = "regen-test-image-model"
STATUS_MARKER = re.compile(r"\[(40[1349]|408|429|50[03])\]")


class FakeImagesAPI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay_s = delay_s
        self.attempts: Counter[str] = Counter()
        self.bodies: list[dict] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address) -> None:
        """Quiet about clients that gave up waiting (the timeout test); loud otherwise."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: FakeImagesAPI

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None, kind: str = "invalid_request_error") -> None:
        self._reply(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/images/generations":
            return self._error(404, f"no route {self.path}", None)
        if self.headers.get("Authorization") != f"Bearer {API_KEY}":
            return self._error(401, "Incorrect API key provided", "invalid_api_key")
        prompt = body["prompt"]
        with self.server.lock:
            self.server.attempts[prompt] += 1
            self.server.bodies.append(body)
        time.sleep(self.server.delay_s + (2.0 if "[slow]" in prompt else 0.0))
        if marker := STATUS_MARKER.search(prompt):
            return self._error(int(marker.group(1)), f"status {marker.group(1)} as asked", None, "test")
        if "[quota]" in prompt:
            return self._error(429, "You exceeded your current quota", "insufficient_quota", "insufficient_quota")
        if "[400-size]" in prompt:
            return self._error(400, "Invalid size", "invalid_size")
        if FORBIDDEN in prompt:
            return self._error(
                400, "Your request was rejected as a result of our safety system.", "content_policy_violation"
            )
        width, height = (int(v) for v in body["size"].split("x"))
        colour = tuple(hashlib.sha256(prompt.encode()).digest()[:3])
        buf = io.BytesIO()
        Image.new("RGBA", (width, height), (*colour, 255)).save(buf, format="PNG")
        usage: dict = {"input_tokens": len(prompt.split()), "output_tokens": 272, "total_tokens": 0}
        if "[cost]" in prompt:
            usage["cost"] = 0.042
        data = [{"b64_json": base64.b64encode(buf.getvalue()).decode()}]
        self._reply(200, {"created": 1, "data": data, "usage": usage})


Server = TypeVar("Server", bound=ThreadingHTTPServer)


def serve(api: Server) -> Iterator[Server]:
    """For a fixture: `yield from serve(FakeImagesAPI())` (any threading HTTP server)."""
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.shutdown()
        api.server_close()
