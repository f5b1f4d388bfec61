"""The describer kit's checks of CallInfo: each way a server can misstate what an answer
cost is named (the conforming forms pass on the real describer in test_service_contracts)."""

from __future__ import annotations

import pytest

from regen.conformance.describer import assert_call_infos_valid
from regen.v1 import common_pb2, describer_pb2

FRESH = {
    "cache_key": "k",
    "attempts": 2,
    "repairs": 1,
    "input_tokens": 300,
    "output_tokens": 80,
    "elapsed_s": 0.5,
    "served_model": "m",
}
CACHED = {**FRESH, "cached": True, "attempts": 0, "repairs": 0}


def call(fields: dict, **usage) -> describer_pb2.CallInfo:
    return describer_pb2.CallInfo(**fields, usage=common_pb2.Usage(**usage))


@pytest.mark.parametrize(
    "info",
    [
        call(FRESH),  # a local model: no API calls billed
        call(FRESH, api_calls=2, input_tokens=300, output_tokens=80, cost_usd=0.01),
        call(CACHED),
    ],
    ids=["local", "api", "cached"],
)
def test_conforming_call_infos_pass(info: describer_pb2.CallInfo) -> None:
    assert_call_infos_valid(info)


@pytest.mark.parametrize(
    ("info", "named"),
    [
        (call({**FRESH, "repairs": 2}), "repairs 2 is not fewer than its attempts 2"),
        (call({**FRESH, "served_model": ""}), "without served_model"),
        (call({**FRESH, "input_tokens": -1}), "CallInfo out of range"),
        (call(FRESH, retries=1), "never repeats an API call"),
        (call(FRESH, api_calls=3), "api_calls 3 exceeds the model calls made (2)"),
        (call(FRESH, cost_usd=-0.5), "cost_usd negative"),
        (call(CACHED, api_calls=0, output_tokens=80), "a cached answer billed usage"),
        (call(FRESH, api_calls=2, input_tokens=301), "bills more tokens than the answer took"),
    ],
    ids=["repairs", "served_model", "negative", "retries", "api_calls", "cost", "cached", "tokens"],
)
def test_misstated_costs_are_named(info: describer_pb2.CallInfo, named: str) -> None:
    with pytest.raises(AssertionError) as caught:
        assert_call_infos_valid(info)
    assert named in str(caught.value)
