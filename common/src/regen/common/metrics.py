"""Prometheus metrics every service exports, counted for gRPC and HTTP alike.

They are plain prometheus_client metrics in the default registry. Under BentoML (the
containers) they join BentoML's own on its HTTP port's /metrics (its workers run
prometheus_client in multiprocess mode); a standalone `regen serve` exports them on
`metrics_port` when one is set. docs/operations.md lists them with the queries for a
dashboard; the one to watch is the generator's busy fraction,
rate(regen_busy_seconds_total{service="generator"}[1m]): below 1, a GPU is idle.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)

QUEUE_DEPTH = Gauge(
    "regen_queue_depth",
    "Items (images to render, pairs to score, model calls) waiting for the model worker",
    ["service"],
    multiprocess_mode="livesum",
)
BATCH_SIZE = Histogram("regen_batch_size", "Items per batch the model ran", ["service"], buckets=BATCH_BUCKETS)
BUSY_SECONDS = Counter("regen_busy_seconds", "Seconds the model worker spent computing", ["service"])
ITEMS = Counter("regen_items", "Items the model worker processed", ["service"])
REQUESTS = Counter(
    "regen_requests",
    "Requests answered, by transport, method and status (gRPC status name; OK for success)",
    ["service", "transport", "method", "code"],
)
DESCRIBER_CACHE = Counter(
    "regen_describer_cache", "Describer answers by where they came from: hit, miss (a model call)", ["result"]
)
DESCRIBER_REPAIRS = Counter("regen_describer_repairs", "Answers the describer sent back for repair", ["task"])


def serve_metrics(port: int, host: str) -> None:
    """Export the metrics over HTTP on host:port (`regen serve`'s metrics_port)."""
    start_http_server(port, addr=host)
