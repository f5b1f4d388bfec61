"""The behaviour every regen.v1 server must show (the conformance kits, regen.conformance),
checked through plain gRPC on the tiny services, or on any server given by
REGEN_TEST_DESCRIBER_ADDRESS, REGEN_TEST_GENERATOR_ADDRESS or REGEN_TEST_SCORER_ADDRESS."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import grpc
import pytest

from regen.common.grpc_server import channel_options
from regen.conformance import describer, generator, scorer
from regen.conformance.outcome import run_check

SUITES = {"describer": describer, "generator": generator, "scorer": scorer}
CASES = [(service, check) for service, suite in SUITES.items() for check in suite.CHECKS]

_channels: dict[str, grpc.Channel] = {}


@pytest.fixture(scope="session")
def channels(request: pytest.FixtureRequest) -> Iterator[Callable[[str], grpc.Channel]]:
    """A channel per service, opened on first use: the service is started only when asked."""

    def channel(service: str) -> grpc.Channel:
        if service not in _channels:
            address = os.environ.get(f"REGEN_TEST_{service.upper()}_ADDRESS") or request.getfixturevalue(
                f"{service}_address"
            )
            _channels[service] = grpc.insecure_channel(address, options=channel_options())
        return _channels[service]

    yield channel
    for opened in _channels.values():
        opened.close()
    _channels.clear()


@pytest.mark.parametrize(
    ("service", "check"), CASES, ids=[f"{service}-{check.__name__.removeprefix('check_')}" for service, check in CASES]
)
def test_contract(service: str, check: Callable[..., None], channels) -> None:
    result = run_check(check, channels(service))
    if result.result == "SKIP":
        pytest.skip(result.reason)
    assert result.result == "PASS", result.reason
