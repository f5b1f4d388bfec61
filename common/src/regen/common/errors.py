"""Exceptions that map onto the gRPC status codes documented in regen/v1/common.proto.

Engines raise these; adapters (gRPC servicers, BentoML APIs) translate them, so engine
code never sees a transport.
"""

from __future__ import annotations

import grpc


class RegenError(Exception):
    """Base class; `code` is the gRPC status the adapters report."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500


class InvalidInput(RegenError):
    """The request is malformed; the message names the field (and index)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class Overloaded(RegenError):
    """The queue is full or the request exceeds the configured limits."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class NotReady(RegenError):
    """The model is still loading, or the server is shutting down."""

    code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class BadModelOutput(RegenError):
    """The model's answer stayed invalid after bounded repair; `raw` holds its text."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 422

    def __init__(self, message: str, raw: str = "") -> None:
        super().__init__(message)
        self.raw = raw

    def __str__(self) -> str:
        base = super().__str__()
        return f"{base}; raw output: {self.raw[:2000]!r}" if self.raw else base


class UpstreamError(RegenError):
    """A remote model API failed after bounded retries."""

    code = grpc.StatusCode.UNAVAILABLE
    http_status = 502
