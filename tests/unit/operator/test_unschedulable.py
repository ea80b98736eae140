"""A gang that kube-scheduler cannot fully place is requeued with the scheduler's reason within seconds, not after
the start timeout (issue 18: admission did not know the extender's reserved hold-back, so one worker ran on spot,
the other stayed Pending, and the job said "Admitted" for ten minutes); one whose image the kubelet cannot parse
fails at once."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from operator_builders import a_job, a_node, a_pool, a_worker, at

from strata_api import SCHEDULER_NAME, Phase, format_time
from strata_operator.core.lifecycle import UNSCHEDULABLE_GRACE_S, Plan, Reason, reconcile
from strata_operator.core.observed import WorkerPod, awaiting_scheduler, cannot_start
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


def test_workers_no_scheduler_looks_at_keep_the_gang_admitted_and_say_which_scheduler_is_missing() -> None:
    unseen = replace(a_worker("j", 1, phase="Pending", node=None), awaiting_scheduler="strata-scheduler")
    pods = [a_worker("j", 0, phase="Running", node="n0"), unseen]
    early = run(pods, now=SETTINGS.scheduler_grace_s - 10)
    assert early.status.phase == Phase.ADMITTED
    assert "reason" not in early.status.patch()
    assert early.requeue_after_s is not None
    assert early.requeue_after_s <= 10  # looked at again when the grace ends
    plan = run(pods, now=SETTINGS.scheduler_grace_s)
    patch = plan.status.patch()
    assert (plan.status.phase, patch["reason"]) == (Phase.ADMITTED, Reason.WAITING_FOR_SCHEDULER)
    assert patch["message"].startswith("worker j-worker-1 has not been looked at by scheduler 'strata-scheduler'")
    assert "until the start timeout (600s)" in patch["message"]
    assert plan.delete_pods == []  # another scheduler may yet come: the start timeout still decides
    assert [(e.type, e.reason) for e in plan.status.events] == [("Warning", Reason.WAITING_FOR_SCHEDULER)]
    timed_out = run(pods, now=601).status.patch()
    assert (timed_out["phase"], timed_out["reason"]) == ("Queued", Reason.START_TIMEOUT)


def test_unplaced_workers_of_another_scheduler_are_made_again_for_the_operators_once_its_name_changed() -> None:
    # the status said no 'strata-scheduler' runs and to run the operator with --scheduler-name default-scheduler;
    # before, the workers made for the old name waited out the start timeout (a pod's schedulerName is immutable)
    ours = replace(SETTINGS, scheduler_name="default-scheduler")
    old = [replace(a_worker("j", i, phase="Pending", node=None), awaiting_scheduler=SCHEDULER_NAME) for i in (0, 1)]
    raw: dict[str, Any] = {"phase": "Admitted", "attempt": 1, "admittedAt": format_time(at(0))}
    raw |= {"reason": Reason.WAITING_FOR_SCHEDULER, "placement": {"gpuType": "H100"}}
    job = a_job(name="j", data=2, tensor=8, status=raw)
    plan = reconcile(job, a_pool(), old, NODES, at(40), ours, raw)
    assert plan.delete_pods == ["j-worker-0", "j-worker-1"]
    assert (plan.create_workers, plan.lift_gates) == ([], [])  # made again once the old ones are gone
    patch = plan.status.patch()
    assert (plan.status.phase, patch["reason"]) == (Phase.ADMITTED, Reason.SCHEDULER_CHANGED)
    assert patch["message"] == (
        "workers j-worker-0, j-worker-1 of scheduler 'strata-scheduler', which no node took, made again for the "
        "operator's scheduler 'default-scheduler'"
    )
    assert [(e.type, e.reason) for e in plan.status.events] == [("Normal", Reason.SCHEDULER_CHANGED)]
    gone = reconcile(job, a_pool(), [], NODES, at(41), ours, raw)
    assert (gone.create_workers, gone.lift_gates, gone.lift_when_created) == (
        [0, 1],
        ["j-worker-0", "j-worker-1"],
        True,
    )
    # a placed worker stays where it is; with the operator's name, an unplaced one waits for its scheduler
    placed = replace(a_worker("j", 0, phase="Running", node="n0"), scheduler_name=SCHEDULER_NAME)
    waiting = replace(old[1], scheduler_name="default-scheduler", awaiting_scheduler=None)
    assert reconcile(job, a_pool(), [placed, waiting], NODES, at(40), ours, raw).delete_pods == []
    remade = {**raw, "reason": Reason.SCHEDULER_CHANGED}
    ungated = [
        replace(a_worker("j", i, phase="Pending", node=None), scheduler_name="default-scheduler") for i in (0, 1)
    ]
    after = reconcile(a_job(name="j", data=2, tensor=8, status=remade), a_pool(), ungated, NODES, at(42), ours, remade)
    assert (after.status.patch()["reason"], after.status.patch()["message"]) == (
        Reason.ADMITTED, "workers starting (0 of 2 running)")  # fmt: skip


def test_a_pod_is_awaiting_its_scheduler_only_while_no_scheduler_has_looked_at_it() -> None:
    spec = {"schedulerName": "strata-scheduler"}
    gated = {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}
    assert awaiting_scheduler(spec, []) == "strata-scheduler"
    assert awaiting_scheduler(spec, [gated]) == "strata-scheduler"  # the API server's, left when the gates went
    assert awaiting_scheduler({}, []) == "default-scheduler"  # the API server's default name
    assert awaiting_scheduler({**spec, "schedulingGates": [{"name": "strata.dev/gang-admission"}]}, [gated]) is None
    refused = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": HELD}
    assert awaiting_scheduler(spec, [refused]) is None  # a scheduler tried
    assert awaiting_scheduler({**spec, "nodeName": "n0"}, []) is None
    assert WorkerPod.from_body({"spec": spec}).scheduler_name == "strata-scheduler"
    assert WorkerPod.from_body({}).scheduler_name == "default-scheduler"


NEVER_PULL = 'Container image "strata.local/typo:1" is not present with pull policy of Never'


MULTI_ATTACH = 'Multi-Attach error for volume "pvc-1" Volume is already used by pod(s) other-0'


@pytest.mark.parametrize(
    ("held", "said"),
    [
        # an image loaded or pushed meanwhile mends it
        ({"cannot_start": f"container trainer: {NEVER_PULL}"},
         f"the kubelet cannot start worker j-worker-1: container trainer: {NEVER_PULL}"),
        # the volume freed by the pod that holds it mends it
        ({"volume_failure": f"FailedAttachVolume: {MULTI_ATTACH}"},
         f"the volumes of worker j-worker-1 cannot be mounted: FailedAttachVolume: {MULTI_ATTACH}"),
    ],
)  # fmt: skip
def test_a_worker_the_kubelet_cannot_start_keeps_the_gang_admitted_in_the_kubelets_words(
    held: dict[str, str], said: str
) -> None:
    stuck = replace(a_worker("j", 1, phase="Pending", node="n0"), **held)
    plan = run([a_worker("j", 0, phase="Running", node="n0"), stuck], now=20)
    patch = plan.status.patch()
    assert (plan.status.phase, patch["reason"]) == (Phase.ADMITTED, Reason.WORKER_CANNOT_START)
    assert patch["message"] == f"{said}; the gang holds its GPUs until the start timeout (600s)"
    assert plan.delete_pods == []  # what may mend: the start timeout still decides
    assert [(e.type, e.reason) for e in plan.status.events] == [("Warning", Reason.WORKER_CANNOT_START)]


def test_the_kubelets_reasons_for_a_container_it_cannot_start_are_read_from_the_pod() -> None:
    def waiting(reason: str, message: str = "") -> dict[str, Any]:
        return {"name": "trainer", "state": {"waiting": {"reason": reason, "message": message} if message else {
            "reason": reason}}}  # fmt: skip

    assert cannot_start({"containerStatuses": [waiting("ErrImageNeverPull", NEVER_PULL)]}) == (
        f"container trainer: ErrImageNeverPull: {NEVER_PULL}"
    )
    assert cannot_start({"containerStatuses": [waiting("ImagePullBackOff")]}) == "container trainer: ImagePullBackOff"
    secret = waiting("CreateContainerConfigError", 'secret "hf-token" not found')
    assert cannot_start({"initContainerStatuses": [secret]}) == (
        'container trainer: CreateContainerConfigError: secret "hf-token" not found'
    )
    assert cannot_start({"containerStatuses": [waiting("ContainerCreating")]}) is None  # on its way
    assert cannot_start({"containerStatuses": [{"name": "trainer", "state": {"running": {}}}]}) is None
    assert cannot_start({}) is None
    body: dict[str, Any] = {
        "metadata": {"name": "j-worker-1"},
        "status": {"containerStatuses": [waiting("ErrImagePull")]},
    }
    assert WorkerPod.from_body(body).cannot_start == "container trainer: ErrImagePull"


def test_a_worker_the_scheduler_fails_on_keeps_the_gang_admitted_in_the_schedulers_words() -> None:
    error = 'Post "http://strata-scheduler-extender:8888/filter": dial tcp: connect: connection refused'
    condition = {"type": "PodScheduled", "status": "False", "reason": "SchedulerError", "message": error}
    body: dict[str, Any] = {"metadata": {"name": "j-worker-1"}, "status": {"conditions": [condition]}}
    read = WorkerPod.from_body(body)
    assert (read.scheduler_error, read.unschedulable, read.awaiting_scheduler) == (error, None, None)
    failing = replace(a_worker("j", 1, phase="Pending", node=None), scheduler_error=error)
    plan = run([a_worker("j", 0, phase="Running", node="n0"), failing], now=5)  # no grace: kube-scheduler said so
    patch = plan.status.patch()
    assert (plan.status.phase, patch["reason"]) == (Phase.ADMITTED, Reason.SCHEDULER_ERROR)
    assert patch["message"].startswith(f"the scheduler fails on worker j-worker-1: {error}; the gang holds its GPUs")
    assert plan.delete_pods == []


def test_once_what_held_the_gang_up_gives_way_the_status_no_longer_says_it_does() -> None:
    said = f"the kubelet cannot start worker j-worker-1: {NEVER_PULL}"
    raw: dict[str, Any] = {"phase": "Admitted", "attempt": 1, "admittedAt": format_time(at(0))}
    raw |= {"reason": Reason.WORKER_CANNOT_START, "message": said}
    raw["placement"] = {"gpuType": "H100"}
    job = a_job(name="j", data=2, tensor=8, status=raw)
    creating = [a_worker("j", 0, phase="Running", node="n0"), a_worker("j", 1, phase="Pending", node="n0")]
    plan = reconcile(job, a_pool(), creating, NODES, at(60), SETTINGS, raw)
    patch = plan.status.patch()
    assert (plan.status.phase, patch["reason"]) == (Phase.ADMITTED, Reason.ADMITTED)
    assert patch["message"] == "workers starting (1 of 2 running)"
    assert plan.status.events == []
