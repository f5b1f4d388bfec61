"""Any OpenAI-compatible chat-completions endpoint: GPT-4o, `vllm serve`, `transformers serve`...

Images travel as base64 PNG data URLs; the schema goes in `response_format` (json_schema,
strict). Servers that ignore `response_format` are still safe: the engine validates and
repairs every answer. 429s, 5xx answers, timeouts and dropped connections are retried
with exponential backoff (honouring Retry-After); other errors fail at once. The API key
is read once from the environment or a secret file and handed to the client; it is never
logged, put in an error message, or stored with results.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regen.common.batching import BatchStats
from regen.common.errors import UpstreamError
from regen.common.identity import model_revision
from regen.common.images import encode_png
from regen.describer.backends.base import BackendIdentity, CallCounter, Completion, Message, ModelCall

if TYPE_CHECKING:
    from regen.describer.settings import DescriberSettings

log = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0


def read_api_key(env_name: str, key_file: Path | None) -> str | None:
    value = os.environ.get(env_name, "").strip()
    if value:
        return value
    if key_file is not None:
        try:
            value = key_file.read_text().strip()
        except OSError as exc:
            raise RuntimeError(f"cannot read the API key file {key_file}: {exc.strerror or exc}") from None
        return value or None
    return None


def image_part(image) -> dict[str, Any]:
    data = base64.b64encode(encode_png(image)).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


def chat_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role != "user" or not message.images:
            out.append({"role": message.role, "content": message.text})
            continue
        content = [
            {"type": "text", "text": part} if isinstance(part, str) else image_part(part) for part in message.parts
        ]
        out.append({"role": message.role, "content": content})
    return out


class OpenAIBackend:
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None,
        api_key: str | None,
        revision: str,
        timeout_s: float,
        max_retries: int,
        client: Any = None,
    ) -> None:
        from openai import AsyncOpenAI

        self.base_url = (base_url or OPENAI_URL).rstrip("/")
        if api_key is None and base_url is None:
            raise RuntimeError(
                "the openai backend needs an API key for api.openai.com: set the environment variable named by "
                "api_key_env (default OPENAI_API_KEY) or api_key_file"
            )
        # Local servers (vllm serve, transformers serve) accept any key.
        self._client = client or AsyncOpenAI(
            base_url=self.base_url, api_key=api_key or "unused", timeout=timeout_s, max_retries=0
        )
        self.model = model
        self.max_retries = max_retries
        self.identity = BackendIdentity(
            backend="openai",
            model_id=model,
            revision=revision,
            device="remote",
            dtype="",
            extra={"base_url": self.base_url},
        )
        self._counter = CallCounter()

    @classmethod
    def from_settings(cls, settings: DescriberSettings) -> OpenAIBackend:
        # A local model folder served by `vllm serve` or `transformers serve` is
        # identified by its files; a hosted model by the settings' revision, else "api".
        local = Path(settings.model).expanduser().exists()
        return cls(
            settings.model,
            base_url=settings.api_base_url,
            api_key=read_api_key(settings.api_key_env, settings.api_key_file),
            revision=settings.revision or (model_revision(settings.model) if local else "api"),
            timeout_s=settings.api_timeout_s,
            max_retries=settings.api_max_retries,
        )

    def stats(self) -> BatchStats:
        return self._counter.stats

    async def aclose(self) -> None:
        await self._client.close()

    def _request(self, call: ModelCall) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(call.messages),
            "max_tokens": call.max_new_tokens,
            "temperature": call.temperature,
        }
        if call.temperature > 0:
            request["seed"] = call.seed
        if call.schema is not None:
            request["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": call.schema_name, "schema": call.schema, "strict": True},
            }
        return request

    async def complete(self, call: ModelCall) -> Completion:
        import openai

        request = self._request(call)
        started = time.monotonic()
        try:
            for attempt in range(self.max_retries + 1):
                try:
                    response = await self._client.chat.completions.create(**request)
                    break
                except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as exc:
                    # APITimeoutError is an APIConnectionError.
                    if attempt == self.max_retries:
                        raise UpstreamError(f"{self.base_url}: {_describe(exc)} after {attempt + 1} attempts") from None
                    delay = _retry_after(exc) or min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt)
                    delay *= 1 + 0.25 * random.random()
                    log.warning("%s: %s; retrying in %.1f s", self.base_url, _describe(exc), delay)
                    await asyncio.sleep(delay)
                except openai.APIStatusError as exc:
                    raise UpstreamError(f"{self.base_url}: {_describe(exc)}") from None
        finally:
            self._counter.record(started)
        choice = response.choices[0] if response.choices else None
        if choice is None:
            raise UpstreamError(f"{self.base_url}: the response has no choices")
        text = choice.message.content or ""
        usage = getattr(response, "usage", None)
        tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        return Completion(text=text, output_tokens=tokens, truncated=choice.finish_reason == "length")


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    # The message of an API error is the server's; it never contains our key.
    message = getattr(exc, "message", None) or str(exc)
    return f"HTTP {status}: {message}" if status else f"{type(exc).__name__}: {message}"


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    try:
        return min(BACKOFF_MAX_S, max(0.0, float(headers.get("retry-after", ""))))
    except ValueError:
        return None
