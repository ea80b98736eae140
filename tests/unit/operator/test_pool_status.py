"""A ResourcePool's status: what its jobs hold and wait for, and its conditions Ready and QuotaExceeded."""

from __future__ import annotations

from typing import Any

from operator_builders import a_job, a_node, a_pool, at

import strata_api as api
from strata_api import GPUType
from strata_operator.core.admission import ServingShare
from strata_operator.core.pool_status import QUOTA_EXCEEDED, READY, pool_status

FLEET = [a_node("h", GPUType.H100, "reserved"), a_node("c", None, "on-demand")]


def job(name: str, phase: str, reason: str = "", pool: str = "pool") -> api.TrainingJob:
    status = {"phase": phase, "reason": reason, "placement": {"gpuType": "H100"}}
    return a_job(name=name, data=2, tensor=8, pool=pool, status=status)


def conditions(patch: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in patch["conditions"]}


def test_counts_and_conditions_follow_the_jobs_of_the_pool_only() -> None:
    jobs = [
        job("running", "Running"),
        job("waiting", "Queued", "WaitingForQuota"),
        job("elsewhere", "Running", pool="other"),
        job("gpus", "Queued", "WaitingForGPUs"),
    ]
    draft = pool_status(a_pool(max_gpus=16), 3, jobs, FLEET, {}, at(0))
    patch = draft.patch()
    assert (patch["gpusInUse"], patch["admittedJobs"], patch["queuedJobs"]) == (16, 1, 2)
    assert patch["observedGeneration"] == 3
    assert conditions(patch) == {READY: ("True", "QuotaAndNodes"), QUOTA_EXCEEDED: ("True", "JobsWaitForQuota")}
    quota = next(c for c in patch["conditions"] if c["type"] == QUOTA_EXCEEDED)
    assert quota["message"] == "1 job(s) wait for quota: team/waiting"


def test_quota_exceeded_clears_when_nobody_waits_for_quota_and_keeps_its_transition_time() -> None:
    before = pool_status(a_pool(), 1, [job("waiting", "Queued", "ExceedsPoolQuota")], FLEET, {}, at(0)).patch()
    after = pool_status(a_pool(), 1, [job("waiting", "Running")], FLEET, before, at(60)).patch()
    assert conditions(after)[QUOTA_EXCEEDED] == ("False", "WithinQuota")
    ready = [c for c in after["conditions"] if c["type"] == READY]
    assert ready[0]["lastTransitionTime"] == api.format_time(at(0))  # Ready did not change
    again = pool_status(a_pool(), 1, [job("waiting", "Running")], FLEET, {**before, **after}, at(120)).patch()
    assert "conditions" not in again  # nothing changed: nothing to write


def test_a_pool_without_quota_or_matching_nodes_is_not_ready_and_says_why() -> None:
    nothing = pool_status(a_pool(max_gpus=0), 1, [], FLEET, {}, at(0)).patch()
    assert conditions(nothing)[READY] == ("False", "NoQuota")
    mi300x_only = a_pool(gpuTypes=["MI300X"])
    no_nodes = pool_status(mi300x_only, 1, [], FLEET, {}, at(0)).patch()
    assert conditions(no_nodes)[READY] == ("False", "NoMatchingNodes")
    cpu = pool_status(a_pool(max_gpus=0, maxCPUs="8"), 1, [], FLEET, {}, at(0)).patch()
    assert conditions(cpu)[READY] == ("True", "QuotaAndNodes")


def test_ready_is_left_alone_until_the_node_cache_has_listed() -> None:
    patch = pool_status(a_pool(), 1, [], None, {}, at(0)).patch()
    assert READY not in conditions(patch)


def test_in_use_counts_the_pools_inference_replicas_as_admission_does() -> None:
    serving = ServingShare(gpus={"team/chat": 8, "team/idle": 0}, cpu_millis={"team/cpu-chat": 1500})
    pool = a_pool(max_gpus=32, maxCPUs="4")
    patch = pool_status(pool, 1, [job("running", "Running")], FLEET, {}, at(0), serving).patch()
    assert (patch["gpusInUse"], patch["cpusInUse"], patch["inferenceServices"]) == (24, "1500m", 2)
    assert patch["admittedJobs"] == 1
    assert conditions(patch)[QUOTA_EXCEEDED] == ("False", "WithinQuota")


def test_a_quota_lowered_under_what_runs_is_said_and_names_what_waits() -> None:
    jobs = [job("running", "Running"), job("waiting", "Queued", "WaitingForQuota")]
    serving = ServingShare(gpus={"team/chat": 8})
    patch = pool_status(a_pool(max_gpus=8), 2, jobs, FLEET, {}, at(0), serving).patch()
    assert patch["gpusInUse"] == 24
    assert conditions(patch)[QUOTA_EXCEEDED] == ("True", "InUseOverQuota")
    quota = next(c for c in patch["conditions"] if c["type"] == QUOTA_EXCEEDED)
    assert quota["message"].startswith("24 GPUs in use, over spec.maxGPUs 8: what holds it keeps it")
    assert quota["message"].endswith("; 1 job(s) wait for quota: team/waiting")
    cpu = pool_status(a_pool(max_gpus=0, maxCPUs="1"), 2, [], FLEET, {}, at(0), ServingShare(cpu_millis={"t/c": 2000}))
    message = next(c["message"] for c in cpu.patch()["conditions"] if c["type"] == QUOTA_EXCEEDED)
    assert message.startswith("2 CPUs in use, over spec.maxCPUs 1")
