"""Admission's rule 10 on the real control plane: a gang that no node can hold, once it has waited its pool's
``defragmentAfterSeconds``, has a smaller job moved off one node (that job fits elsewhere now) and runs there.

The default fleet's H100 nodes: 2 reserved and 2 spot, 8 GPUs each. The test leaves no H100 node with 8 free GPUs
though 8 are free in all: a whole reserved node runs an 8-GPU job, the other a 1-GPU job; one spot node an 8-GPU
job, the other a 7-GPU job."""

from __future__ import annotations

from datetime import datetime

from cluster_support import eventually
from operator_harness import OperatorProcess, Strata
from operator_manifests import a_job

import strata_api as api

WAIT_S = 5


def on(capacity: str) -> dict[str, list[str]]:
    return {"capacityTypes": [capacity]}


def node_of(strata: Strata, job: str) -> str:
    (pod,) = strata.live_pods(job)
    return str(pod.spec.node_name)


def test_a_gang_that_waited_past_its_pools_setting_moves_a_smaller_job_off_a_node_and_runs_there(
    operator: OperatorProcess, strata: Strata
) -> None:
    pool = strata.pool("team", defragmentAfterSeconds=WAIT_S)
    strata.submit(a_job("spot-a", pool, resources=on("spot")))
    strata.submit(a_job("spot-b", pool, resources=on("spot")))
    strata.submit(a_job("reserved", pool, resources=on("reserved")))
    for job in ("spot-a", "spot-b", "reserved"):
        strata.wait_phase(job, "Running")
    # the only H100 GPUs left are the other reserved node's, so the 1-GPU job (which may run on spot too) goes there
    strata.submit(a_job("small", pool, tensor=1, gpus_per_worker=1, resources={"capacityTypes": ["reserved", "spot"]}))
    strata.wait_phase("small", "Running")
    small_node = node_of(strata, "small")
    # a spot node with 1 GPU free
    strata.custom.delete_namespaced_custom_object(api.GROUP, api.VERSION, strata.namespace, api.TRAINING_JOBS, "spot-b")
    strata.submit(a_job("spot-seven", pool, tensor=7, gpus_per_worker=7, resources=on("spot")))
    strata.wait_phase("spot-seven", "Running")
    spot_node = node_of(strata, "spot-seven")

    strata.submit(a_job("gang", pool, resources={"capacityTypes": ["reserved", "spot"]}))
    eventually(lambda: strata.status("gang").get("reason") == "WaitingForGPUs", 20, "the gang waits for GPUs")

    running = strata.wait_phase("gang", "Running", timeout_s=60)
    assert running["placement"]["nodes"] == [small_node]
    # admission's count of the node for the gang, which its pods carry to the extender (it keeps those GPUs from
    # other pods until the gang's are bound: tests/cluster/scheduler/test_placement.py)
    assert running["placement"]["plannedNode"] == {"name": small_node, "gpus": 8}
    (gang_pod,) = strata.live_pods("gang")
    assert gang_pod.metadata.annotations[api.ANN_PLANNED_NODE] == f"{small_node}=8"
    waited = datetime.fromisoformat(running["admittedAt"]) - datetime.fromisoformat(running["submittedAt"])
    assert waited.total_seconds() >= WAIT_S

    def admitted_event() -> bool:
        events = strata.core.list_namespaced_event(strata.namespace, field_selector="involvedObject.name=gang").items
        return any(
            f"smaller jobs moved off node {small_node} for it" in e.message for e in events if e.reason == "Admitted"
        )

    eventually(admitted_event, 10, "the gang's Admitted Event naming the node")  # kopf posts Events in the background
    moved = {c["type"]: c for c in strata.status("small")["conditions"]}["Preempted"]
    assert moved["message"].startswith(f"moved off node {small_node} to make room for")
    eventually(lambda: "Preempted" in strata.events("small"), 10, "the moved job's Preempted Event")
    strata.wait_phase("small", "Running", timeout_s=60)
    assert node_of(strata, "small") == spot_node
    assert strata.status("reserved")["phase"] == "Running"
    assert strata.status("spot-seven")["phase"] == "Running"
