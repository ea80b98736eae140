"""An InferenceService's replica pods as the operator's pod watch sees them, and what status says of them: the
hourly cost of the running replicas, their measured start-up time, and a model the server refused (with the
backoff that stops its replicas rather than let them crash-loop). Pure; no I/O.

The pods come from the operator's one pod watch (:class:`strata_operator.runtime.watches.ClusterCache`), which
already lists every pod of the served namespaces for GPU accounting: reading the replicas from it costs no extra
API call.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import strata_api as api
from strata_api import InferenceService, format_time, parse_time
from strata_api.catalog import Catalog
from strata_api.workload import ExitCode
from strata_operator.core.backoff import doubling_s
from strata_operator.core.observed import (
    Node,
    awaiting_scheduler,
    cannot_start,
    placed_at,
    scheduler_error,
    scheduler_silence,
    unschedulable_condition,
)
from strata_operator.core.serving import ModelProblem, Reason, ServingProblem

RECENT_STARTS = 5
"""``status.startupSeconds`` is the median over this many replicas of the current revision, the most recently
created first: recent enough to follow a new image or model, and a median so one slow node does not set it."""


@dataclass(frozen=True, slots=True)
class ReplicaPod:
    """One replica pod of a service: what start-up time, cost and the model's health are read from."""

    name: str
    revision: str
    """The pod template's ``strata.dev/revision`` label."""
    phase: str
    node: str | None
    created: datetime | None
    ready_at: datetime | None
    """When its Ready condition last turned True; None while it is not ready."""
    deleting: bool
    exit_code: int | None = None
    """The server container's last exit code (its current or previous termination); None if it never ended."""
    restarts: int = 0
    unschedulable: str | None = None
    """The scheduler's word on why no node takes it (its PodScheduled condition); None when placed or not yet tried."""
    awaiting_scheduler: str | None = None
    """Its ``schedulerName`` while no scheduler has looked at it
    (:func:`strata_operator.core.observed.awaiting_scheduler`)."""
    cannot_start: str | None = None
    """The kubelet's words while it cannot start one of the replica's containers
    (:func:`strata_operator.core.observed.cannot_start`)."""
    scheduler_error: str | None = None
    """kube-scheduler's error while it fails on the replica (:func:`strata_operator.core.observed.scheduler_error`)."""
    placed_at: datetime | None = None
    """When it was bound to its node (:func:`strata_operator.core.observed.placed_at`)."""
    volume_failure: str | None = None
    """Why its volumes do not come, from its Warning Events (:func:`strata_operator.core.observed.volume_failure`);
    not in the pod's body: filled in only for a replica :func:`~strata_operator.core.observed.awaiting_volumes`
    names."""

    @property
    def running(self) -> bool:
        """Bound to a node and not going away: it holds (and costs) its node's share, ready or not."""
        return self.node is not None and self.phase == "Running" and not self.deleting

    @classmethod
    def from_body(cls, body: Mapping[str, Any], container: str) -> ReplicaPod:
        """A pod body as the API returns it; ``container``: the server's container name."""
        meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
        conditions = [c for c in status.get("conditions") or () if isinstance(c, Mapping)]
        ready = next((c for c in conditions if c.get("type") == "Ready"), None)
        ready_at = parse_time(ready.get("lastTransitionTime")) if ready and ready.get("status") == "True" else None
        server: Mapping[str, Any] = next(
            (s for s in status.get("containerStatuses") or () if s.get("name") == container), {}
        )
        ended = (server.get("state") or {}).get("terminated") or (server.get("lastState") or {}).get("terminated")
        code = ended.get("exitCode") if ended else None
        return cls(
            name=str(meta.get("name", "")),
            revision=str((meta.get("labels") or {}).get(api.LABEL_REVISION, "")),
            phase=str(status.get("phase") or "Pending"),
            node=spec.get("nodeName"),
            created=parse_time(meta.get("creationTimestamp")),
            ready_at=ready_at,
            deleting=meta.get("deletionTimestamp") is not None,
            exit_code=code if isinstance(code, int) else None,
            restarts=int(server.get("restartCount") or 0),
            unschedulable=_unschedulable(conditions),
            awaiting_scheduler=awaiting_scheduler(spec, conditions),
            cannot_start=cannot_start(status),
            scheduler_error=scheduler_error(conditions),
            placed_at=placed_at(conditions),
        )


MODEL_EXITS = {
    ExitCode.INVALID_CONFIGURATION: (
        "InvalidConfiguration",
        "invalid configuration: the server refused its settings, for example a preset, precision or quantization "
        "it does not know, or a preset the checkpoint does not match",
    ),
    ExitCode.NO_USABLE_CHECKPOINT: (
        "NoUsableCheckpoint",
        "no usable checkpoint where spec.model points: none there (a wrong spec.model.path or modelDir, a job that "
        "has saved none yet) or none that passes its checksums and loads",
    ),
}
"""The server's exit codes (:class:`strata_api.workload.ExitCode`) that say its model cannot be served: a restart
reads the same settings and bytes, so the replica would only crash-loop. Reason and meaning of each."""


MODEL_RETRY_GROWTH = 8
"""A refused revision's stop grows from ``model_retry_s`` by doubling to at most this many times it."""


@dataclass(frozen=True)
class ModelBackoff:
    """A revision whose model the servers refused, kept in ``status.modelBackoff``: its replicas stay stopped until
    ``retry_at``, then start once more; ``tries`` counts the refusals of this revision, ``reason`` and ``message``
    are the last one's (:func:`model_failure`)."""

    revision: str
    tries: int
    retry_at: datetime
    reason: str
    message: str

    def stopped(self, now: datetime) -> bool:
        return now < self.retry_at

    def problem(self, now: datetime) -> ModelProblem:
        """What status says of the revision: the refusal, and while the replicas are stopped, until when."""
        times = "once" if self.tries == 1 else f"{self.tries} times"
        if not self.stopped(now):
            return ModelProblem(self.reason, f"{self.message}; refused {times}, its replicas try again")
        return ModelProblem(
            self.reason,
            f"{self.message}; refused {times}, so its replicas are stopped rather than left to crash-loop, "
            f"until {format_time(self.retry_at)} (or a new revision: a changed spec, the job's next checkpoint)",
        )

    def to_status(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "tries": self.tries,
            "retryAt": format_time(self.retry_at),
            "reason": self.reason,
            "message": self.message,
        }

    @classmethod
    def from_status(cls, value: object) -> ModelBackoff | None:
        """What :meth:`to_status` wrote; None for anything else (a status edited by hand counts as no refusal)."""
        if not isinstance(value, Mapping):
            return None
        revision, tries, retry_at = value.get("revision"), value.get("tries"), parse_time(value.get("retryAt"))
        reason, message = value.get("reason"), value.get("message")
        if not isinstance(revision, str) or type(tries) is not int or tries < 1 or retry_at is None:
            return None
        if not isinstance(reason, str) or not isinstance(message, str):
            return None
        return cls(revision, tries, retry_at, reason, message)


def model_backoff(
    last: ModelBackoff | None,
    revision: str | None,
    pods: Iterable[ReplicaPod],
    now: datetime,
    retry_s: float,
) -> ModelBackoff | None:
    """The backoff of ``revision`` after this pass, from the one in status (``last``) and its replicas: a refusal
    seen while none is stopped (the first, or the first after a try) stops them for ``retry_s``, doubled for each
    earlier refusal up to :data:`MODEL_RETRY_GROWTH` times it; a ready replica of the revision ends it (the volume
    was fixed); another revision's is forgotten. None: nothing refused."""
    if revision is None:
        return None
    pods = list(pods)
    if last is not None and last.revision != revision:
        last = None
    if any(p.revision == revision and p.ready_at is not None and not p.deleting for p in pods):
        return None
    refused = model_failure(pods, revision)
    if refused is not None and (last is None or not last.stopped(now)):
        tries = last.tries + 1 if last is not None else 1
        wait_s = doubling_s(retry_s, retry_s * MODEL_RETRY_GROWTH, tries)
        return ModelBackoff(revision, tries, now + timedelta(seconds=wait_s), refused.reason, refused.message)
    return last


def model_failure(pods: Iterable[ReplicaPod], revision: str) -> ModelProblem | None:
    """Why the model of ``revision`` cannot be served, from its replicas: none of them is ready and one's server
    last exited with a code of :data:`MODEL_EXITS` (a replica that exited so once and is ready now does not
    count: its volume was fixed meanwhile); None otherwise."""
    current = [p for p in pods if p.revision == revision and not p.deleting]
    if any(p.ready_at is not None for p in current):
        return None
    failed = sorted((p for p in current if p.exit_code in MODEL_EXITS), key=lambda p: p.name)
    if not failed:
        return None
    pod = failed[0]
    assert pod.exit_code is not None
    reason, meaning = MODEL_EXITS[pod.exit_code]
    restarts = f", restarted {pod.restarts} times" if pod.restarts else ""
    return ModelProblem(
        reason,
        f"replica {pod.name} of revision {revision} exited with code {pod.exit_code}{restarts}: {meaning} "
        "(its log names the cause); no replica of the revision is ready",
    )


def _unschedulable(conditions: list[Mapping[str, Any]]) -> str | None:
    refused = unschedulable_condition(conditions)
    return str(refused.get("message") or "no node fits") if refused is not None else None


def held_up(
    pods: Iterable[ReplicaPod], revision: str, now: datetime, grace_s: float, what: str = "replica"
) -> ServingProblem | None:
    """Why replicas of ``revision`` are not running, where something outside the operator holds them up, for the
    first of them by name, in the first of these that applies: the scheduler finds no node (its words: a node
    selector no node matches, a claim that does not exist, no room), the scheduler fails on them (its error, say
    an extender it cannot reach), no scheduler has looked at them ``grace_s`` seconds after they were made (no
    scheduler of their ``schedulerName`` runs), the kubelet cannot start their containers (an image it cannot
    pull, a Secret that is missing), their volumes cannot be mounted (:attr:`ReplicaPod.volume_failure`: a
    folder or claim that is not there, a ReadWriteOnce volume attached to another node). None when none is held
    up so. ``what`` names the pods (routers are read so too, with their revision "")."""
    current = sorted((p for p in pods if p.revision == revision and not p.deleting), key=lambda p: p.name)

    def first(reason: str, found: list[ReplicaPod], say: Callable[[ReplicaPod, str], str]) -> ServingProblem | None:
        if not found:
            return None
        others = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        return ServingProblem(reason, say(found[0], f"{what} {found[0].name}{others}"))

    def silent(p: ReplicaPod) -> bool:
        return (
            p.awaiting_scheduler is not None and p.created is not None and (now - p.created).total_seconds() >= grace_s
        )

    return (
        first(Reason.REPLICAS_UNSCHEDULABLE, [p for p in current if p.node is None and p.unschedulable],
              lambda p, who: f"{who} cannot be placed: {p.unschedulable}")
        or first(Reason.SCHEDULER_ERROR, [p for p in current if p.scheduler_error is not None],
                 lambda p, who: f"the scheduler fails on {who}: {p.scheduler_error}")
        or first(Reason.WAITING_FOR_SCHEDULER, [p for p in current if silent(p)],
                 lambda p, who: scheduler_silence(who, str(p.awaiting_scheduler), grace_s))
        or first(Reason.REPLICAS_CANNOT_START, [p for p in current if p.cannot_start is not None],
                 lambda p, who: f"the kubelet cannot start {who}: {p.cannot_start}")
        or first(Reason.REPLICAS_CANNOT_START, [p for p in current if p.volume_failure is not None],
                 lambda p, who: f"the volumes of {who} cannot be mounted: {p.volume_failure}")
    )  # fmt: skip


def startup_seconds(pods: Iterable[ReplicaPod], revision: str) -> float | None:
    """Measured start-up of replicas of ``revision`` (the current template): pod creation to its Ready condition
    (image pull, weight load, warm-up, compilation), the median over the :data:`RECENT_STARTS` most recently
    created ready ones; None when none of them is ready yet. A replica that restarted counts from its creation to
    its latest readiness: what a new replica of this revision may take too."""
    starts = sorted(
        (p for p in pods if p.revision == revision and p.ready_at is not None and p.created is not None),
        key=lambda p: (p.created, p.name),
        reverse=True,
    )[:RECENT_STARTS]
    seconds = [max(0.0, (p.ready_at - p.created).total_seconds()) for p in starts if p.ready_at and p.created]
    return float(statistics.median(seconds)) if seconds else None


def replica_price(service: InferenceService, node: Node | None, catalog: Catalog) -> float:
    """Dollars per hour one replica of the service costs on ``node``.

    GPU replicas: ``gpusPerReplica`` times the node's price per GPU-hour, :meth:`Catalog.gpu_price` (what a
    TrainingJob's ``status.cost`` charges a worker). CPU replicas: the node's price per node-hour
    (:meth:`Catalog.node_price`) times the share of its allocatable CPU the replica requests
    (``cpuPerReplica``), as a GPU node's price is shared by its GPUs. 0 for a node priced by neither its
    annotation nor the catalog, or one that does not say its CPU: nothing rather than a guess."""
    if node is None:
        return 0.0
    resources = service.spec.resources
    if not resources.on_cpu:
        gpu_hour = catalog.gpu_price(node.price_per_hour, node.instance_type, node.capacity_type, node.allocatable_gpus)
        return gpu_hour * resources.gpus_per_replica if gpu_hour is not None else 0.0
    node_hour = catalog.node_price(node.price_per_hour, node.instance_type, node.capacity_type)
    cores = node.allocatable_cpu_millis
    if node_hour is None or not cores:
        return 0.0
    return node_hour * api.cpu_millis(resources.cpu_per_replica or 0) / cores


def cost_per_hour(
    service: InferenceService, pods: Iterable[ReplicaPod], nodes: Mapping[str, Node], catalog: Catalog
) -> float:
    """``status.costPerHour``: the sum of :func:`replica_price` over the service's running replicas (every
    revision: a canary's replicas cost too), rounded to a hundredth of a cent."""
    total = sum(replica_price(service, nodes.get(p.node or ""), catalog) for p in pods if p.running)
    return round(total, 4)
