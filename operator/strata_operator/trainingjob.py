"""TrainingJob handlers: an index of all jobs (for admission) and one daemon per job that follows its gang.

The daemon is thin: it reads the job, its pods and the nodes from memory, asks :func:`lifecycle.reconcile` what
to do, and applies that: the status first (guarded by resourceVersion, so a stale view never writes), then pod
deletions, creations and gate lifts. A pod change wakes the daemon at once; otherwise it wakes for deadlines,
backoffs and accounting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import aiohttp
import kopf
import orjson

import strata_api as api
from strata_api import ResourcePool, TrainingJob
from strata_operator import lifecycle
from strata_operator.kube import ApiError, Conflict, custom_path, pod_path, service_path
from strata_operator.observed import Node, WorkerPod
from strata_operator.pods import build_service, build_worker_access, build_worker_pods
from strata_operator.runtime import IndexMapping, IndexOf, Runtime, first
from strata_operator.status import NORMAL, Event

FINALIZER = "strata.dev/operator"
"""kopf's finalizer on every TrainingJob (the daemon needs one), added by kopf's first patch of a new job."""
PODS_SETTLE_S = 5.0
"""A daemon that just started (operator start, or a standby taking over) trusts "a worker is missing" or "a node
is gone" only after this long, and only once the pod and node caches have listed (see :mod:`fleet`)."""
WAKE_DEBOUNCE_S = 0.05
"""A wake-up waits this long before reading memory: one reconcile for a burst of a gang's pod events."""
STALE_VIEW_S = 5.0
"""After writing a job's status, wait at most this long for the write to come back through the watch."""
REDO_AFTER_S = 60.0
"""A worker this daemon created is not created again until the watch has shown it, or for this long after the API
server answered (a pod deleted again before any pass saw it is recreated after this long at most): on a busy API
server the watch lags seconds behind, and each premature retry is a wasted call (409 AlreadyExists)."""
COALESCE_S = 5.0
"""Status changes that only follow the gang (workers ready, nodes bound, step) are written at most this often per
job: a gang of 8 starting would otherwise write its status a dozen times, and every write is an event that the
operator (and every watcher of TrainingJobs) processes again. Phase changes are written at once."""
FOLLOW_WRITES_PER_S = 20.0
"""...and all jobs together write such follow-ups at most about this often: with many jobs each one's interval
grows (500 jobs: every 25 s), so a burst of starting gangs leaves the API server to the pods themselves."""
FOLLOWING = frozenset({"workers", "placement", "progress", "accountedAt", "gpuSeconds", "cost"})
"""The status fields whose changes :data:`COALESCE_S` throttles (accounting included: a running job is re-priced at
every reconcile, and a pod event is reason enough to reconcile, not to write)."""


def coalesce_s(jobs: int) -> float:
    """Seconds between one job's follow-up status writes when ``jobs`` jobs are followed."""
    return max(COALESCE_S, jobs / FOLLOW_WRITES_PER_S)


@dataclass(frozen=True)
class JobEntry:
    """A TrainingJob as the index holds it: the typed view, its raw status and its resourceVersion."""

    job: TrainingJob
    status: Mapping[str, Any]
    resource_version: str
    finalized: bool = True
    """kopf's finalizer is on the job: its first patch is done, so a guarded write will not race it."""

    @property
    def ref(self) -> dict[str, Any]:
        """What kopf needs to post an event about the job."""
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.TRAINING_JOB,
            "metadata": {"name": self.job.name, "namespace": self.job.namespace, "uid": self.job.uid},
        }

    @property
    def status_path(self) -> str:
        return custom_path(api.GROUP, api.VERSION, api.TRAINING_JOBS, self.job.name, self.job.namespace) + "/status"


async def index_trainingjobs(body: kopf.Body, logger: Any, memo: Any, **_: Any) -> dict[str, JobEntry] | None:
    """Every change of a job (spec or status, whoever wrote it) lands here first, and wakes the job's daemon."""
    try:
        job = TrainingJob.from_body(body)
    except (KeyError, ValueError, TypeError) as error:
        logger.warning(f"unreadable TrainingJob (is the CRD installed from crds/?): {error!r}")
        return None
    status = orjson.loads(orjson.dumps(body.get("status") or {}))  # a private copy; 10x cheaper than deepcopy
    memo.runtime.wake(job.key)
    meta = body["metadata"]
    finalized = FINALIZER in (meta.get("finalizers") or ())
    return {job.key: JobEntry(job, status, str(meta.get("resourceVersion", "")), finalized)}


async def patch_status(runtime: Runtime, entry: JobEntry, patch: Mapping[str, Any], events: list[Event]) -> bool:
    """Write a status change if the job is still what we read; False when it changed meanwhile."""
    if patch:
        body = {"metadata": {"resourceVersion": entry.resource_version}, "status": dict(patch)}
        try:
            await runtime.api.merge_patch(entry.status_path, body)
        except Conflict:
            return False
        except ApiError as error:
            if error.status == 404:
                return False
            raise
    target = kopf.Body(cast(kopf.RawBody, entry.ref))
    for event in events:
        kopf.event(target, type=event.type, reason=event.reason, message=event.message)
    return True


async def run_trainingjob(
    stopped: Any, namespace: str | None, name: str, memo: Any, logger: Any, **indices: Any
) -> None:
    """The daemon of one TrainingJob, alive while the job exists and this replica is the active one."""
    runtime: Runtime = memo.runtime
    key = f"{namespace}/{name}"
    wake = runtime.wakeups.setdefault(key, asyncio.Event())
    born = time.monotonic()
    written_from: str | None = None
    written_at = 0.0
    memory = _Memory()
    try:
        while not stopped:
            wake.clear()
            entry = first(indices["trainingjobs"], key)
            delay = runtime.settings.resync_interval_s
            if entry is None:
                delay = 0.2
            elif entry.resource_version == written_from and time.monotonic() - written_at < STALE_VIEW_S:
                delay = 0.1  # our own status write (or the one we conflicted with) has not come back yet
            else:
                started = time.perf_counter()
                try:
                    settled = time.monotonic() - born >= PODS_SETTLE_S and runtime.observed.synced
                    plan, written = await _reconcile(runtime, entry, indices, logger, memory, settled)
                    stale = plan is None  # the job changed after our view of it: wait for the watch to bring it
                except (ApiError, aiohttp.ClientError, TimeoutError) as error:
                    logger.warning(f"reconcile failed, retrying: {error}")
                    plan, written, stale = None, False, False
                runtime.metrics.reconcile.labels(api.TRAINING_JOB).observe(time.perf_counter() - started)
                # after our own write, or a conflict, this view is outdated: deciding again from it before the
                # watch delivers the newer job would only conflict again (a storm of 409s on a lagging watch)
                written_from, written_at = (entry.resource_version if written or stale else None), time.monotonic()
                if plan is None:
                    delay = 0.2
                elif plan.requeue_after_s is not None:
                    delay = min(delay, plan.requeue_after_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=delay)
            # let the index take in the change that woke us, and the rest of a burst (a gang's pod events)
            await asyncio.sleep(WAKE_DEBOUNCE_S)
    finally:
        if runtime.wakeups.get(key) is wake:
            del runtime.wakeups[key]


@dataclass
class _Memory:
    """What one daemon remembers between its passes (only to save calls: a new daemon starts empty, safely)."""

    created: dict[str, float] = field(default_factory=dict)
    """Workers (``attempt/index``) this daemon created that no pass has seen yet: when the server answered."""
    lifted: set[str] = field(default_factory=set)
    """Pods (by uid) whose gate this daemon lifted: a gate never comes back on the same pod, so it is never lifted
    again however long the watch takes to show it (a pod recreated under the same name has a new uid)."""
    status_written_at: float = -COALESCE_S
    """When this daemon last wrote the job's status (monotonic seconds)."""

    def settle(self, workers: list[WorkerPod], now_s: float) -> None:
        """Forget what the view now shows for itself."""
        seen = {f"{p.attempt}/{p.index}" for p in workers}
        self.created = {k: t for k, t in self.created.items() if k not in seen and now_s - t < REDO_AFTER_S}
        self.lifted &= {p.uid for p in workers}


async def _reconcile(
    runtime: Runtime,
    entry: JobEntry,
    indices: Mapping[str, Any],
    logger: Any,
    memory: _Memory,
    settled: bool,
) -> tuple[lifecycle.Plan | None, bool]:
    """One pass; returns the plan (None if the status could not be written) and whether status was written."""
    job = entry.job
    pools: IndexOf[ResourcePool] = indices["resourcepools"]
    pods: IndexOf[WorkerPod] = runtime.observed.worker_pods
    nodes: Mapping[str, Node] = IndexMapping(runtime.observed.nodes)
    pool = first(pools, job.spec.pool)
    now = datetime.now(UTC).replace(microsecond=0)
    workers = list(pods.get(job.key, ()))
    plan = lifecycle.reconcile(job, pool, workers, nodes, now, runtime.settings, entry.status, settled)
    patch = plan.status.patch()
    now_s, attempt = time.monotonic(), job.status.attempt
    memory.settle(workers, now_s)
    create = [i for i in plan.create_workers if f"{attempt}/{i}" not in memory.created] if pool else []
    by_name = {p.name: p for p in workers}
    lift = [] if plan.lift_when_created else _to_lift(plan.lift_gates, by_name, memory)
    acts = plan.delete_pods or plan.force_delete_pods or create or lift
    wait_s = memory.status_written_at + coalesce_s(len(runtime.wakeups)) - now_s
    if patch and set(patch) <= FOLLOWING and not acts and not plan.status.events and wait_s > 0:
        plan.requeue_after_s = wait_s if plan.requeue_after_s is None else min(plan.requeue_after_s, wait_s)
        return plan, False
    if not await patch_status(runtime, entry, patch, plan.status.events):
        return None, False
    if patch:
        memory.status_written_at = time.monotonic()
    if plan.restarted:
        runtime.metrics.restarts.labels(str(patch.get("reason", ""))).inc()
    if plan.gpu_seconds and job.status.gpu_type is not None:
        runtime.metrics.gpu_seconds.labels(job.status.gpu_type.value).inc(plan.gpu_seconds)
        runtime.metrics.cost.labels(job.status.gpu_type.value).inc(plan.cost)
    kube = runtime.api
    await asyncio.gather(*(kube.delete(pod_path(job.namespace, n)) for n in plan.delete_pods))
    await asyncio.gather(*(kube.delete(pod_path(job.namespace, n), grace_s=0) for n in plan.force_delete_pods))
    if create and pool is not None:
        keys = [f"{attempt}/{i}" for i in create]
        memory.created.update(dict.fromkeys(keys, now_s))
        try:
            created = await _create_workers(runtime, job, pool, create)
        except BaseException:
            for k in keys:  # created again at the next pass (those that did exist answer 409, harmlessly)
                memory.created.pop(k, None)
            raise
        # the clock of REDO_AFTER_S starts when the API server answered: on a saturated server a create can wait
        # longer than that for its turn
        memory.created.update(dict.fromkeys(keys, time.monotonic()))
        logger.info(f"created {len(created)} of {len(create)} missing workers")
        if plan.lift_when_created and len(created) == len(plan.create_workers):
            # every missing worker is now a new pod of ours (none was left to an earlier pass's creation, none
            # answered 409): the whole gang exists, so its gates go now rather than after the watch shows it
            lift = _to_lift(plan.lift_gates, {**by_name, **{p.name: p for p in created}}, memory)
    if lift:
        memory.lifted.update(p.uid for p in lift)
        outcomes = await asyncio.gather(
            *(
                kube.merge_patch(
                    pod_path(job.namespace, p.name), {"spec": {"schedulingGates": [{"name": g} for g in p.other_gates]}}
                )
                for p in lift
            ),
            return_exceptions=True,
        )
        failed = [(p, o) for p, o in zip(lift, outcomes, strict=True) if isinstance(o, BaseException)]
        if failed:
            memory.lifted -= {p.uid for p, _ in failed}  # lifted again at the next pass
            raise failed[0][1]
        message = f"all {job.spec.workers} workers exist: scheduling gates lifted together"
        kopf.event(kopf.Body(cast(kopf.RawBody, entry.ref)), type=NORMAL, reason="GatesLifted", message=message)
    return plan, bool(patch)


def _to_lift(names: list[str], pods: Mapping[str, WorkerPod], memory: _Memory) -> list[WorkerPod]:
    """The named pods whose gate is still ours to lift (gated, and not already lifted by this daemon)."""
    return [pods[n] for n in names if n in pods and pods[n].gated and pods[n].uid not in memory.lifted]


async def _create_workers(
    runtime: Runtime, job: TrainingJob, pool: ResourcePool, indices: list[int]
) -> list[WorkerPod]:
    """The workers' pods, with their Service, ServiceAccount, Role and RoleBinding; the pods that were new, as the
    API server stored them."""
    async with runtime.creating:
        kube, access = runtime.api, build_worker_access(job)
        # pods need their ServiceAccount to exist, a RoleBinding its Role: two rounds of calls, not one per object
        await asyncio.gather(
            kube.create(service_path(job.namespace), build_service(job, runtime.settings)),
            *(kube.create(path, manifest) for path, manifest in access[:2]),
        )
        manifests = build_worker_pods(job, pool, runtime.settings)
        created, _ = await asyncio.gather(
            asyncio.gather(*(kube.create_returning(pod_path(job.namespace), manifests[i]) for i in indices)),
            kube.create(*access[2]),
        )
    return [WorkerPod.from_body(body) for body in created if body is not None]


def register(registry: kopf.OperatorRegistry) -> None:
    kopf.index(api.GROUP, api.VERSION, api.TRAINING_JOBS, id="trainingjobs", registry=registry)(index_trainingjobs)
    kopf.daemon(
        api.GROUP,
        api.VERSION,
        api.TRAINING_JOBS,
        id="follow",
        cancellation_timeout=5.0,
        registry=registry,
    )(run_trainingjob)
