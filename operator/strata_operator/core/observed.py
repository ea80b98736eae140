"""Small, immutable summaries of the cluster objects the operator watches (pods, nodes), read from raw bodies.

kopf's in-memory indices hold these, so one admission pass or one job reconcile reads memory, not the API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import strata_api as api
from strata_api import GPUType, parse_time
from strata_api.nodes import NodeFacts, parse_count
from strata_api.workload import Progress
from strata_operator.settings import ENV_PREFIX


def unschedulable_condition(conditions: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """A pod's ``PodScheduled`` condition when it says the scheduler found no node for it (False, Unschedulable;
    its message says why), else None."""
    for condition in conditions:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            return condition if condition.get("status") == "False" else None
    return None


WAITING_FOR_SCHEDULER = "WaitingForScheduler"
"""The reason a TrainingJob's status and an InferenceService's Ready give while no scheduler looks at their pods."""
SCHEDULER_ERROR = "SchedulerError"
"""Theirs while kube-scheduler fails on their pods (:func:`scheduler_error`)."""


def scheduler_error(conditions: Sequence[Mapping[str, Any]]) -> str | None:
    """kube-scheduler's error while it fails on the pod for a cause other than room (PodScheduled False, reason
    ``SchedulerError``: an extender it cannot reach or that errs, a plugin's failure), else None."""
    for condition in conditions:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "SchedulerError":
            return str(condition.get("message") or "SchedulerError") if condition.get("status") == "False" else None
    return None


def awaiting_scheduler(spec: Mapping[str, Any], conditions: Sequence[Mapping[str, Any]]) -> str | None:
    """The pod's ``schedulerName`` while no scheduler has looked at it, else None: it has no node and no scheduling
    gate, and no PodScheduled condition but the API server's ``SchedulingGated`` of a pod made with gates (a
    scheduler that tried sets ``Unschedulable``, one that placed it sets the node). Past a grace
    (:attr:`~strata_operator.settings.OperatorSettings.scheduler_grace_s`) that means no scheduler of that name runs."""
    if spec.get("nodeName") or spec.get("schedulingGates"):
        return None
    if any(c.get("type") == "PodScheduled" and c.get("reason") != "SchedulingGated" for c in conditions):
        return None
    return scheduler_name(spec)


DEFAULT_SCHEDULER = "default-scheduler"
"""The ``schedulerName`` the API server gives a pod that names none."""


def scheduler_name(spec: Mapping[str, Any]) -> str:
    return str(spec.get("schedulerName") or DEFAULT_SCHEDULER)


CANNOT_START = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "CreateContainerConfigError", "CreateContainerError"}
)
"""The kubelet's waiting reasons of a container it cannot start: an image it cannot pull (or, with pull policy Never,
does not have), a Secret or ConfigMap the container reads that is missing, a runtime that refuses the container.
Each may mend (an image pushed or loaded, the Secret made), so a start waits on; but status says so."""


def cannot_start(status: Mapping[str, Any]) -> str | None:
    """The kubelet's words for the first container of the pod it cannot start (:data:`CANNOT_START`), as
    ``container <name>: <reason>: <message>``; None when none waits so."""
    for statuses in (status.get("initContainerStatuses"), status.get("containerStatuses")):
        for container in statuses or ():
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in CANNOT_START:
                said = f": {waiting['message']}" if waiting.get("message") else ""
                return f"container {container.get('name')}: {waiting['reason']}{said}"
    return None


VOLUME_FAILURES = frozenset({"FailedMount", "FailedAttachVolume"})
"""Reasons of the Warning Events the kubelet (``FailedMount``) and the attach-detach controller
(``FailedAttachVolume``: a ReadWriteOnce volume attached to another node, "Multi-Attach error") post about a pod
whose volumes do not come. Its containers then wait as ``ContainerCreating`` and its status says nothing more, so
these Events are the only word on it. Each may mend (the volume freed, the folder made), so a start waits on."""


VOLUME_READS = 3
"""Pods of one job or service whose Events one pass reads for a volume failure, the first by name: the status
names the first and counts the others, and a pass makes no more than a few extra calls."""


class StartingPod(Protocol):
    """What :func:`awaiting_volumes` reads of a worker or a replica pod."""

    @property
    def name(self) -> str: ...
    @property
    def node(self) -> str | None: ...
    @property
    def phase(self) -> str: ...
    @property
    def deleting(self) -> bool: ...
    @property
    def cannot_start(self) -> str | None: ...
    @property
    def placed_at(self) -> datetime | None: ...


def placed_at(conditions: Sequence[Mapping[str, Any]]) -> datetime | None:
    """When the pod was bound to its node (its PodScheduled condition True since then); None while it is not."""
    for condition in conditions:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "True":
            return parse_time(condition.get("lastTransitionTime"))
    return None


def awaiting_volumes(pods: Iterable[StartingPod], now: datetime, grace_s: float) -> list[str]:
    """The names of the pods (the first :data:`VOLUME_READS` by name) bound to a node ``grace_s`` seconds ago or
    more and still not started, for no reason their status gives: their containers wait as ``ContainerCreating``,
    which is also what a volume that does not come looks like there. Their Events say the rest
    (:func:`volume_failure`)."""
    waiting = sorted(
        p.name
        for p in pods
        if p.node is not None
        and p.phase == "Pending"
        and not p.deleting
        and p.cannot_start is None
        and p.placed_at is not None
        and (now - p.placed_at).total_seconds() >= grace_s
    )
    return waiting[:VOLUME_READS]


VOLUME_FAILURE_FRESH_S = 330.0
"""How recent a volume failure's Event must be to count. No Event says "mounted", so one not renewed for a while
tells of a mount that has since succeeded (the pod may be pulling its image now). The kubelet retries a mount at
most 2 min 2 s apart and renews its ``FailedMount`` Event at each failure, but client-go's spam filter lets a
source renew one object's Event only once in 5 minutes after its first 25: 5 minutes and a half, so that a volume
still failing is never dropped, at the cost of a stale word for that long after a mount that succeeded."""


def volume_failure(events: Iterable[Mapping[str, Any]], now: datetime) -> str | None:
    """The newest of a pod's Warning Events about its volumes (:data:`VOLUME_FAILURES`) as ``<reason>: <message>``,
    when it was last seen within :data:`VOLUME_FAILURE_FRESH_S` of ``now``; None otherwise. ``events``: the pod's
    Events as the API lists them (core/v1)."""

    def seen(event: Mapping[str, Any]) -> datetime | None:
        series = event.get("series") or {}
        times = (event.get("lastTimestamp"), series.get("lastObservedTime"), event.get("eventTime"),
                 (event.get("metadata") or {}).get("creationTimestamp"))  # fmt: skip
        parsed = [t for t in (parse_time(x) for x in times if isinstance(x, str)) if t is not None]
        return max(parsed) if parsed else None

    found = [
        (when, e)
        for e in events
        if e.get("type") == "Warning"
        and e.get("reason") in VOLUME_FAILURES
        and e.get("message")
        and (when := seen(e)) is not None
        and (now - when).total_seconds() <= VOLUME_FAILURE_FRESH_S
    ]
    if not found:
        return None
    _, newest = max(found, key=lambda pair: pair[0])
    return f"{newest['reason']}: {str(newest['message']).strip()}"


def scheduler_silence(what: str, scheduler: str, grace_s: float) -> str:
    """What status says of ``what`` (a worker or a replica, by name) that scheduler ``scheduler`` has not looked at
    in ``grace_s`` seconds, and what to do about it."""
    return (
        f"{what} has not been looked at by scheduler {scheduler!r} in {grace_s:.0f}s: is a kube-scheduler with that "
        f"profile running? The chart installs one; on a cluster without it, run the operator with --scheduler-name "
        f"default-scheduler ({ENV_PREFIX}SCHEDULER_NAME)"
    )


@dataclass(frozen=True, slots=True)
class WorkerPod:
    """One worker pod as a job's reconcile needs to see it."""

    name: str
    index: int
    attempt: int
    phase: str
    node: str | None
    gated: bool
    other_gates: tuple[str, ...]
    """Scheduling gates of other controllers; lifting Strata's gate keeps them."""
    deleting: bool
    ready: bool
    exit_code: int | None
    reason: str
    progress: Progress
    uid: str = ""
    unschedulable: str | None = None
    """kube-scheduler's message while it finds no node for the pod (PodScheduled False, reason Unschedulable)."""
    unschedulable_since: datetime | None = None
    """Since when the pod has been unschedulable (that condition's lastTransitionTime)."""
    image_refused: str | None = None
    """The kubelet's message when it cannot parse the container's image reference (waiting reason
    InvalidImageName): no retry can start the container."""
    awaiting_scheduler: str | None = None
    """Its ``schedulerName`` while no scheduler has looked at it (:func:`awaiting_scheduler`)."""
    cannot_start: str | None = None
    """The kubelet's words while it cannot start the worker's container (:func:`cannot_start`)."""
    scheduler_error: str | None = None
    """kube-scheduler's error while it fails on the worker (:func:`scheduler_error`)."""
    scheduler_name: str = DEFAULT_SCHEDULER
    """The pod's ``schedulerName`` (immutable: a pod made for another scheduler is made again to change it)."""
    placed_at: datetime | None = None
    """When it was bound to its node (:func:`placed_at`)."""
    volume_failure: str | None = None
    """Why its volumes do not come, from its Warning Events (:func:`volume_failure`); not in the pod's body: filled
    in only for a worker :func:`awaiting_volumes` names."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> WorkerPod:
        meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status") or {}
        labels = meta.get("labels") or {}
        exit_code, reason = None, status.get("reason") or ""
        image_refused: str | None = None
        for cs in status.get("containerStatuses") or ():
            terminated = (cs.get("state") or {}).get("terminated")
            if terminated:
                exit_code = terminated.get("exitCode")
                reason = terminated.get("reason") or reason
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") == "InvalidImageName":
                image_refused = str(waiting.get("message") or "InvalidImageName")
        conditions = [c for c in status.get("conditions") or () if isinstance(c, Mapping)]
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        refused = unschedulable_condition(conditions)
        gates = [g.get("name", "") for g in spec.get("schedulingGates") or ()]
        return cls(
            name=meta.get("name", ""),
            index=parse_count(labels.get(api.LABEL_WORKER_INDEX)),
            attempt=parse_count(labels.get(api.LABEL_ATTEMPT)),
            phase=status.get("phase") or "Pending",
            node=spec.get("nodeName"),
            gated=api.SCHEDULING_GATE in gates,
            other_gates=tuple(g for g in gates if g != api.SCHEDULING_GATE),
            deleting=meta.get("deletionTimestamp") is not None,
            ready=ready,
            exit_code=exit_code,
            reason=reason,
            progress=Progress.parse((meta.get("annotations") or {}).get(api.ANN_PROGRESS)),
            uid=meta.get("uid", ""),
            unschedulable=str(refused.get("message") or "no node fits") if refused is not None else None,
            unschedulable_since=parse_time(refused.get("lastTransitionTime")) if refused is not None else None,
            image_refused=image_refused,
            awaiting_scheduler=awaiting_scheduler(spec, conditions),
            cannot_start=cannot_start(status),
            scheduler_error=scheduler_error(conditions),
            scheduler_name=scheduler_name(spec),
            placed_at=placed_at(conditions),
        )


@dataclass(frozen=True, slots=True)
class Node:
    """A node as admission and accounting see it: a slim, immutable slice of :class:`strata_api.nodes.NodeFacts`
    (thousands of them sit in the node cache)."""

    name: str
    gpu_type: GPUType | None
    capacity_type: str | None
    allocatable_gpus: int
    schedulable: bool
    price_per_hour: float | None
    """The node's own price annotation (dollars per node-hour), if any."""
    instance_type: str | None = None
    """``node.kubernetes.io/instance-type``: the row of the price catalog when the node has no price annotation."""
    allocatable_cpu_millis: int | None = None
    """Allocatable CPU in millicores; None when the node does not say (or says nonsense): no limit is assumed."""
    allocatable_memory: int | None = None
    """Allocatable memory in bytes; None when the node does not say."""
    zone: str | None = None
    """``topology.kubernetes.io/zone``: whose time-of-use power tariff the node pays (valley scheduling)."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Node:
        allocatable = (body.get("status") or {}).get("allocatable") or {}
        return cls.from_facts(
            NodeFacts.from_body(body),
            cpu_millis=_lenient(api.cpu_millis, allocatable.get("cpu")),
            memory=_lenient(api.memory_bytes, allocatable.get("memory")),
        )

    @classmethod
    def from_facts(cls, facts: NodeFacts, cpu_millis: int | None = None, memory: int | None = None) -> Node:
        """The operator's slice of the one node reader: allocatable GPUs count only the resource of the node's own
        GPU type (its product label), so a node labelled H100 that advertises AMD GPUs offers admission none."""
        gpu = facts.gpu_type
        return cls(
            name=facts.name,
            gpu_type=gpu,
            capacity_type=facts.capacity_type.value if facts.capacity_type else None,
            allocatable_gpus=facts.allocatable_gpus.get(gpu.resource, 0) if gpu else 0,
            schedulable=facts.schedulable,
            price_per_hour=facts.price_override,
            instance_type=facts.instance_type,
            allocatable_cpu_millis=cpu_millis,
            allocatable_memory=memory,
            zone=facts.zone,
        )


def _lenient(parse: Callable[[object], int], value: object) -> int | None:
    """A node's quantity, or None when absent or malformed (a node body must never break the node cache)."""
    if value is None:
        return None
    try:
        return parse(value)
    except (ValueError, ArithmeticError):
        return None
