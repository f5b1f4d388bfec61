"""`python -m regen.common.healthcheck HOST:PORT [SERVICE]`: exit 0 iff the gRPC server
reports SERVING. Used by container health checks (compose, Docker)."""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str = "", timeout_s: float = 3.0) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m regen.common.healthcheck HOST:PORT [SERVICE]", file=sys.stderr)
        return 2
    ok = check(argv[0], argv[1] if len(argv) > 1 else "")
    print("SERVING" if ok else "NOT SERVING")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
