"""A hostile fake OpenAI-compatible API on 127.0.0.1: the Images API
(POST /v1/images/generations) and chat completions (POST /v1/chat/completions).

Markers in a prompt (or, for chat, anywhere in the request) choose the answer:
"[echo]" an error whose message quotes the request's API key (status 500, or 400 with
"[echo-400]"); "[url-file]" an image URL file:///etc/passwd; "[url-local]" an image URL
on another local port; "[url-redirect]" an image URL on the API's own host that
redirects to another host; "[url-big]" an image URL whose answer exceeds any sane cap;
"[slow]" two seconds late; "[500]" a plain 500. Anything else: a PNG of the size asked
(images), or an answer that satisfies the JSON schema asked (chat, via `answer_for`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

PLANTED_KEY = "sk-planted-9b3e71c0d5-must-not-leak"
KEY_ENV = "REGEN_TEST_PLANTED_API_KEY"


def png_bytes(width: int, height: int, seed: str = "") -> bytes:
    colour = tuple(hashlib.sha256(seed.encode()).digest()[:3])
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="PNG")
    return buf.getvalue()


class HostileAPI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, chat_answer: Callable[[dict], str] | None = None, always: str = "") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.chat_answer = chat_answer
        # A marker that applies to every request, e.g. "[echo-400]".
        self.always = always
        self.requests: list[tuple[str, dict]] = []
        self.fetched: list[str] = []
        self.lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that hung up (a capped read); loud otherwise."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: HostileAPI

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, payload: dict | bytes, content_type: str = "application/json") -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._reply(status, {"error": {"message": message, "type": "test", "param": None, "code": None}})

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.fetched.append(self.path)
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "http://localhost:1/elsewhere.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/big"):
            return self._endless()
        self._reply(200, png_bytes(64, 64, self.path), "image/png")

    def _endless(self) -> None:
        """An image that never ends (no Content-Length): only a byte cap stops the reader."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.end_headers()
        try:
            for _ in range(1024):
                self.wfile.write(b"\0" * 65536)
        except ConnectionError:
            pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.requests.append((self.path, body))
        text = json.dumps(body) + self.server.always
        key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        if "[slow]" in text:
            time.sleep(2.0)
        if "[echo-400]" in text:
            return self._error(400, f"Invalid request for key {key}; the key was {key}")
        if "[echo]" in text:
            return self._error(500, f"Internal error handling key {key} (prefix {key[:14]}****)")
        if "[500]" in text:
            return self._error(500, "status 500 as asked")
        if self.path == "/v1/images/generations":
            return self._image(body)
        if self.path == "/v1/chat/completions" and self.server.chat_answer is not None:
            content = self.server.chat_answer(body)
            choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            usage = {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}
            return self._reply(
                200,
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body["model"],
                    "choices": [choice],
                    "usage": usage,
                },
            )
        self._error(404, f"no route {self.path}")

    def _image(self, body: dict) -> None:
        prompt = body["prompt"]
        here = f"http://127.0.0.1:{self.server.port}"
        for marker, url in (
            ("[url-file]", "file:///etc/passwd"),
            ("[url-local]", "http://127.0.0.1:1/elsewhere.png"),
            ("[url-other-host]", "http://169.254.169.254/latest/meta-data/"),
            ("[url-redirect]", f"{here}/redirect.png"),
            ("[url-big]", f"{here}/big.png"),
            ("[url-ok]", f"{here}/fine.png"),
        ):
            if marker in prompt:
                return self._reply(200, {"created": 1, "data": [{"url": url}]})
        width, height = (int(v) for v in body["size"].split("x"))
        data = [{"b64_json": base64.b64encode(png_bytes(width, height, prompt)).decode()}]
        self._reply(200, {"created": 1, "data": data})
