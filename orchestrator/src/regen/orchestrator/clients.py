"""Async gRPC clients of the three services: deadlines, bounded retries, clear errors.

Only UNAVAILABLE (server loading, restarting, unreachable) and DEADLINE_EXCEEDED are
retried, with exponential backoff; every other status is an answer about the request
itself and retrying it would only repeat it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from regen.common.grpc_server import channel_options
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

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
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
        """Run invoke(timeout_s) with retries; raise ServiceError when it fails for good."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await invoke(self.retry.rpc_timeout_s)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code not in RETRYABLE or attempt >= self.retry.max_attempts:
                    raise ServiceError(self.service, method, code, exc.details() or "", attempt) from None
            await asyncio.sleep(self.retry.backoff_s(attempt))

    async def wait_until_serving(self, timeout_s: float) -> None:
        """Fail fast when nothing listens; wait up to timeout_s while the model loads."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while True:
            try:
                reply = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = f"health is {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}"
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return  # a server without grpc.health.v1: Info below tells whether it works
                if exc.code() == grpc.StatusCode.UNAVAILABLE and not last:
                    raise ConnectError(
                        f"cannot reach the {self.service} at {self.address}: {exc.details()} "
                        f"(is it running, and is the address host:port?)"
                    ) from None
                last = f"{exc.code().name}: {exc.details()}"
            if time.monotonic() > deadline:
                raise ConnectError(
                    f"the {self.service} at {self.address} is not serving after {timeout_s:.0f} s ({last})"
                )
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

    async def understand(self, image_png: bytes) -> describer_pb2.UnderstandResponse:
        request = describer_pb2.UnderstandRequest(image_png=image_png)
        return await self._call("Understand", lambda t: self.stub.Understand(request, timeout=t))

    async def write_prompt(
        self, iut: describer_pb2.ImageUnderstandingTree, token_budget: int
    ) -> describer_pb2.PromptResponse:
        request = describer_pb2.WritePromptRequest(iut=iut, token_budget=token_budget)
        return await self._call("WritePrompt", lambda t: self.stub.WritePrompt(request, timeout=t))

    async def variants(self, prompt: str, n: int, token_budget: int, seed: int) -> describer_pb2.VariantsResponse:
        request = describer_pb2.VariantsRequest(prompt=prompt, n=n, token_budget=token_budget, seed=seed)
        return await self._call("Variants", lambda t: self.stub.Variants(request, timeout=t))

    async def compare(self, reference_png: bytes, candidate_png: bytes, prompt: str) -> describer_pb2.CompareResponse:
        request = describer_pb2.CompareRequest(reference_png=reference_png, candidate_png=candidate_png, prompt=prompt)
        return await self._call("Compare", lambda t: self.stub.Compare(request, timeout=t))

    async def revise(
        self, prompt: str, differences: list[describer_pb2.Difference], token_budget: int
    ) -> describer_pb2.PromptResponse:
        request = describer_pb2.ReviseRequest(prompt=prompt, differences=differences, token_budget=token_budget)
        return await self._call("Revise", lambda t: self.stub.Revise(request, timeout=t))

    async def judge(self, reference_png: bytes, candidate_png: bytes) -> describer_pb2.JudgeResponse:
        request = describer_pb2.JudgeRequest(reference_png=reference_png, candidate_png=candidate_png)
        return await self._call("Judge", lambda t: self.stub.Judge(request, timeout=t))


class GeneratorClient(_Client):
    service = "generator"

    def __init__(self, address: str, retry: RetryPolicy) -> None:
        super().__init__(address, retry)
        self.stub = generator_pb2_grpc.GeneratorStub(self.channel)

    async def info(self) -> generator_pb2.GeneratorInfo:
        return await self._info(self.stub.Info, common_pb2.InfoRequest())

    async def generate(self, request: generator_pb2.GenerateRequest) -> list[generator_pb2.GeneratedImage]:
        """All images of one request, in prompt order (the stream may answer out of order).
        A stream that breaks is retried as a whole: images are deterministic per seed."""

        async def invoke(timeout: float) -> list[generator_pb2.GeneratedImage]:
            images: dict[int, generator_pb2.GeneratedImage] = {}
            async for image in self.stub.Generate(request, timeout=timeout):
                images[image.index] = image
            return [images[i] for i in sorted(images)]

        images = await self._call("Generate", invoke)
        expected = set(range(len(request.prompts)))
        got = {image.index for image in images}
        if got != expected:
            raise ServiceError(
                "generator",
                "Generate",
                grpc.StatusCode.INTERNAL,
                f"stream answered indexes {sorted(got)} for {len(request.prompts)} prompts",
                1,
            )
        return images


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
        by_index = {c.index: dict(c.scores) for c in response.candidates}
        if set(by_index) != set(range(len(candidate_pngs))):
            raise ServiceError(
                "scorer",
                "Score",
                grpc.StatusCode.INTERNAL,
                f"answered indexes {sorted(by_index)} for {len(candidate_pngs)} candidates",
                1,
            )
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
