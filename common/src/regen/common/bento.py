"""What the three BentoML services (services/*/service.py) share: RegenError as an HTTP
error, base64 fields, the JSON of batching statistics, and the bodies of
their on_startup/on_shutdown hooks, which run the service's gRPC server in the same
process (the hooks themselves stay on each service class, where BentoML finds them).

Only the service.py files import this module: nothing else in regen.common imports
bentoml, so the other parts never need it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, TypeVar

from bentoml.exceptions import BentoMLException

from regen.common.errors import InvalidInput, RegenError
from regen.common.grpc_server import CoreSlot, GrpcHost, Registration
from regen.common.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)


def http_error(exc: RegenError) -> BentoMLException:
    """The same message, with the error's HTTP status (400 for InvalidInput, ...)."""
    return BentoMLException(str(exc), error_code=HTTPStatus(exc.http_status))


def b64decode_field(text: str, what: str) -> bytes:
    """Strict base64, or InvalidInput naming the field `what`."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"{what}: not valid base64: {exc}") from None


def stats_json(stats: Any) -> dict[str, Any]:
    """Batching statistics (anything with busy_s, batches and items)."""
    return {"busy_s": stats.busy_s, "batches": stats.batches, "items": stats.items}


async def start_grpc(
    settings: S,
    slot: CoreSlot,
    registrations: Callable[[CoreSlot, S], list[Registration]],
) -> GrpcHost:
    """Start the service's gRPC server on settings.host:settings.port; the on_startup body."""
    # grpc.aio objects bind to the running loop, so they are created here, not in __init__.
    host = GrpcHost(settings.host, settings.port, max_message_bytes=settings.max_message_bytes)
    await host.start(registrations(slot, settings))
    return host


async def stop_grpc(host: GrpcHost | None, close_engine: Callable[[], Awaitable[Any]]) -> None:
    """Stop the gRPC server (if it started), then close the engine; the on_shutdown body."""
    if host is not None:
        await host.stop()
    await close_engine()
