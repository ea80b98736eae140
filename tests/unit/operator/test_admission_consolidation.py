"""Rule 11: a running job of a consolidating pool moves off on-demand or spot GPUs when cheaper capacity holds it."""

from __future__ import annotations

import dataclasses

from operator_builders import a_node, a_pool, at, schema
from test_admission import H100, MI300X, fleet, pools, req, running

from strata_api import CONSOLIDATE_AFTER_S, CONSOLIDATE_MIN_REMAINING_S, Consolidation, ResourcePool
from strata_api.holdback import ReservedHoldBack, TypeHold
from strata_operator.core.admission import GangRequest, Reason, admit

HOUR = 3600
NOW = at(HOUR)
"""Every pass here runs an hour after the running gangs were admitted (``running``'s default: at 0)."""


def consolidating(after_s: int = 0, **spec: object) -> ResourcePool:
    return a_pool(consolidation={"minRemainingSeconds": HOUR, "afterSeconds": after_s}, **spec)


def expecting(key: str, seconds: float | None, **kw: object) -> GangRequest:
    return dataclasses.replace(req(key, **kw), expected_duration_s=seconds)  # type: ignore[arg-type]


def moved(decision_preempt: list[object]) -> list[str]:
    return [p.victim for p in decision_preempt if p.victim == p.by]  # type: ignore[attr-defined]


def test_a_job_on_on_demand_moves_to_a_free_spot_node_when_it_has_long_enough_left() -> None:
    """Expected 3 h, admitted an hour ago: 2 h left, over the pool's hour; the spot node is free."""
    nodes = fleet(a_node("od", capacity="on-demand"), a_node("sp", capacity="spot"))
    gang = running(expecting("long", 3 * HOUR), {"od": 8})
    decision = admit([], [gang], pools(consolidating()), nodes, {"od": 0, "sp": 8}, now=NOW)
    [move] = decision.preempt
    assert (move.victim, move.by) == ("long", "long")
    assert move.message == (
        "moved to cheaper capacity: H100 reserved/spot holds its 1 workers x 8 GPUs now, and it is expected to run "
        "7200 s more (pool pool moves jobs with at least 3600 s left)"
    )


def test_no_move_for_too_little_time_left_no_estimate_a_pool_that_does_not_consolidate_or_no_pass_time() -> None:
    nodes = fleet(a_node("od", capacity="on-demand"), a_node("sp", capacity="spot"))
    free = {"od": 0, "sp": 8}

    def moves(request: GangRequest, pool: ResourcePool, now: object = NOW) -> list[str]:
        decision = admit([], [running(request, {"od": 8})], pools(pool), nodes, free, now=now)  # type: ignore[arg-type]
        return moved(decision.preempt)

    assert moves(expecting("two-hours", 2 * HOUR), consolidating()) == ["two-hours"]  # 1 h left: the line itself
    assert moves(expecting("short", 2 * HOUR - 1), consolidating()) == []
    assert moves(expecting("unknown", None), consolidating()) == []
    assert moves(expecting("long", 9 * HOUR), a_pool()) == []
    assert moves(expecting("long", 9 * HOUR), consolidating(), now=None) == []
    assert moves(expecting("long", 9 * HOUR), consolidating(after_s=HOUR)) == ["long"]  # admitted an hour ago
    assert moves(expecting("long", 9 * HOUR), consolidating(after_s=HOUR + 1)) == []


def test_from_spot_only_reserved_is_cheaper_and_from_on_demand_both_are() -> None:
    nodes = fleet(a_node("sp", capacity="spot"), a_node("sp2", capacity="spot"), a_node("od", capacity="on-demand"))
    free = {"sp": 0, "sp2": 8, "od": 8}
    on_spot = running(expecting("on-spot", 9 * HOUR), {"sp": 8})
    assert admit([], [on_spot], pools(consolidating()), nodes, free, now=NOW).preempt == []
    with_reserved = [*nodes, a_node("res", capacity="reserved")]
    decision = admit([], [on_spot], pools(consolidating()), with_reserved, {**free, "res": 8}, now=NOW)
    assert moved(decision.preempt) == ["on-spot"]


def test_only_the_jobs_and_the_pools_capacity_types_count_as_cheaper() -> None:
    nodes = fleet(a_node("od", capacity="on-demand"), a_node("sp", capacity="spot"))
    free = {"od": 0, "sp": 8}
    no_spot_job = expecting("no-spot", 9 * HOUR, capacity=("on-demand", "reserved"))
    assert admit([], [running(no_spot_job, {"od": 8})], pools(consolidating()), nodes, free, now=NOW).preempt == []
    no_spot_pool = consolidating(capacityTypes=["on-demand", "reserved"])
    gang = running(expecting("long", 9 * HOUR), {"od": 8})
    assert admit([], [gang], pools(no_spot_pool), nodes, free, now=NOW).preempt == []


def test_the_queue_is_served_first_and_each_move_counts_the_room_it_takes() -> None:
    """One free spot node: a queued job that fits takes it, and nobody moves. Without it, of two jobs on
    on-demand the one that saves more (GPUs x time left) moves, and the other finds no room left."""
    nodes = fleet(
        a_node("od1", capacity="on-demand"), a_node("od2", capacity="on-demand"), a_node("sp", capacity="spot")
    )
    free = {"od1": 0, "od2": 0, "sp": 8}
    longer = running(expecting("longer", 9 * HOUR), {"od1": 8})
    shorter = running(expecting("shorter", 5 * HOUR), {"od2": 8})
    queued = admit([req("queued", submitted=HOUR)], [longer, shorter], pools(consolidating()), nodes, free, now=NOW)
    assert (queued.admit, queued.preempt) == ({"queued": H100}, [])
    decision = admit([], [shorter, longer], pools(consolidating()), nodes, free, now=NOW)
    assert moved(decision.preempt) == ["longer"]


def test_a_gang_moves_only_whole_and_only_when_every_worker_is_bound() -> None:
    """Two workers on two on-demand nodes: one free spot node holds only one of them. A gang with one worker still
    unbound is not moved though the cheaper room would hold both."""
    nodes = fleet(
        a_node("od", capacity="on-demand"), a_node("od2", capacity="on-demand"), a_node("sp", capacity="spot")
    )
    gang = running(expecting("two", 9 * HOUR, workers=2), {"od": 8, "od2": 8})
    assert admit([], [gang], pools(consolidating()), nodes, {"od": 0, "od2": 0, "sp": 8}, now=NOW).preempt == []
    roomy = [*nodes, a_node("sp2", capacity="spot"), a_node("res", capacity="reserved")]
    free = {"od": 0, "od2": 8, "sp": 8, "sp2": 8, "res": 8}
    assert moved(admit([], [gang], pools(consolidating()), roomy, {**free, "od2": 0}, now=NOW).preempt) == ["two"]
    starting = dataclasses.replace(gang, bound={"od": 8}, unbound_workers=1)
    assert admit([], [starting], pools(consolidating()), roomy, free, now=NOW).preempt == []


def test_reserved_gpus_the_extender_holds_back_are_not_counted_for_a_low_priority_job() -> None:
    nodes = fleet(a_node("od", capacity="on-demand"), a_node("res", capacity="reserved"))
    free = {"od": 0, "res": 8}
    gang = running(expecting("low", 9 * HOUR), {"od": 8})
    hold = ReservedHoldBack(high_priority=100, by_gpu_type={"H100": TypeHold(keep_free=8, reserved=8, used=0, upper=8)})
    assert admit([], [gang], pools(consolidating()), nodes, free, hold, NOW).preempt == []
    assert moved(admit([], [gang], pools(consolidating(priority=100)), nodes, free, hold, NOW).preempt) == ["low"]


def test_a_type_a_waiting_head_reserves_is_left_to_it() -> None:
    """A 2-node gang waits for H100 (one H100 spot node free): a job on MI300X on-demand that accepts both types
    moves to MI300X spot, not onto the head's H100 node."""
    nodes = fleet(
        a_node("h-sp", capacity="spot"),
        a_node("h-busy", capacity="spot"),
        a_node("m-od", MI300X, capacity="on-demand"),
        a_node("m-sp", MI300X, capacity="spot"),
    )
    head = req("head", workers=2, submitted=HOUR)
    gang = running(expecting("mover", 9 * HOUR, types=(H100, MI300X)), {"m-od": 8}, gpu=MI300X)
    free = {"h-sp": 8, "h-busy": 0, "m-od": 0, "m-sp": 0}
    decision = admit([head], [gang], pools(consolidating()), nodes, free, now=NOW)
    assert decision.waiting["head"].reason == Reason.WAITING_FOR_GPUS
    assert decision.preempt == []
    decision = admit([head], [gang], pools(consolidating()), nodes, {**free, "m-sp": 8}, now=NOW)
    assert moved(decision.preempt) == ["mover"]


def test_an_empty_consolidation_takes_the_defaults_the_crd_states() -> None:
    assert a_pool(consolidation={}).consolidation == Consolidation(CONSOLIDATE_MIN_REMAINING_S, CONSOLIDATE_AFTER_S)
    assert a_pool().consolidation is None
    fields = schema("resourcepool.yaml")["properties"]["spec"]["properties"]["consolidation"]["properties"]
    assert fields["minRemainingSeconds"]["default"] == CONSOLIDATE_MIN_REMAINING_S
    assert fields["afterSeconds"]["default"] == CONSOLIDATE_AFTER_S
