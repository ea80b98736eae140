"""TrainingJob handlers: an index of all jobs (for admission) and one daemon per job that follows its gang.

The daemon is thin: it reads the job, its pods and the nodes from memory, asks :func:`lifecycle.reconcile` what
to do and :class:`~strata_operator.core.follow.DaemonMemory` what of it to hold back or not redo, and applies
that: the status first (guarded by resourceVersion, so a stale view never writes), then pod deletions, creations
and gate lifts. A pod change wakes the daemon at once; otherwise it wakes for deadlines, backoffs and accounting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
import orjson

import strata_api as api
from strata_api import ResourcePool, TrainingJob
from strata_operator.core import lifecycle
from strata_operator.core.backoff import failure_backoff_s
from strata_operator.core.follow import DaemonMemory, Work
from strata_operator.core.observed import WorkerPod
from strata_operator.runtime import gangs
from strata_operator.runtime.events import with_volume_failures
from strata_operator.runtime.jobs import JobEntry, patch_status
from strata_operator.runtime.kube import ApiError
from strata_operator.runtime.shared import IndexMapping, IndexOf, Runtime, first

FINALIZER = "strata.dev/operator"
"""kopf's finalizer on every TrainingJob (the daemon needs one), added by kopf's first patch of a new job."""
PODS_SETTLE_S = 5.0
"""A daemon that just started (operator start, or a standby taking over) trusts "a worker is missing" or "a node
is gone" only after this long, and only once the pod and node caches have listed (see
:mod:`strata_operator.runtime.watches`)."""
WAKE_DEBOUNCE_S = 0.05
"""A wake-up waits this long before reading memory: one reconcile for a burst of a gang's pod events."""
STALE_VIEW_S = 30.0
"""After a status write of a job (its daemon's or the admission pass's), wait at most this long for the job to come
back changed through the watch before deciding again. It always comes: a write either changes the job or conflicts
with a change someone made, so this is only a bound for a watch that is being re-established. A loaded control
plane's watch lags by seconds (at 200 new jobs on 2 busy cores, 5 s here left 0.6-0.9 conflicting writes a job,
mostly a new job's Queued write after the admission pass had admitted it; 30 s left none)."""
FINALIZER_WAIT_S = 5.0
"""A new job's daemon waits at most this long for kopf's finalizer patch before its first pass: a status write
guarded by the resourceVersion read before that patch only conflicts (one 409 per new job at 200 jobs)."""


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


async def run_trainingjob(
    stopped: Any, namespace: str | None, name: str, memo: Any, logger: Any, **indices: Any
) -> None:
    """The daemon of one TrainingJob, alive while the job exists and this replica is the active one."""
    runtime: Runtime = memo.runtime
    key = f"{namespace}/{name}"
    wake = runtime.wakeups.setdefault(key, asyncio.Event())
    born = time.monotonic()
    failures = 0
    memory = DaemonMemory(status_written_at=born)
    try:
        while not stopped:
            wake.clear()
            entry = first(indices["trainingjobs"], key)
            delay = runtime.settings.resync_interval_s
            if entry is None:
                delay = 0.2
            elif not entry.finalized and time.monotonic() - born < FINALIZER_WAIT_S:
                delay = 0.1  # kopf's first patch (the finalizer) is on its way: it wakes us when it lands
            elif stale_view(runtime, key, entry.resource_version):
                delay = 0.1  # a status write (ours, the admission pass's, or one we conflicted with) is not back yet
            else:
                started = time.perf_counter()
                try:
                    settled = time.monotonic() - born >= PODS_SETTLE_S and runtime.observed.synced
                    plan = await _reconcile(runtime, entry, indices, logger, memory, settled)
                    failures = 0
                except (ApiError, aiohttp.ClientError, TimeoutError) as error:
                    failures += 1
                    retry_s = failure_backoff_s(failures, delay)
                    logger.warning(f"TrainingJob {key}: reconcile failed, retrying in {retry_s:.1f}s: {error}")
                    plan = None
                except Exception as error:  # a bug, or a value nobody foresaw: name the job, never retry hot
                    failures += 1
                    retry_s = failure_backoff_s(failures, delay)
                    logger.exception(f"TrainingJob {key}: reconcile raised {error!r}; retrying in {retry_s:.1f}s")
                    plan = None
                runtime.metrics.reconcile.labels(api.TRAINING_JOB).observe(time.perf_counter() - started)
                if failures:
                    delay = failure_backoff_s(failures, delay)
                elif plan is None:  # the job changed after our view of it: the watch brings the newer one
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
            runtime.written_from.pop(key, None)


def stale_view(runtime: Runtime, key: str, resource_version: str) -> bool:
    """Whether the job as the index holds it is the view a status write was decided from less than
    :data:`STALE_VIEW_S` ago: that write (or the change it conflicted with) has not come back through the watch, and
    deciding again from this view would only conflict (a storm of 409s on a lagging watch)."""
    version, at = runtime.written_from.get(key, ("", 0.0))
    return version == resource_version and time.monotonic() - at < STALE_VIEW_S


async def _reconcile(
    runtime: Runtime,
    entry: JobEntry,
    indices: Mapping[str, Any],
    logger: Any,
    memory: DaemonMemory,
    settled: bool,
) -> lifecycle.Plan | None:
    """One pass: decide from memory, write the status, apply the rest; returns the plan (None if the status could
    not be written)."""
    job = entry.job
    pools: IndexOf[ResourcePool] = indices["resourcepools"]
    pool = first(pools, job.spec.pool)
    workers = list(runtime.observed.worker_pods.get(job.key, ()))
    nodes = IndexMapping(runtime.observed.nodes)
    now = datetime.now(UTC).replace(microsecond=0)
    workers = await with_volume_failures(runtime.api, job.namespace, workers, now, runtime.settings.scheduler_grace_s)
    refused = memory.refusal(job.status.attempt)
    admitting = time.monotonic() - runtime.last_admission < 5 * runtime.settings.admission_interval_s
    plan = lifecycle.reconcile(
        job, pool, workers, nodes, now, runtime.settings, entry.status, settled, refused, admitting
    )
    now_s = time.monotonic()
    memory.settle(workers, now_s)
    work = memory.work(plan, workers, job.status.attempt, has_pool=pool is not None)
    if not memory.holds_back(plan, now_s, jobs=len(runtime.wakeups)):
        patch = plan.status.patch()
        if not await patch_status(runtime, entry, patch, plan.status.events):
            return None
        if patch:
            memory.status_written_at = time.monotonic()
        _count(runtime, job, plan, patch)
    await _apply(runtime, entry, pool, plan, work, workers, memory, logger)
    return plan


def _count(runtime: Runtime, job: TrainingJob, plan: lifecycle.Plan, patch: Mapping[str, Any]) -> None:
    """The pass's restart, GPU-seconds and cost, once its status is written."""
    if plan.restarted:
        runtime.metrics.restarts.labels(str(patch.get("reason", ""))).inc()
    if plan.gpu_seconds and job.status.gpu_type is not None:
        runtime.metrics.gpu_seconds.labels(job.status.gpu_type.value).inc(plan.gpu_seconds)
        runtime.metrics.cost.labels(job.status.gpu_type.value).inc(plan.cost)


async def _apply(
    runtime: Runtime,
    entry: JobEntry,
    pool: ResourcePool | None,
    plan: lifecycle.Plan,
    work: Work,
    workers: list[WorkerPod],
    memory: DaemonMemory,
    logger: Any,
) -> None:
    """The pass's pod work, in order: deletions, creations, then gate lifts (all or nothing, see
    :attr:`lifecycle.Plan.lift_when_created`)."""
    job, kube = entry.job, runtime.api
    await gangs.delete_pods(kube, job.namespace, work.delete)
    await gangs.delete_pods(kube, job.namespace, work.force_delete, grace_s=0)
    lift = list(work.lift)
    if work.create and pool is not None:
        created = await _create(runtime, job, pool, work.create, memory)
        if created is None:
            refusal = memory.refusal(job.status.attempt)
            logger.warning(f"TrainingJob {job.key}: the API server refused the gang: {refusal}")
            runtime.wake(job.key)  # the next pass fails the job (InvalidSpec) and releases its GPUs
            return
        logger.info(f"created {len(created)} of {len(work.create)} missing workers")
        if plan.lift_when_created and len(created) == len(plan.create_workers):
            # every missing worker is now a new pod of ours (none was left to an earlier pass's creation, none
            # answered 409): the whole gang exists, so its gates go now rather than after the watch shows it
            lift = memory.to_lift(plan.lift_gates, {p.name: p for p in [*workers, *created]})
    if lift:
        await _lift(runtime, entry, lift, memory)


async def _create(
    runtime: Runtime, job: TrainingJob, pool: ResourcePool, indices: Sequence[int], memory: DaemonMemory
) -> list[WorkerPod] | None:
    """Create the missing workers, remembered as created while the calls are out (see
    :data:`~strata_operator.core.follow.REDO_AFTER_S`); the pods that were new, or None when the API server refused
    one of the gang's objects for good (remembered in ``memory.refused``)."""
    keys = memory.creating(job.status.attempt, indices, time.monotonic())
    try:
        created = await gangs.create_workers(runtime, job, pool, indices)
    except ApiError as error:
        memory.forget(keys)
        if not error.permanent:
            raise
        memory.refused = (job.status.attempt, str(error))
        return None
    except BaseException:
        memory.forget(keys)
        raise
    # the clock of REDO_AFTER_S starts when the API server answered: on a saturated server a create can wait
    # longer than that for its turn
    memory.creating(job.status.attempt, indices, time.monotonic())
    return created


async def _lift(runtime: Runtime, entry: JobEntry, lift: list[WorkerPod], memory: DaemonMemory) -> None:
    """Ungate the pods together and remember them as lifted. No Event: the job's next one (AllWorkersRunning, or
    the reason it is requeued) follows within seconds, and each Event is a request on a busy API server."""
    memory.lifted.update(p.uid for p in lift)
    failed = await gangs.lift_gates(runtime.api, entry.job.namespace, lift)
    if failed:
        memory.lifted -= {p.uid for p, _ in failed}  # lifted again at the next pass
        raise failed[0][1]


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
