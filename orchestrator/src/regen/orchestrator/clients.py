"""Async gRPC clients of the three services: deadlines, retries that never re-bill,
replies checked against the contract, clear errors.

UNAVAILABLE (a server loading, restarting, unreachable) and RESOURCE_EXHAUSTED (a full
queue, a rate limit) are retried with backoff and jitter within the outage budget
(RetryPolicy). UNAUTHENTICATED and PERMISSION_DENIED stop the run: no case can succeed
with credentials a remote API refuses. Every other status is an answer about the request
itself, and retrying would only repeat it. A retried Generate asks only for the images
it has not received yet, so nothing is rendered, or paid for, twice.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from regen.common.grpc_server import REPLICA_METADATA_KEY, channel_options
from regen.common.tls import client_channel
from regen.orchestrator import usage
from regen.orchestrator.replies import ContractViolation, ExpectedImage, check_generated_image, check_indexes
from regen.orchestrator.settings import RetryPolicy
from regen.v1 import (
    common_pb2,
    describer_pb2,
    describer_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    scorer_pb2,
    scorer_pb2_grpc,
)

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
STOPS_THE_RUN = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
HEALTH_HELP = "see docs/adding-a-generator.md, 'Health'"
T = TypeVar("T")


# What a failed call cost, as a regen service puts it in its ErrorInfo's metadata (the
# describer: model calls, repairs, remote API calls, tokens).
COST_KEYS: tuple[str, ...] = ("attempts", "repairs", "api_calls", "input_tokens", "output_tokens")


def error_cost(exc: grpc.aio.AioRpcError) -> dict[str, int]:
    """The numbers of COST_KEYS in a failed call's google.rpc.ErrorInfo metadata; empty
    when the server sent none."""
    for key, value in exc.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except Exception:  # a server's malformed details must not hide its error
            return {}
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return {k: int(v) for k, v in info.metadata.items() if k in COST_KEYS and v.isdigit()}
    return {}


class ServiceError(RuntimeError):
    """A call failed for good: after retries, or with a status that is not retried.
    `cost` sums what the failed attempts cost the service, as it reported (error_cost)."""

    def __init__(
        self,
        service: str,
        method: str,
        code: grpc.StatusCode,
        details: str,
        attempts: int,
        cost: dict[str, int] | None = None,
    ) -> None:
        self.service = service
        self.method = method
        self.code = code
        self.details = details
        self.attempts = attempts
        self.cost = cost or {}
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{service}.{method} failed{tries}: {code.name}: {details}")


class RunInterrupted(ServiceError):
    """No case can go on: the run stops at once, cancels the cases in flight without
    recording anything against the model, and resumes when run again."""


class RunStopped(RunInterrupted):
    """A service's remote API refused its credentials or this account (exit status 2:
    the message says what to fix)."""


class ServiceDown(RunInterrupted):
    """A service stayed unavailable for the whole outage budget. The run stops without
    recording anything against the model; it resumes when run again."""

    def __init__(self, service: str, method: str, address: str, since: float, budget_s: float) -> None:
        self.address = address
        self.since = since
        when = time.strftime("%H:%M:%S", time.localtime(since))
        details = f"unavailable at {address} since {when} ({budget_s:.0f} s, the outage budget)"
        super().__init__(service, method, grpc.StatusCode.UNAVAILABLE, details, 0)


class ConnectError(RuntimeError):
    """A service cannot be used at all (unreachable, not serving, wrong service)."""


# Spread calls over every address a target resolves to, and keep connections checked.
SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
CLIENT_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.service_config", SERVICE_CONFIG),
    # Pings at most every 5 minutes while calls are open: what gRPC servers accept by
    # default; a peer that vanished without closing the connection is noticed then.
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
]


def channel_target(address: str) -> str:
    """A gRPC target for `address`: host:port; a comma-separated list of IP:port, one per
    replica; or any gRPC target URI, e.g. dns:///generator.regen.svc:50052 (a headless
    Service: every pod's address, re-resolved as replicas come and go)."""
    if "," not in address or (":" in address.split(",")[0].split("//")[0] and "://" in address):
        return address
    if address.startswith(("ipv4:", "ipv6:")):
        return address
    parts = [part.strip() for part in address.split(",") if part.strip()]
    if all(part.startswith("[") for part in parts):
        return "ipv6:" + ",".join(parts)
    return "ipv4:" + ",".join(parts)


@dataclass
class ReplicaStats:
    """What one replica did for this client: calls, images, and seconds with calls open."""

    calls: int = 0
    images: int = 0
    busy_s: float = 0.0


class ReplicaLedger:
    """Per-replica counts, keyed by the regen-replica metadata (or "unnamed" for a
    server that does not send it)."""

    def __init__(self) -> None:
        self.replicas: dict[str, ReplicaStats] = {}

    def note(self, replica: str, seconds: float, images: int = 0) -> None:
        stats = self.replicas.setdefault(replica or "unnamed", ReplicaStats())
        stats.calls += 1
        stats.images += images
        stats.busy_s += seconds

    def record(self) -> dict[str, dict[str, float]]:
        return {name: asdict(stats) for name, stats in sorted(self.replicas.items())}


async def replica_of(call: Any) -> str:
    """The replica that served `call` (a finished or failed call is fine)."""
    try:
        metadata = await call.initial_metadata()
    except (grpc.aio.AioRpcError, asyncio.CancelledError):
        return ""
    return dict(metadata or ()).get(REPLICA_METADATA_KEY, "") if metadata else ""


class _Client:
    service = ""

    def __init__(self, address: str, retry: RetryPolicy) -> None:
        self.address = address
        self.retry = retry
        self.channel = client_channel(channel_target(address), [*channel_options(), *CLIENT_OPTIONS])  # TLS if set
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.ledger = ReplicaLedger()

    async def close(self) -> None:
        await self.channel.close()

    async def info(self) -> Any:
        """The service's Info answer (model, limits, ServerInfo counters)."""
        raise NotImplementedError

    async def _call(self, method: str, invoke: Callable[[float], Awaitable[T]]) -> T:
        """Run invoke(timeout_s), retrying transient failures; raise ServiceError (or
        RunStopped) when it fails for good. A ContractViolation raised by `invoke` is
        never retried."""
        attempt = 0
        first_failure: float | None = None
        first_failure_wall: float | None = None
        cost: dict[str, int] = {}
        try:
            while True:
                attempt += 1
                try:
                    return await invoke(self.retry.rpc_timeout_s)
                except grpc.aio.AioRpcError as exc:
                    code, details = exc.code(), exc.details() or ""
                    failed = error_cost(exc)
                    usage.count_failed(self.service, method, failed)
                    cost = {key: cost.get(key, 0) + failed.get(key, 0) for key in {*cost, *failed}}
                    if code in STOPS_THE_RUN:
                        raise RunStopped(self.service, method, code, details, attempt, cost) from None
                    if code not in RETRYABLE:
                        raise ServiceError(self.service, method, code, details, attempt, cost) from None
                    now = time.monotonic()
                    first_failure = first_failure or now
                    first_failure_wall = first_failure_wall or time.time()
                await self._ride_through(method, attempt, first_failure, first_failure_wall)
        finally:
            usage.count_call(self.service, method, attempts=attempt)

    async def _ride_through(self, method: str, attempt: int, first_failure: float, since: float) -> None:
        """Back off (with jitter), then wait until the channel is ready again (any replica
        will do), within what is left of the outage budget; ServiceDown when it runs out."""
        remaining = self.retry.outage_budget_s - (time.monotonic() - first_failure)
        if remaining <= 0:
            raise ServiceDown(self.service, method, self.address, since, self.retry.outage_budget_s)
        await asyncio.sleep(min(self.retry.backoff_s(attempt), remaining))
        remaining = self.retry.outage_budget_s - (time.monotonic() - first_failure)
        try:
            await asyncio.wait_for(self.channel.channel_ready(), max(remaining, 0.001))
        except TimeoutError:
            raise ServiceDown(self.service, method, self.address, since, self.retry.outage_budget_s) from None

    async def _unary(self, method: str, rpc: Callable[..., Any], request: Any) -> Any:
        """A unary call with retries, noting which replica answered each attempt."""

        async def invoke(timeout: float) -> Any:
            call = rpc(request, timeout=timeout)
            started = time.monotonic()
            try:
                return await call
            finally:
                self.ledger.note(await replica_of(call), time.monotonic() - started)

        return await self._call(method, invoke)

    async def wait_until_serving(self, timeout_s: float, on_wait: Callable[[str], None] | None = None) -> None:
        """Wait up to timeout_s for health SERVING under '' (a cluster's services may still
        be starting or loading models), telling `on_wait` every 15 s what it waits for;
        fail at once when health is not served as gRPC clients expect."""
        deadline = time.monotonic() + timeout_s
        next_note = time.monotonic() + 15
        last = ""
        where = f"the {self.service} at {self.address}"
        while True:
            try:
                reply = await self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = f"health is {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    raise ConnectError(
                        f"{where} does not serve grpc.health.v1: register the standard health service and "
                        f"report SERVING under the service name '' once the model is loaded ({HEALTH_HELP})"
                    ) from None
                if code == grpc.StatusCode.NOT_FOUND:
                    raise ConnectError(
                        f"{where} serves grpc.health.v1 but reports no status for the service name '' (the "
                        f"whole server): set SERVING for '' as well as for 'regen.v1.{self.service.capitalize()}' "
                        f"({HEALTH_HELP})"
                    ) from None
                last = f"unreachable: {exc.details()}" if code == grpc.StatusCode.UNAVAILABLE else code.name
            now = time.monotonic()
            if now > deadline:
                if last.startswith("unreachable"):
                    raise ConnectError(
                        f"cannot reach {where} within {timeout_s:.0f} s ({last}; is it running, and is the "
                        "address host:port?)"
                    )
                raise ConnectError(f"{where} is not serving after {timeout_s:.0f} s ({last})")
            if on_wait is not None and now > next_note:
                on_wait(f"waiting for {where}: {last}")
                next_note = now + 15
            await asyncio.sleep(0.5)

    async def _info(self, stub_info: Callable[..., Awaitable[T]], request: Any) -> T:
        try:
            return await stub_info(request, timeout=30)
        except grpc.aio.AioRpcError as exc:
            raise ConnectError(
                f"the service at {self.address} does not answer regen.v1.{self.service.capitalize()}.Info "
                f"({exc.code().name}: {exc.details()}); is this the {self.service}'s address?"
            ) from None


class DescriberClient(_Client):
    service = "describer"

    def __init__(self, address: str, retry: RetryPolicy) -> None:
        super().__init__(address, retry)
        self.stub = describer_pb2_grpc.DescriberStub(self.channel)

    async def info(self) -> describer_pb2.DescriberInfo:
        return await self._info(self.stub.Info, common_pb2.InfoRequest())

    async def _described(self, method: str, rpc: Callable[..., Any], request: Any) -> Any:
        response = await self._unary(method, rpc, request)
        usage.count_described(self.service, method, response.call)
        return response

    async def understand(self, image_png: bytes) -> describer_pb2.UnderstandResponse:
        request = describer_pb2.UnderstandRequest(image_png=image_png)
        return await self._described("Understand", self.stub.Understand, request)

    async def write_prompt(
        self, iut: describer_pb2.ImageUnderstandingTree, token_budget: int
    ) -> describer_pb2.PromptResponse:
        request = describer_pb2.WritePromptRequest(iut=iut, token_budget=token_budget)
        return await self._described("WritePrompt", self.stub.WritePrompt, request)

    async def variants(self, prompt: str, n: int, token_budget: int, seed: int) -> describer_pb2.VariantsResponse:
        request = describer_pb2.VariantsRequest(prompt=prompt, n=n, token_budget=token_budget, seed=seed)
        return await self._described("Variants", self.stub.Variants, request)

    async def compare(self, reference_png: bytes, candidate_png: bytes, prompt: str) -> describer_pb2.CompareResponse:
        request = describer_pb2.CompareRequest(reference_png=reference_png, candidate_png=candidate_png, prompt=prompt)
        return await self._described("Compare", self.stub.Compare, request)

    async def revise(
        self, prompt: str, differences: list[describer_pb2.Difference], token_budget: int
    ) -> describer_pb2.PromptResponse:
        request = describer_pb2.ReviseRequest(prompt=prompt, differences=differences, token_budget=token_budget)
        return await self._described("Revise", self.stub.Revise, request)

    async def judge(self, reference_png: bytes, candidate_png: bytes, seed: int = 0) -> describer_pb2.JudgeResponse:
        """A sampling judge draws with `seed` (DescriberInfo.judge_temperature > 0)."""
        request = describer_pb2.JudgeRequest(reference_png=reference_png, candidate_png=candidate_png, seed=seed)
        return await self._described("Judge", self.stub.Judge, request)


class Outstanding:
    """Images asked of the generator and not received yet; listeners hear every change
    (positive: images requested; negative: images received, or their call ended)."""

    def __init__(self) -> None:
        self.count = 0
        self.listeners: list[Callable[[int], None]] = []

    def add(self, delta: int) -> None:
        self.count += delta
        for listener in self.listeners:
            listener(delta)


class GeneratorClient(_Client):
    service = "generator"

    def __init__(self, address: str, retry: RetryPolicy) -> None:
        super().__init__(address, retry)
        self.stub = generator_pb2_grpc.GeneratorStub(self.channel)
        self.outstanding = Outstanding()

    async def info(self) -> generator_pb2.GeneratorInfo:
        return await self._info(self.stub.Info, common_pb2.InfoRequest())

    async def generate(
        self,
        prompts: Sequence[generator_pb2.PromptSpec],
        expected: Sequence[ExpectedImage],
        **fields: Any,
    ) -> list[generator_pb2.GeneratedImage]:
        """One checked image (or refusal) per prompt, in prompt order. `fields` are the
        GenerateRequest's other fields (width, height, steps, guidance_scale). Images
        stream in any order; a stream that breaks keeps what arrived, and the retry asks
        only for the prompts still missing."""
        received: dict[int, generator_pb2.GeneratedImage] = {}

        async def invoke(timeout: float) -> list[generator_pb2.GeneratedImage]:
            missing = [i for i in range(len(prompts)) if i not in received]
            request = generator_pb2.GenerateRequest(prompts=[prompts[i] for i in missing], **fields)
            arrived: list[int] = []
            call = self.stub.Generate(request, timeout=timeout)
            started = time.monotonic()
            self.outstanding.add(len(missing))
            try:
                async for image in call:
                    self._accept(image, missing, arrived, expected, received)
                    self.outstanding.add(-1)
            finally:
                self.outstanding.add(len(arrived) - len(missing))
                self.ledger.note(await replica_of(call), time.monotonic() - started, images=len(arrived))
            self._violation(lambda: check_indexes(arrived, len(missing), lambda i: expected[missing[i]].name))
            return [received[i] for i in range(len(prompts))]

        return await self._call("Generate", invoke)

    def _accept(
        self,
        image: generator_pb2.GeneratedImage,
        missing: list[int],
        arrived: list[int],
        expected: Sequence[ExpectedImage],
        received: dict[int, generator_pb2.GeneratedImage],
    ) -> None:
        """Check one streamed image against the request and keep it under its prompt's index."""
        position = image.index
        arrived.append(position)
        name_of = lambda i: expected[missing[i]].name  # noqa: E731
        self._violation(lambda: check_indexes(arrived, len(missing), name_of, partial=True))
        prompt = missing[position]
        self._violation(lambda: check_generated_image(image, expected[prompt]))
        image.index = prompt
        received[prompt] = image
        usage.count_reported(self.service, "Generate", image.usage)
        usage.count_image(image.refused)

    def _violation(self, check: Callable[[], None]) -> None:
        try:
            check()
        except ValueError as exc:
            raise ContractViolation(self.service, "Generate", str(exc)) from None


class ScorerClient(_Client):
    service = "scorer"

    def __init__(self, address: str, retry: RetryPolicy) -> None:
        super().__init__(address, retry)
        self.stub = scorer_pb2_grpc.ScorerStub(self.channel)

    async def info(self) -> scorer_pb2.ScorerInfo:
        return await self._info(self.stub.Info, common_pb2.InfoRequest())

    async def score(self, reference_png: bytes, candidate_pngs: list[bytes]) -> list[dict[str, float]]:
        """Every metric for each candidate, in candidate order, keyed by metric id."""
        request = scorer_pb2.ScoreRequest(reference_png=reference_png, candidate_pngs=candidate_pngs)
        response = await self._unary("Score", self.stub.Score, request)
        try:
            check_indexes([c.index for c in response.candidates], len(candidate_pngs), lambda i: f"image {i + 1}")
        except ValueError as exc:
            raise ContractViolation(self.service, "Score", str(exc)) from None
        by_index = {c.index: dict(c.scores) for c in response.candidates}
        return [by_index[i] for i in range(len(candidate_pngs))]


@dataclass
class Clients:
    describer: DescriberClient
    generator: GeneratorClient
    scorer: ScorerClient

    @classmethod
    def connect(cls, addresses: dict[str, str], retry: RetryPolicy) -> Clients:
        return cls(
            DescriberClient(addresses["describer"], retry),
            GeneratorClient(addresses["generator"], retry),
            ScorerClient(addresses["scorer"], retry),
        )

    def all(self) -> tuple[_Client, ...]:
        return (self.describer, self.generator, self.scorer)

    async def wait_until_serving(self, timeout_s: float, on_wait: Callable[[str], None] | None = None) -> None:
        await asyncio.gather(*(client.wait_until_serving(timeout_s, on_wait) for client in self.all()))

    def replicas(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per service, what each replica did for this run's calls."""
        return {client.service: client.ledger.record() for client in self.all()}

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.all()), return_exceptions=True)
