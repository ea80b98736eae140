"""Admission knows the scheduler extender's reserved hold-back (issue 18): a gang of a pool below the extender's
high-priority line is admitted only where the extender will place every worker, or waits saying which GPU type's
reserved GPUs are held and why; gangs at or above the line, and every gang without the extender's answer, are
admitted as before."""

from __future__ import annotations

from dataclasses import replace

from operator_builders import a_node, a_pool, at

from strata_api import GPUType
from strata_api.holdback import ReservedHoldBack, TypeHold
from strata_operator.core.admission import AdmittedGang, GangRequest, Reason, admit
from strata_operator.core.observed import Node

MI300X = GPUType.MI300X
LOW, HIGH = a_pool("batch", priority=10), a_pool("prod", priority=100)
POOLS = {p.name: p for p in (LOW, HIGH)}


def gang(key: str, pool: str = "batch", workers: int = 2, submitted: float = 0) -> GangRequest:
    return GangRequest(
        key=key,
        pool=pool,
        workers=workers,
        gpus_per_worker=8,
        pods_per_group=1,
        gpu_types=(MI300X,),
        capacity_types=frozenset({"spot", "reserved"}),
        submitted=at(submitted),
    )


def hold(keep_free: int, reserved: int = 16, used: int = 0) -> ReservedHoldBack:
    """The extender's answer: ``keep_free`` reserved MI300X GPUs held for a forecast of up to 30 high-priority GPUs."""
    return ReservedHoldBack(
        high_priority=100, by_gpu_type={"MI300X": TypeHold(keep_free=keep_free, reserved=reserved, used=used, upper=30)}
    )


def fleet(reserved: int = 2, spot: int = 2) -> list[Node]:
    return [a_node(f"res-{i}", MI300X, "reserved") for i in range(reserved)] + [
        a_node(f"spot-{i}", MI300X, "spot") for i in range(spot)
    ]


def all_free(nodes: list[Node], *full: str) -> dict[str, int]:
    """Every GPU free, except on the nodes named (all taken there)."""
    return {n.name: 0 if n.name in full else n.allocatable_gpus for n in nodes}


def test_a_gang_that_fits_only_on_held_reserved_gpus_waits_naming_the_type_and_the_hold() -> None:
    # the case: one spot node taken, so the gang's second worker would need a reserved node; both reserved
    # nodes' 16 GPUs are held. Without the hold admission admits it (and the extender half places it).
    nodes = fleet()
    free = all_free(nodes, "spot-1")
    assert admit([gang("job")], [], POOLS, nodes, free).admit == {"job": MI300X}
    assert admit([gang("job")], [], POOLS, nodes, free, None).admit == {"job": MI300X}

    decision = admit([gang("job")], [], POOLS, nodes, free, hold(keep_free=16))

    assert decision.admit == {}
    waiting = decision.waiting["job"]
    assert waiting.reason == Reason.HELD_BACK == "ReservedGPUsHeldBack"
    assert waiting.message == (
        "reserved MI300X GPUs are held for forecast high-priority demand (up to 30 GPUs in 15 min, 80% band): "
        "16 of the 16 free must stay free; 2 workers x 8 MI300X GPUs fit only on those (pool batch has priority 10, "
        "below the extender's high-priority line)"
    )


def test_reserved_gpus_above_the_hold_are_still_offered_exactly() -> None:
    nodes = fleet()
    free = all_free(nodes, "spot-1")  # 8 spot + 16 reserved GPUs free
    assert admit([gang("job")], [], POOLS, nodes, free, hold(keep_free=8)).admit == {"job": MI300X}  # 16 - 8 = 8
    held = admit([gang("job")], [], POOLS, nodes, free, hold(keep_free=9))  # 16 - 9 = 7: no worker of 8 fits
    assert held.waiting["job"].reason == Reason.HELD_BACK
    # a gang that fits on spot alone is admitted whatever the hold
    assert admit([gang("job")], [], POOLS, nodes, all_free(nodes), hold(keep_free=16)).admit == {"job": MI300X}


def test_gangs_at_or_above_the_high_priority_line_are_not_held_back() -> None:
    nodes = fleet(reserved=2, spot=0)
    decision = admit([gang("prod-job", pool="prod")], [], POOLS, nodes, all_free(nodes), hold(keep_free=16))
    assert decision.admit == {"prod-job": MI300X}


def test_what_a_high_priority_gang_takes_on_reserved_nodes_lowers_the_hold_for_the_rest_of_the_pass() -> None:
    # 24 reserved GPUs, 16 held. prod takes 8 of them: once bound, the extender keeps 16 - 8 = 8 free, so 8 of the
    # 16 left are open to batch: its one-worker gang fits, a two-worker one does not.
    nodes = fleet(reserved=3, spot=0)
    queue = [gang("prod-job", pool="prod", workers=1), gang("small", workers=1, submitted=1)]
    decision = admit(queue, [], POOLS, nodes, all_free(nodes), hold(keep_free=16, reserved=24))
    assert decision.admit == {"prod-job": MI300X, "small": MI300X}
    queue = [gang("prod-job", pool="prod", workers=1), gang("pair", workers=2, submitted=1)]
    decision = admit(queue, [], POOLS, nodes, all_free(nodes), hold(keep_free=16, reserved=24))
    assert decision.admit == {"prod-job": MI300X}
    assert decision.waiting["pair"].reason == Reason.HELD_BACK


def test_an_admitted_gang_not_yet_placed_is_counted_where_the_extender_will_put_it() -> None:
    # "first" was admitted with both workers unbound: the extender will put them on the spot nodes (the reserved
    # ones are held), so a second gang must not be admitted onto those spot nodes.
    nodes = fleet()
    first = AdmittedGang(request=gang("first"), gpu_type=MI300X, admitted_at=at(0), unbound_workers=2)
    decision = admit([gang("second", submitted=1)], [first], POOLS, nodes, all_free(nodes), hold(keep_free=16))
    assert decision.admit == {}
    assert decision.waiting["second"].reason == Reason.HELD_BACK
    # without the hold the first gang's room is counted on the reserved nodes, as before, and the second fits
    assert admit([gang("second", submitted=1)], [first], POOLS, nodes, all_free(nodes)).admit == {"second": MI300X}


def test_a_hold_on_another_gpu_type_or_of_zero_changes_nothing() -> None:
    nodes = fleet()
    free = all_free(nodes, "spot-1")
    other = ReservedHoldBack(high_priority=100, by_gpu_type={"H100": TypeHold(16, 16, 0, 30.0)})
    assert admit([gang("job")], [], POOLS, nodes, free, other).admit == {"job": MI300X}
    assert admit([gang("job")], [], POOLS, nodes, free, hold(keep_free=0)).admit == {"job": MI300X}


def test_preemption_counts_only_what_the_hold_leaves_open() -> None:
    scavenger = a_pool("scavenger", priority=0, preemptible=True)
    pools = {**POOLS, "scavenger": scavenger}
    nodes = fleet()

    def victim(on: str) -> AdmittedGang:
        return AdmittedGang(request=gang(f"scav-{on}", pool="scavenger", workers=1), gpu_type=MI300X,
                            admitted_at=at(0), bound={on: 8})  # fmt: skip

    # scavenger jobs fill both spot nodes: preempting them makes room the extender will give the batch gang
    on_spot = [victim("spot-0"), victim("spot-1")]
    free = all_free(nodes, "spot-0", "spot-1")
    decision = admit([gang("job", submitted=1)], on_spot, pools, nodes, free, hold(keep_free=16))
    assert sorted(p.victim for p in decision.preempt) == ["scav-spot-0", "scav-spot-1"]
    assert decision.waiting["job"].reason == Reason.WAITING_FOR_PREEMPTION
    # a scavenger job on a reserved node frees only held GPUs: preempting it would not help, so nobody is preempted
    # (spot is full with someone else's pods)
    free = all_free(nodes, "spot-0", "spot-1", "res-0")
    decision = admit([gang("job", submitted=1)], [victim("res-0")], pools, nodes, free, hold(keep_free=16))
    assert decision.preempt == []  # unaware of the hold, admission would preempt scav-res-0 and count res-0 free
    assert decision.waiting["job"].reason == Reason.WAITING_FOR_GPUS  # held or not, 8 free GPUs hold no 2 workers


def test_a_quoted_reserved_kind_the_hold_keeps_is_passed_over_for_the_next_kind() -> None:
    """A low-priority one-worker gang whose quote lists MI300X reserved first (an older answer, asked before the
    hold grew) and H100 spot next: the hold keeps every reserved MI300X GPU, so the gang takes H100 spot; a
    high-priority gang, above the line, takes the reserved GPUs."""
    nodes = [*fleet(reserved=1, spot=0), a_node("h100-spot", GPUType.H100, "spot")]
    kinds = ((MI300X, "reserved"), (GPUType.H100, "spot"))
    low = replace(gang("low", workers=1), gpu_types=(MI300X, GPUType.H100), kinds=kinds)
    high = replace(low, key="high", pool="prod")
    assert admit([low], [], POOLS, nodes, all_free(nodes), hold(keep_free=8, reserved=8)).admit == {"low": GPUType.H100}
    assert admit([high], [], POOLS, nodes, all_free(nodes), hold(keep_free=8, reserved=8)).admit == {"high": MI300X}
