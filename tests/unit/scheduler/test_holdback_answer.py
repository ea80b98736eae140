"""``GET /holdback``: the reserved GPUs the extender keeps from low-priority pods, per GPU type, by the rule its
filter applies, so that the operator's admission (which reads it) admits a low-priority gang only where the filter
then places every worker."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from scheduler_builders import a_node, a_pod, an_extender
from test_http import LiveServer

from strata_api.holdback import ReservedHoldBack
from strata_scheduler.extender import Extender
from strata_scheduler.filtering import filter_nodes
from strata_scheduler.forecast_board import HIGH, LOW, Forecast
from strata_scheduler.views import pod_view

pytestmark = pytest.mark.unit

FLEET = (
    a_node("r1").mi300x().reserved(),
    a_node("r2").mi300x().reserved(),
    a_node("r3").mi300x().reserved(),
    a_node("s1").mi300x().spot(),
    a_node("h1").h100().reserved(),
    a_pod("vip").amd(8).priority(500).on("r1"),
    a_pod("batch").amd(8).on("r2"),
)


def forecast(gpu_type: str, priority: str, upper: float) -> Forecast:
    return Forecast(gpu_type, priority, datetime(2026, 12, 4, tzinfo=UTC), 15, upper / 2, 0.0, upper, 0.8, "test")


def with_forecast(*forecasts: Forecast) -> Extender:
    extender: Extender = an_extender(*FLEET)
    extender.board.publish({(f.gpu_type, f.priority): f for f in forecasts})
    return extender


def answer(extender: Extender) -> Any:
    status, body = extender.holdback()
    assert status == 200
    return orjson.loads(body)


def test_the_answer_is_the_filters_hold_per_reserved_gpu_type() -> None:
    # 24 reserved MI300X GPUs, 16 in use (8 by a high-priority pod); high-priority demand forecast up to 12.4 GPUs:
    # ceil(12.4) = 13 held, less the 8 high priority holds already = 5 must stay free; 24 - 16 - 5 = 3 are open.
    extender = with_forecast(forecast("MI300X", HIGH, 12.4), forecast("MI300X", LOW, 99.0))
    assert answer(extender) == {
        "highPriority": 100,
        "minutes": 15,
        "band": "80%",
        "gpuTypes": {
            "MI300X": {"keepFree": 5, "reserved": 24, "used": 16, "upper": 12.4},
            # no high-priority H100 forecast: nothing held (a type without a forecast is left out)
        },
    }
    hold = ReservedHoldBack.from_json(answer(extender))
    assert hold is not None
    assert hold.by_gpu_type["MI300X"].open_to_low_priority == 3


def test_a_low_priority_pod_passes_a_reserved_node_exactly_when_it_asks_no_more_than_the_answer_leaves_open() -> None:
    extender = with_forecast(forecast("MI300X", HIGH, 12.4))
    hold = ReservedHoldBack.from_json(answer(extender))
    assert hold is not None
    open_gpus = hold.by_gpu_type["MI300X"].open_to_low_priority
    verdicts = {}
    for gpus in range(1, 9):
        pod = pod_view(a_pod().amd(gpus).build())
        with extender.state.reading() as state:
            outcome = filter_nodes(pod, ["r3"], state, extender.board.hold_back(), {}, cheapest=min)
        verdicts[gpus] = outcome.passed == ["r3"]
    assert verdicts == {gpus: gpus <= open_gpus for gpus in range(1, 9)}
    assert open_gpus == 3


def test_the_hold_never_exceeds_the_reserved_gpus_there_are_and_shrinks_with_high_priority_use() -> None:
    assert answer(with_forecast(forecast("MI300X", HIGH, 1e6)))["gpuTypes"]["MI300X"]["keepFree"] == 24 - 8
    assert answer(with_forecast(forecast("MI300X", HIGH, 4.0)))["gpuTypes"]["MI300X"]["keepFree"] == 0
    assert answer(with_forecast())["gpuTypes"] == {}  # no forecast yet: nothing held


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    live = LiveServer(with_forecast(forecast("MI300X", HIGH, 12.4)))
    yield live
    live.close()


def test_served_on_get_holdback_as_json_and_only_once_the_cache_has_synced(server: LiveServer) -> None:
    status, body = server.request("GET", "/holdback")
    assert status == 200
    assert orjson.loads(body)["gpuTypes"]["MI300X"]["keepFree"] == 5
    assert server.request("POST", "/holdback")[0] == 405
    assert an_extender(*FLEET, synced=False).holdback()[0] == 503
