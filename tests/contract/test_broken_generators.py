"""Generators that break the contract in one way each: the conformance kit fails them
with the right reason, and the orchestrator refuses their replies with a precise message
that names the candidate (numbered from 1, as the files are)."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from support import broken_generator

from regen.common.grpc_server import channel_options
from regen.conformance import generator as kit
from regen.conformance.outcome import run_checks
from regen.orchestrator.clients import ConnectError, GeneratorClient, RunStopped
from regen.orchestrator.replies import ContractViolation, ExpectedImage
from regen.orchestrator.settings import RetryPolicy
from regen.v1 import generator_pb2

# fault -> (the kit check that must fail, words of its reason, words of the orchestrator's message)
CAUGHT = {
    "jpeg": ("each prompt gets one png", "not a PNG", "candidate 1: sent JPEG data"),
    "claims_other_size": ("each prompt gets one png", "40x32, not the default", "the reply claims 40x32"),
    "smaller": ("each prompt gets one png", "16x16, not the default", "the PNG is 16x16, the request asked for 32x32"),
    "missing": ("each prompt gets one png", "indexes [0, 1, 2], expected each of 0..3", "ends without candidate 3"),
    "duplicate": ("each prompt gets one png", "indexes [0, 0, 1, 2, 3]", "answered candidate 1 (index 0) twice"),
    "wrong_index": ("each prompt gets one png", "indexes [0, 1, 2, 4]", "answered index 3, outside 0..2"),
    "wrong_seed": ("each prompt gets one png", "seed 11 echoed, 10 sent", "candidate 1: answered seed 6 for seed 5"),
    "wrong_model": ("each prompt gets one png", "model 'some-other-model'", "rendered by model 'some-other-model'"),
}
HEALTH = {
    "no_health": ("UNIMPLEMENTED", "does not serve grpc.health.v1"),
    "health_other_name": ("NOT_FOUND", "reports no status for the service name ''"),
}


def kit_results(address: str) -> dict[str, tuple[str, str]]:
    with grpc.insecure_channel(address, options=channel_options()) as channel:
        return {r.name: (r.result, r.reason) for r in run_checks(kit.CHECKS, channel)}


def test_a_conforming_server_passes_the_kit() -> None:
    with broken_generator.serve("none") as address:
        results = kit_results(address)
    assert {name for name, (result, _) in results.items() if result == "FAIL"} == set(), results
    assert results["refusals have the documented form"][0] == "SKIP"


@pytest.mark.parametrize("fault", sorted(CAUGHT))
def test_the_kit_names_each_violation(fault: str) -> None:
    check, reason, _ = CAUGHT[fault]
    with broken_generator.serve(fault) as address:
        results = kit_results(address)
    matching = [name for name in results if name.startswith(check)]
    assert len(matching) == 1, results
    result, why = results[matching[0]]
    assert result == "FAIL" and reason in why, (result, why)


@pytest.mark.parametrize("fault", sorted(HEALTH))
def test_the_kit_fails_health_that_clients_cannot_use(fault: str) -> None:
    with broken_generator.serve(fault) as address:
        result, why = kit_results(address)["health is serving under the empty name"]
    assert result == "FAIL" and HEALTH[fault][0] in why, why


async def _generate(address: str, retry: RetryPolicy | None = None) -> None:
    client = GeneratorClient(address, retry or RetryPolicy(outage_budget_s=0))
    try:
        prompts = [generator_pb2.PromptSpec(text=f"a cat, take {k}", seed=4 + k) for k in (1, 2, 3)]
        expected = [
            ExpectedImage(f"candidate {k}", 4 + k, 32, 32, broken_generator.MODEL_ID, broken_generator.REVISION)
            for k in (1, 2, 3)
        ]
        images = await client.generate(prompts, expected)
        assert [image.index for image in images] == [0, 1, 2]
    finally:
        await client.close()


def test_the_orchestrator_takes_a_conforming_reply() -> None:
    with broken_generator.serve("none") as address:
        asyncio.run(_generate(address))


@pytest.mark.parametrize("fault", sorted(CAUGHT))
def test_the_orchestrator_refuses_each_violation(fault: str) -> None:
    with broken_generator.serve(fault) as address, pytest.raises(ContractViolation) as caught:
        asyncio.run(_generate(address))
    message = str(caught.value)
    assert message.startswith("the generator broke the regen.v1 contract in Generate: "), message
    assert CAUGHT[fault][2] in message, message


@pytest.mark.parametrize("fault", sorted(HEALTH))
def test_the_orchestrator_refuses_health_that_clients_cannot_use(fault: str) -> None:
    async def wait(address: str) -> None:
        client = GeneratorClient(address, RetryPolicy())
        try:
            await client.wait_until_serving(timeout_s=60)
        finally:
            await client.close()

    with broken_generator.serve(fault) as address, pytest.raises(ConnectError) as caught:
        asyncio.run(wait(address))
    assert HEALTH[fault][1] in str(caught.value)
    assert "docs/adding-a-generator.md" in str(caught.value)


QUICK_RETRIES = RetryPolicy(outage_budget_s=30, initial_backoff_s=0.01, max_backoff_s=0.05)


def test_a_retry_asks_only_for_the_images_still_missing() -> None:
    with broken_generator.serving("flaky") as (address, servicer):
        asyncio.run(_generate(address, QUICK_RETRIES))
    # The first stream brought candidates 1 and 2, then broke: the retry asked for 3 alone.
    assert servicer.requests == [["a cat, take 1", "a cat, take 2", "a cat, take 3"], ["a cat, take 3"]]


def test_resource_exhausted_is_retried_with_backoff() -> None:
    with broken_generator.serving("busy") as (address, servicer):
        asyncio.run(_generate(address, QUICK_RETRIES))
    assert len(servicer.requests) == 3


def test_refused_credentials_stop_the_run_at_once() -> None:
    with broken_generator.serving("unauthenticated") as (address, servicer), pytest.raises(RunStopped) as caught:
        asyncio.run(_generate(address, QUICK_RETRIES))
    assert len(servicer.requests) == 1  # never retried
    assert "UNAUTHENTICATED" in str(caught.value) and "API key" in str(caught.value)
