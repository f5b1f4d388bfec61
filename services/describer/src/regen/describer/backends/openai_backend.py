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
caller's input nor transient, so it is never retried. An answer without choices is the
model failing (FAILED_PRECONDITION, never retried); a refusal (`message.refusal`) comes
back as the Completion's `refusal`, which the core turns into FAILED_PRECONDITION with the
model's words.

Reproducibility: every request carries a seed (greedy ones too); each Completion names the
model that served it (`response.model`, the snapshot behind an alias) and the API's
system_fingerprint. The cache key holds the model name and the revision: a dated model
name (gpt-4o-2024-08-06) pins the model, an undated alias (gpt-4o) may move under the
cache, so it is logged as a warning; set `revision` to pin it yourself.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from regen.common.batching import BatchStats
from regen.common.errors import BadModelOutput, RegenError
from regen.common.identity import model_revision
from regen.common.images import encode_png
from regen.common.remote_api import api_error, read_api_key
from regen.describer.backends.base import BackendIdentity, CallCounter, Completion, Message, ModelCall

if TYPE_CHECKING:
    from regen.describer.settings import DescriberSettings

log = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"
# A dated snapshot in a model name: gpt-4o-2024-08-06, claude-3-5-sonnet-20241022, gpt-4-0613.
DATED_MODEL = re.compile(r"(?:^|[-_@.])(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})(?:$|[-_.])")
# What the API's revision is when the model name pins nothing and no revision is set.
UNPINNED = "unpinned"
KEY_SETTINGS = "the environment variable named by api_key_env (default OPENAI_API_KEY) or api_key_file"


class RequestRefused(RegenError):
    """The API refused a request the describer built (a 4xx other than 401, 403 and 429,
    e.g. a model without image input or JSON schemas, or a context too long): not the
    caller's input, and the same request would be refused again."""

    status = "FAILED_PRECONDITION"
    http_status = 422


def pinned(model: str) -> bool:
    """Whether a model name names a dated snapshot (which the API does not move)."""
    return DATED_MODEL.search(model) is not None


def token_parameter(setting: str, base_url: str) -> str:
    """The request field of the token limit: OpenAI's own API wants max_completion_tokens
    (its newer models refuse max_tokens); other servers (vLLM, transformers serve) take
    max_tokens. `setting` "auto" picks by the URL."""
    if setting != "auto":
        return setting
    return "max_completion_tokens" if base_url.startswith(OPENAI_URL) else "max_tokens"


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
        token_param: str = "auto",
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
        self.token_param = token_parameter(token_param, self.base_url)
        self.identity = BackendIdentity(
            backend="openai",
            model_id=model,
            revision=revision,
            device="remote",
            dtype="",
            extra={"base_url": self.base_url},
        )
        self._counter = CallCounter()
        self._fingerprints: set[str] = set()

    @classmethod
    def from_settings(cls, settings: DescriberSettings) -> OpenAIBackend:
        # A local model folder served by `vllm serve` or `transformers serve` is
        # identified by its files; a hosted model by the settings' revision, else by its
        # dated name, else it is unpinned (warned: the name may move to another model).
        local = Path(settings.model).expanduser().exists()
        api_key, key_setting = read_api_key(settings.api_key_env, settings.api_key_file)
        revision = settings.revision or (model_revision(settings.model) if local else None)
        if revision is None and pinned(settings.model):
            revision = settings.model
        if revision is None:
            log.warning(
                "describer: model %r names no dated snapshot and describer.revision is not set: if the API moves "
                "this name to another model, cached answers of the old one are replayed. Pin a dated model name "
                "(e.g. gpt-4o-2024-08-06) or set describer.revision; the served model and system_fingerprint "
                "are recorded with every answer",
                settings.model,
            )
            revision = UNPINNED
        return cls(
            settings.model,
            base_url=settings.api_base_url,
            api_key=api_key,
            revision=revision,
            timeout_s=settings.api_timeout_s,
            key_setting=key_setting,
            token_param=settings.api_token_parameter,
        )

    def stats(self) -> BatchStats:
        return self._counter.stats

    async def aclose(self) -> None:
        await self._client.close()

    def _request(self, call: ModelCall) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(call.messages),
            self.token_param: call.max_new_tokens,
            "temperature": call.temperature,
            # Greedy calls too: an API may sample a little even at temperature 0.
            "seed": call.seed,
        }
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
            raise self.api_error(exc).with_metadata(api_calls=1) from None
        finally:
            self._counter.record(started)
        if not response.choices:
            # The API answered, but with no answer: the model failed; asking again is the
            # orchestrator's decision, not a transient outage.
            raise BadModelOutput(f"describer: the chat API at {self.base_url} answered without choices").with_metadata(
                api_calls=1
            )
        choice = response.choices[0]
        usage = getattr(response, "usage", None)
        fingerprint = str(getattr(response, "system_fingerprint", "") or "")
        self._check_fingerprint(fingerprint)
        return Completion(
            text=choice.message.content or "",
            output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            truncated=choice.finish_reason == "length",
            input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            api_calls=1,
            served_model=str(getattr(response, "model", "") or ""),
            system_fingerprint=fingerprint,
            refusal=str(getattr(choice.message, "refusal", "") or ""),
        )

    def _check_fingerprint(self, fingerprint: str) -> None:
        """A revision set to a system_fingerprint ("fp_...") pins the API's configuration:
        answers from another are kept (and record theirs) but logged, once each."""
        pinned_fp = self.identity.revision
        if not pinned_fp.startswith("fp_") or fingerprint in ("", pinned_fp, *self._fingerprints):
            return
        self._fingerprints.add(fingerprint)
        log.warning(
            "describer: the chat API at %s answered with system_fingerprint %s, not %s (describer.revision)",
            self.base_url,
            fingerprint,
            pinned_fp,
        )

    def api_error(self, exc: Exception) -> RegenError:
        """The status an error of the chat API stands for (regen.common.remote_api); a
        4xx other than 401, 403, 429 refused a request the describer built: RequestRefused."""
        where = f"describer: the chat API at {self.base_url}"

        def refused(status: int, message: str) -> RegenError:
            return RequestRefused(
                f"{where} refused the request the describer built for model {self.model} ({status}): {message}"
            )

        return api_error(exc, where=where, model=self.model, key_setting=self.key_setting, refused=refused)
