"""What the three BentoML HTTP adapters share: their base class (`GrpcAlongside`, which
loads the core in the background and runs the service's gRPC server in the same process), strict request
and response models, one error body for every failure, and base64 fields.

Every error, whether a RegenError from the core or a request that BentoML's own input
validation refuses, has one body, the shape of Google's JSON API errors:

    {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "...",
               "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                            "fieldViolations": [{"field": "n", "description": "..."}]}]}}

A RegenError with metadata (what a failed describer call cost: attempts, api_calls,
tokens) carries it in a `google.rpc.ErrorInfo` detail, as its gRPC status does:
`{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "FAILED_PRECONDITION",
"domain": "regen.v1", "metadata": {"attempts": "3", ...}}`.

Streams (`ndjson_stream`) are newline-delimited JSON (application/x-ndjson). An error
before the first line is an ordinary error answer (429 with Retry-After when the queue is
full); an error after it is one last line in the error shape, and then the chunked body
ends abnormally (no terminating chunk), so a client such as curl sees the failure.

Client errors (4xx) are logged at INFO without a traceback, BentoML's own included
(`ClientErrorLogFilter`); server errors keep their messages. Every message sent is
scrubbed of registered secrets (`regen.common.secrets`).

Only the HTTP adapters import this module: nothing else in regen.common imports
bentoml, so the other parts never need it.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import binascii
import inspect
import json
import logging
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, ClassVar, Generic, NoReturn, TypeVar

import bentoml
from bentoml.exceptions import BentoMLException
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, StreamingResponse

from regen.common import metrics, secrets
from regen.common.errors import ERROR_DOMAIN, InvalidInput, NotReady, RegenError
from regen.common.grpc_server import CoreSlot, GrpcHost
from regen.common.serving import ModelLoadError, ServiceDefinition, load_core, report_fatal
from regen.common.settings import load_settings

C = TypeVar("C")
T = TypeVar("T")

log = logging.getLogger(__name__)

BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
# Seconds a client should wait before retrying a 429 or 503.
RETRY_AFTER_S = 1
NDJSON = "application/x-ndjson"
# BentoML's HTTP servers bind this unless `bentoml serve --host` says otherwise; every
# service passes it to @bentoml.service (a container passes --host 0.0.0.0).
SERVICE_CONFIG: dict[str, Any] = {"http": {"host": "127.0.0.1"}}
_STATUS_OF_HTTP = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    415: "INVALID_ARGUMENT",
    422: "FAILED_PRECONDITION",
    429: "RESOURCE_EXHAUSTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class StrictModel(BaseModel):
    """A request or response body: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


def error_body(
    http_status: int,
    status: str,
    message: str,
    violations: list[dict[str, str]] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> dict:
    """The one error body; its texts scrubbed of registered secrets. `metadata` (a
    RegenError's: what a failed describer call cost, say) rides in an ErrorInfo detail,
    as over gRPC."""
    error: dict[str, Any] = {"code": http_status, "status": status, "message": secrets.scrub(message)}
    details: list[dict[str, Any]] = []
    if violations:
        details.append({"@type": BAD_REQUEST_TYPE, "fieldViolations": secrets.scrub_data(violations)})
    if metadata:
        scrubbed = {key: secrets.scrub(value) for key, value in metadata.items()}
        details.append({"@type": ERROR_INFO_TYPE, "reason": status, "domain": ERROR_DOMAIN, "metadata": scrubbed})
    if details:
        error["details"] = details
    return {"error": error}


def exception_body(exc: RegenError) -> dict:
    """A RegenError's body: a field the core names (InvalidInput) in a field violation, as
    over gRPC's BadRequest; its metadata in an ErrorInfo."""
    field = exc.field if isinstance(exc, InvalidInput) else ""
    violations = [{"field": field, "description": str(exc)}] if field else None
    return error_body(exc.http_status, exc.status, str(exc), violations, metadata=exc.metadata)


def error_response(exc: RegenError) -> JSONResponse:
    """A RegenError as the HTTP answer: its status, its message, and Retry-After where a
    retry may succeed. 4xx are the client's business and logged without a traceback."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.http_status in (429, 503) else None
    log_error(exc)
    return JSONResponse(exception_body(exc), exc.http_status, headers=headers)


def log_error(exc: RegenError) -> None:
    if exc.http_status < 500:
        log.info("refused with %d: %s", exc.http_status, exc)
    else:
        log.warning("failed with %d: %s", exc.http_status, exc)


class StreamAborted(Exception):
    """Ends a stream after its error line: the server closes the connection without the
    chunked body's last chunk, so the client sees an incomplete answer, not a success."""


async def ndjson_stream(lines: AsyncIterator[str]) -> StreamingResponse | JSONResponse:
    """A stream of JSON lines. The first line is awaited before the answer starts, so an
    error before it (a refused request, a full queue) is an ordinary error answer; a later
    RegenError becomes a last line in the error shape, and the body then ends abnormally."""
    try:
        first = await anext(lines)
    except StopAsyncIteration:
        first = ""
    except RegenError as exc:
        return error_response(exc)

    async def body() -> AsyncIterator[str]:
        yield first
        try:
            async for line in lines:
                yield line
        except RegenError as exc:
            log_error(exc)
            yield json.dumps(exception_body(exc)) + "\n"
            raise StreamAborted(f"stream ended by an error after its first line: {exc.status}") from None

    return StreamingResponse(body(), media_type=NDJSON)


class ClientErrorLogFilter(logging.Filter):
    """BentoML logs a refused request (input validation, a 4xx of its own) at ERROR with
    a traceback; this turns such records into one INFO line, and the uvicorn record of a
    deliberately aborted stream (StreamAborted) into one WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        if isinstance(exc, StreamAborted):
            level, message = logging.WARNING, str(exc)
        elif _client_error_status(exc) is not None:
            level, message = logging.INFO, f"refused with {_client_error_status(exc)}: {exc}"
        else:
            return True
        record.levelno, record.levelname = level, logging.getLevelName(level)
        record.msg, record.args = secrets.scrub(message.splitlines()[0] if message else ""), None
        record.exc_info, record.exc_text = None, None
        return True


def _client_error_status(exc: BaseException) -> int | None:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return 400
    code = getattr(getattr(exc, "error_code", None), "value", None)
    if isinstance(exc, BentoMLException) and isinstance(code, int) and 400 <= code < 500:
        return code
    return None


def install_log_filters() -> None:
    """ClientErrorLogFilter on the loggers of BentoML's request handling and of uvicorn."""
    for name in ("bentoml._internal.server.http_app", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, ClientErrorLogFilter) for f in logger.filters):
            logger.addFilter(ClientErrorLogFilter())


async def answer(work: Awaitable[T]) -> T | JSONResponse:
    """Await the core's work; a RegenError becomes the error response."""
    try:
        return await work
    except RegenError as exc:
        return error_response(exc)


def _field(loc: Sequence[Any]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _normalised(status_code: int, body: Any) -> dict | None:
    """BentoML's own error bodies in our shape; None when `body` is already ours."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return None
    status = _STATUS_OF_HTTP.get(status_code, "INTERNAL" if status_code >= 500 else "INVALID_ARGUMENT")
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        violations = [
            {"field": _field(item.get("loc", ())), "description": str(item.get("msg", ""))}
            for item in detail
            if isinstance(item, dict)
        ]
        message = "; ".join(f"{v['field']}: {v['description']}" for v in violations) or "invalid request"
        return error_body(status_code, status, message, violations)
    text = body.get("error") if isinstance(body, dict) else None
    return error_body(status_code, status, str(text or HTTPStatus(status_code).phrase))


class ErrorShapeMiddleware:
    """ASGI middleware: rewrites the error bodies BentoML writes itself (input validation,
    unknown content types) into the one error shape. Streams and successes pass through."""

    def __init__(self, app: Any, service: str = "") -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}
        method = str(scope.get("path", "")).strip("/")

        async def capture(message: dict) -> None:
            if message["type"] == "http.response.start" and method not in UNCOUNTED_PATHS:
                code = "OK" if message["status"] < 400 else _STATUS_OF_HTTP.get(message["status"], "INTERNAL")
                metrics.REQUESTS.labels(self.service, "http", method, code).inc()
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held["start"] = message
                held["body"] = b""
                return
            if "start" not in held:
                await send(message)
                return
            held["body"] += message.get("body", b"")
            if message.get("more_body"):
                return
            await _send_normalised(send, held["start"], held["body"])

        await self.app(scope, receive, capture)


# BentoML's own endpoints: not requests to the service.
UNCOUNTED_PATHS = frozenset({"livez", "readyz", "healthz", "metrics", "docs.json", "", "favicon.ico"})


def use_error_shape(service: Any) -> None:
    """Register ErrorShapeMiddleware on a @bentoml.service class (it also counts the HTTP
    requests in the regen_requests metric), and the log filters."""
    name = str(getattr(service, "name", "")).removeprefix("regen-")
    service.add_asgi_middleware(ErrorShapeMiddleware, service=name)
    install_log_filters()


async def _send_normalised(send: Callable, start: dict, body: bytes) -> None:
    try:
        replacement = _normalised(start["status"], json.loads(body))
    except ValueError:
        replacement = error_body(
            start["status"], _STATUS_OF_HTTP.get(start["status"], "INTERNAL"), body.decode("utf-8", "replace")
        )
    if replacement is not None:
        body = json.dumps(replacement).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
        start = {
            **start,
            "headers": [*headers, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    await send(start)
    await send({"type": "http.response.body", "body": body})


def b64decode_field(text: str, what: str) -> bytes:
    """Strict base64, or InvalidInput naming the field `what`."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what}: not valid base64: {exc}") from None


class ModelBody(StrictModel):
    """A loaded model's identity (regen.v1.ModelInfo)."""

    model_id: str
    revision: str
    backend: str
    device: str
    dtype: str

    @classmethod
    def of(cls, model: Any, backend: str | None = None) -> ModelBody:
        """From anything with model_id, revision, device, dtype (and backend, unless given)."""
        return cls(
            model_id=model.model_id,
            revision=model.revision,
            backend=backend if backend is not None else model.backend,
            device=model.device,
            dtype=model.dtype,
        )


class ServerStatsBody(StrictModel):
    """What the model worker has done since the server started."""

    busy_s: float
    batches: int
    items: int

    @classmethod
    def of(cls, stats: Any) -> ServerStatsBody:
        return cls(busy_s=stats.busy_s, batches=stats.batches, items=stats.items)


class NoBody(StrictModel):
    """The body of a request without fields (POST /info): `{}`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": {}})


Int32 = Annotated[int, Field(ge=-(1 << 31), le=(1 << 31) - 1)]
Int64 = Annotated[int, Field(ge=-(1 << 63), le=(1 << 63) - 1)]


# Seconds calls in flight get to finish when the server stops (SIGTERM); a pod's
# terminationGracePeriodSeconds leaves room for it after its preStop pause.
SHUTDOWN_GRACE_S = 25.0


def _failure_marker(arbiter_pid: int) -> Path:
    return Path(tempfile.gettempdir()) / f"regen-load-failed-{arbiter_pid}"


def _exit_1_if_a_worker_failed() -> None:
    """In `bentoml serve`'s own process (the arbiter): when a worker could not load its
    model, end with status 1 and the worker's message rather than 0."""
    marker = _failure_marker(os.getpid())
    if marker.exists():
        message = marker.read_text()
        marker.unlink(missing_ok=True)
        sys.stderr.write(f"bentoml serve: stopped: {message}\n")
        sys.stderr.flush()
        os._exit(1)


# `bentoml serve` imports the service module in the arbiter as well as in each worker.
atexit.register(_exit_1_if_a_worker_failed)


def _stop_server(message: str) -> NoReturn:
    """A worker whose model cannot load ends the whole server with status 1 (else BentoML
    would start the worker again and again): the message goes to the log and Kubernetes'
    termination log, the arbiter (this worker's parent) is told why and asked to stop."""
    report_fatal(message)
    arbiter = os.getppid()
    if "_bentoml_impl" in (sys.argv[0] if sys.argv else "") and arbiter > 1:
        try:
            _failure_marker(arbiter).write_text(message)
            os.kill(arbiter, signal.SIGTERM)
        except OSError:
            log.exception("cannot stop the BentoML arbiter (pid %d)", arbiter)
    os._exit(1)


class GrpcAlongside(Generic[C]):
    """Base of every BentoML service class here: runs the service's gRPC server in the same
    process over the service's core, so HTTP and gRPC requests share one model and one
    batch queue. Subclasses set `definition` and add their @bentoml.api methods.

    The model loads in the background, after both servers are up: meanwhile /readyz answers
    503, gRPC health NOT_SERVING, the APIs UNAVAILABLE, and /livez 200. A model that cannot
    load stops the server with status 1 and a message naming the path or id."""

    definition: ClassVar[ServiceDefinition[Any, Any]]

    def __init__(self) -> None:
        self.settings = load_settings(self.definition.settings_class)
        self.slot: CoreSlot[C] = CoreSlot()
        self.grpc: GrpcHost | None = None
        self._loading: asyncio.Task[None] | None = None

    @property
    def core(self) -> C:
        """The loaded core; while the model loads, 503 UNAVAILABLE for the request."""
        try:
            return self.slot.get()
        except NotReady as exc:
            raise bentoml.exceptions.ServiceUnavailable(str(exc)) from None

    async def __is_ready__(self) -> bool:
        try:
            self.slot.get()
        except NotReady:
            return False
        return True

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        # grpc.aio objects bind to the running loop, so they are created here, not in __init__.
        host = GrpcHost.for_settings(self.settings)
        await host.start(self.definition.registrations(self.slot), serving=False)
        self.grpc = host
        self._loading = asyncio.create_task(self._load())

    async def _load(self) -> None:
        try:
            core = await asyncio.to_thread(load_core, self.definition.build_core, self.settings)
        except ModelLoadError as exc:
            _stop_server(str(exc))
        self.slot.set(core)
        if self.grpc is not None:
            await self.grpc.set_serving(True)
        log.info("model loaded; serving")

    @bentoml.on_shutdown
    async def stop_grpc(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        if self.grpc is not None:
            await self.grpc.stop(SHUTDOWN_GRACE_S)
        try:
            core = self.slot.get()
        except NotReady:
            return
        closed = self.definition.close_core(core)
        if inspect.isawaitable(closed):
            await closed
