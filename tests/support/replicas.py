"""Tiny generator replicas the tests start, kill and restart on fixed addresses, and a DNS
server on 127.0.0.1 that resolves one name to several loopback addresses (gRPC's DNS
resolver asks it when the target names it: dns://127.0.0.1:PORT/name:port)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from regen.orchestrator.launcher import wait_for_serving


class GeneratorReplica:
    """`regen serve generator --preset tiny` on host:port, which survives kill and restart."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.log = Path(tempfile.mkdtemp(prefix="regen-replica-")) / "generator.log"
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, *, wait: bool = True) -> GeneratorReplica:
        cmd = [sys.executable, "-m", "regen.cli", "serve", "generator", "--preset", "tiny"]
        cmd += ["--host", self.host, "--port", str(self.port)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        if wait:
            wait_for_serving(self.address, timeout_s=300, service="generator", proc=self.proc)
        return self

    def kill(self) -> None:
        """kill -9: no goodbye to clients, in-flight calls break."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@contextmanager
def replicas(*addresses: tuple[str, int]) -> Iterator[list[GeneratorReplica]]:
    started = [GeneratorReplica(host, port) for host, port in addresses]
    try:
        for replica in started:
            replica.start(wait=False)
        for replica in started:
            wait_for_serving(replica.address, timeout_s=300, service="generator", proc=replica.proc)
        yield started
    finally:
        for replica in started:
            replica.stop()


class _Names(BaseResolver):
    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".")
        if request.q.qtype == QTYPE.A:
            for ip in self.names.get(name, []):
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=1))
        return reply


@contextmanager
def dns(names: dict[str, list[str]]) -> Iterator[int]:
    """A DNS server on 127.0.0.1 answering A records for `names`; yields its port."""
    quiet = DNSLogger("-recv,-send,-request,-reply,-truncated,-error,-data", prefix=False)
    server = DNSServer(_Names(names), port=0, address="127.0.0.1", logger=quiet)
    server.start_thread()
    try:
        yield server.server.server_address[1]
    finally:
        server.stop()
