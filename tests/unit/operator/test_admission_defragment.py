"""Rule 10, defragmentation (a pool's ``defragmentAfterSeconds``): a gang no node holds, waiting past its pool's
setting, moves smaller jobs off one node when they fit elsewhere now, and is admitted there at once.

The fleet of most tests: two 8-GPU H100 nodes. On ``a`` a 1-GPU job runs alone (7 free); on ``b`` a 4-GPU job
(4 free). The gang, 8 GPUs on one node, was submitted at T0 and the pass runs 10 hours later: no node holds it,
though 11 GPUs are free."""

from __future__ import annotations

from operator_builders import a_node, a_pool, at

from strata_api import GPUType, PlannedNode, ResourcePool
from strata_operator.core.admission import (
    AdmittedGang,
    Decision,
    GangRequest,
    Preemption,
    Reason,
    admit,
    admitted_after_moves,
)

H100 = GPUType.H100
HOUR = 3600
NOW = 10 * HOUR


def req(
    key: str, gpus: int, pool: str = "pool", submitted: float = 0, workers: int = 1, spot: bool = False
) -> GangRequest:
    """``workers`` of ``gpus`` H100 GPUs each, on reserved nodes (and spot ones with ``spot``)."""
    return GangRequest(
        key=key,
        pool=pool,
        workers=workers,
        gpus_per_worker=gpus,
        pods_per_group=1,
        gpu_types=(H100,),
        capacity_types=frozenset({"reserved", "spot"} if spot else {"reserved"}),
        submitted=at(submitted),
    )


def holding(key: str, nodes: dict[str, int], pool: str = "pool", admitted: float = HOUR) -> AdmittedGang:
    gpus = sum(nodes.values())
    return AdmittedGang(req(key, gpus // len(nodes), pool, workers=len(nodes)), H100, at(admitted), nodes)


def a_pass(
    queue: list[GangRequest],
    running: list[AdmittedGang],
    free: dict[str, int],
    *pools: ResourcePool,
    nodes: tuple[str, ...] = ("a", "b"),
    spot: tuple[str, ...] = (),
) -> Decision:
    """One pass at NOW on reserved 8-GPU H100 nodes ``nodes`` and spot ones ``spot``; ``pools`` default to one,
    "pool", whose gangs move others after an hour."""
    by_name = {p.name: p for p in pools or (a_pool("pool", defragmentAfterSeconds=HOUR), a_pool("fixed", priority=90))}
    fleet = [a_node(n) for n in nodes] + [a_node(n, capacity="spot") for n in spot]
    return admit(queue, running, by_name, fleet, free, now=at(NOW))


def test_a_gang_waiting_past_its_pools_setting_moves_a_smaller_job_off_a_node_and_is_admitted_there() -> None:
    decision = a_pass([req("wide", 8)], [holding("one", {"a": 1}), holding("four", {"b": 4})], {"a": 7, "b": 4})

    assert decision.admit == {"wide": H100}
    assert decision.defragmented == {"wide": PlannedNode("a", 8)}
    assert [(p.victim, p.by) for p in decision.preempt] == [("one", "wide")]
    assert decision.preempt[0].message == (
        "moved off node a to make room for wide (1 workers x 8 GPUs), which no node held for 36000 s (pool pool's "
        "defragmentAfterSeconds is 3600); it fits on other nodes now"
    )
    assert "wide" not in decision.waiting


def test_the_moved_jobs_room_elsewhere_is_counted_for_the_rest_of_the_pass() -> None:
    """``one`` will need a GPU of b's four: a later 4-GPU job of the pass finds three and waits."""
    queue = [req("wide", 8), req("later", 4, submitted=60)]

    decision = a_pass(queue, [holding("one", {"a": 1}), holding("four", {"b": 4})], {"a": 7, "b": 4})

    assert decision.admit == {"wide": H100}
    assert decision.waiting["later"].reason == Reason.WAITING_FOR_GPUS


def test_nothing_moves_before_the_gang_has_waited_the_pools_setting_nor_without_one() -> None:
    running, free = [holding("one", {"a": 1}), holding("four", {"b": 4})], {"a": 7, "b": 4}
    for pool in (a_pool("pool", defragmentAfterSeconds=11 * HOUR), a_pool("pool")):
        decision = a_pass([req("wide", 8)], running, free, pool)

        assert (decision.admit, decision.preempt) == ({}, [])
        assert decision.waiting["wide"].reason == Reason.WAITING_FOR_GPUS


def test_a_job_that_would_not_fit_on_another_node_now_is_not_moved() -> None:
    decision = a_pass([req("wide", 8)], [holding("one", {"a": 1}), holding("eight", {"b": 8})], {"a": 7, "b": 0})

    assert (decision.admit, decision.preempt) == ({}, [])


def test_only_jobs_of_the_gangs_own_pool_or_of_preemptible_lower_priority_pools_are_moved() -> None:
    """The gang's pool has priority 50; the 1-GPU job on a belongs to each other pool in turn (b's job to a pool of
    higher priority)."""
    gangs, fixed = a_pool("gangs", priority=50, defragmentAfterSeconds=0), a_pool("fixed", priority=90)
    others = {
        "higher": a_pool("higher", priority=60, preemptible=True),
        "equal": a_pool("equal", priority=50, preemptible=True),
        "lower-kept": a_pool("lower-kept", priority=10),
        "lower-preemptible": a_pool("lower-preemptible", priority=10, preemptible=True),
    }
    moved = {}
    for name, pool in others.items():
        running = [holding("one", {"a": 1}, pool=name), holding("four", {"b": 4}, pool="fixed")]
        decision = a_pass([req("wide", 8, pool="gangs")], running, {"a": 7, "b": 4}, gangs, fixed, pool)
        moved[name] = [p.victim for p in decision.preempt]

    assert moved == {"higher": [], "equal": [], "lower-kept": [], "lower-preemptible": ["one"]}


def test_only_jobs_smaller_than_the_gang_all_on_the_node_are_moved() -> None:
    """A 4-GPU gang: b's 4-GPU job is as large as it; the 2-GPU job with a worker on a and one on c is not all on
    one node; only the 1-GPU job on a moves (to b's free GPU; an earlier job of the pass fills c)."""
    running = [holding("four", {"b": 4}), holding("split", {"a": 1, "c": 1}), holding("one", {"a": 1})]
    free = {"a": 3, "b": 1, "c": 7}
    queue = [req("gang", 4), req("fill-c", 7, submitted=-1)]

    decision = a_pass(queue, running, free, nodes=("a", "b", "c"))

    assert decision.admit == {"fill-c": H100, "gang": H100}
    assert decision.defragmented == {"gang": PlannedNode("a", 4)}
    assert [p.victim for p in decision.preempt] == ["one"]


def test_jobs_with_as_many_gpus_as_the_gang_are_not_moved() -> None:
    """The 4-GPU gang takes reserved nodes only; a holds two 4-GPU jobs that could move to the spot node's four free
    GPUs, but moving one would move as much work as the gang starts."""
    running = [holding("x", {"a": 4}), AdmittedGang(req("y", 4, spot=True), H100, at(2 * HOUR), {"a": 4})]

    decision = a_pass([req("gang", 4)], running, {"a": 0, "s": 4}, nodes=("a",), spot=("s",))

    assert (decision.admit, decision.preempt) == ({}, [])


def test_a_moved_job_never_counts_the_node_it_leaves() -> None:
    """Moving the 2-worker job off a leaves one GPU there after the gang, and b has one free: its two workers
    would fit only with a's, so it stays."""
    pair = AdmittedGang(req("pair", 1, workers=2), H100, at(HOUR), {"a": 2})
    running = [pair, holding("base", {"a": 3}, pool="fixed"), holding("b7", {"b": 7}, pool="fixed")]

    decision = a_pass([req("gang", 4)], running, {"a": 3, "b": 1})

    assert (decision.admit, decision.preempt) == ({}, [])


def test_the_node_that_moves_the_fewest_gpus_is_chosen() -> None:
    """Moving off a takes two 1-GPU jobs, off b one 2-GPU job, off d one 1-GPU job: d is chosen."""
    running = [holding("a1", {"a": 1}), holding("a2", {"a": 1}), holding("b2", {"b": 2}), holding("d1", {"d": 1})]

    decision = a_pass([req("wide", 8)], running, {"a": 6, "b": 6, "d": 7}, nodes=("a", "b", "d"))

    assert decision.defragmented == {"wide": PlannedNode("d", 8)}
    assert [p.victim for p in decision.preempt] == ["d1"]


def test_at_the_next_passes_the_emptied_node_stays_the_gangs_while_the_moved_job_leaves() -> None:
    """The gang was admitted on a, emptied for it; its worker is not bound yet, as the moved 1-GPU job's pod still
    checkpoints there (a has 7 free). A 6-GPU job that a's free GPUs would hold is not admitted onto them: they are
    the gang's, and no other node holds the job (nor may it move b's job, which fits nowhere else now)."""
    gang = AdmittedGang(req("gang", 8), H100, at(NOW - 60), {}, unbound_workers=1, planned_node=PlannedNode("a", 8))
    running = [gang, holding("four", {"b": 4})]

    decision = a_pass([req("six", 6, submitted=-1)], running, {"a": 7, "b": 4})
    assert decision.admit == {}
    assert (decision.waiting["six"].reason, decision.preempt) == (Reason.WAITING_FOR_GPUS, [])

    unplanned = AdmittedGang(req("gang", 8), H100, at(NOW - 60), {}, unbound_workers=1)  # as before the plan
    assert a_pass([req("six", 6, submitted=-1)], [unplanned, running[1]], {"a": 7, "b": 4}).admit == {"six": H100}


def test_a_gang_keeps_of_its_emptied_node_only_what_its_workers_counted_there_need() -> None:
    """Two 4-GPU workers; the pass counted one on a (4 GPUs), the other is bound on b. a has 7 free (a moved 1-GPU
    pod still there): 4 stay the gang's, 3 are anyone's; b is full."""
    gang = AdmittedGang(req("gang", 4, workers=2), H100, at(NOW - 60), {"b": 4}, unbound_workers=1,
                        planned_node=PlannedNode("a", 4))  # fmt: skip
    decision = a_pass([req("three", 3), req("four", 4, submitted=1)], [gang], {"a": 7, "b": 0})
    assert decision.admit == {"three": H100}


def test_a_job_rule_10_made_room_for_is_written_admitted_only_once_every_job_it_moves_is_written_requeued() -> None:
    """Admitted first, it would record room whose moves a killed operator (or a moved job changed meanwhile) lost,
    and nothing would move them again."""
    decision = Decision(
        admit={"ns/head": GPUType.H100, "ns/plain": GPUType.H100},
        preempt=[Preemption("ns/a", "ns/head", "moved"), Preemption("ns/b", "ns/head", "moved")],
        defragmented={"ns/head": PlannedNode("n0", 8)},
    )
    assert admitted_after_moves(decision, ["ns/a", "ns/b"]) == {"ns/head": GPUType.H100, "ns/plain": GPUType.H100}
    assert admitted_after_moves(decision, ["ns/a"]) == {"ns/plain": GPUType.H100}
    assert admitted_after_moves(decision, []) == {"ns/plain": GPUType.H100}
    # a plain preemption's preemptor is not admitted in the same pass: its victims' writes hold nothing back
    plain = Decision(admit={"ns/other": GPUType.H100}, preempt=[Preemption("ns/c", "ns/waiting", "preempted")])
    assert admitted_after_moves(plain, []) == {"ns/other": GPUType.H100}
