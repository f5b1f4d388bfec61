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
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from regen.common.grpc_server import channel_options
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


class ServiceError(RuntimeError):
    """A call failed for good: after retries, or with a status that is not retried."""

    def __init__(self, service: str, method: str, code: grpc.StatusCode, details: str, attempts: int) -> None:
        self.service = service
        self.method = method
        self.code = code
        self.details = details
        self.attempts = attempts
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{service}.{method} failed{tries}: {code.name}: {details}")


class RunStopped(ServiceError):
    """A service's remote API refused its credentials or this account: no case can
    succeed, so the run stops at once (exit status 2) and says what to fix."""


class ConnectError(RuntimeError):
    """A service cannot be used at all (unreachable, not serving, wrong service)."""


class _Client:
    service = ""

    def __init__(self, address: str, retry: RetryPolicy) -> None:
        self.address = address
        self.retry = retry
        self.channel = grpc.aio.insecure_channel(address, options=channel_options())
        self.health = health_pb2_grpc.HealthStub(self.channel)

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
        try:
            while True:
                attempt += 1
                try:
                    return await invoke(self.retry.rpc_timeout_s)
                except grpc.aio.AioRpcError as exc:
                    code, details = exc.code(), exc.details() or ""
                    if code in STOPS_THE_RUN:
                        raise RunStopped(self.service, method, code, details, attempt) from None
                    if code not in RETRYABLE:
                        raise ServiceError(self.service, method, code, details, attempt) from None
                    now = time.monotonic()
                    first_failure = first_failure or now
                    pause = self.retry.backoff_s(attempt)
                    if now + pause - first_failure >= self.retry.outage_budget_s:
                        waited = f"{details} (retried for {now - first_failure:.0f} s, the outage budget)"
                        raise ServiceError(self.service, method, code, waited, attempt) from None
                await asyncio.sleep(pause)
        finally:
            usage.count_call(self.service, method, attempts=attempt)

    async def wait_until_serving(self, timeout_s: float) -> None:
        """Fail fast when nothing listens or health is not served as gRPC clients expect;
        wait up to timeout_s while the model loads."""
        deadline = time.monotonic() + timeout_s
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
                if code == grpc.StatusCode.UNAVAILABLE and not last:
                    raise ConnectError(
                        f"cannot reach {where}: {exc.details()} (is it running, and is the address host:port?)"
                    ) from None
                last = f"{code.name}: {exc.details()}"
            if time.monotonic() > deadline:
                raise ConnectError(f"{where} is not serving after {timeout_s:.0f} s ({last})")
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

    async def _described(self, method: str, invoke: Callable[[float], Awaitable[Any]]) -> Any:
        response = await self._call(method, invoke)
        usage.count_reported(self.service, method, response.call.usage)
        return response

    async def understand(self, image_png: bytes) -> describer_pb2.UnderstandResponse:
        request = describer_pb2.UnderstandRequest(image_png=image_png)
        return await self._described("Understand", lambda t: self.stub.Understand(request, timeout=t))

    async def write_prompt(
        self, iut: describer_pb2.ImageUnderstandingTree, token_budget: int
    ) -> describer_pb2.PromptResponse:
        request = describer_pb2.WritePromptRequest(iut=iut, token_budget=token_budget)
        return await self._described("WritePrompt", lambda t: self.stub.WritePrompt(request, timeout=t))

    async def variants(self, prompt: str, n: int, token_budget: int, seed: int) -> describer_pb2.VariantsResponse:
        request = describer_pb2.VariantsRequest(prompt=prompt, n=n, token_budget=token_budget, seed=seed)
        return await self._described("Variants", lambda t: self.stub.Variants(request, timeout=t))

    async def compare(self, reference_png: bytes, candidate_png: bytes, prompt: str) -> describer_pb2.CompareResponse:
        request = describer_pb2.CompareRequest(reference_png=reference_png, candidate_png=candidate_png, prompt=prompt)
        return await self._described("Compare", lambda t: self.stub.Compare(request, timeout=t))

    async def revise(
        self, prompt: str, differences: list[describer_pb2.Difference], token_budget: int
    ) -> describer_pb2.PromptResponse:
        request = describer_pb2.ReviseRequest(prompt=prompt, differences=differences, token_budget=token_budget)
        return await self._described("Revise", lambda t: self.stub.Revise(request, timeout=t))

    async def judge(self, reference_png: bytes, candidate_png: bytes) -> describer_pb2.JudgeResponse:
        request = describer_pb2.JudgeRequest(reference_png=reference_png, candidate_png=candidate_png)
        return await self._described("Judge", lambda t: self.stub.Judge(request, timeout=t))


class GeneratorClient(_Client):
    service = "generator"

    def __init__(self, address: str, retry: RetryPolicy) -> None:
        super().__init__(address, retry)
        self.stub = generator_pb2_grpc.GeneratorStub(self.channel)

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
            async for image in self.stub.Generate(request, timeout=timeout):
                self._accept(image, missing, arrived, expected, received)
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
        response = await self._call("Score", lambda t: self.stub.Score(request, timeout=t))
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

    async def wait_until_serving(self, timeout_s: float) -> None:
        await asyncio.gather(*(client.wait_until_serving(timeout_s) for client in self.all()))

    async def close(self) -> None:
        await asyncio.gather(*(client.close() for client in self.all()), return_exceptions=True)
