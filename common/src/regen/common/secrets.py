"""Keep configured secrets (API keys) out of everything a part logs, writes or answers.

A part registers each secret it reads (`register`; `regen.common.remote_api.read_api_key`
does so for every API key). From then on:

- every log record of the process is scrubbed when it is made, its message, arguments
  and formatted traceback included (`install_log_scrubber`, a log-record factory, so it
  holds for every logger and handler, also those configured later);
- the adapters scrub every error message they send (gRPC status messages in
  `regen.common.grpc_server`, HTTP error bodies in `regen.common.bento`);
- the orchestrator scrubs every JSON file it writes (`regen.orchestrator.results`).

`scrub` replaces each registered secret with `[redacted]`, and also any run of 8 or more
key characters that is a piece of one (an upstream error that quotes part of a key). The
orchestrator registers the values of its environment's secret-looking variables
(`register_environment`: *_API_KEY, *_TOKEN, *_SECRET, *_PASSWORD), the same variables
the services it starts read their keys from.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

REDACTED = "[redacted]"
# Shorter values are not treated as secrets: scrubbing them would mangle ordinary text.
MIN_SECRET_CHARS = 8
# A piece of a key an error message may quote ("sk-proj-****abcd" holds "sk-proj-").
_KEY_RUN = re.compile(rf"[A-Za-z0-9_\-]{{{MIN_SECRET_CHARS},}}")
SECRET_VARIABLE = re.compile(r".*(_API_KEY|_KEY|_TOKEN|_SECRET|_PASSWORD)$")

_secrets: set[str] = set()
_lock = threading.Lock()
_factory_installed = False


def register(secret: str | None) -> None:
    """Treat `secret` as a secret from now on (ignored when shorter than 8 characters)."""
    if not secret or len(secret.strip()) < MIN_SECRET_CHARS:
        return
    with _lock:
        _secrets.add(secret.strip())
    install_log_scrubber()


def register_environment(environ: dict[str, str] | None = None) -> None:
    """Register the values of the secret-looking variables of `environ` (default: this
    process's environment)."""
    for name, value in (os.environ if environ is None else environ).items():
        if SECRET_VARIABLE.fullmatch(name.upper()):
            register(value)


def registered() -> bool:
    return bool(_secrets)


def forget_all() -> None:
    """For tests: no secret is registered any more."""
    with _lock:
        _secrets.clear()


def scrub(text: str) -> str:
    """`text` without any registered secret, or a piece of one 8 characters or longer."""
    if not _secrets or not text:
        return text
    secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)

    def piece(match: re.Match[str]) -> str:
        run = match.group(0)
        return REDACTED if any(run in secret for secret in secrets) else run

    return _KEY_RUN.sub(piece, text)


def scrub_data(data: Any) -> Any:
    """`data` (JSON-like: dicts, lists, strings, numbers) with every string scrubbed."""
    if not _secrets:
        return data
    if isinstance(data, str):
        return scrub(data)
    if isinstance(data, dict):
        return {scrub(k) if isinstance(k, str) else k: scrub_data(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [scrub_data(item) for item in data]
    return data


def install_log_scrubber() -> None:
    """Scrub every log record this process makes from now on (idempotent)."""
    global _factory_installed
    with _lock:
        if _factory_installed:
            return
        _factory_installed = True
    make_record = logging.getLogRecordFactory()

    def scrubbed_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        if not _secrets:
            return record
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call: keep what logging would show
            message = str(record.msg)
        record.msg, record.args = scrub(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return record

    logging.setLogRecordFactory(scrubbed_record)
