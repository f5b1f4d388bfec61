"""A vendor text-to-image model behind an OpenAI-compatible Images API
(`POST /v1/images/generations`: gpt-image-1, DALL·E 3, or any server that speaks it).

One API call per prompt, up to `api_concurrency` at once, and exactly one: the openai
client's own retries are off (max_retries=0), because the orchestrator is the one retry
layer of this call path. It retries UNAVAILABLE and RESOURCE_EXHAUSTED with backoff,
asking only for the prompts still missing, so an image is never paid for twice. The
answers map to statuses (`api_error`): 401 is UNAUTHENTICATED naming the key's setting,
403 PERMISSION_DENIED, 429 RESOURCE_EXHAUSTED (PERMISSION_DENIED when the quota is
spent), 408/409/5xx and connection errors UNAVAILABLE, a content-policy 400 a refused
candidate, any other 4xx INVALID_ARGUMENT naming the prompt: never UNAVAILABLE for a 4xx.

The API key is read from the environment variable named by `api_key_env`, else from
`api_key_file` (a mounted secret); it is handed to the client and registered as a
secret, so it is scrubbed from every log line and error message.

An answer that carries an image URL instead of base64 is fetched only over http(s), only
from the API's own host or a host in `api_fetch_hosts`, never from a private address
unless `api_fetch_private`, following no redirect elsewhere, and up to the image byte
limit (`regen.common.outbound`).

The Images API has no seed, steps or guidance: `seed` is echoed back but does not make
the image reproducible (Info says `seeded: false`), and `steps` / `guidance_scale` are
ignored. Known models render only fixed sizes (`FIXED_SIZES`); others are refused.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from regen.common.errors import InvalidInput, RegenError, UpstreamError
from regen.common.images import decode_image
from regen.common.outbound import OutboundPolicy, OutboundRefused, fetch_limited
from regen.common.remote_api import api_error, api_message, read_api_key
from regen.generator.engines.base import EngineInfo, GenerationItem, GenerationResult, Interrupted, Usage
from regen.generator.settings import GeneratorSettings

log = logging.getLogger(__name__)

# Error codes the API uses when its safety system rejects a prompt.
CONTENT_POLICY_CODES = frozenset({"content_policy_violation", "moderation_blocked"})
DEFAULT_SIZE = 1024
OPENAI_URL = "https://api.openai.com/v1"
# The only sizes these models render (width, height); a model not listed may take any.
FIXED_SIZES: dict[str, tuple[tuple[int, int], ...]] = {
    "gpt-image-1": ((1024, 1024), (1536, 1024), (1024, 1536)),
    "dall-e-3": ((1024, 1024), (1792, 1024), (1024, 1792)),
    "dall-e-2": ((256, 256), (512, 512), (1024, 1024)),
}


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
        self.base_url = (settings.api_base_url or OPENAI_URL).rstrip("/")
        key, self._key_setting = read_api_key(settings.api_key_env, settings.api_key_file)
        if client is None:
            if key is None:
                if not settings.api_base_url:
                    raise ValueError(f"engine openai: no API key; set {self._key_setting}")
                log.warning("engine openai: no API key found; calling %s without one", settings.api_base_url)
                key = "unused"
            # No retries here: the orchestrator is this call path's one retry layer.
            client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=settings.api_timeout_s, max_retries=0)
        self._client = client
        self._pool = ThreadPoolExecutor(settings.api_concurrency, thread_name_prefix="images-api")
        self._legacy_dalle = settings.model.startswith("dall-e")
        # Image URLs in answers are fetched only from the API's host (or api_fetch_hosts).
        self._fetch_policy = OutboundPolicy.for_api(
            self.base_url, settings.api_fetch_hosts, allow_private=settings.api_fetch_private
        )
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
            seeded=False,
            sizes=FIXED_SIZES.get(settings.model, ()),
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
        options = dict(self.settings.api_options)
        try:
            response = self._client.images.generate(**self._request(item), extra_body=options or None)
        except self._openai.APIError as exc:
            if is_content_policy_refusal(exc):
                return GenerationResult(
                    image=None, refused=True, refusal_reason=api_message(exc), usage=Usage(api_calls=1)
                )
            raise self.api_error(exc, item) from None
        if not response.data:
            raise UpstreamError(f"generator: the images API at {self.base_url} answered without an image")
        return GenerationResult(image=self._decode(response.data[0], item), usage=usage_of(response))

    def api_error(self, exc: Any, item: GenerationItem) -> RegenError:
        """The status an error of the images API stands for (regen.common.remote_api);
        a 4xx other than 401, 403, 429 is the request's fault: INVALID_ARGUMENT naming it."""
        where = f"generator: the images API at {self.base_url}"

        def refused(status: int, message: str) -> RegenError:
            return InvalidInput(f"prompts[{item.index}]: {where} refused the request ({status}): {message}")

        return api_error(exc, where=where, model=self.settings.model, key_setting=self._key_setting, refused=refused)

    def _decode(self, image: Any, item: GenerationItem):
        what = f"images API image for prompts[{item.index}]"
        if image.b64_json:
            try:
                data = base64.b64decode(image.b64_json, validate=True)
            except (binascii.Error, ValueError):
                raise UpstreamError(f"{what}: invalid base64") from None
        elif image.url:
            try:
                data = fetch_limited(
                    image.url,
                    self._fetch_policy,
                    max_bytes=self.settings.images.max_bytes,
                    timeout_s=self.settings.api_timeout_s,
                )
            except OutboundRefused as exc:
                raise UpstreamError(f"{what}: the image URL was not fetched: {exc}") from None
            except OSError as exc:
                raise UpstreamError(f"{what}: fetching the image URL failed: {exc}") from None
        else:
            raise UpstreamError(f"{what}: neither b64_json nor url in the answer")
        try:
            return decode_image(data, self.settings.images.limits(), what=what)
        except InvalidInput as exc:
            raise UpstreamError(str(exc)) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()


def usage_of(response: Any) -> Usage:
    """One call, one image, and the tokens (and cost, where a gateway states one) that the
    API reported in `usage`."""
    usage = getattr(response, "usage", None)
    cost = getattr(usage, "cost", None)
    return Usage(
        api_calls=1,
        images=1,
        input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
        output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
        cost_usd=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
    )
