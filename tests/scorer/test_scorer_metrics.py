"""`regen serve scorer` with metrics_port exports the Prometheus metrics of its gRPC calls
and its batches (under BentoML they are on the HTTP port; see test_scorer_bentoml.py)."""

from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.scenes import scene_png

from regen.common.grpc_server import channel_options
from regen.v1 import scorer_pb2, scorer_pb2_grpc


def test_a_standalone_server_exports_its_metrics(tiny_models) -> None:
    from support.bento_server import free_port

    from regen.orchestrator.launcher import LocalServices

    port = free_port()
    env = {"REGEN_SCORER_METRICS_PORT": str(port)}
    with (
        LocalServices(names=("scorer",), preset="tiny", env=env, startup_timeout_s=600) as services,
        grpc.insecure_channel(services.address("scorer"), options=channel_options()) as channel,
    ):
        stub = scorer_pb2_grpc.ScorerStub(channel)
        reference = scene_png("scene_1")
        stub.Score(scorer_pb2.ScoreRequest(reference_png=reference, candidate_pngs=[reference] * 3), timeout=120)
        with pytest.raises(grpc.RpcError):
            stub.Score(scorer_pb2.ScoreRequest(reference_png=reference), timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
            text = reply.read().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    call = {"service": "scorer", "transport": "grpc", "method": "Score"}
    assert samples[("regen_requests_total", tuple(sorted({**call, "code": "OK"}.items())))] == 1
    assert samples[("regen_requests_total", tuple(sorted({**call, "code": "INVALID_ARGUMENT"}.items())))] == 1
    scorer = (("service", "scorer"),)
    assert samples[("regen_items_total", scorer)] == 3
    assert samples[("regen_batch_size_count", scorer)] >= 1
    assert samples[("regen_busy_seconds_total", scorer)] > 0
