"""An operator SIGKILLed (no clean-up) right after the status writes that move a TrainingJob's gang: admitted,
running, succeeded, preempted, restarted after a spot reclaim. Each time the new operator must finish what the
spec and state ask and nothing else: the gang whole (no pod missing, none twice, none of an old attempt), the
pool's accounting what the jobs hold, and each of those moments' Events present exactly once.

The Events are the narrow window: the job's status records the moment, so no later pass tells of it again, and an
Event kopf had only queued behind the write dies with the operator (docs/operator.md, "Events"). Pods, by
contrast, follow from the recorded state at every pass (a gang half created, a preempted gang's pods not yet
deleted, a lost node's pods not yet replaced are all finished by the next operator), which the restarts here
check on the way."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from cluster_support import eventually
from operator_harness import OperatorProcess, Strata, kill_at_write
from operator_manifests import a_job
from test_trainingjobs import restore_node

import strata_api as api

pytestmark = pytest.mark.timeout(300)


def kill_at_phase(
    strata: Strata, operator: OperatorProcess, name: str, phase: str, change: Callable[[], None]
) -> dict[str, Any]:
    """Make ``change`` and SIGKILL the operator as job ``name``'s status first enters ``phase``; the status as
    written."""
    return kill_at_write(
        operator,
        strata.custom,
        strata.namespace,
        api.TRAINING_JOBS,
        name,
        lambda status: status.get("phase") == phase,
        change,
    )


def gang_whole(strata: Strata, name: str, workers: int, attempt: int) -> None:
    """The job's pods are exactly its current attempt's workers, each once, ungated."""

    def whole() -> bool:
        pods = strata.pods(name)
        names = [p.metadata.name for p in pods]
        return (
            names == [f"{name}-worker-{i}" for i in range(workers)]
            and {p.metadata.labels[api.LABEL_ATTEMPT] for p in pods} == {str(attempt)}
            and all(p.metadata.deletion_timestamp is None and not p.spec.scheduling_gates for p in pods)
        )

    eventually(whole, 60, f"{name}'s gang whole at attempt {attempt}: {[p.metadata.name for p in strata.pods(name)]}")


def events_once(strata: Strata, name: str, expected: Counter[str]) -> None:
    """Each of ``expected``'s Events about the job exists exactly that many times (waited for, then checked to
    stay so a moment: a repost would come from the new operator's first passes)."""
    try:
        eventually(lambda: Counter(strata.events(name)) >= expected, 30, f"{name}'s Events {dict(expected)}")
    except AssertionError as error:
        raise AssertionError(f"{error}; seen: {dict(Counter(strata.events(name)))}") from None
    seen = Counter(strata.events(name))
    assert {r: seen[r] for r in expected} == dict(expected), f"{name}'s Events: {dict(seen)}"


def pool_holds(strata: Strata, pool: str, gpus: int, jobs: int) -> None:
    def holds() -> bool:
        body = strata.custom.get_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, pool)
        status = body.get("status") or {}
        return status.get("gpusInUse") == gpus and status.get("admittedJobs") == jobs

    eventually(holds, 30, f"pool {pool} holding {gpus} GPUs for {jobs} job(s)")


def test_an_operator_killed_after_each_write_of_a_gangs_life_loses_no_event_and_no_pod(
    operator: OperatorProcess, strata: Strata
) -> None:
    pool = strata.pool("team")
    # admitted straight from submission: killed as the admission pass's write lands (pods not yet made)
    kill_at_phase(strata, operator, "llm", "Admitted", lambda: strata.submit(a_job("llm", pool, data=3)))
    # the next operator makes the gang; killed as it writes Running
    kill_at_phase(strata, operator, "llm", "Running", operator.start)
    operator.start()
    gang_whole(strata, "llm", 3, attempt=1)
    pool_holds(strata, pool, 24, 1)
    events_once(strata, "llm", Counter(Admitted=1, AllWorkersRunning=1))

    done = kill_at_phase(strata, operator, "llm", "Succeeded", lambda: strata.exit_workers("llm", 0))
    assert done["reason"] == "AllWorkersSucceeded"
    operator.start()
    pool_holds(strata, pool, 0, 0)
    events_once(strata, "llm", Counter(Admitted=1, AllWorkersRunning=1, AllWorkersSucceeded=1))
    assert strata.status("llm")["phase"] == "Succeeded"


def test_an_operator_killed_halfway_through_a_preemption_finishes_it_once(
    operator: OperatorProcess, strata: Strata
) -> None:
    low = strata.pool("low", priority=1, preemptible=True)
    high = strata.pool("high", priority=100)
    strata.submit(a_job("batch", low, data=4))  # all 32 H100 GPUs
    strata.wait_phase("batch", "Running")
    # the victim written Queued (Preempted), its pods still there: killed before they go and the preemptor is in
    written = kill_at_phase(strata, operator, "batch", "Queued", lambda: strata.submit(a_job("urgent", high, data=2)))
    assert written["reason"] == "Preempted"
    operator.start()
    strata.wait_phase("urgent", "Running", timeout_s=60)
    gang_whole(strata, "urgent", 2, attempt=1)
    events_once(strata, "batch", Counter(Preempted=1))
    events_once(strata, "urgent", Counter(Admitted=1, AllWorkersRunning=1))
    # the victim (32 GPUs) waits beside the 16 the preemptor holds, none of its old pods left holding any
    eventually(lambda: strata.pods("batch") == [], 30, "the preempted gang's pods gone")
    assert strata.status("batch")["phase"] == "Queued"
    pool_holds(strata, high, 16, 1)
    pool_holds(strata, low, 0, 0)


def test_an_operator_killed_as_it_restarts_a_gang_after_a_spot_reclaim_replaces_it_once(
    operator: OperatorProcess, strata: Strata
) -> None:
    pool = strata.pool("spot", gpuTypes=["MI300X"], capacityTypes=["spot", "reserved"])
    strata.submit(a_job("resilient", pool, data=2, gpu_type="MI300X", backoffLimit=5))
    strata.wait_phase("resilient", "Running")
    victim = strata.pods("resilient")[1].spec.node_name
    saved = strata.core.read_node(victim)
    try:
        written = kill_at_phase(strata, operator, "resilient", "Restarting", lambda: strata.core.delete_node(victim))
        assert written["reason"] == "NodeLost"
        operator.start()
        running = strata.wait_phase("resilient", "Running", timeout_s=60)
        assert victim not in running["placement"]["nodes"]
        assert running["restarts"] == 1
        gang_whole(strata, "resilient", 2, attempt=2)
        events_once(strata, "resilient", Counter(Admitted=2, AllWorkersRunning=2, NodeLost=1))
        pool_holds(strata, pool, 16, 1)
    finally:
        restore_node(strata, saved)


def test_an_operator_killed_as_it_suspends_and_resumes_a_job_tells_each_once(
    operator: OperatorProcess, strata: Strata
) -> None:
    pool = strata.pool("team")
    strata.submit(a_job("pausable", pool, data=2))
    strata.wait_phase("pausable", "Running")
    suspend = lambda: strata.patch_spec("pausable", {"suspend": True})  # noqa: E731
    kill_at_phase(strata, operator, "pausable", "Suspended", suspend)
    operator.start()
    eventually(lambda: strata.pods("pausable") == [], 30, "the suspended job's pods gone")
    pool_holds(strata, pool, 0, 0)
    resume = lambda: strata.patch_spec("pausable", {"suspend": False})  # noqa: E731
    assert kill_at_phase(strata, operator, "pausable", "Queued", resume)["reason"] == "Resumed"
    operator.start()
    strata.wait_phase("pausable", "Running", timeout_s=60)
    gang_whole(strata, "pausable", 2, attempt=2)
    events_once(strata, "pausable", Counter(Admitted=2, AllWorkersRunning=2, Suspended=1, Resumed=1))
