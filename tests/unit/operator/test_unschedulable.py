"""A gang that kube-scheduler cannot fully place is requeued with the scheduler's reason within seconds, not after
the start timeout (issue 18: admission did not know the extender's reserved hold-back, so one worker ran on spot,
the other stayed Pending, and the job said "Admitted" for ten minutes); one whose image the kubelet cannot parse
fails at once."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from operator_builders import a_job, a_node, a_pool, a_worker, at

from strata_api import Phase, format_time
from strata_operator.core.lifecycle import UNSCHEDULABLE_GRACE_S, Plan, Reason, reconcile
from strata_operator.core.observed import WorkerPod
from strata_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(start_timeout_s=600)
NODES = {"n0": a_node("n0")}
HELD = "0/8 nodes are available: reserved MI300X GPUs are held for forecast high-priority demand"


def gang(refused_since: float | None) -> list[WorkerPod]:
    bound = a_worker("j", 0, phase="Running", node="n0")
    pending = a_worker("j", 1, phase="Pending", node=None)
    if refused_since is not None:
        pending = replace(pending, unschedulable=HELD, unschedulable_since=at(refused_since))
    return [bound, pending]


def run(pods: list[WorkerPod], now: float) -> Plan:
    raw: dict[str, Any] = {"phase": "Admitted", "attempt": 1, "admittedAt": format_time(at(0))}
    raw["placement"] = {"gpuType": "H100"}
    job = a_job(name="j", data=2, tensor=8, status=raw)
    return reconcile(job, a_pool(), pods, NODES, at(now), SETTINGS, raw)


def test_a_worker_unschedulable_past_the_grace_requeues_the_gang_with_the_schedulers_reason() -> None:
    plan = run(gang(refused_since=10), now=10 + UNSCHEDULABLE_GRACE_S)
    patch = plan.status.patch()
    assert (patch["phase"], patch["reason"]) == ("Queued", Reason.UNSCHEDULABLE)
    assert HELD in patch["message"]
    assert "worker j-worker-1 found no node" in patch["message"]
    assert plan.delete_pods == ["j-worker-0", "j-worker-1"]  # the running worker's GPUs go back too
    assert "restarts" not in patch  # not the workers' fault: no restart counted
    assert [e.reason for e in plan.status.events] == [Reason.UNSCHEDULABLE]


def test_within_the_grace_the_gang_waits_and_is_looked_at_again_when_it_ends() -> None:
    plan = run(gang(refused_since=10), now=20)
    assert plan.status.phase == Phase.ADMITTED
    assert plan.delete_pods == []
    assert plan.requeue_after_s is not None
    assert plan.requeue_after_s <= UNSCHEDULABLE_GRACE_S - 10


def test_a_worker_merely_pending_waits_for_the_start_timeout_as_before() -> None:
    assert run(gang(refused_since=None), now=120).status.phase == Phase.ADMITTED


def test_a_pod_body_says_when_kube_scheduler_found_no_node() -> None:
    condition = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": HELD,
        "lastTransitionTime": format_time(at(5)),
    }
    status = {"phase": "Pending", "conditions": [condition]}
    body: dict[str, Any] = {"metadata": {"name": "j-worker-1"}, "status": status}
    pod = WorkerPod.from_body(body)
    assert (pod.unschedulable, pod.unschedulable_since) == (HELD, at(5))
    gated = {**condition, "reason": "SchedulingGated", "message": "gated"}
    body["status"]["conditions"] = [gated]
    assert WorkerPod.from_body(body).unschedulable is None


def test_an_image_the_kubelet_cannot_parse_fails_the_job_with_invalid_spec() -> None:
    waiting = {"reason": "InvalidImageName", "message": 'Failed to apply default image tag "Strata/W": invalid'}
    body: dict[str, Any] = {
        "metadata": {"name": "j-worker-1", "labels": {"strata.dev/worker-index": "1", "strata.dev/attempt": "1"}},
        "spec": {"nodeName": "n0"},
        "status": {"phase": "Pending", "containerStatuses": [{"name": "trainer", "state": {"waiting": waiting}}]},
    }
    refused = WorkerPod.from_body(body)
    assert refused.image_refused == waiting["message"]
    plan = run([a_worker("j", 0, phase="Running", node="n0"), refused], now=20)
    patch = plan.status.patch()
    assert (patch["phase"], patch["reason"]) == ("Failed", Reason.INVALID_SPEC)
    assert "the kubelet refused worker j-worker-1's image" in patch["message"]
    assert plan.delete_pods == ["j-worker-0", "j-worker-1"]
