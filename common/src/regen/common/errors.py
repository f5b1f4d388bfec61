"""Exceptions that the transport-free parts of every service raise.

Each error names the status it stands for, as the name of a gRPC status code (documented
in regen/v1/common.proto), and the HTTP status of the same meaning. The adapters
translate them: `regen.common.grpc_server` into gRPC status codes, `regen.common.http`
into HTTP answers. Nothing here imports a transport.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from typing import Self

# google.rpc.ErrorInfo.domain of every regen error, over gRPC and HTTP alike.
ERROR_DOMAIN = "regen.v1"
# "prompts[2].seed", "iut.objects[0].type", "reference_png": a field path, not prose.
_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\[\d+\])*(\.[A-Za-z_][A-Za-z0-9_]*(\[\d+\])*)*")


class RegenError(Exception):
    """Base class; `status` is the gRPC status name the adapters report."""

    status: ClassVar[str] = "INTERNAL"
    http_status: ClassVar[int] = 500
    # Facts for programs beside the message (e.g. what a failed describer call cost:
    # attempts, api_calls, tokens), sent as the google.rpc.ErrorInfo's metadata.
    metadata: Mapping[str, str] = MappingProxyType({})

    def with_metadata(self, **values: object) -> Self:
        """This error with `values` added to its metadata (as strings); returns itself."""
        self.metadata = {**self.metadata, **{key: str(value) for key, value in values.items()}}
        return self


class InvalidInput(RegenError):
    """The request is malformed; the message names the field (and index), and starts
    with it ("prompts[2].seed: ..."), which `field` reads back for machine-readable details."""

    status = "INVALID_ARGUMENT"
    http_status = 400

    @property
    def field(self) -> str:
        head, sep, _ = str(self).partition(": ")
        return head if sep and _FIELD_PATH.fullmatch(head) else ""


class Overloaded(RegenError):
    """The queue is full or the request exceeds the configured limits."""

    status = "RESOURCE_EXHAUSTED"
    http_status = 429


class NotReady(RegenError):
    """The model is still loading, or the server is shutting down."""

    status = "UNAVAILABLE"
    http_status = 503


class BadModelOutput(RegenError):
    """The model's answer stayed invalid after bounded repair; `raw` holds its text."""

    status = "FAILED_PRECONDITION"
    http_status = 422

    def __init__(self, message: str, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}; raw output: {self.raw[:2000]!r}" if self.raw else base


class UpstreamError(RegenError):
    """A remote model API failed after bounded retries."""

    status = "UNAVAILABLE"
    http_status = 502


class Unauthenticated(RegenError):
    """A remote model API refused the credentials; the message names the setting to fix."""

    status = "UNAUTHENTICATED"
    http_status = 401


class PermissionDenied(RegenError):
    """A remote model API refused this account the request; the message says which."""

    status = "PERMISSION_DENIED"
    http_status = 403
