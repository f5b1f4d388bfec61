"""The contract checks (contract_checks.py) against a describer: the tiny service by
default, or any regen.v1.Describer server at REGEN_TEST_DESCRIBER_ADDRESS (host:port)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import grpc
import pytest
from describer import contract_checks

from regen.common.grpc_server import channel_options


@pytest.fixture(scope="module")
def address(request: pytest.FixtureRequest) -> str:
    return os.environ.get("REGEN_TEST_DESCRIBER_ADDRESS") or request.getfixturevalue("describer_address")


@pytest.fixture(scope="module")
def channel(address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(address, options=channel_options()) as channel:
        yield channel


@pytest.mark.parametrize("check", contract_checks.CHECKS, ids=lambda check: check.__name__)
def test_describer_contract(channel: grpc.Channel, check: Callable[[grpc.Channel], None]) -> None:
    check(channel)
