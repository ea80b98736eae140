"""An InferenceService's replica pods (strata_operator.core.replicas): the measured start-up time and the hourly
cost status reports, the router's lead from it, and the pod watch's index of replicas by service."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from operator_builders import T0, a_node, at
from serving_builders import a_service

import strata_api as api
from strata_api.catalog import DEFAULT_CATALOG, load_catalog
from strata_api.serving import LABEL_ROUTER
from strata_operator.core import observed, replicas, router, serving
from strata_operator.core.replicas import ReplicaPod
from strata_operator.core.serving import Allotment, ModelSource, ObservedDeployment, ServingProblem
from strata_operator.runtime.watches import Index, replica_pod_entry, router_pod_entry

GRACE = 30.0

CATALOG = load_catalog(DEFAULT_CATALOG)
CPU = {"gpuType": "CPU", "cpuPerReplica": "2", "memoryPerReplica": "1Gi"}


def replica_body(
    name: str,
    *,
    revision: str = "rev1",
    created: float = 0,
    ready: float | None = None,
    node: str | None = "cpu-0",
    phase: str = "Running",
    service: str | None = "chat",
    last_exit: int | None = None,
) -> dict[str, Any]:
    labels = {api.LABEL_REVISION: revision, api.LABEL_MANAGED_BY: api.MANAGED_BY}
    if service:
        labels[api.LABEL_INFERENCE_SERVICE] = service
    conditions = [{"type": "Ready", "status": "True" if ready is not None else "False"}]
    if ready is not None:
        conditions[0]["lastTransitionTime"] = api.format_time(at(ready))
    server: dict[str, Any] = {"name": serving.CONTAINER, "restartCount": 0, "state": {"running": {}}}
    if last_exit is not None:
        server.update(restartCount=3, lastState={"terminated": {"exitCode": last_exit}})
    return {
        "metadata": {
            "name": name,
            "namespace": "team",
            "uid": f"uid-{name}",
            "labels": labels,
            "creationTimestamp": api.format_time(at(created)),
        },
        "spec": {"nodeName": node} if node else {},
        "status": {"phase": phase, "conditions": conditions, "containerStatuses": [server]},
    }


def pending_body(name: str, reason: str, message: str, **kwargs: Any) -> dict[str, Any]:
    """A replica pod not bound to a node, whose PodScheduled condition is False with ``reason`` and ``message``."""
    body = replica_body(name, node=None, phase="Pending", **kwargs)
    body["status"]["conditions"].append(
        {"type": "PodScheduled", "status": "False", "reason": reason, "message": message}
    )
    return body


def replica(name: str, **kwargs: Any) -> ReplicaPod:
    return ReplicaPod.from_body(replica_body(name, **kwargs), serving.CONTAINER)


def test_a_replica_pod_is_read_from_its_body() -> None:
    pod = replica("chat-1", created=0, ready=42, last_exit=2)
    assert pod == ReplicaPod(
        name="chat-1",
        revision="rev1",
        phase="Running",
        node="cpu-0",
        created=T0,
        ready_at=at(42),
        deleting=False,
        exit_code=2,
        restarts=3,
    )
    assert pod.running
    assert not replica("waiting", node=None, phase="Pending").running


def test_the_pod_watch_keeps_replicas_by_service_and_not_router_or_worker_pods() -> None:
    index: Index[ReplicaPod] = Index(replica_pod_entry)
    assert index.upsert("u1", replica_body("chat-1")) == ("team/chat",)
    assert index.upsert("u2", replica_body("router-1", service=None)) == ()
    assert [p.name for p in index["team/chat"]] == ["chat-1"]


def test_the_pod_watch_keeps_routers_by_service_apart_and_says_what_holds_them_up() -> None:
    routers: Index[ReplicaPod] = Index(router_pod_entry)
    why = "0/5 nodes are available: 5 node(s) didn't match Pod's node affinity/selector."
    body = pending_body("chat-router-1", "Unschedulable", why, service=None)
    body["metadata"]["labels"][LABEL_ROUTER] = "chat"
    del body["metadata"]["labels"][api.LABEL_REVISION]  # routers have no revision: the handler reads them at ""
    assert routers.upsert("u1", body) == ("team/chat",)
    assert routers.upsert("u2", replica_body("chat-1")) == ()  # a replica is not a router
    held = replicas.held_up(routers["team/chat"], "", T0, GRACE, what="router")
    assert held == ServingProblem("ReplicasUnschedulable", f"router chat-router-1 cannot be placed: {why}")

    service = a_service("chat", resources=CPU, min_replicas=1)
    unrouted = ObservedDeployment(2, 0, 2, "", 1, 1)
    draft = serving.service_status(
        service, {}, ModelSource(checkpoint=""), Allotment(1, False, "WithinQuota", ""),
        ObservedDeployment(1, 1, 1, "rev1", 1, 1), "rev1", T0, routers=unrouted, routers_held_up=held,
    )  # fmt: skip
    ready = next(c for c in draft.changes["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "RoutersNotReady"
    assert ready["message"].endswith(
        f"0 of 2 routers ready to take requests at http://chat.team.svc:8000: {held.message}"
    )


def test_startup_is_the_median_of_the_recent_ready_replicas_of_the_current_revision() -> None:
    pods = [
        replica("old-rev", revision="rev0", created=0, ready=500),  # another revision: not counted
        replica("starting", created=900, ready=None),  # not ready yet: not counted
        *(
            replica(f"r{i}", created=100 * i, ready=100 * i + seconds)
            for i, seconds in enumerate([99, 10, 20, 30, 40, 50])
        ),
    ]
    # the five most recent ready ones (r1..r5: 10, 20, 30, 40, 50 s; r0's 99 s is older): median 30
    assert replicas.startup_seconds(pods, "rev1") == 30.0
    assert replicas.startup_seconds(pods, "rev2") is None


def test_cost_is_the_running_replicas_share_of_their_nodes_price() -> None:
    cpu_node = a_node("cpu-0", gpu=None)  # m7i.8xlarge, on reserved capacity: $1.13 per node-hour
    cpu_node = dataclasses.replace(cpu_node, allocatable_cpu_millis=32000)
    cpu_service = a_service("chat", resources=CPU)
    pods = [replica("a"), replica("b"), replica("pending", node=None, phase="Pending")]
    # 2 running replicas x 2 of the node's 32 CPUs x $1.13
    expected = round(2 * 1.13 * 2 / 32, 4)
    assert replicas.cost_per_hour(cpu_service, pods, {"cpu-0": cpu_node}, CATALOG) == expected

    gpu_node = a_node("gpu-0")  # p5.48xlarge reserved: $38.53 for 8 H100s
    gpu_service = a_service("big", resources={"gpuType": "H100", "gpusPerReplica": 2})
    gpu_pods = [replica("g", node="gpu-0")]
    assert replicas.cost_per_hour(gpu_service, gpu_pods, {"gpu-0": gpu_node}, CATALOG) == round(38.53 / 8 * 2, 4)

    unpriced = dataclasses.replace(cpu_node, instance_type="unknown.large")
    assert replicas.cost_per_hour(cpu_service, pods, {"cpu-0": unpriced}, CATALOG) == 0.0
    assert replicas.cost_per_hour(cpu_service, pods, {}, CATALOG) == 0.0  # nodes not known


@pytest.mark.parametrize(
    ("horizon", "measured", "lead"),
    [(None, None, 60), (None, 0.0, 15), (None, 3.0, 15), (None, 31.0, 45), (120, 31.0, 120)],
    ids=["nothing-measured", "instant", "under-a-step", "rounded-up", "spec-wins"],
)
def test_the_routers_lead_is_the_spec_horizon_else_the_measured_startup(
    horizon: int | None, measured: float | None, lead: int
) -> None:
    scaling: dict[str, Any] = {"metric": "rps", "target": 5}
    if horizon is not None:
        scaling["horizonSeconds"] = horizon
    service = a_service("chat", min_replicas=1, max_replicas=4, autoscaling=scaling)
    assert router.startup_lead(service, measured) == lead
    assert router.build_router_config(service, measured)["data"] == {router.LEAD_KEY: str(lead)}  # what routers read
    # the routers' environment names the file and holds no lead: a new horizon, as a new measurement, rolls no router
    env = {e["name"]: e["value"] for e in _router_env(service)}
    assert env["STRATA_ROUTER_AUTOSCALE_STARTUP_FILE"] == router.LEAD_FILE
    assert "STRATA_ROUTER_AUTOSCALE_STARTUP_S" not in env
    other = a_service("chat", min_replicas=1, max_replicas=4, autoscaling={**scaling, "horizonSeconds": 345})
    assert _router_env(other) == _router_env(service)


def _router_env(service: api.InferenceService) -> list[dict[str, str]]:
    from strata_operator.settings import OperatorSettings

    deployment = router.build_router_deployment(service, OperatorSettings())
    env: list[dict[str, str]] = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    return env


def test_status_reports_cost_and_startup_and_keeps_the_last_startup_while_none_is_measured() -> None:
    service = a_service("chat", resources=CPU)
    source = ModelSource(checkpoint="")
    allotment = Allotment(2, False, "WithinQuota", "")
    deployment = ObservedDeployment(2, 2, 2, "rev1", 1, 1)
    draft = serving.service_status(service, {}, source, allotment, deployment, "rev1", T0, None, 0.1413, 31.26)
    assert (draft.changes["costPerHour"], draft.changes["startupSeconds"]) == (0.1413, 31.3)
    stored = {**draft.patch(), "startupSeconds": 31.3, "costPerHour": 0.1413}
    later = serving.service_status(service, stored, source, allotment, deployment, "rev1", T0, None, 0.0, None)
    assert later.changes.get("costPerHour") == 0.0
    assert "startupSeconds" not in later.patch()


def test_a_model_the_servers_refuse_is_named_by_their_exit_code_until_a_replica_is_ready() -> None:
    failing = [replica("chat-a", last_exit=2), replica("chat-b", ready=None)]
    problem = replicas.model_failure(failing, "rev1")
    assert problem is not None
    assert problem.reason == "InvalidConfiguration"
    assert problem.message.startswith(
        "replica chat-a of revision rev1 exited with code 2, restarted 3 times: invalid configuration: the server "
        "refused its settings, for example a preset, precision or quantization it does not know"
    )
    corrupt = replicas.model_failure([replica("chat-a", last_exit=3)], "rev1")
    assert corrupt is not None
    assert corrupt.reason == "NoUsableCheckpoint"
    assert replicas.model_failure(failing, "rev2") is None  # another revision's replicas say nothing of this one
    assert replicas.model_failure([replica("chat-a", last_exit=1)], "rev1") is None  # a crash a restart may mend
    recovered = [replica("chat-a", last_exit=2, ready=30), replica("chat-b", last_exit=2)]
    assert replicas.model_failure(recovered, "rev1") is None  # one is ready: the model loads


def test_a_refused_revision_stops_its_replicas_then_tries_again_waiting_longer_at_each_refusal() -> None:
    failing = [replica("chat-a", last_exit=2), replica("chat-b", last_exit=2)]
    first = replicas.model_backoff(None, "rev1", failing, T0, 300)
    assert first is not None
    assert (first.revision, first.tries, first.retry_at, first.reason) == ("rev1", 1, at(300), "InvalidConfiguration")
    assert first.stopped(at(299))
    assert not first.stopped(at(300))
    stopped = first.problem(at(10)).message
    assert stopped.startswith("replica chat-a of revision rev1 exited with code 2")
    assert stopped.endswith(
        "; refused once, so its replicas are stopped rather than left to crash-loop, until 2026-01-01T12:05:00Z "
        "(or a new revision: a changed spec, the job's next checkpoint)"
    )

    stored = first.to_status()
    kept = replicas.ModelBackoff.from_status(stored)
    assert kept == first  # status carries it across passes and restarts
    assert replicas.model_backoff(kept, "rev1", [], at(100), 300) == first  # stopped: no pod, the same stop
    assert replicas.model_backoff(kept, "rev1", failing, at(100), 300) == first  # the stopped pods' own exits
    starting = [replica("chat-c", created=300)]  # retryAt passed: the replicas start again, not refused yet
    trying = replicas.model_backoff(kept, "rev1", starting, at(305), 300)
    assert trying == first
    assert not trying.stopped(at(305))
    assert trying.problem(at(305)).message.endswith("; refused once, its replicas try again")

    second = replicas.model_backoff(kept, "rev1", [replica("chat-c", last_exit=3)], at(320), 300)
    assert second is not None
    assert (second.tries, second.retry_at, second.reason) == (2, at(320 + 600), "NoUsableCheckpoint")
    tenth = dataclasses.replace(first, tries=9, retry_at=at(0)).to_status()
    longest = replicas.model_backoff(
        replicas.ModelBackoff.from_status(tenth), "rev1", [replica("chat-c", last_exit=2)], at(10), 300
    )
    assert longest is not None
    assert longest.retry_at == at(10 + 8 * 300)

    fixed = [replica("chat-c", created=300, ready=330)]
    assert replicas.model_backoff(kept, "rev1", fixed, at(340), 300) is None  # a replica loads: it is over
    assert replicas.model_backoff(kept, "rev2", [], at(100), 300) is None  # a new revision starts afresh
    assert replicas.model_backoff(None, "rev1", [replica("chat-a", last_exit=1)], T0, 300) is None  # may mend
    assert replicas.model_backoff(kept, None, failing, T0, 300) is None  # no model to serve


@pytest.mark.parametrize(
    "stored",
    [
        None,
        "rev1",
        {"revision": "rev1", "tries": "2", "retryAt": "2026-01-01T12:05:00Z", "reason": "R", "message": "m"},
        {"revision": "rev1", "tries": 0, "retryAt": "2026-01-01T12:05:00Z", "reason": "R", "message": "m"},
        {"revision": "rev1", "tries": 1, "retryAt": "soon", "reason": "R", "message": "m"},
        {"revision": "rev1", "tries": 1, "retryAt": "2026-01-01T12:05:00Z", "reason": None, "message": "m"},
    ],
)
def test_a_backoff_status_not_written_by_the_operator_counts_as_none(stored: object) -> None:
    assert replicas.ModelBackoff.from_status(stored) is None


def test_a_refused_model_makes_model_available_and_ready_false_with_a_warning_and_keeps_its_desired_count() -> None:
    service = a_service("chat", resources=CPU, min_replicas=2)
    problem = replicas.model_failure([replica("chat-a", last_exit=2)], "rev1")
    allotment = Allotment(2, False, "WithinQuota", "")
    deployment = ObservedDeployment(2, 0, 2, "rev1", 1, 1)
    loaded = {"type": "ModelAvailable", "status": "True", "reason": "RandomWeights", "message": ""}
    stored = {"desiredReplicas": 2, "conditions": [{**loaded, "lastTransitionTime": "2026-01-01T11:00:00Z"}]}
    draft = serving.service_status(
        service, stored, ModelSource(checkpoint=""), allotment, deployment, "rev1", T0, model_failure=problem
    )
    conditions = {c["type"]: (c["status"], c["reason"]) for c in draft.changes["conditions"]}
    assert conditions["ModelAvailable"] == ("False", "InvalidConfiguration")
    assert conditions["Ready"] == ("False", "InvalidConfiguration")
    assert "desiredReplicas" not in draft.changes  # still 2: what it asks for once the model loads (the backoff)
    assert [(e.type, e.reason) for e in draft.events] == [("Warning", "InvalidConfiguration")] * 2


def ready_of(held: ServingProblem | None) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The Ready condition and the Events of a service of 2 replicas, 1 of them ready, held up as ``held`` says."""
    service = a_service("chat", resources=CPU, min_replicas=2)
    deployment = ObservedDeployment(2, 1, 2, "rev1", 1, 1)
    within = Allotment(2, False, "WithinQuota", "")
    draft = serving.service_status(
        service, {}, ModelSource(checkpoint=""), within, deployment, "rev1", T0, held_up=held
    )
    ready = next(c for c in draft.changes["conditions"] if c["type"] == "Ready")
    return ready, [(e.type, e.reason) for e in draft.events]


def test_replicas_the_scheduler_cannot_place_make_ready_say_why() -> None:
    why = "0/5 nodes are available: 5 node(s) didn't match Pod's node affinity/selector."
    body = pending_body("chat-b", "Unschedulable", why)
    waiting = ReplicaPod.from_body(body, serving.CONTAINER)
    assert waiting.unschedulable == why
    placed = replica("chat-a", ready=30)
    assert placed.unschedulable is None
    held = replicas.held_up([placed, waiting], "rev1", T0, GRACE)
    assert held == ServingProblem("ReplicasUnschedulable", f"replica chat-b cannot be placed: {why}")
    assert replicas.held_up([placed, waiting], "rev2", T0, GRACE) is None  # another revision's replicas
    two = [waiting, dataclasses.replace(waiting, name="chat-c")]
    assert replicas.held_up(two, "rev1", T0, GRACE) == ServingProblem(
        "ReplicasUnschedulable", f"replica chat-b (and 1 more) cannot be placed: {why}"
    )

    ready, events = ready_of(held)
    assert (ready["status"], ready["reason"]) == ("False", "ReplicasUnschedulable")
    assert ready["message"] == f"1 of 2 replicas ready: replica chat-b cannot be placed: {why}"
    assert ("Warning", "ReplicasUnschedulable") in events


def test_replicas_no_scheduler_looks_at_make_ready_ask_whether_their_scheduler_runs() -> None:
    body = replica_body("chat-b", node=None, phase="Pending", created=0)
    body["spec"]["schedulerName"] = "strata-scheduler"
    unseen = ReplicaPod.from_body(body, serving.CONTAINER)
    assert unseen.awaiting_scheduler == "strata-scheduler"
    tried = dataclasses.replace(unseen, name="chat-c", awaiting_scheduler=None, unschedulable="0/5 nodes")
    placed = replica("chat-a", ready=30)
    assert placed.awaiting_scheduler is None
    assert replicas.held_up([placed, unseen], "rev1", at(29), grace_s=30) is None  # within the grace
    held = replicas.held_up([placed, unseen], "rev1", at(30), grace_s=30)
    assert held is not None
    assert held.reason == "WaitingForScheduler"
    assert held.message.startswith("replica chat-b has not been looked at by scheduler 'strata-scheduler' in 30s")
    assert "--scheduler-name default-scheduler (STRATA_OPERATOR_SCHEDULER_NAME)" in held.message
    assert replicas.held_up([unseen], "rev2", at(60), grace_s=30) is None  # another revision's replicas
    # what the scheduler said of a replica comes first: chat-c, which it found no node for
    assert replicas.held_up([placed, unseen, tried], "rev1", at(30), 30).reason == "ReplicasUnschedulable"

    ready, events = ready_of(held)
    assert (ready["status"], ready["reason"]) == ("False", "WaitingForScheduler")
    assert ready["message"] == f"1 of 2 replicas ready: {held.message}"
    assert ("Warning", "WaitingForScheduler") in events


def test_replicas_the_kubelet_cannot_start_make_ready_say_so_in_its_words() -> None:
    body = replica_body("chat-b", phase="Pending")
    never = 'Container image "strata.local/typo:1" is not present with pull policy of Never'
    body["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ErrImageNeverPull", "message": never}}
    stuck = ReplicaPod.from_body(body, serving.CONTAINER)
    assert stuck.cannot_start == f"container {serving.CONTAINER}: ErrImageNeverPull: {never}"
    placed = replica("chat-a", ready=30)
    held = replicas.held_up([placed, stuck, dataclasses.replace(stuck, name="chat-c")], "rev1", T0, GRACE)
    assert held == ServingProblem(
        "ReplicasCannotStart", f"the kubelet cannot start replica chat-b (and 1 more): {stuck.cannot_start}"
    )
    assert replicas.held_up([placed, stuck], "rev2", T0, GRACE) is None

    ready, _ = ready_of(held)
    assert (ready["status"], ready["reason"]) == ("False", "ReplicasCannotStart")
    assert ready["message"] == f"1 of 2 replicas ready: {held.message}"


def placed_replica(name: str, bound: float) -> ReplicaPod:
    """A replica bound to a node at ``bound`` whose container has not started (ContainerCreating)."""
    body = replica_body(name, phase="Pending")
    body["status"]["conditions"].append(
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": api.format_time(at(bound))}
    )
    body["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    return ReplicaPod.from_body(body, serving.CONTAINER)


def warning(reason: str, message: str, at_s: float, kind: str = "Warning") -> dict[str, Any]:
    """An Event about a pod as core/v1 lists it."""
    return {"type": kind, "reason": reason, "message": message, "lastTimestamp": api.format_time(at(at_s))}


def test_replicas_whose_volumes_do_not_come_make_ready_say_so_in_the_words_of_their_events() -> None:
    # only placed replicas that wait, past the grace since they were bound, for no reason their status gives are
    # worth reading Events for, the first few by name
    creating = placed_replica("chat-b", bound=0)
    body = replica_body("chat-c", phase="Pending")
    body["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ErrImagePull", "message": "no"}}
    pulling = dataclasses.replace(ReplicaPod.from_body(body, serving.CONTAINER), placed_at=at(0))
    assert creating.placed_at == at(0)
    others = [
        replica("chat-a", ready=30),  # running
        replica("chat-d", node=None, phase="Pending"),  # not placed
        pulling,  # the kubelet says why in its status
        dataclasses.replace(creating, name="chat-e", deleting=True),
        placed_replica("chat-f", bound=10),  # bound later: within the grace
    ]
    assert observed.awaiting_volumes([creating, *others], at(GRACE), GRACE) == ["chat-b"]
    assert observed.awaiting_volumes([creating, *others], at(GRACE - 1), GRACE) == []
    many = [placed_replica(f"chat-{i}", bound=0) for i in range(9, 0, -1)]
    assert observed.awaiting_volumes(many, at(GRACE), GRACE) == ["chat-1", "chat-2", "chat-3"]

    multi = 'Multi-Attach error for volume "pvc-1" Volume is already used by pod(s) trainer-0'
    missing = 'MountVolume.SetUp failed for volume "pv" : hostPath type check failed: /ckpt is not a directory'
    events = [
        warning("FailedAttachVolume", multi, 5),
        warning("FailedMount", missing, 20),
        warning("FailedScheduling", "0/3 nodes", 30),  # not about volumes
        warning("FailedMount", "a mount that came after all", 40, kind="Normal"),
    ]
    said = "FailedMount: " + missing.strip()
    assert observed.volume_failure(events, at(60)) == said  # the newest Warning about volumes
    assert observed.volume_failure(events[:1], at(60)) == f"FailedAttachVolume: {multi}"
    assert observed.volume_failure(events[2:], at(60)) is None
    # an Event not renewed for 5.5 minutes tells of a mount that has since succeeded
    assert observed.volume_failure(events, at(20 + observed.VOLUME_FAILURE_FRESH_S)) == said
    assert observed.volume_failure(events, at(21 + observed.VOLUME_FAILURE_FRESH_S)) is None
    renewed = {**events[1], "lastTimestamp": None, "series": {"lastObservedTime": api.format_time(at(400))}}
    assert observed.volume_failure([renewed], at(600)) == said  # the events.k8s.io way of renewing it

    stuck = dataclasses.replace(creating, volume_failure=said)
    placed = replica("chat-a", ready=30)
    held = replicas.held_up([placed, stuck, dataclasses.replace(stuck, name="chat-e")], "rev1", at(GRACE), GRACE)
    assert held == ServingProblem(
        "ReplicasCannotStart", f"the volumes of replica chat-b (and 1 more) cannot be mounted: {said}"
    )
    assert replicas.held_up([placed, creating], "rev1", at(GRACE), GRACE) is None  # no Event said why (yet)
    ready, events_posted = ready_of(held)
    assert (ready["status"], ready["reason"]) == ("False", "ReplicasCannotStart")
    assert ready["message"] == f"1 of 2 replicas ready: {held.message}"
    assert ("Warning", "ReplicasCannotStart") in events_posted


def test_replicas_the_scheduler_fails_on_make_ready_say_so_in_its_words() -> None:
    error = 'Post "http://strata-scheduler-extender:8888/filter": dial tcp: connect: connection refused'
    body = pending_body("chat-b", "SchedulerError", error)
    failing = ReplicaPod.from_body(body, serving.CONTAINER)
    assert (failing.scheduler_error, failing.unschedulable, failing.awaiting_scheduler) == (error, None, None)
    held = replicas.held_up([replica("chat-a", ready=30), failing], "rev1", at(60), GRACE)
    assert held == ServingProblem("SchedulerError", f"the scheduler fails on replica chat-b: {error}")
