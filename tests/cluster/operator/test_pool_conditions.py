"""A ResourcePool says in its status whether it can admit jobs (Ready) and whether jobs wait for its quota
(QuotaExceeded), as the operator keeps it from the jobs and the fleet (issue 18)."""

from __future__ import annotations

from typing import Any

from cluster_support import eventually
from operator_harness import OperatorProcess, Strata
from operator_manifests import a_job

import strata_api as api


def condition(strata: Strata, pool: str, kind: str) -> tuple[str, str] | None:
    body: dict[str, Any] = strata.custom.get_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, pool)
    found = [c for c in (body.get("status") or {}).get("conditions") or () if c["type"] == kind]
    return (found[0]["status"], found[0]["reason"]) if found else None


def test_a_pool_reports_ready_and_quota_exceeded_while_a_job_waits_for_quota(
    operator: OperatorProcess, strata: Strata
) -> None:
    pool = strata.pool("team", maxGPUs=16)
    strata.submit(a_job("first", pool, data=2, tensor=8))
    strata.wait_phase("first", "Running")
    eventually(lambda: condition(strata, pool, "Ready") == ("True", "QuotaAndNodes"), 20, "Ready")
    assert condition(strata, pool, "QuotaExceeded") == ("False", "WithinQuota")

    strata.submit(a_job("second", pool, data=2, tensor=8))
    eventually(lambda: strata.status("second").get("reason") == "WaitingForQuota", 20, "second waits for quota")
    eventually(lambda: condition(strata, pool, "QuotaExceeded") == ("True", "JobsWaitForQuota"), 20, "QuotaExceeded")

    strata.exit_workers("first", 0)
    strata.wait_phase("second", "Running")
    eventually(lambda: condition(strata, pool, "QuotaExceeded") == ("False", "WithinQuota"), 20, "quota cleared")


def test_a_quota_lowered_under_a_running_job_is_said_and_the_job_keeps_its_gpus(
    operator: OperatorProcess, strata: Strata
) -> None:
    pool = strata.pool("team", maxGPUs=16)
    strata.submit(a_job("first", pool, data=2, tensor=8))
    strata.wait_phase("first", "Running")
    lowered = {"spec": {"maxGPUs": 8}}
    strata.custom.patch_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, pool, lowered)
    eventually(lambda: condition(strata, pool, "QuotaExceeded") == ("True", "InUseOverQuota"), 20, "InUseOverQuota")
    status = pool_status(strata, pool)
    message = next(c["message"] for c in status["conditions"] if c["type"] == "QuotaExceeded")
    assert message.startswith("16 GPUs in use, over spec.maxGPUs 8: what holds it keeps it"), message
    assert strata.status("first")["phase"] == "Running"  # not preempted by the lower quota
    raised = {"spec": {"maxGPUs": 16}}
    strata.custom.patch_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, pool, raised)
    eventually(lambda: condition(strata, pool, "QuotaExceeded") == ("False", "WithinQuota"), 20, "back within quota")


def test_a_pool_that_can_admit_nothing_is_not_ready(operator: OperatorProcess, strata: Strata) -> None:
    empty = strata.pool("empty", maxGPUs=0)
    eventually(lambda: condition(strata, empty, "Ready") == ("False", "NoQuota"), 20, "Ready False, NoQuota")
    # the default fleet has no on-demand MI300X node
    nowhere = strata.pool("nowhere", maxGPUs=8, gpuTypes=["MI300X"], capacityTypes=["on-demand"])
    eventually(lambda: condition(strata, nowhere, "Ready") == ("False", "NoMatchingNodes"), 20, "NoMatchingNodes")


def pool_status(strata: Strata, pool: str) -> dict[str, Any]:
    body = strata.custom.get_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, pool)
    return dict(body.get("status") or {})


def test_after_a_restart_the_pool_status_is_again_what_its_jobs_hold(operator: OperatorProcess, strata: Strata) -> None:
    pool = strata.pool("team", maxGPUs=16)
    strata.submit(a_job("first", pool, data=2, tensor=8))
    strata.wait_phase("first", "Running")
    strata.submit(a_job("second", pool, data=2, tensor=8))
    eventually(lambda: condition(strata, pool, "QuotaExceeded") == ("True", "JobsWaitForQuota"), 20, "QuotaExceeded")

    operator.kill()
    # while no operator runs: the first job's workers finish, and someone writes nonsense into the pool's status
    strata.exit_workers("first", 0)
    wrong = {"status": {"gpusInUse": 999, "admittedJobs": 7, "conditions": []}}
    strata.custom.patch_cluster_custom_object_status(api.GROUP, api.VERSION, api.RESOURCE_POOLS, pool, wrong)
    operator.start()

    strata.wait_phase("first", "Succeeded")
    strata.wait_phase("second", "Running")

    def consistent() -> dict[str, Any] | None:
        status = pool_status(strata, pool)
        held = (status.get("gpusInUse"), status.get("admittedJobs"), status.get("queuedJobs"))
        within = condition(strata, pool, "QuotaExceeded") == ("False", "WithinQuota")
        return status if held == (16, 1, 0) and within else None

    status = eventually(consistent, 30, "the pool's status to match its jobs again")
    assert condition(strata, pool, "Ready") == ("True", "QuotaAndNodes")
    assert status["observedGeneration"] == 1
