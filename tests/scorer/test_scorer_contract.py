"""The regen.v1.Scorer contract (tests/support/contract/scorer_checks.py), checked on the
tiny scorer, or on any server given by REGEN_TEST_SCORER_ADDRESS=host:port."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import grpc
import pytest
from support.contract import scorer_checks

from regen.common.grpc_server import channel_options


@pytest.fixture(scope="module")
def channel(request: pytest.FixtureRequest) -> Iterator[grpc.Channel]:
    address = os.environ.get("REGEN_TEST_SCORER_ADDRESS") or request.getfixturevalue("scorer_address")
    with grpc.insecure_channel(address, options=channel_options()) as channel:
        yield channel


@pytest.mark.parametrize("check", scorer_checks.CHECKS, ids=lambda check: check.__name__.removeprefix("check_"))
def test_contract(check: Callable[[grpc.Channel], None], channel: grpc.Channel) -> None:
    check(channel)
