"""A vendor text-to-image model behind an OpenAI-compatible Images API
(`POST /v1/images/generations`: gpt-image-1, DALL·E 3, or any server that speaks it).

One API call per prompt, up to `api_concurrency` at once. Rate limits (429), 408/409,
5xx answers and dropped connections are retried by the openai client with exponential
backoff (0.5 s doubling up to 8 s, minus up to 25% jitter, or the server's Retry-After up
to 2 minutes), at most `api_max_retries` times. A content-policy refusal is a refused
candidate, not an error. The API key is read from the environment variable named by
`api_key_env`, else from `api_key_file` (a mounted secret); it is handed to the client
and never logged, reported or put into an error message.

The Images API has no seed, steps or guidance: `seed` is echoed back but does not make
the image reproducible, and `steps` / `guidance_scale` are ignored.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from regen.common.errors import InvalidInput, UpstreamError
from regen.common.images import decode_image
from regen.generator.engines.base import EngineInfo, GenerationItem, GenerationResult, Interrupted
from regen.generator.settings import GeneratorSettings

log = logging.getLogger(__name__)

# Error codes the API uses when its safety system rejects a prompt.
CONTENT_POLICY_CODES = frozenset({"content_policy_violation", "moderation_blocked"})
DEFAULT_SIZE = 1024


def read_api_key(settings: GeneratorSettings) -> str | None:
    key = os.environ.get(settings.api_key_env, "").strip()
    if key:
        return key
    if settings.api_key_file:
        path = Path(settings.api_key_file)
        try:
            key = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"api_key_file: cannot read {path}: {exc.strerror or exc}") from None
        if key:
            return key
    return None


def is_content_policy_refusal(exc: Any) -> bool:
    if getattr(exc, "status_code", None) != 400:
        return False
    if getattr(exc, "code", None) in CONTENT_POLICY_CODES:
        return True
    body = getattr(exc, "body", None)
    return isinstance(body, dict) and body.get("type") == "image_generation_user_error"


class OpenAIImagesEngine:
    def __init__(self, settings: GeneratorSettings, client: Any | None = None) -> None:
        import openai

        self._openai = openai
        self.settings = settings
        if client is None:
            key = read_api_key(settings)
            if key is None:
                if not settings.api_base_url:
                    raise ValueError(
                        f"engine openai: no API key; set the environment variable {settings.api_key_env} "
                        "or api_key_file"
                    )
                log.warning("engine openai: no API key found; calling %s without one", settings.api_base_url)
                key = "unused"
            client = openai.OpenAI(
                api_key=key,
                base_url=settings.api_base_url,
                timeout=settings.api_timeout_s,
                max_retries=settings.api_max_retries,
            )
        self._client = client
        self._pool = ThreadPoolExecutor(settings.api_concurrency, thread_name_prefix="images-api")
        self._legacy_dalle = settings.model.startswith("dall-e")
        self._info = EngineInfo(
            model_id=settings.model,
            revision=settings.revision or "unpinned",
            backend="openai",
            device="api",
            dtype="",
            prompt_token_budget=0,
            default_width=settings.width or DEFAULT_SIZE,
            default_height=settings.height or DEFAULT_SIZE,
            default_steps=0,
            default_guidance_scale=0.0,
            size_multiple=8,
            supports_negative_prompt=False,
            supports_sampling_params=False,
            libraries=("openai",),
        )

    def info(self) -> EngineInfo:
        return self._info

    def steps_run(self) -> int:
        return 0

    def generate(self, batch: Sequence[GenerationItem]) -> list[GenerationResult | BaseException]:
        futures = [self._pool.submit(self._one, item) for item in batch]
        results: list[GenerationResult | BaseException] = []
        for future in futures:
            try:
                results.append(future.result())
            except Exception as exc:
                results.append(exc)
        return results

    def _request(self, item: GenerationItem) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.settings.model,
            "prompt": item.prompt,
            "n": 1,
            "size": f"{item.params.width}x{item.params.height}",
        }
        # DALL·E answers with URLs unless asked for base64; GPT image models always send
        # base64 and reject `response_format`, but take an output format.
        if self._legacy_dalle:
            request["response_format"] = "b64_json"
        else:
            request["output_format"] = "png"
        return request

    def _one(self, item: GenerationItem) -> GenerationResult:
        if item.cancelled.is_set():
            raise Interrupted("cancelled before the API call")
        openai = self._openai
        options = dict(self.settings.api_options)
        try:
            response = self._client.images.generate(**self._request(item), extra_body=options or None)
        except openai.BadRequestError as exc:
            if is_content_policy_refusal(exc):
                return GenerationResult(image=None, refused=True, refusal_reason=_api_message(exc))
            raise InvalidInput(
                f"prompts[{item.index}]: the images API refused the request: {_api_message(exc)}"
            ) from None
        except openai.AuthenticationError as exc:
            raise UpstreamError(f"images API: authentication failed ({exc.status_code}); check the API key") from None
        except openai.APIStatusError as exc:
            raise UpstreamError(
                f"images API answered {exc.status_code} after {self.settings.api_max_retries} retries: "
                f"{_api_message(exc)}"
            ) from None
        except openai.APIConnectionError as exc:
            raise UpstreamError(
                f"images API unreachable after {self.settings.api_max_retries} retries: {type(exc).__name__}"
            ) from None
        if not response.data:
            raise UpstreamError("images API answered without an image")
        return GenerationResult(image=self._decode(response.data[0], item))

    def _decode(self, image: Any, item: GenerationItem):
        what = f"images API image for prompts[{item.index}]"
        if image.b64_json:
            try:
                data = base64.b64decode(image.b64_json, validate=True)
            except (binascii.Error, ValueError):
                raise UpstreamError(f"{what}: invalid base64") from None
        elif image.url:
            with urllib.request.urlopen(image.url, timeout=self.settings.api_timeout_s) as answer:
                data = answer.read(self.settings.images.max_bytes + 1)
        else:
            raise UpstreamError(f"{what}: neither b64_json nor url in the answer")
        try:
            return decode_image(data, self.settings.images.limits(), what=what)
        except InvalidInput as exc:
            raise UpstreamError(str(exc)) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()


def _api_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return getattr(exc, "message", None) or str(exc)
