"""The operator's admission and the scheduler extender agree on what is placeable, reserved hold-back included
(issue 18): the operator's quoter reads the real extender's ``GET /holdback`` over loopback, and admission with
that answer keeps a low-priority gang off the reserved GPUs the extender's filter would refuse its workers. Without
an extender, or without an answer in time, the quoter reads no hold and admission admits as it always did."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
from operator_builders import a_node, a_pool, at
from scheduler_builders import a_node as a_cached_node
from scheduler_builders import a_pod, an_extender

from strata_api import GPUType
from strata_api.holdback import ReservedHoldBack
from strata_operator.core.admission import GangRequest, Reason, admit
from strata_operator.runtime.quoter import Quoter
from strata_operator.settings import OperatorSettings
from strata_scheduler.extender import Extender
from strata_scheduler.filtering import filter_nodes
from strata_scheduler.forecast_board import HIGH, Forecast
from strata_scheduler.server import ExtenderServer
from strata_scheduler.settings import Settings
from strata_scheduler.views import pod_view

pytestmark = pytest.mark.unit

MI300X = GPUType.MI300X
RESERVED, SPOT = ("res-0", "res-1"), ("spot-0", "spot-1")


def an_extender_holding_every_reserved_gpu(synced: bool = True) -> Extender:
    """Two reserved and two spot MI300X nodes; spot-1 is full; high-priority demand is forecast to want more
    reserved MI300X GPUs than there are."""
    nodes = [a_cached_node(n).mi300x().reserved() for n in RESERVED] + [a_cached_node(n).mi300x().spot() for n in SPOT]
    extender: Extender = an_extender(*nodes, a_pod("other").amd(8).on("spot-1"), synced=synced)
    made = datetime(2026, 12, 4, tzinfo=UTC)
    extender.board.publish({("MI300X", HIGH): Forecast("MI300X", HIGH, made, 15, 40.0, 20.0, 64.0, 0.8, "test")})
    return extender


async def read_hold(extender: Extender) -> ReservedHoldBack | None:
    server = await ExtenderServer(extender, Settings()).start("127.0.0.1", 0)
    quoter = Quoter(OperatorSettings(extender_url=f"http://127.0.0.1:{server.port}", quote_timeout_s=5))
    try:
        return await quoter.hold_back()
    finally:
        await quoter.close()
        await server.close()


def test_admission_with_the_extenders_answer_waits_where_the_extender_would_half_place_the_gang() -> None:
    extender = an_extender_holding_every_reserved_gpu()
    hold = asyncio.run(read_hold(extender))
    assert hold is not None
    assert (hold.high_priority, hold.keep_free("MI300X")) == (100, 16)

    # what the extender's filter does with the gang's workers, one after the other: one goes to spot-0, the next
    # finds spot-1 full and both reserved nodes held
    worker = pod_view(a_pod("job-worker-1").amd(8).priority(10).build())
    with extender.state.reading() as state:
        outcome = filter_nodes(worker, [*RESERVED, "spot-1"], state, extender.board.hold_back(), {}, cheapest=min)
    assert outcome.passed == []
    assert set(outcome.failed) == {*RESERVED, "spot-1"}

    # what admission makes of the same fleet
    fleet = [a_node(n, MI300X, "reserved") for n in RESERVED] + [a_node(n, MI300X, "spot") for n in SPOT]
    free = {"res-0": 8, "res-1": 8, "spot-0": 8, "spot-1": 0}
    gang = GangRequest("team/job", "batch", 2, 8, 1, (MI300X,), frozenset({"spot", "reserved"}), at(0))
    pools = {"batch": a_pool("batch", priority=10)}
    assert admit([gang], [], pools, fleet, free).admit == {"team/job": MI300X}  # unaware: the half-placed gang
    decision = admit([gang], [], pools, fleet, free, hold)
    assert decision.admit == {}
    assert decision.waiting["team/job"].reason == Reason.HELD_BACK
    assert "reserved MI300X GPUs are held for forecast high-priority demand" in decision.waiting["team/job"].message


def test_no_extender_an_unsynced_one_or_one_that_is_away_gives_no_hold() -> None:
    assert asyncio.run(Quoter(OperatorSettings()).hold_back()) is None
    assert asyncio.run(read_hold(an_extender_holding_every_reserved_gpu(synced=False))) is None  # 503

    async def away() -> ReservedHoldBack | None:
        quoter = Quoter(OperatorSettings(extender_url="http://127.0.0.1:9", quote_timeout_s=0.3))  # nothing there
        try:
            return await quoter.hold_back()
        finally:
            await quoter.close()

    started = time.monotonic()
    assert asyncio.run(away()) is None
    assert time.monotonic() - started < 2.0
