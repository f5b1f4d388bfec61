"""A fake OpenAI-compatible chat-completions API on 127.0.0.1 (POST /v1/chat/completions)
that misbehaves on request, for the tests of the describer's openai backend.

`api.play("float", "valid")` sets what the next requests get, one behaviour each, the
last one repeating (nothing set: "valid"). A behaviour is one of BEHAVIOURS: a valid
answer for the task the request's response_format names, or one way of getting it
wrong. Every request body is kept in `api.requests` (and its Authorization header in
`api.authorizations`), so a test counts requests exactly.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from regen.common.describer_json import iut_to_json
from regen.conformance.describer import iut_message
from support.fake_images_api import serve

# What the API says served the answers: a dated snapshot, and its fingerprint.
SERVED_MODEL = "gpt-test-2024-08-06"
FINGERPRINT = "fp_test123"

RATIONALE = "The same red apple, but the table is darker and the light is harder."
VALID: dict[str, Any] = {
    # The conformance kit's apple, with every global feature filled in.
    "understand": iut_to_json(iut_message())
    | {
        "global_features": {
            "style": "photo",
            "lighting": "soft daylight",
            "color_palette": "red and brown",
            "composition": "centered",
        }
    },
    "write_prompt": {"prompt": "red apple on a wooden table, soft daylight, photo"},
    "revise": {"prompt": "red apple on a dark wooden table, hard light, photo"},
    "compare": {"differences": [{"aspect": "content", "description": "the table is darker"}]},
    "judge": {"rationale": RATIONALE, "content_consistency": 4, "perceptual_quality": 5},
}

# Ways of answering a judge request (other tasks get their valid answer unless noted).
JUDGE_TEXTS: dict[str, str] = {
    # Schema violations.
    "out_of_range": json.dumps({"rationale": RATIONALE, "content_consistency": 7, "perceptual_quality": 5}),
    "string_score": json.dumps({"rationale": RATIONALE, "content_consistency": "4", "perceptual_quality": 5}),
    "missing_key": json.dumps({"rationale": RATIONALE, "content_consistency": 4}),
    "extra_key": json.dumps({"rationale": RATIONALE, "content_consistency": 4, "perceptual_quality": 5, "x": 1}),
    "empty_rationale": json.dumps({"rationale": "", "content_consistency": 4, "perceptual_quality": 5}),
    "long_rationale": json.dumps({"rationale": "word " * 120, "content_consistency": 4, "perceptual_quality": 5}),
    # 4.0: a JSON number that jsonschema's draft calls an integer, and int32 does not.
    "float": '{"rationale": "' + RATIONALE + '", "content_consistency": 4.0, "perceptual_quality": 5}',
    # A 7 and then a 4: json.loads keeps the 4.
    "duplicate_keys": (
        '{"rationale": "' + RATIONALE + '", "content_consistency": 7, "content_consistency": 4, '
        '"perceptual_quality": 5}'
    ),
    # The old judge template's format example, copied.
    "template_echo": '{"rationale": "...", "content_consistency": 3, "perceptual_quality": 3}',
    "placeholder": json.dumps({"rationale": "n/a", "content_consistency": 4, "perceptual_quality": 4}),
    "rubric_echo": json.dumps(
        {"rationale": "the same scene with only minor deviations", "content_consistency": 5, "perceptual_quality": 5}
    ),
    "control_chars": '{"rationale": "Same apple.\nDarker\ttable.", "content_consistency": 4, "perceptual_quality": 5}',
    # A judge that rates everything 5/5: valid, as far as one answer can tell.
    "constant": json.dumps({"rationale": RATIONALE, "content_consistency": 5, "perceptual_quality": 5}),
}
STATUSES = {"429": 429, "500": 500, "400": 400, "401": 401, "503": 503}
BEHAVIOURS = (
    "valid",
    "prose",
    "prose_around_json",
    "fences",
    "refusal",
    "length",
    "empty_choices",
    *JUDGE_TEXTS,
    *(f"status_{code}" for code in STATUSES),
)


def valid_answer(task: str, body: dict[str, Any]) -> dict[str, Any]:
    if task == "variants":
        n = body["response_format"]["json_schema"]["schema"]["properties"]["prompts"]["minItems"]
        return {"prompts": [f"red apple, wooden table, variant {chr(ord('a') + i)}" for i in range(n)]}
    return VALID[task]


class FakeChatAPI(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str] = []
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def play(self, *behaviours: str) -> None:
        """The next requests' behaviours (the last repeats); forget earlier requests."""
        unknown = [b for b in behaviours if b not in BEHAVIOURS]
        assert not unknown, f"unknown behaviours {unknown}; known: {BEHAVIOURS}"
        with self.lock:
            self.script = list(behaviours)
            self.requests = []
            self.authorizations = []

    def next_behaviour(self, body: dict[str, Any], authorization: str) -> str:
        with self.lock:
            self.requests.append(body)
            self.authorizations.append(authorization)
            if not self.script:
                return "valid"
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: FakeChatAPI

    def log_message(self, *args) -> None:
        pass

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            return self._reply(404, {"error": {"message": f"no route {self.path}", "type": "test", "code": None}})
        behaviour = self.server.next_behaviour(body, self.headers.get("Authorization", ""))
        if behaviour.startswith("status_"):
            status = STATUSES[behaviour.removeprefix("status_")]
            error = {"message": f"status {status} as asked", "type": "test", "code": None}
            return self._reply(status, {"error": error})
        task = body.get("response_format", {}).get("json_schema", {}).get("name", "revise")
        valid = json.dumps(valid_answer(task, body))
        content: str | None = valid
        refusal = None
        finish = "stop"
        if behaviour in JUDGE_TEXTS and task == "judge":
            content = JUDGE_TEXTS[behaviour]
        elif behaviour == "prose":
            content = "These two pictures show an apple; I would say they are quite alike overall."
        elif behaviour == "prose_around_json":
            content = f"Here is my answer: {valid} I hope this helps."
        elif behaviour == "fences":
            content = f"```json\n{valid}\n```"
        elif behaviour == "refusal":
            content, refusal = None, "I'm sorry, I can't help with rating these images."
        elif behaviour == "length":
            content, finish = valid[: len(valid) // 2], "length"
        choices = [
            {
                "index": 0,
                "finish_reason": finish,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
            }
        ]
        prompt_tokens = len(json.dumps(body["messages"])) // 4
        completion_tokens = len(content or refusal or "") // 4
        self._reply(
            200,
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "created": 0,
                "model": SERVED_MODEL,
                "system_fingerprint": FINGERPRINT,
                "choices": [] if behaviour == "empty_choices" else choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )


__all__ = ["BEHAVIOURS", "FakeChatAPI", "serve"]
