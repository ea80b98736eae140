"""Gang admission decisions: all or nothing, quota (the pool's inference replicas' share included), order, no
overtaking, preemption."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import pytest
from operator_builders import T0, a_node, a_pool, at
from serving_builders import a_service

from strata_api import GPUType, ResourcePool
from strata_operator.core import serving
from strata_operator.core.admission import AdmittedGang, GangRequest, Reason, admit
from strata_operator.core.observed import Node
from strata_operator.core.room import Room

H100, MI300X = GPUType.H100, GPUType.MI300X


def req(
    key: str,
    workers: int = 1,
    per_worker: int = 8,
    *,
    pool: str = "pool",
    submitted: float = 0,
    types: Sequence[GPUType] = (H100,),
    pods_per_group: int = 1,
    capacity: Sequence[str] = ("spot", "on-demand", "reserved"),
) -> GangRequest:
    return GangRequest(
        key=key,
        pool=pool,
        workers=workers,
        gpus_per_worker=per_worker,
        pods_per_group=pods_per_group,
        gpu_types=tuple(types),
        capacity_types=frozenset(capacity),
        submitted=at(submitted),
    )


def running(request: GangRequest, nodes: dict[str, int], gpu: GPUType = H100, admitted: float = 0) -> AdmittedGang:
    return AdmittedGang(request=request, gpu_type=gpu, admitted_at=at(admitted), bound=nodes)


def pools(*items: ResourcePool) -> dict[str, ResourcePool]:
    return {p.name: p for p in items}


def fleet(*nodes: Node) -> list[Node]:
    return list(nodes)


def all_free(nodes: list[Node]) -> dict[str, int]:
    return {n.name: n.allocatable_gpus for n in nodes}


def test_a_gang_is_admitted_only_when_every_worker_fits() -> None:
    nodes = fleet(a_node("a"), a_node("b"))
    free = {"a": 8, "b": 4}

    decision = admit([req("big", workers=2)], [], pools(a_pool()), nodes, free)

    assert decision.admit == {}
    assert decision.waiting["big"].reason == Reason.WAITING_FOR_GPUS
    assert admit([req("big", workers=2)], [], pools(a_pool()), nodes, all_free(nodes)).admit == {"big": H100}


def test_workers_of_one_tensor_group_must_share_a_node() -> None:
    nodes = fleet(a_node("a"), a_node("b"))
    free = {"a": 4, "b": 4}  # 8 GPUs free, but not 8 on one node
    grouped = req("tp8", workers=2, per_worker=4, pods_per_group=2)
    ungrouped = req("dp", workers=2, per_worker=4)

    assert admit([grouped], [], pools(a_pool()), nodes, free).admit == {}
    assert admit([ungrouped], [], pools(a_pool()), nodes, free).admit == {"dp": H100}


def test_pool_quota_bounds_what_its_admitted_jobs_hold_together() -> None:
    nodes = fleet(*(a_node(f"n{i}") for i in range(4)))
    pool = a_pool(max_gpus=16)
    holding = running(req("old", workers=1), {"n0": 8})
    free = {"n0": 0, "n1": 8, "n2": 8, "n3": 8}

    decision = admit([req("a", submitted=1), req("b", workers=2, submitted=2)], [holding], pools(pool), nodes, free)

    assert decision.admit == {"a": H100}
    assert decision.waiting["b"].reason == Reason.WAITING_FOR_QUOTA
    assert "pool pool has 0 of 16 left" in decision.waiting["b"].message


def test_a_job_larger_than_its_quota_says_so_and_blocks_nobody() -> None:
    nodes = fleet(a_node("a"), a_node("b"))
    decision = admit(
        [req("huge", workers=3), req("small", submitted=5)], [], pools(a_pool(max_gpus=16)), nodes, all_free(nodes)
    )
    assert decision.waiting["huge"].reason == Reason.EXCEEDS_QUOTA
    assert decision.admit == {"small": H100}


def test_higher_priority_pool_first_then_submission_order() -> None:
    nodes = fleet(a_node("a"))
    low, high = a_pool("low", priority=1), a_pool("high", priority=10)
    queue = [
        req("low-early", pool="low", submitted=0),
        req("high-late", pool="high", submitted=9),
        req("high-early", pool="high", submitted=5),
    ]

    decision = admit(queue, [], pools(low, high), nodes, all_free(nodes))

    assert decision.admit == {"high-early": H100}
    assert decision.waiting["high-late"].position == 2
    assert decision.waiting["low-early"].position == 3


def test_a_waiting_gang_is_not_overtaken_on_its_gpu_type_but_other_types_stay_usable() -> None:
    nodes = fleet(a_node("h0"), a_node("h1"), a_node("m0", MI300X))
    free = {"h0": 8, "h1": 0, "m0": 8}
    queue = [
        req("big-h100", workers=2, submitted=0),
        req("small-h100", submitted=1),
        req("small-mi300x", submitted=2, types=(MI300X,)),
    ]

    decision = admit(queue, [], pools(a_pool()), nodes, free)

    assert decision.admit == {"small-mi300x": MI300X}
    assert decision.waiting["small-h100"].reason == Reason.BEHIND_HIGHER_PRIORITY


def test_a_waiting_gang_accepting_both_types_reserves_only_the_one_it_is_nearest_to_and_later_jobs_use_the_other() -> (
    None
):
    """Issue 21's replay: one waiting 8-GPU pod that accepted H100 and MI300X blocked every later job of its
    priority on both. It now reserves the type where it lacks the fewest GPUs (H100: 4 busy on h0, against 6 on
    m0); a later job takes MI300X, and one that fits only on H100 waits behind it, naming it."""
    nodes = fleet(a_node("h0"), a_node("m0", MI300X))
    free = {"h0": 4, "m0": 2}
    queue = [
        req("big", types=(H100, MI300X), submitted=0),
        req("small-any", per_worker=2, types=(H100, MI300X), submitted=1),
        req("small-h100", per_worker=4, submitted=2),
    ]

    decision = admit(queue, [], pools(a_pool()), nodes, free)

    assert decision.admit == {"small-any": MI300X}
    assert decision.waiting["big"].reason == Reason.WAITING_FOR_GPUS
    assert decision.waiting["small-h100"].reason == Reason.BEHIND_HIGHER_PRIORITY
    assert decision.waiting["small-h100"].message == "jobs ahead in the queue wait for the H100 GPUs it would take: big"


def test_between_types_the_head_lacks_as_much_of_its_quote_order_decides_which_it_reserves() -> None:
    nodes = fleet(a_node("h0"), a_node("m0", MI300X))
    free = {"h0": 4, "m0": 4}
    queue = [req("big", types=(MI300X, H100)), req("small-any", per_worker=4, types=(H100, MI300X), submitted=1)]
    assert admit(queue, [], pools(a_pool()), nodes, free).admit == {"small-any": H100}


def test_a_big_gang_still_starts_under_a_stream_of_small_ones_which_keep_running_on_the_other_type() -> None:
    """h0, h1 (H100) and m0, m1 (MI300X) each run four 2-GPU jobs. A gang of two whole nodes of either type
    waits; at every pass the oldest small job ends and a new one (submitted after the gang) arrives, accepting
    either type. The gang reserves H100 (the first to have GPUs free): no small job lands there again, so it
    starts once the eight small jobs on H100 have ended, while the waiting small jobs keep starting on MI300X
    (under the earlier rule the gang reserved both types and none started)."""
    nodes = fleet(a_node("h0"), a_node("h1"), a_node("m0", MI300X), a_node("m1", MI300X))
    kinds = {"h0": H100, "h1": H100, "m0": MI300X, "m1": MI300X}
    free = dict.fromkeys(kinds, 0)
    running = [running_on(a_small(f"s{i}", i), list(kinds)[i % 4], kinds) for i in range(16)]
    queue = [req("big", workers=2, types=(H100, MI300X), submitted=100)]
    started_on: dict[str, str] = {}
    for step in range(1, 17):
        ended = running.pop(0)
        for name, gpus in ended.bound.items():
            free[name] += gpus
        queue.append(a_small(f"new{step}", 100 + step))
        decision = admit(queue, running, pools(a_pool()), nodes, free)
        if "big" in decision.admit:
            break
        for key, gpu_type in decision.admit.items():
            node = next(n for n, t in kinds.items() if t == gpu_type and free[n] >= 2)
            free[node] -= 2
            started_on[key] = node
            running.append(running_on(next(r for r in queue if r.key == key), node, kinds))
        queue = [r for r in queue if r.key not in decision.admit]
    assert decision.admit.get("big") == H100, "the gang never started"
    assert step == 14, "the gang starts at the pass where s13, the last small job on H100, ends"
    assert len(started_on) == 6, "a waiting small job started at each of the six passes where one on MI300X ended"
    assert set(started_on.values()) == {"m0", "m1"}, "none took the H100 GPUs the gang waits for"


def a_small(key: str, submitted: float) -> GangRequest:
    return req(key, per_worker=2, types=(H100, MI300X), submitted=submitted)


def running_on(request: GangRequest, node: str, kinds: dict[str, GPUType]) -> AdmittedGang:
    return running(request, {node: request.gpus}, kinds[node])


def test_a_job_that_no_fleet_could_hold_does_not_block_the_queue() -> None:
    nodes = fleet(a_node("h0"))
    decision = admit(
        [req("impossible", workers=4), req("fits", submitted=1)], [], pools(a_pool()), nodes, all_free(nodes)
    )
    assert decision.waiting["impossible"].reason == Reason.EXCEEDS_FLEET
    assert decision.admit == {"fits": H100}


def test_any_gpu_type_takes_the_first_type_that_holds_the_whole_gang() -> None:
    nodes = fleet(a_node("h0"), a_node("m0", MI300X), a_node("m1", MI300X))
    decision = admit([req("any", workers=2, types=(H100, MI300X))], [], pools(a_pool()), nodes, all_free(nodes))
    assert decision.admit == {"any": MI300X}


def test_a_pass_gives_each_job_the_first_quoted_node_kind_that_holds_it_counting_the_jobs_before_it() -> None:
    """Issue 21, finding 6. The quote (asked once, kept for the pass) ranks the kinds with room: MI300X reserved
    (one GPU free, $0: paid anyway), H100 spot, MI300X on-demand. Two one-GPU jobs in one pass: the first takes
    the last MI300X reserved GPU, the second H100 spot, where the extender's scores put them. By type alone both
    got MI300X, the quote's first type, and the second ran on MI300X on-demand while H100 spot stood free."""
    nodes = fleet(
        a_node("h-res"),
        a_node("h-spot", capacity="spot"),
        a_node("m-res", MI300X),
        a_node("m-od", MI300X, capacity="on-demand"),
    )
    free = {"h-res": 0, "h-spot": 8, "m-res": 1, "m-od": 8}
    kinds = ((MI300X, "reserved"), (H100, "spot"), (MI300X, "on-demand"))
    a, b = (req(k, per_worker=1, submitted=i, types=(MI300X, H100)) for i, k in enumerate("ab"))
    by_kind = [dataclasses.replace(r, kinds=kinds) for r in (a, b)]
    decision = admit(by_kind, [], pools(a_pool()), nodes, free)
    assert decision.admit == {"a": MI300X, "b": H100}
    # each job's plan: the kind the pass counted it on, which its pods then prefer whatever order they are bound in
    assert decision.planned == {"a": ("reserved",), "b": ("spot",)}
    unquoted = admit([a, b], [], pools(a_pool()), nodes, free)
    assert unquoted.admit == {"a": MI300X, "b": MI300X}  # without kinds
    assert unquoted.planned == {}  # no quote, no plan: the extender's cost order alone


def test_a_quote_older_than_the_fleet_plans_nothing() -> None:
    """The quote was asked while H100 reserved was full (so it lists H100 spot alone) and is kept a while; the
    reserved GPU has freed since. The job still gets H100, but no plan: the quote's order says nothing of the freed
    kind (a free reserved GPU costs nothing), so its pods go by the extender's cost order. A quote that lists every
    kind with room plans as before."""
    nodes = fleet(a_node("h-res"), a_node("h-spot", capacity="spot"))
    free = {"h-res": 1, "h-spot": 8}
    old = dataclasses.replace(req("j", per_worker=1, types=(H100, MI300X)), kinds=((H100, "spot"),))
    stale = admit([old], [], pools(a_pool()), nodes, free)
    assert stale.admit == {"j": H100}
    assert stale.planned == {}
    current = dataclasses.replace(old, kinds=((H100, "reserved"), (H100, "spot")))
    assert admit([current], [], pools(a_pool()), nodes, free).planned == {"j": ("reserved",)}
    full = {"h-res": 0, "h-spot": 8}  # the reserved node full, as when the old quote was asked: it is current
    assert admit([old], [], pools(a_pool()), nodes, full).planned == {"j": ("spot",)}


def test_a_gang_is_counted_where_the_extender_puts_its_workers_its_kinds_cheapest_first() -> None:
    """Two 8-GPU workers: MI300X on-demand (two nodes) is the first quoted kind that holds the whole gang, so it
    gets MI300X; the extender places its workers one by one, cheapest first, so admission counts the MI300X
    reserved node and one on-demand node. The next job then finds MI300X reserved full and takes H100 spot. Best
    fit over every capacity type (by name among equals) counted the gang on both on-demand nodes and gave the
    next job the reserved one, which the gang's first worker was about to take. With one on-demand node no single
    kind holds the gang: it takes the first type that does, counted the same way."""
    nodes = fleet(
        a_node("h-spot", capacity="spot"),
        a_node("m-res", MI300X),
        a_node("m-od1", MI300X, capacity="on-demand"),
        a_node("m-od2", MI300X, capacity="on-demand"),
    )
    kinds = ((MI300X, "reserved"), (H100, "spot"), (MI300X, "on-demand"))
    gang = req("gang", workers=2, types=(MI300X, H100))
    small = req("small", submitted=1, types=(MI300X, H100))
    queue = [dataclasses.replace(r, kinds=kinds) for r in (gang, small)]
    decision = admit(queue, [], pools(a_pool()), nodes, all_free(nodes))
    assert decision.admit == {"gang": MI300X, "small": H100}
    assert decision.planned == {"gang": ("on-demand", "reserved"), "small": ("spot",)}  # in the API's order
    assert admit([gang, small], [], pools(a_pool()), nodes, all_free(nodes)).admit == {"gang": MI300X, "small": MI300X}
    three = nodes[:3]
    assert admit(queue, [], pools(a_pool()), three, all_free(three)).admit == {"gang": MI300X, "small": H100}


def test_an_admitted_gangs_unbound_workers_are_counted_on_its_quoted_kinds_cheapest_first() -> None:
    """A is admitted on MI300X, its 4-GPU worker not bound yet. The extender will put it on the reserved node (its
    quote's first kind), so an 8-GPU job finds no whole node; counted best fit (the fullest node, spot) the reserved
    node looked free, and the 8-GPU job was admitted where A's worker was about to go."""
    nodes = fleet(a_node("m-res", MI300X), a_node("m-spot", MI300X, capacity="spot"))
    free = {"m-res": 8, "m-spot": 4}
    quoted = req("a", per_worker=4, types=(MI300X, H100))
    starting = AdmittedGang(
        request=dataclasses.replace(quoted, kinds=((MI300X, "reserved"), (MI300X, "spot"))),
        gpu_type=MI300X,
        admitted_at=T0,
        unbound_workers=1,
    )
    big = req("big", submitted=1, types=(MI300X,))
    assert admit([big], [starting], pools(a_pool()), nodes, free).admit == {}
    unquoted = dataclasses.replace(starting, request=quoted)
    assert admit([big], [unquoted], pools(a_pool()), nodes, free).admit == {"big": MI300X}


def test_quoted_kinds_outside_the_pool_or_the_job_are_passed_over() -> None:
    """The pool allows spot only: the quoted MI300X reserved kind is not the job's to take, H100 spot is."""
    nodes = fleet(a_node("h-spot", capacity="spot"), a_node("m-res", MI300X))
    pool = a_pool(capacityTypes=["spot"])
    request = dataclasses.replace(req("j", types=(MI300X, H100)), kinds=((MI300X, "reserved"), (H100, "spot")))
    assert admit([request], [], pools(pool), nodes, all_free(nodes)).admit == {"j": H100}


def test_pool_gpu_types_and_capacity_types_restrict_the_job() -> None:
    nodes = fleet(a_node("spot", capacity="spot"), a_node("res", MI300X, capacity="reserved"))
    pool = a_pool(gpuTypes=["MI300X"], capacityTypes=["spot"])
    decision = admit([req("j", types=(H100, MI300X))], [], pools(pool), nodes, all_free(nodes))
    assert decision.admit == {}
    assert decision.waiting["j"].reason == Reason.EXCEEDS_FLEET  # MI300X only on reserved; H100 not allowed
    missing = admit([req("k", types=(H100,))], [], pools(pool), nodes, all_free(nodes))
    assert missing.waiting["k"].reason == Reason.NO_USABLE_GPUS


def test_a_pools_on_demand_line_keeps_jobs_expected_to_run_longer_off_on_demand_gpus() -> None:
    """onDemandMaxDurationSeconds 3600 and only the on-demand node free: a job expected to run two hours waits for
    spot or reserved; one of an hour (the line itself), a shorter one and one without an estimate take on-demand."""
    nodes = fleet(a_node("h-spot", capacity="spot"), a_node("h-od", capacity="on-demand"))
    pool = a_pool(onDemandMaxDurationSeconds=3600)
    spot_busy = {"h-spot": 0, "h-od": 8}

    def expecting(key: str, seconds: float | None) -> GangRequest:
        return dataclasses.replace(req(key), expected_duration_s=seconds)

    long = admit([expecting("long", 7200)], [], pools(pool), nodes, spot_busy)
    assert long.admit == {}
    assert long.waiting["long"].reason == Reason.WAITING_FOR_GPUS
    for key, seconds in (("line", 3600), ("short", 600), ("unknown", None)):
        assert admit([expecting(key, seconds)], [], pools(pool), nodes, spot_busy).admit == {key: H100}, key
    assert admit([expecting("long", 7200)], [], pools(pool), nodes, {"h-spot": 8, "h-od": 8}).admit == {"long": H100}
    assert admit([expecting("long", 7200)], [], pools(a_pool()), nodes, spot_busy).admit == {"long": H100}


def test_unbound_workers_of_admitted_gangs_keep_their_room_reserved() -> None:
    nodes = fleet(a_node("a"), a_node("b"))
    starting = AdmittedGang(request=req("starting", workers=1), gpu_type=H100, admitted_at=T0, unbound_workers=1)
    decision = admit([req("next", workers=2, submitted=1)], [starting], pools(a_pool()), nodes, all_free(nodes))
    assert decision.admit == {}


def test_higher_priority_preempts_the_lowest_priority_most_recent_preemptible_jobs_only_as_needed() -> None:
    nodes = fleet(a_node("a"), a_node("b"), a_node("c"))
    high = a_pool("high", priority=100)
    mid = a_pool("mid", priority=50, preemptible=True)
    low = a_pool("low", priority=10, preemptible=True)
    admitted = [
        running(req("mid-job", pool="mid"), {"a": 8}, admitted=0),
        running(req("low-old", pool="low"), {"b": 8}, admitted=1),
        running(req("low-new", pool="low"), {"c": 8}, admitted=2),
    ]
    free = {"a": 0, "b": 0, "c": 0}

    decision = admit([req("urgent", pool="high", submitted=10)], admitted, pools(high, mid, low), nodes, free)

    assert [p.victim for p in decision.preempt] == ["low-new"]
    assert decision.preempt[0].by == "urgent"
    assert decision.waiting["urgent"].reason == Reason.WAITING_FOR_PREEMPTION
    assert decision.admit == {}


def test_non_preemptible_and_equal_priority_jobs_are_never_preempted() -> None:
    nodes = fleet(a_node("a"), a_node("b"))
    high = a_pool("high", priority=100)
    steady = a_pool("steady", priority=10, preemptible=False)
    peer = a_pool("peer", priority=100, preemptible=True)
    admitted = [running(req("s", pool="steady"), {"a": 8}), running(req("p", pool="peer"), {"b": 8})]

    decision = admit([req("urgent", pool="high")], admitted, pools(high, steady, peer), nodes, {"a": 0, "b": 0})

    assert decision.preempt == []
    assert decision.waiting["urgent"].reason == Reason.WAITING_FOR_GPUS


def test_no_preemption_when_even_all_victims_would_not_make_room() -> None:
    nodes = fleet(a_node("a"), a_node("b"))
    high, low = a_pool("high", priority=100), a_pool("low", priority=1, preemptible=True)
    admitted = [running(req("low-job", pool="low"), {"a": 8})]
    foreign = {"a": 0, "b": 0}  # node b is held by someone else's pods
    decision = admit([req("urgent", pool="high", workers=2)], admitted, pools(high, low), nodes, foreign)
    assert decision.preempt == []


@pytest.mark.parametrize(("mi300x_busy", "preempts"), [(6, False), (3, True)])
def test_no_preemption_for_gpus_that_would_turn_a_waiting_head_ahead_to_them(mi300x_busy: int, preempts: bool) -> None:
    """A head of the queue (8 GPUs, either type) can preempt nothing and reserves MI300X, where it lacks the fewest
    GPUs. A later job of its priority (4 GPUs) could preempt four low-priority jobs on H100; but with 6 MI300X GPUs
    busy, freeing 4 H100 GPUs would make H100 the head's nearest type: at the next pass the head reserves them, the
    later job cannot take them, the low-priority jobs come back onto them, and the later job preempts them again (a
    livelock the Alibaba replay on a 40-GPU fleet ran into). With 3 busy the head stays on MI300X and the
    preemption goes ahead."""
    nodes = fleet(a_node("h", H100, "on-demand"), a_node("m", MI300X, "reserved"))
    high, steady = a_pool("high", priority=100), a_pool("steady", priority=50)
    low = a_pool("low", priority=1, preemptible=True)
    admitted = [
        running(req("steady-h", per_worker=4, pool="steady"), {"h": 4}),
        *(running(req(f"low-{i}", per_worker=1, pool="low"), {"h": 1}, admitted=i) for i in range(4)),
        running(req("steady-m", per_worker=mi300x_busy, pool="steady", types=(MI300X,)), {"m": mi300x_busy}, MI300X),
    ]
    free = {"h": 0, "m": 8 - mi300x_busy}
    both = (H100, MI300X)
    queue = [req("head", pool="high", types=both), req("later", per_worker=4, pool="high", submitted=1, types=both)]

    decision = admit(queue, admitted, pools(high, steady, low), nodes, free)

    assert decision.waiting["head"].reason == Reason.WAITING_FOR_GPUS
    if preempts:
        assert sorted(p.victim for p in decision.preempt) == ["low-0", "low-1", "low-2", "low-3"]
        assert decision.waiting["later"].reason == Reason.WAITING_FOR_PREEMPTION
    else:
        assert decision.preempt == []
        assert decision.waiting["later"].reason == Reason.WAITING_FOR_GPUS


def test_unknown_pool_waits_with_a_reason() -> None:
    nodes = fleet(a_node("a"))
    decision = admit([req("lost", pool="nope")], [], {}, nodes, all_free(nodes))
    assert decision.waiting["lost"].reason == Reason.POOL_NOT_FOUND
    assert "nope" in decision.waiting["lost"].message


def test_unschedulable_and_cpu_nodes_hold_no_gangs() -> None:
    cordoned = Node("a", H100, "reserved", 8, schedulable=False, price_per_hour=None)
    cpu = a_node("cpu", gpu=None)
    decision = admit([req("j")], [], pools(a_pool()), [cordoned, cpu], {"a": 8, "cpu": 0})
    assert decision.admit == {}


def test_one_pass_over_a_thousand_jobs_and_four_thousand_nodes_stays_well_under_a_second() -> None:
    kinds = [(H100, "spot"), (MI300X, "reserved"), (H100, "on-demand"), (MI300X, "spot")]
    nodes = [a_node(f"n{i}", *kinds[i % 4]) for i in range(4000)]
    queue = [req(f"j{i}", workers=8, submitted=i, types=(H100, MI300X)) for i in range(1000)]
    started = time.perf_counter()
    decision = admit(queue, [], pools(a_pool(max_gpus=10**6)), nodes, all_free(nodes))
    elapsed = time.perf_counter() - started
    assert len(decision.admit) == 500  # 4000 nodes hold 500 gangs of 8 whole-node workers
    assert elapsed < 2.0, f"admission pass took {elapsed:.2f}s"


def test_the_pools_inference_replicas_hold_quota_a_job_waits_for_and_gets_when_they_go() -> None:
    nodes = fleet(*(a_node(f"n{i}") for i in range(4)))  # 32 H100s free: only the quota stands in the way
    pool = a_pool(max_gpus=16)
    chat = a_service("chat", resources={"gpuType": "H100", "gpusPerReplica": 4})
    idle = a_service("idle", resources={"gpuType": "H100", "gpusPerReplica": 4})
    shares = serving.serving_shares([(chat, {"desiredReplicas": 3}), (idle, {"desiredReplicas": 0})])
    job = req("train", workers=1)  # 8 GPUs; 16 - 3 x 4 leaves 4

    waiting = admit([job], [], pools(pool), nodes, all_free(nodes), serving=shares)

    assert waiting.admit == {}
    assert waiting.waiting["train"].reason == Reason.WAITING_FOR_QUOTA
    assert waiting.waiting["train"].message == (
        "needs 8 GPUs; pool pool has 4 of 16 left; the pool's InferenceServices' replicas hold 12 of them "
        "(team/chat 12)"
    )
    # the service gone (or scaled to 1 replica: 4 GPUs), the job fits
    assert admit([job], [], pools(pool), nodes, all_free(nodes), serving={}).admit == {"train": H100}
    one = serving.serving_shares([(chat, {"desiredReplicas": 1})])
    assert admit([job], [], pools(pool), nodes, all_free(nodes), serving=one).admit == {"train": H100}


def test_cpu_replicas_hold_a_pools_cpu_quota_against_cpu_jobs() -> None:
    pool = a_pool(max_gpus=0, maxCPUs=4)
    chat = a_service("chat", resources={"gpuType": "CPU", "cpuPerReplica": "1500m", "memoryPerReplica": "1Gi"})
    shares = serving.serving_shares([(chat, {"desiredReplicas": 2})])  # 3 CPUs
    job = dataclasses.replace(req("cpu", types=()), cpu_millis=2000)

    decision = admit([job], [], pools(pool), [], {}, serving=shares)

    assert decision.admit_cpu == []
    assert decision.waiting["cpu"].message == (
        "needs 2 CPUs; pool pool has 1 of 4 left; the pool's InferenceServices' replicas hold 3 of them (team/chat 3)"
    )
    gpu_share = serving.serving_shares([(a_service("g", resources={"gpuType": "H100"}), {"desiredReplicas": 4})])
    assert admit([job], [], pools(pool), [], {}, serving=gpu_share).admit_cpu == ["cpu"]  # GPUs are not CPUs


def test_a_pass_given_the_callers_rooms_decides_as_one_that_builds_them_and_leaves_them_as_they_were() -> None:
    """A replay keeps the fleet's rooms across passes: given them, a pass that admits one gang, preempts for
    another and leaves a third waiting decides exactly as one that builds them, and takes GPUs on a copy."""
    nodes = fleet(a_node("a"), a_node("b"), a_node("c", capacity="spot"), a_node("d", MI300X))
    free = {"a": 0, "b": 8, "c": 8, "d": 0}
    the_pools = pools(a_pool("high", priority=100), a_pool("low", priority=10, preemptible=True))
    low = running(req("low-1", 1, 8, pool="low"), {"a": 8}, admitted=5)
    queue = [
        req("fits", 1, 8, pool="high", submitted=1),
        req("preempts", 2, 8, pool="high", submitted=2),
        req("waits", 1, 8, pool="low", submitted=3, types=(MI300X,)),
    ]
    usable = [n for n in nodes if n.gpu_type is not None and n.schedulable]
    room, empty = Room(usable, free), Room(usable, all_free(usable))
    before = (dict(room.free), {k: {a: set(n) for a, n in b.items()} for k, b in room.buckets.items()})

    given = admit(queue, [low], the_pools, nodes, free, rooms=(room, empty))

    assert given == admit(queue, [low], the_pools, nodes, free)
    assert given.admit == {"fits": H100}
    assert [p.victim for p in given.preempt] == ["low-1"]
    assert given.waiting["waits"].reason == Reason.WAITING_FOR_GPUS
    assert (room.free, room.buckets) == before
