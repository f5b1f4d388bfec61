"""TLS and mutual TLS for the gRPC servers and the orchestrator's channels, configured
by file paths (`regen.common.settings.TLSFiles`).

A server with `tls.cert_file` and `tls.key_file` accepts TLS connections only; with
`tls.ca_file` as well it also requires every client to present a certificate signed by
that CA (mutual TLS). The orchestrator's `tls` settings say how its channels verify the
servers (`ca_file`, else the system's roots) and which certificate it presents
(`cert_file`, `key_file`). Without any, servers and channels are plaintext, which suits
127.0.0.1 and a private cluster network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from regen.common.settings import TLSFiles


class TLSConfigError(ValueError):
    """A TLS file cannot be read; the message names the setting and the file."""


def _read(path: Path | None, setting: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise TLSConfigError(f"{setting}: cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise TLSConfigError(f"{setting}: {path} is not a PEM file")
    return data


def server_credentials(tls: TLSFiles, section: str = "tls") -> grpc.ServerCredentials | None:
    """The server's credentials, or None for plaintext (no cert_file)."""
    if tls.cert_file is None or tls.key_file is None:
        if tls.ca_file is not None:
            raise TLSConfigError(f"{section}.ca_file: mutual TLS needs the server's cert_file and key_file too")
        return None
    key = _read(tls.key_file, f"{section}.key_file")
    cert = _read(tls.cert_file, f"{section}.cert_file")
    client_ca = _read(tls.ca_file, f"{section}.ca_file")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def channel_credentials(
    tls: TLSFiles, section: str = "tls", *, names: Mapping[str, str] | None = None
) -> grpc.ChannelCredentials | None:
    """A client's credentials, or None for a plaintext channel (nothing configured).
    Errors name `section.<field>`, or `names[field]` where given (a CLI option, say)."""
    if not tls.configured:
        return None
    names = names or {}

    def name(field: str) -> str:
        return names.get(field, f"{section}.{field}")

    return grpc.ssl_channel_credentials(
        root_certificates=_read(tls.ca_file, name("ca_file")),
        private_key=_read(tls.key_file, name("key_file")),
        certificate_chain=_read(tls.cert_file, name("cert_file")),
    )


_client_credentials: grpc.ChannelCredentials | None = None


def use_client_tls(tls: TLSFiles | None, section: str = "orchestrator.tls") -> None:
    """Make `client_channel` open TLS channels with these files (None: plaintext again).
    Reads the files now, so a missing or unreadable one fails before any work starts."""
    global _client_credentials
    _client_credentials = channel_credentials(tls, section) if tls is not None else None


def client_channel(target: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
    """A grpc.aio channel to `target`: TLS when `use_client_tls` configured it, else plaintext."""
    if _client_credentials is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, _client_credentials, options=list(options))
