"""The contract checks (contract_checks.py) against a generator: the tiny service by
default, or any regen.v1.Generator server at REGEN_TEST_GENERATOR_ADDRESS (host:port)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import grpc
import pytest
from generator import contract_checks

from regen.common.grpc_server import channel_options


@pytest.fixture(scope="module")
def address(request: pytest.FixtureRequest) -> str:
    return os.environ.get("REGEN_TEST_GENERATOR_ADDRESS") or request.getfixturevalue("generator_address")


@pytest.fixture(scope="module")
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address, options=channel_options()) as channel:
        yield channel


@pytest.mark.parametrize("check", contract_checks.CHECKS, ids=lambda check: check.__name__)
def test_generator_contract(channel: grpc.Channel, check: Callable[[grpc.Channel], None]) -> None:
    check(channel)
