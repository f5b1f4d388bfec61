"""How the describer extends and what its transport-free parts import: a backend is one
module plus one registry line (or an entry point), and the core, the settings and the
backend protocol import neither grpc, bentoml nor torch."""

from __future__ import annotations

import asyncio
import importlib.metadata
from pathlib import Path

import grpc
import pytest

from regen.common.grpc_server import CoreSlot, GrpcHost, channel_options
from regen.common.settings import load_settings
from regen.conformance import describer as contract_checks
from regen.describer import grpc_api
from regen.describer.backends import REGISTRY
from regen.describer.core import DescriberCore
from regen.describer.settings import DescriberSettings
from regen.v1 import common_pb2, describer_pb2, describer_pb2_grpc

GROUP = "regen.describer.backends"


def test_built_in_backends_are_registered():
    assert REGISTRY.names()[:3] == ["transformers", "vllm", "openai"]
    for name in ("transformers", "vllm", "openai"):
        assert callable(REGISTRY.load(name).from_settings)


def test_an_unknown_backend_fails_when_the_core_is_built_naming_the_setting_and_the_choices():
    settings = load_settings(DescriberSettings, backend="nope", cache_enabled=False)
    with pytest.raises(
        ValueError, match=r"describer\.backend: unknown backend 'nope'; choose one of transformers, vllm"
    ):
        DescriberCore.from_settings(settings)


@pytest.fixture
def fixed_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    """plugin_backend.FixedBackend installed as the backend "fixed", as a distribution
    declaring it under [project.entry-points."regen.describer.backends"] would be."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    entry = importlib.metadata.EntryPoint(name="fixed", value="plugin_backend:FixedBackend", group=GROUP)
    real = importlib.metadata.entry_points

    def entry_points(**params):
        if params.get("group") == GROUP:
            return importlib.metadata.EntryPoints([entry])
        return real(**params)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_a_plugin_backend_is_loaded_by_name_and_served_over_grpc(fixed_plugin):
    assert "fixed" in REGISTRY.names()
    settings = load_settings(DescriberSettings, backend="fixed", model="fixed-model", cache_enabled=False)
    core = grpc_api.DEFINITION.build_core(settings)

    async def serve_and_ask() -> tuple[describer_pb2.DescriberInfo, describer_pb2.JudgeResponse]:
        host = GrpcHost("127.0.0.1", 0)
        await host.start(grpc_api.DEFINITION.registrations(CoreSlot(core)))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}", options=channel_options()) as channel:
                stub = describer_pb2_grpc.DescriberStub(channel)
                info = await stub.Info(common_pb2.InfoRequest())
                judged = await stub.Judge(
                    describer_pb2.JudgeRequest(
                        reference_png=contract_checks.REFERENCE, candidate_png=contract_checks.CANDIDATE
                    )
                )
                return info, judged
        finally:
            await host.stop()

    info, judged = asyncio.run(serve_and_ask())
    assert (info.model.backend, info.model.model_id) == ("fixed", "fixed-model")
    assert (judged.content_consistency, judged.perceptual_quality) == (4, 5)
    assert judged.rationale == "the same apple" and judged.call.attempts == 1
