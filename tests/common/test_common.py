"""Settings precedence, the micro-batcher, and the shared gRPC server bootstrap."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from regen.common.batching import MicroBatcher
from regen.common.errors import InvalidInput, Overloaded
from regen.common.grpc_server import CoreSlot, GrpcHost, Registration, grpc_errors
from regen.common.settings import load_settings, tiny_models_dir
from regen.generator.settings import GeneratorSettings
from regen.scorer.settings import ScorerSettings
from regen.v1 import common_pb2, scorer_pb2, scorer_pb2_grpc

# --- settings -----------------------------------------------------------------


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "regen.yaml"
    config.write_text("generator:\n  steps: 11\n  width: 96\n  guidance_scale: 3.0\n")
    monkeypatch.setenv("REGEN_GENERATOR_WIDTH", "128")
    settings = load_settings(GeneratorSettings, preset="tiny", config_file=config, guidance_scale=9.0, height=None)
    assert settings.guidance_scale == 9.0  # explicit beats everything
    assert settings.width == 128  # env beats file
    assert settings.steps == 11  # file beats preset
    assert settings.height == 64  # preset beats class default; None overrides are ignored
    assert settings.model == str(tiny_models_dir() / "stable-diffusion")


def test_empty_config_env_means_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGEN_CONFIG", "")
    assert load_settings(GeneratorSettings, preset="tiny").steps == 4


def test_default_preset_uses_real_checkpoints() -> None:
    from regen.scorer.metrics.clip import ClipOptions
    from regen.scorer.metrics.dinov2 import Dinov2Options

    settings = load_settings(ScorerSettings, preset="default")
    assert settings.tiny_models is None and settings.metric_options == {}
    assert ClipOptions().model == "openai/clip-vit-base-patch32"
    assert Dinov2Options().model == "facebook/dinov2-base"
    assert load_settings(GeneratorSettings, preset="default").model == "stable-diffusion-v1-5/stable-diffusion-v1-5"


@pytest.mark.parametrize(
    ("content", "message"),
    [("generator: [1, 2", "invalid YAML"), ("- just a list", "must be a mapping")],
)
def test_bad_config_file_names_the_file(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    with pytest.raises(ValueError, match=f"{config}.*{message}"):
        load_settings(GeneratorSettings, config_file=config)


def test_missing_config_file_and_unknown_preset() -> None:
    with pytest.raises(ValueError, match=r"nowhere\.yaml: cannot read config file"):
        load_settings(GeneratorSettings, config_file="/nowhere.yaml")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        load_settings(GeneratorSettings, preset="huge")


def test_unknown_setting_is_rejected() -> None:
    with pytest.raises(ValueError, match="stepz"):
        load_settings(GeneratorSettings, stepz=3)


# --- micro-batcher ------------------------------------------------------------


def test_concurrent_requests_are_coalesced() -> None:
    batches: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        batches.append(list(items))
        return [2 * i for i in items]

    async def main() -> list[list[int]]:
        batcher = MicroBatcher(double, max_batch=8, max_wait_s=0.05)
        results = await asyncio.gather(*(batcher.run([i, i + 100]) for i in range(4)))
        await batcher.close()
        return results

    results = asyncio.run(main())
    assert results == [[0, 200], [2, 202], [4, 204], [6, 206]]
    assert batches == [[0, 100, 1, 101, 2, 102, 3, 103]]


def test_batches_are_bounded_and_keyed() -> None:
    batches: list[list[str]] = []

    def identity(items: list[str]) -> list[str]:
        batches.append(list(items))
        return items

    async def main() -> None:
        batcher = MicroBatcher(identity, max_batch=2, max_wait_s=0.02, key=lambda s: s[0])
        await asyncio.gather(batcher.run(["a1", "b1", "a2", "a3"]), batcher.run(["b2"]))
        await batcher.close()

    asyncio.run(main())
    assert all(len(b) <= 2 and len({s[0] for s in b}) == 1 for b in batches)
    assert sorted(s for b in batches for s in b) == ["a1", "a2", "a3", "b1", "b2"]


def test_one_bad_item_fails_alone() -> None:
    def check(items: list[int]) -> list[int | BaseException]:
        return [InvalidInput(f"item {i} is odd") if i % 2 else i for i in items]

    async def main() -> tuple[list, list]:
        batcher = MicroBatcher(check, max_batch=4, max_wait_s=0.01)
        futures = batcher.submit([0, 1, 2])
        outcome = await asyncio.gather(*futures, return_exceptions=True)
        await batcher.close()
        return outcome, [batcher.stats.batches, batcher.stats.items]

    outcome, stats = asyncio.run(main())
    assert outcome[0] == 0 and outcome[2] == 2
    assert isinstance(outcome[1], InvalidInput)
    assert stats == [1, 3]


def test_queue_limit_raises_overloaded() -> None:
    async def main() -> None:
        batcher = MicroBatcher(lambda items: items, max_batch=1, max_wait_s=0, max_queue=3)
        with pytest.raises(Overloaded, match="queue is full"):
            batcher.submit([1, 2, 3, 4])
        await batcher.close()

    asyncio.run(main())


def test_cancelled_items_are_not_processed() -> None:
    seen: list[int] = []

    def slow(items: list[int]) -> list[int]:
        seen.extend(items)
        return items

    async def main() -> None:
        batcher = MicroBatcher(slow, max_batch=1, max_wait_s=0.05)
        task = asyncio.ensure_future(batcher.run([1, 2, 3]))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0.2)
        assert await batcher.run([9]) == [9]
        await batcher.close()

    asyncio.run(main())
    assert 9 in seen and len(seen) < 4


# --- gRPC bootstrap -----------------------------------------------------------


class _EchoScorer(scorer_pb2_grpc.ScorerServicer):
    def __init__(self, slot: CoreSlot) -> None:
        self.slot = slot

    @grpc_errors
    async def Info(self, request, context):
        return scorer_pb2.ScorerInfo(models=[common_pb2.ModelInfo(model_id=self.slot.get())])

    @grpc_errors
    async def Score(self, request, context):
        raise InvalidInput(f"candidate {len(request.candidate_pngs)}: bad")


def test_server_health_reflection_and_status_codes() -> None:
    async def main() -> None:
        slot: CoreSlot[str] = CoreSlot()
        host = GrpcHost("127.0.0.1", 0)
        reg = Registration(scorer_pb2_grpc.add_ScorerServicer_to_server, _EchoScorer(slot), "regen.v1.Scorer")
        port = await host.start([reg], serving=False)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service="regen.v1.Scorer"))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            scorer = scorer_pb2_grpc.ScorerStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await scorer.Info(common_pb2.InfoRequest())
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE

            slot.set("tiny-clip")
            await host.set_serving(True)
            reply = await health.Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert (await scorer.Info(common_pb2.InfoRequest())).models[0].model_id == "tiny-clip"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await scorer.Score(scorer_pb2.ScoreRequest(candidate_pngs=[b"", b""]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details() == "candidate 2: bad"

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = {s.name async for r in responses for s in r.list_services_response.service}
            assert {"regen.v1.Scorer", "grpc.health.v1.Health"} <= names

            # so_reuseport is off: a second server on the same port fails loudly.
            second = GrpcHost("127.0.0.1", port)
            with pytest.raises(OSError, match=f"127.0.0.1:{port}"):
                await second.start([])
        await host.stop(0)

    asyncio.run(main())


_STANDALONE_SERVICE = """
import sys, time
from pathlib import Path
from regen.scorer.settings import ScorerSettings
from regen.common.grpc_server import Registration
from regen.common.serving import run_service
from regen.v1 import scorer_pb2_grpc

def build_engine(settings):
    time.sleep(0.5)  # a model load: health says NOT_SERVING meanwhile
    return "engine"

def registrations(slot):
    servicer = scorer_pb2_grpc.ScorerServicer()
    return [Registration(scorer_pb2_grpc.add_ScorerServicer_to_server, servicer, "regen.v1.Scorer")]

run_service(ScorerSettings(port=0), build_engine, registrations, port_file=Path(sys.argv[1]),
            close_core=lambda engine: print("closed", engine, flush=True))
"""


def test_standalone_service_shuts_down_gracefully_on_sigterm(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from regen.common.healthcheck import check

    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-c", _STANDALONE_SERVICE, str(port_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "service did not bind"
            time.sleep(0.05)
        address = f"127.0.0.1:{int(port_file.read_text())}"
        while not check(address):
            assert proc.poll() is None and time.monotonic() < deadline, "service never became SERVING"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "closed engine" in output
    assert not check(address)


def test_errors_carry_google_rpc_details() -> None:
    from google.rpc import status_pb2
    from google.rpc.error_details_pb2 import BadRequest, ErrorInfo

    from regen.common.grpc_server import rich_status

    def details(status: grpc.Status) -> status_pb2.Status:
        return status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])

    status = rich_status(InvalidInput("prompts[2].seed: -1 is negative; seeds must be >= 0"))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    [detail] = details(status).details
    bad_request = BadRequest()
    assert detail.Unpack(bad_request)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("prompts[2].seed", "prompts[2].seed: -1 is negative; seeds must be >= 0")
    ]
    assert InvalidInput("the prompt is empty: send one").field == ""

    status = rich_status(Overloaded("queue is full"))
    assert details(status).code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    [detail] = details(status).details
    info = ErrorInfo()
    assert detail.Unpack(info) and (info.domain, info.reason) == ("regen.v1", "RESOURCE_EXHAUSTED")
