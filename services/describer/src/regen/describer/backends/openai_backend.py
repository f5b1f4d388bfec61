"""Any OpenAI-compatible chat-completions endpoint: GPT-4o, `vllm serve`, `transformers serve`...

Images travel as base64 PNG data URLs; the schema goes in `response_format` (json_schema,
strict). Servers that ignore `response_format` are still safe: the engine validates and
repairs every answer. The API key is read once from the environment or a secret file and
handed to the client; it is never logged, put in an error message, or stored with results.

One model call is one API call: nothing here retries, and the openai client's retries
are off (max_retries=0), because the orchestrator is this call path's one retry layer (it
retries UNAVAILABLE and RESOURCE_EXHAUSTED with backoff). The answers map to statuses
(`api_error`): 429 is RESOURCE_EXHAUSTED (PERMISSION_DENIED when the quota is spent),
408/409/5xx, timeouts and dropped connections UNAVAILABLE, 401 UNAUTHENTICATED naming the
key's setting, 403 PERMISSION_DENIED, and any other 4xx FAILED_PRECONDITION
(`RequestRefused`): the API refused a request the describer built, which is neither the
caller's input nor transient, so it is never retried.
"""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regen.common.batching import BatchStats
from regen.common.errors import RegenError, UpstreamError
from regen.common.identity import model_revision
from regen.common.images import encode_png
from regen.common.remote_api import api_error, read_api_key
from regen.describer.backends.base import BackendIdentity, CallCounter, Completion, Message, ModelCall

if TYPE_CHECKING:
    from regen.describer.settings import DescriberSettings

log = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"
KEY_SETTINGS = "the environment variable named by api_key_env (default OPENAI_API_KEY) or api_key_file"


class RequestRefused(RegenError):
    """The API refused a request the describer built (a 4xx other than 401, 403 and 429,
    e.g. a model without image input or JSON schemas, or a context too long): not the
    caller's input, and the same request would be refused again."""

    status = "FAILED_PRECONDITION"
    http_status = 422


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
        key_setting: str = KEY_SETTINGS,
        client: Any = None,
    ) -> None:
        from openai import AsyncOpenAI

        self.base_url = (base_url or OPENAI_URL).rstrip("/")
        if api_key is None and base_url is None:
            raise RuntimeError(
                "the openai backend needs an API key for api.openai.com: set the environment variable named by "
                "api_key_env (default OPENAI_API_KEY) or api_key_file"
            )
        # Local servers (vllm serve, transformers serve) accept any key. No retries here:
        # the orchestrator is this call path's one retry layer.
        self._client = client or AsyncOpenAI(
            base_url=self.base_url, api_key=api_key or "unused", timeout=timeout_s, max_retries=0
        )
        self.model = model
        self.key_setting = key_setting
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
        api_key, key_setting = read_api_key(settings.api_key_env, settings.api_key_file)
        return cls(
            settings.model,
            base_url=settings.api_base_url,
            api_key=api_key,
            revision=settings.revision or (model_revision(settings.model) if local else "api"),
            timeout_s=settings.api_timeout_s,
            key_setting=key_setting,
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
            response = await self._client.chat.completions.create(**request)
        except openai.APIError as exc:
            raise self.api_error(exc) from None
        finally:
            self._counter.record(started)
        choice = response.choices[0] if response.choices else None
        if choice is None:
            raise UpstreamError(f"describer: the chat API at {self.base_url} answered without choices")
        text = choice.message.content or ""
        usage = getattr(response, "usage", None)
        tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        return Completion(text=text, output_tokens=tokens, truncated=choice.finish_reason == "length")

    def api_error(self, exc: Exception) -> RegenError:
        """The status an error of the chat API stands for (regen.common.remote_api); a
        4xx other than 401, 403, 429 refused a request the describer built: RequestRefused."""
        where = f"describer: the chat API at {self.base_url}"

        def refused(status: int, message: str) -> RegenError:
            return RequestRefused(
                f"{where} refused the request the describer built for model {self.model} ({status}): {message}"
            )

        return api_error(exc, where=where, model=self.model, key_setting=self.key_setting, refused=refused)
