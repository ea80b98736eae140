"""What a job's daemon holds back or does not redo between passes: throttled status writes, workers it created and
gates it lifted that the watch does not show yet."""

from __future__ import annotations

from dataclasses import replace

from operator_builders import T0, a_worker

from strata_api import Phase
from strata_operator.core.follow import REDO_AFTER_S, DaemonMemory, Work, coalesce_s
from strata_operator.core.lifecycle import Plan
from strata_operator.core.observed import WorkerPod
from strata_operator.core.status import StatusDraft


def a_plan(**changes: object) -> Plan:
    plan = Plan(StatusDraft(stored={}, now=T0))
    for key, value in changes.items():
        plan.status.set(key, value)
    return plan


def gated(index: int, uid: str) -> WorkerPod:
    return replace(a_worker("j", index, phase="Pending", gated=True), uid=uid)


def written_at(seconds: float) -> DaemonMemory:
    return DaemonMemory(status_written_at=seconds)


def test_a_change_that_only_follows_the_gang_waits_until_the_jobs_next_write_is_due() -> None:
    plan = a_plan(workers={"ready": 1, "total": 2}, progress={"step": 7})
    assert written_at(100.0).holds_back(plan, now_s=102.0, jobs=1)
    assert plan.requeue_after_s == 3.0  # written at 100 s, one write per 5 s per job
    assert not written_at(100.0).holds_back(a_plan(workers={"ready": 2, "total": 2}), now_s=105.0, jobs=1)


def test_a_new_daemons_first_follow_up_waits_one_interval_from_its_start() -> None:
    # The daemon starts with the clock at its birth (the job's first writes are the admission pass's): the
    # counters of a gang that starts within the interval reach the status with its phase change, in one write.
    born = DaemonMemory(status_written_at=100.0)
    assert born.holds_back(a_plan(workers={"ready": 0, "total": 8}), now_s=101.0, jobs=1)
    assert not born.holds_back(a_plan(workers={"ready": 0, "total": 8}), now_s=105.0, jobs=1)


def test_the_interval_grows_with_the_number_of_jobs_followed() -> None:
    assert coalesce_s(1) == 5.0
    assert coalesce_s(500) == 25.0  # all jobs together: about 20 follow-up writes a second
    plan = a_plan(progress={"step": 2})
    assert written_at(100.0).holds_back(plan, now_s=110.0, jobs=500)
    assert plan.requeue_after_s == 15.0


def test_phase_changes_and_events_are_written_at_once() -> None:
    phase = a_plan(workers={"ready": 2, "total": 2})
    phase.status.transition(Phase.RUNNING, "AllWorkersRunning", "all 2 workers are running")
    assert not written_at(100.0).holds_back(phase, now_s=101.0, jobs=1)
    assert phase.requeue_after_s is None
    assert not written_at(100.0).holds_back(a_plan(), now_s=101.0, jobs=1)  # nothing to write


def test_a_plan_that_comes_back_sooner_keeps_its_own_time() -> None:
    plan = a_plan(progress={"step": 4})
    plan.requeue_after_s = 1.0
    assert written_at(100.0).holds_back(plan, now_s=101.0, jobs=1)
    assert plan.requeue_after_s == 1.0


def test_a_worker_created_is_not_created_again_until_the_watch_shows_it_or_redo_after_s_passes() -> None:
    memory = DaemonMemory()
    plan = a_plan()
    plan.create_workers = [0, 1]
    memory.creating(attempt=1, indices=[0, 1], now_s=10.0)
    memory.settle([], now_s=11.0)
    assert list(memory.work(plan, [], attempt=1, has_pool=True).create) == []
    assert list(memory.work(plan, [], attempt=2, has_pool=True).create) == [0, 1]  # a new attempt: new pods
    memory.settle([a_worker("j", 0, attempt=1)], now_s=12.0)  # the watch shows worker 0: forgotten
    assert memory.created == {"1/1": 10.0}
    memory.settle([], now_s=10.0 + REDO_AFTER_S)  # never shown: created again after REDO_AFTER_S
    assert list(memory.work(plan, [], attempt=1, has_pool=True).create) == [0, 1]


def test_a_failed_creation_is_forgotten_and_no_pool_creates_nothing() -> None:
    memory = DaemonMemory()
    plan = a_plan()
    plan.create_workers = [0]
    keys = memory.creating(attempt=1, indices=[0], now_s=0.0)
    memory.forget(keys)
    assert list(memory.work(plan, [], attempt=1, has_pool=True).create) == [0]
    assert list(memory.work(plan, [], attempt=1, has_pool=False).create) == []


def test_only_gates_still_ours_are_lifted() -> None:
    memory = DaemonMemory(lifted={"u1"})
    pods = [gated(0, "u0"), gated(1, "u1"), a_worker("j", 2)]
    plan = a_plan()
    plan.lift_gates = ["j-worker-0", "j-worker-1", "j-worker-2", "j-worker-3"]
    work = memory.work(plan, pods, attempt=1, has_pool=True)
    # worker 1 was lifted by this daemon already, worker 2 is not gated, worker 3 does not exist
    assert [p.name for p in work.lift] == ["j-worker-0"]
    memory.settle(pods[:1], now_s=0.0)  # a pod the view no longer shows is forgotten (a new one has a new uid)
    assert memory.lifted == set()


def test_gates_that_wait_for_their_creations_are_not_lifted_before() -> None:
    plan = a_plan()
    plan.create_workers = [1]
    plan.lift_gates = ["j-worker-0", "j-worker-1"]
    plan.lift_when_created = True
    work = DaemonMemory().work(plan, [gated(0, "u0")], attempt=1, has_pool=True)
    assert list(work.create) == [1]
    assert list(work.lift) == []
    assert work
    assert not Work()
