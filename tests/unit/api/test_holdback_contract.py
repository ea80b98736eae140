"""The hold-back answer is read leniently: the operator's admission must never stop on what an extender sends, and
an answer it cannot read is no hold at all (admission then behaves as without an extender)."""

from __future__ import annotations

from typing import Any

import pytest

from strata_api.holdback import ReservedHoldBack, TypeHold

pytestmark = pytest.mark.unit

HOLD = ReservedHoldBack(
    high_priority=100,
    minutes=15,
    band="80%",
    by_gpu_type={"MI300X": TypeHold(keep_free=5, reserved=24, used=16, upper=12.4)},
)


def test_what_the_extender_writes_the_operator_reads_back() -> None:
    assert ReservedHoldBack.from_json(HOLD.to_json()) == HOLD
    assert HOLD.holds_back(99)
    assert not HOLD.holds_back(100)
    assert (HOLD.keep_free("MI300X"), HOLD.keep_free("H100")) == (5, 0)
    assert HOLD.by_gpu_type["MI300X"].open_to_low_priority == 3


NOT_HOLDS = (
    None,
    [],
    "x",
    {},
    {"gpuTypes": {}},
    {"highPriority": "100", "gpuTypes": {}},
    {"highPriority": True, "gpuTypes": {}},
    {"highPriority": 100, "gpuTypes": []},
)


@pytest.mark.parametrize("answer", NOT_HOLDS)
def test_an_answer_that_is_not_a_hold_back_is_none(answer: Any) -> None:
    assert ReservedHoldBack.from_json(answer) is None


@pytest.mark.parametrize(
    "entry",
    [
        {"keepFree": -1, "reserved": 24, "used": 16, "upper": 1.0},
        {"keepFree": True, "reserved": 24, "used": 16, "upper": 1.0},
        {"keepFree": 2**40, "reserved": 24, "used": 16, "upper": 1.0},
        {"keepFree": 5.0, "reserved": 24, "used": 16, "upper": 1.0},
        {"keepFree": 5, "reserved": 24, "used": 16, "upper": "NaN"},
        {"keepFree": 5, "reserved": 24, "used": 16},
        "5",
    ],
)
def test_a_malformed_type_entry_holds_nothing_for_that_type_only(entry: Any) -> None:
    answer = HOLD.to_json()
    answer["gpuTypes"]["H100"] = entry
    assert ReservedHoldBack.from_json(answer) == HOLD
