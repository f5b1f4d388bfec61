"""What an error of a remote model API stands for: the one mapping that the services with a
vendor backend (the generator's Images API engine, the describer's chat backend) share.

A service makes one call per item and never retries it: the orchestrator is the one retry
layer of every call path, and retries only UNAVAILABLE and RESOURCE_EXHAUSTED, asking only
for what is still missing. So each answer maps to the status that makes the right thing
happen next. Errors are read by duck typing (`status_code`, `code`, `body`: the openai
SDK's exceptions and any alike), so nothing here imports a vendor SDK.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from regen.common import secrets
from regen.common.errors import Overloaded, PermissionDenied, RegenError, Unauthenticated, UpstreamError

# Answers worth retrying later besides 429 and 5xx: request timeout, conflict.
TRANSIENT_STATUSES = frozenset({408, 409})


def api_message(exc: Any) -> str:
    """The API's own words for an error (the `message` of its error body), else the text;
    scrubbed of every registered secret (an endpoint may echo the key it was sent)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return secrets.scrub(body["message"])
    return secrets.scrub(getattr(exc, "message", None) or str(exc))


def api_error(
    exc: Any, *, where: str, model: str, key_setting: str, refused: Callable[[int, str], RegenError]
) -> RegenError:
    """The RegenError for `exc`, its message starting with `where` ("generator: the images
    API at URL"): no status (a timeout, a dropped connection) UNAVAILABLE; 401
    UNAUTHENTICATED naming `key_setting`, where the key came from (the API's text is left
    out: it may quote part of the key); 403 PERMISSION_DENIED; 429 RESOURCE_EXHAUSTED, or
    PERMISSION_DENIED when the quota is spent (waiting does not refill it); 408, 409, 5xx
    UNAVAILABLE; any other 4xx `refused(status, message)`, never UNAVAILABLE."""
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int):
        return UpstreamError(f"{where} did not answer: {type(exc).__name__}")
    message = api_message(exc)
    if status == 401:
        return Unauthenticated(f"{where} refused the API key (401); set a valid key in {key_setting}")
    if status == 403:
        return PermissionDenied(f"{where} denied this key the model {model} (403): {message}")
    if status == 429 and getattr(exc, "code", None) == "insufficient_quota":
        return PermissionDenied(f"{where} refused: the account's quota is spent (429): {message}")
    if status == 429:
        return Overloaded(f"{where} is rate limiting (429): {message}; retry later")
    if status in TRANSIENT_STATUSES or status >= 500:
        return UpstreamError(f"{where} failed ({status}): {message}")
    if 400 <= status < 500:
        return refused(status, message)
    return UpstreamError(f"{where} answered {status}: {message}")


def read_api_key(env_name: str, key_file: str | Path | None) -> tuple[str | None, str]:
    """(the key from the environment variable `env_name`, else from `key_file`, or None;
    where it came from, as an UNAUTHENTICATED message names it). The key itself is only
    ever handed to the API client: it is registered as a secret (`regen.common.secrets`), so
    it is scrubbed from everything this process logs or answers."""
    variable = f"the environment variable {env_name} (setting api_key_env)"
    key = os.environ.get(env_name, "").strip()
    if key:
        secrets.register(key)
        return key, variable
    if key_file:
        path = Path(key_file)
        try:
            key = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"api_key_file: cannot read {path}: {exc.strerror or exc}") from None
        if key:
            secrets.register(key)
            return key, f"the file {path} (setting api_key_file)"
    return None, f"{variable} or api_key_file"
