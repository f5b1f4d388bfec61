"""Start a regen gRPC server: health, reflection, raised message limits, clean shutdown.

Used the same way by `regen serve` (standalone process) and by each BentoML service's
on_startup hook, so the gRPC behaviour is identical in both.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import status_pb2
from google.rpc.error_details_pb2 import BadRequest, ErrorInfo
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from regen.common import metrics, secrets
from regen.common.errors import ERROR_DOMAIN, InvalidInput, NotReady, RegenError
from regen.common.settings import TLSFiles
from regen.common.tls import server_credentials

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024 * 1024
C = TypeVar("C")


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Options for servers and clients alike: images exceed gRPC's 4 MiB default."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


@dataclass(frozen=True)
class Registration:
    """One servicer: the generated `add_XServicer_to_server` and its full service name."""

    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any
    service_name: str


class CoreSlot(Generic[C]):
    """Holds a service's core once its models are loaded; until then `get` raises
    NotReady, so servicers answer UNAVAILABLE while the server is already bound."""

    def __init__(self, core: C | None = None) -> None:
        self._core = core

    def set(self, core: C) -> None:
        self._core = core

    def get(self) -> C:
        if self._core is None:
            raise NotReady("the model is still loading; retry shortly")
        return self._core


def status_code(exc: RegenError) -> grpc.StatusCode:
    """The gRPC status code a RegenError stands for."""
    return grpc.StatusCode[exc.status]


def _abort_code(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, RegenError):
        return status_code(exc), secrets.scrub(str(exc))
    return grpc.StatusCode.INTERNAL, secrets.scrub(f"{type(exc).__name__}: {exc}")


def rich_status(exc: BaseException) -> grpc.Status:
    """The status for `exc`, with google.rpc details: a BadRequest naming the field for
    INVALID_ARGUMENT, an ErrorInfo (domain regen.v1, reason the status name, metadata the
    error's `metadata`) otherwise. The message is scrubbed of every registered secret."""
    code, message = _abort_code(exc)
    detail: BadRequest | ErrorInfo
    field = exc.field if isinstance(exc, InvalidInput) else ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        violation = BadRequest.FieldViolation(field=field, description=message)
        detail = BadRequest(field_violations=[violation])
    else:
        # A RegenError's metadata (e.g. what a failed describer call cost) rides along.
        metadata = {k: secrets.scrub(v) for k, v in getattr(exc, "metadata", {}).items()}
        detail = ErrorInfo(reason=code.name, domain=ERROR_DOMAIN, metadata=metadata)
    packed = any_pb2.Any()
    packed.Pack(detail)
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message, details=[packed]))


async def _abort(context: Any, exc: Exception, method: Callable) -> None:
    status = rich_status(exc)
    if status.code == grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method.__qualname__)
    await context.abort_with_status(status)


def grpc_errors(method: Callable) -> Callable:
    """Turn RegenError into its status code, anything else into INTERNAL (logged)."""

    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream_wrapper(self, request, context):
            try:
                async for item in method(self, request, context):
                    yield item
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception as exc:
                await _abort(context, exc, method)

        return stream_wrapper

    @functools.wraps(method)
    async def unary_wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            await _abort(context, exc, method)

    return unary_wrapper


REPLICA_METADATA_KEY = "regen-replica"


class ReplicaInterceptor(grpc.aio.ServerInterceptor):
    """On every regen.v1 call: sends `regen-replica: <host>:<port>` as initial metadata,
    so a client spreading calls over several replicas can tell which one answered, and
    counts the call by its status in the regen_requests metric."""

    def __init__(self) -> None:
        self.replica = ""

    async def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith("/regen.v1."):
            return handler
        metadata = ((REPLICA_METADATA_KEY, self.replica),)
        service, _, method = handler_call_details.method.removeprefix("/regen.v1.").partition("/")
        count = functools.partial(_count_call, service.lower(), method)
        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary(request: Any, context: Any) -> Any:
                with count(context):
                    await context.send_initial_metadata(metadata)
                    return await inner_unary(request, context)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: Any) -> Any:
                with count(context):
                    await context.send_initial_metadata(metadata)
                    async for item in inner_stream(request, context):
                        yield item

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


@contextlib.contextmanager
def _count_call(service: str, method: str, context: Any) -> Iterator[None]:
    code = "OK"
    try:
        yield
    except grpc.aio.AbortError:
        status = context.code()
        code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
        raise
    except asyncio.CancelledError:
        code = "CANCELLED"
        raise
    except Exception:
        code = "INTERNAL"
        raise
    finally:
        metrics.REQUESTS.labels(service, "grpc", method, code).inc()


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Parses each unary request itself, so bytes that are not a valid request message
    (corrupt wire format, invalid UTF-8 in a string) get INVALID_ARGUMENT naming the
    message type, not gRPC's UNKNOWN; the servicer never sees them."""

    async def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        method = handler_call_details.method

        async def parsed(raw: bytes, context: Any) -> Any:
            try:
                return parse(raw)
            except Exception as exc:
                problem = InvalidInput(f"request: not a valid request message for {method}: {exc}")
                log.info("refused a malformed %s request (%d bytes): %s", method, len(raw), exc)
                await context.abort_with_status(rich_status(problem))

        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary(raw: bytes, context: Any) -> Any:
                return await inner_unary(await parsed(raw, context), context)

            return grpc.unary_unary_rpc_method_handler(unary, None, handler.response_serializer)
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            inner_stream = handler.unary_stream

            async def stream(raw: bytes, context: Any) -> Any:
                request = await parsed(raw, context)
                async for item in inner_stream(request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(stream, None, handler.response_serializer)
        return handler


def server_options(max_message_bytes: int, max_connection_age_s: float) -> list[tuple[str, Any]]:
    """A regen server's gRPC options. Connections end after max_connection_age_s (in-flight
    calls get as long again to finish), so clients re-resolve a DNS name and spread over
    replicas that started since; keepalive pings from clients are accepted every 60 s."""
    age_ms = int(max_connection_age_s * 1000)
    return [
        *channel_options(max_message_bytes),
        # so_reuseport=0: a second server on the same port must fail, not share it.
        ("grpc.so_reuseport", 0),
        ("grpc.max_connection_age_ms", age_ms),
        ("grpc.max_connection_age_grace_ms", age_ms),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 60_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


class GrpcHost:
    """A grpc.aio server with health and reflection. Create it inside a running loop."""

    @classmethod
    def for_settings(cls, settings: Any) -> GrpcHost:
        """The server a service's settings describe (host, port, limits, TLS)."""
        return cls(
            settings.host,
            settings.port,
            max_message_bytes=settings.max_message_bytes,
            max_connection_age_s=settings.max_connection_age_s,
            tls=settings.tls,
        )

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_connection_age_s: float = 300.0,
        tls: TLSFiles | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        # Read now: a missing certificate fails before the server binds.
        self.credentials = server_credentials(tls) if tls is not None else None
        self.replicas = ReplicaInterceptor()
        self.server = grpc.aio.server(
            options=server_options(max_message_bytes, max_connection_age_s),
            interceptors=[MalformedRequestInterceptor(), self.replicas],
        )
        self.health = health.aio.HealthServicer()
        self.service_names: list[str] = []
        self.port = 0
        self.started_at = time.monotonic()

    async def start(self, registrations: Iterable[Registration], *, serving: bool = True) -> int:
        for reg in registrations:
            reg.add_to_server(reg.servicer, self.server)
            self.service_names.append(reg.service_name)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        address = f"{host}:{self.requested_port}"
        try:
            if self.credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, self.credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot bind gRPC server to {address}: {exc}") from None
        if self.port == 0:
            raise OSError(f"cannot bind gRPC server to {address} (port in use?)")
        named = socket.gethostname() if self.host in ("0.0.0.0", "::", "[::]", "") else self.host
        self.replicas.replica = f"{named}:{self.port}"
        await self.server.start()
        await self.set_serving(serving)
        security = "plaintext" if self.credentials is None else "TLS"
        log.info("gRPC %s listening on %s:%d (%s)", ", ".join(self.service_names), self.host, self.port, security)
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)
        for name in self.service_names:
            await self.health.set(name, status)

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


async def serve_until_signal(
    host: GrpcHost,
    registrations: list[Registration],
    load_core: Callable[[], Any],
    slot: CoreSlot,
    *,
    on_port: Callable[[int], None] | None = None,
    grace_s: float = 5.0,
    on_stop: Callable[[], Any] | None = None,
) -> None:
    """Bind first (health NOT_SERVING, requests UNAVAILABLE), load the model off the
    event loop, then serve until SIGTERM or SIGINT and shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await host.start(registrations, serving=False)
    if on_port is not None:
        on_port(host.port)
    loader = asyncio.ensure_future(asyncio.to_thread(load_core))
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({loader, waiter}, return_when=asyncio.FIRST_COMPLETED)
    try:
        if loader in done:
            slot.set(loader.result())  # re-raises a load failure
            await host.set_serving(True)
            log.info("model loaded; serving")
            await stop.wait()
    finally:
        waiter.cancel()
        log.info("shutting down")
        await host.stop(grace_s)
        if on_stop is not None:
            result = on_stop()
            if inspect.isawaitable(result):
                await result
