"""Exceptions that the transport-free parts of every service raise.

Each error names the status it stands for, as the name of a gRPC status code (documented
in regen/v1/common.proto), and the HTTP status of the same meaning. The adapters
translate them: `regen.common.grpc_server` into gRPC status codes, `regen.common.http`
into HTTP answers. Nothing here imports a transport.
"""

from __future__ import annotations

from typing import ClassVar


class RegenError(Exception):
    """Base class; `status` is the gRPC status name the adapters report."""

    status: ClassVar[str] = "INTERNAL"
    http_status: ClassVar[int] = 500


class InvalidInput(RegenError):
    """The request is malformed; the message names the field (and index)."""

    status = "INVALID_ARGUMENT"
    http_status = 400


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
