"""Fetch a URL that a remote API handed back (e.g. an image URL), without letting that
API point the service at anything else: the trust boundary of outbound requests.

`fetch_limited` refuses, before connecting, any URL that is not http(s), whose host is
not in the allow-list (the configured API's host, plus hosts a setting names), or whose
host resolves to a private, loopback, link-local or reserved address (unless allowed:
the configured API host itself is trusted, since the operator chose it). A redirect is
followed only when its target passes the same checks. The answer is read up to
`max_bytes`; a larger one is refused. Every refusal is `OutboundRefused`, a message naming
the URL's host and the rule.

Residual risk, documented in docs/security.md: the name is resolved for the check and
again by the HTTP client, so a DNS server that answers differently the second time
(rebinding) could still steer the connection; allow-list only hosts whose DNS you trust.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

SCHEMES = ("http", "https")


class OutboundRefused(ValueError):
    """A URL this service will not fetch; the message says which rule refused it."""


@dataclass(frozen=True)
class OutboundPolicy:
    # Hosts (lower-case names or addresses) URLs may point at.
    hosts: frozenset[str]
    # Hosts trusted even on a private address (the configured API's own host).
    trusted: frozenset[str] = field(default_factory=frozenset)
    # Private, loopback, link-local and reserved addresses allowed for every host.
    allow_private: bool = False

    @classmethod
    def for_api(
        cls, base_url: str, extra_hosts: Collection[str] = (), *, allow_private: bool = False
    ) -> OutboundPolicy:
        api_host = (urllib.parse.urlsplit(base_url).hostname or "").lower()
        hosts = {api_host, *(h.strip().lower() for h in extra_hosts if h.strip())}
        return cls(frozenset(hosts - {""}), frozenset({api_host} - {""}), allow_private)

    def check(self, url: str) -> None:
        """OutboundRefused unless this policy lets the service fetch `url`."""
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise OutboundRefused(f"URL scheme {scheme or '(none)'!r} refused; only http and https are fetched")
        host = (parts.hostname or "").lower()
        if not host:
            raise OutboundRefused("URL without a host refused")
        if host not in self.hosts:
            allowed = ", ".join(sorted(self.hosts)) or "none"
            raise OutboundRefused(f"host {host!r} is not an allowed host ({allowed})")
        if self.allow_private or host in self.trusted:
            return
        for address in _addresses(host, parts.port or (443 if scheme == "https" else 80)):
            if not address.is_global:
                raise OutboundRefused(f"host {host!r} resolves to the non-public address {address}")


def _addresses(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise OutboundRefused(f"host {host!r} does not resolve: {exc}") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        try:
            self.policy.check(newurl)
        except OutboundRefused as exc:
            raise OutboundRefused(f"redirect refused: {exc}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch_limited(url: str, policy: OutboundPolicy, *, max_bytes: int, timeout_s: float) -> bytes:
    """The body at `url`, at most `max_bytes`; OutboundRefused for a URL, a redirect or a
    size the policy refuses, OSError for a failed connection."""
    policy.check(url)
    opener = urllib.request.build_opener(_CheckedRedirects(policy))
    with opener.open(url, timeout=timeout_s) as answer:
        declared = answer.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise OutboundRefused(f"answer of {declared} bytes exceeds the limit of {max_bytes} bytes")
        data: bytes = answer.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OutboundRefused(f"answer exceeds the limit of {max_bytes} bytes")
    return data
