"""The admission pass: reads the queue, the admitted gangs and the fleet from memory, asks
:func:`admission.admit`, and writes the decisions into the jobs' status (guarded by resourceVersion)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import strata_api as api
from strata_api import GPUType, Phase, ResourcePool, TrainingJob, format_time, parse_time
from strata_operator.core.admission import AdmittedGang, Decision, GangRequest, Waiting, admit, admitted_after_moves
from strata_operator.core.lifecycle import Reason
from strata_operator.core.observed import Node, WorkerPod
from strata_operator.core.pods import gang_gpu_type
from strata_operator.core.quotes import Quote
from strata_operator.core.room import fleet_rooms
from strata_operator.core.serving import serving_shares
from strata_operator.core.status import NORMAL, PREEMPTED, WARNING, StatusDraft
from strata_operator.core.valley import ValleyPlan, fleet_zones, plan_job
from strata_operator.runtime.jobs import JobEntry, patch_status
from strata_operator.runtime.serving import ServiceEntry
from strata_operator.runtime.shared import IndexOf, Runtime

log = logging.getLogger(__name__)

POSITION_REFRESH_S = 10.0
"""Queue positions shift at every admission; a job's position is rewritten at most this often."""


async def admission_pass(runtime: Runtime, indices: Mapping[str, Any]) -> Decision:
    jobs_index: IndexOf[JobEntry] = indices["trainingjobs"]
    pools_index: IndexOf[ResourcePool] = indices["resourcepools"]
    pods_index: IndexOf[WorkerPod] = runtime.observed.worker_pods
    nodes_index: IndexOf[Node] = runtime.observed.nodes
    usage_index: IndexOf[int] = runtime.observed.gpu_usage

    entries = {e.job.key: e for store in list(jobs_index.values()) for e in store}
    # new jobs (no phase yet) compete too, in submission order: one the fleet can hold is admitted straight away,
    # once kopf's first patch (its finalizer) is done: a write guarded by the version before it would only conflict
    queued = [
        e.job
        for e in entries.values()
        if (e.job.status.phase == Phase.QUEUED or (e.job.status.phase is None and e.finalized))
        and not e.job.spec.suspend
    ]
    pools = {p.name: p for store in list(pools_index.values()) for p in store}
    if not queued and not any(p.consolidation is not None for p in pools.values()):
        # nothing to admit, so nothing to preempt for, and no pool moves running jobs to cheaper capacity (rule 11):
        # a full pass would only cost time (at 500 running gangs, a tenth of a second of the event loop every
        # second, which the pod watch then lags behind)
        _update_phase_metrics(runtime, entries.values())
        runtime.last_admission = time.monotonic()
        return Decision()
    fleet = [n for store in list(nodes_index.values()) for n in store]
    free = {n.name: n.allocatable_gpus - sum(usage_index.get(n.name, ())) for n in fleet}
    rooms = fleet_rooms(fleet, free)  # built once: the quotes read it, and admission takes GPUs on a copy
    # gpuType Any: the types in the order the extender quotes them (cheapest unit of work first), else the job's;
    # and the reserved GPUs the extender holds back from low-priority gangs (none without its answer)
    orders: dict[str, Quote] = {}
    hold = None
    if (quoter := runtime.quoter) is not None:
        most_free = rooms[0].most_free()  # a kept quote that a kind freed since has outdated is asked again
        quoted = quoter.orders(((j, pools[j.spec.pool]) for j in queued if j.spec.pool in pools), most_free)
        orders, hold = await asyncio.gather(quoted, quoter.hold_back())
    now = datetime.now(UTC).replace(microsecond=0)
    settings, zones = runtime.settings, fleet_zones(fleet)
    plans = {
        job.key: plan
        for job in queued
        if job.spec.scheduling.deferrable
        and (plan := plan_job(job, pools.get(job.spec.pool), zones, settings.prices, now, settings.tariff_offset_s))
    }
    queue = [
        replace(r, valley=plans.get(r.key))
        for job in queued
        if (r := readable_request(job, orders.get(job.key))) is not None
    ]
    # an admitted gang's workers not yet bound are counted where the extender will put them: its last quote's kinds
    quotes = runtime.quoter.cached if runtime.quoter is not None else lambda job: None
    admitted = [
        _admitted(e, list(pods_index.get(key, ())), quotes(e.job))
        for key, e in entries.items()
        if e.job.phase.holds_gpus
    ]
    # the pools' InferenceServices hold quota too, at their last allotted count
    services_index: IndexOf[ServiceEntry] = indices.get("inferenceservices", {})
    shares = serving_shares((e.service, e.status) for store in list(services_index.values()) for e in store)
    decision = admit(queue, [g for g in admitted if g is not None], pools, fleet, free, hold, now, shares, rooms)

    # every write is one job's status, guarded by its own resourceVersion, and written concurrently (a pass that
    # admits 500 gangs costs one round trip's latency, not 500 of them in a row), but the preemptions go first: a
    # job rule 10 made room for is written Admitted only once the jobs it moves are written requeued
    preempted = await asyncio.gather(
        *(_write_preempted(runtime, entries[p.victim], p.message, now) for p in decision.preempt),
        return_exceptions=True,
    )
    moved = [p.victim for p, written in zip(decision.preempt, preempted, strict=True) if written is True]
    outcomes = await asyncio.gather(
        *(
            _write_admitted(
                runtime,
                entries[key],
                gpu_type,
                now,
                plans.get(key),
                decision.planned.get(key, ()),
                decision.defragmented.get(key),
            )
            for key, gpu_type in admitted_after_moves(decision, moved).items()
        ),
        *(_write_admitted(runtime, entries[key], None, now, plans.get(key)) for key in decision.admit_cpu),
        *(_write_waiting(runtime, entries[key], waiting, now) for key, waiting in decision.waiting.items()),
        return_exceptions=True,
    )
    failed = next((o for o in [*preempted, *outcomes] if isinstance(o, BaseException)), None)
    if failed is not None:
        raise failed  # the next tick decides again from what was written

    _update_phase_metrics(runtime, entries.values())
    runtime.last_admission = time.monotonic()
    return decision


async def _write_admitted(
    runtime: Runtime,
    entry: JobEntry,
    gpu_type: GPUType | None,
    now: datetime,
    plan: ValleyPlan | None = None,
    planned: tuple[str, ...] = (),
    moved_off: api.PlannedNode | None = None,
) -> None:
    """Write a job Admitted: on ``gpu_type``, or (None) a CPU job on CPU; a deferrable job's ``plan`` says whether
    its deadline can still be met; ``planned``: the capacity types the pass counted the gang on (none: no plan; an
    earlier attempt's is removed); ``moved_off``: the node admission moved smaller jobs off for it (rule 10), with
    the GPUs it counted for the gang there (kept for its pods by the extender)."""
    granted = gpu_type.value if gpu_type else api.CPU
    draft = StatusDraft(entry.status, now)
    if entry.job.status.phase is None:
        # straight from submission: its Queued moment is recorded too, but told by the Admitted Event alone (an
        # Event is a request; two at the same second say nothing the one does not)
        draft.set("submittedAt", format_time(entry.job.created))
        draft.transition(Phase.QUEUED, Reason.SUBMITTED, f"submitted to pool {entry.job.spec.pool}", event=False)
    draft.set("attempt", entry.job.status.attempt + 1)
    draft.set("admittedAt", format_time(now))
    # what the daemon would write at its first pass of the new attempt, written here: one status write less a gang
    draft.set("workers", {"ready": 0, "total": entry.job.spec.workers})
    draft.set("observedGeneration", entry.job.generation)
    draft.set(
        "placement",
        {
            "gpuType": granted,
            "plannedCapacityTypes": list(planned) or None,
            "plannedNode": moved_off.status() if moved_off else None,
        },
    )
    draft.set("queuePosition", None)
    if _condition_status(entry, PREEMPTED) == "True":
        draft.condition(PREEMPTED, "False", Reason.ADMITTED, "admitted again")
    message = f"admitted on {granted} in pool {entry.job.spec.pool}"
    if plan is not None and plan.deadline_missed:
        message += f"; {plan.missed_message}"
    if moved_off is not None:
        message += f"; smaller jobs moved off node {moved_off.name} for it (pool defragmentAfterSeconds)"
    draft.transition(Phase.ADMITTED, Reason.ADMITTED, message)
    if await patch_status(runtime, entry, draft.patch(), draft.events):
        queued_since = _queued_since(entry) or now
        runtime.metrics.admission_wait.labels(entry.job.spec.pool).observe((now - queued_since).total_seconds())
        runtime.queue_written.pop(entry.job.key, None)
        runtime.wake(entry.job.key)


async def _write_preempted(runtime: Runtime, entry: JobEntry, message: str, now: datetime) -> bool:
    """Write the job requeued, preempted; whether it was written (False: it changed since the pass read it)."""
    draft = StatusDraft(entry.status, now)
    draft.condition(PREEMPTED, "True", Reason.PREEMPTED, message)
    draft.transition(Phase.QUEUED, Reason.PREEMPTED, message + "; checkpointing and requeued", WARNING)
    if not await patch_status(runtime, entry, draft.patch(), draft.events):
        return False
    runtime.metrics.preemptions.inc()
    runtime.wake(entry.job.key)
    return True


def readable_request(job: TrainingJob, order: Quote | None) -> GangRequest | None:
    """The job's request, or None (with a warning naming it) when its spec cannot be read: one job stored with a
    value this reader refuses must not stop every other job's admission."""
    try:
        return _request(job, order)
    except (ValueError, TypeError, ArithmeticError) as error:
        log.warning(f"TrainingJob {job.key}: left out of admission, its spec cannot be read: {error}")
        return None


def _request(job: TrainingJob, order: Quote | None) -> GangRequest:
    request = GangRequest.from_job(job)
    return replace(request, gpu_types=order.types, kinds=order.kinds) if order and order.types else request


def _admitted(entry: JobEntry, pods: list[WorkerPod], quote: Quote | None = None) -> AdmittedGang | None:
    job = entry.job
    try:
        gpu_type = None if job.spec.on_cpu else gang_gpu_type(job)
    except ValueError:
        return None
    current = [p for p in pods if p.attempt == job.status.attempt and p.phase not in ("Succeeded", "Failed")]
    bound: dict[str, int] = {}
    for p in current:
        if p.node:
            bound[p.node] = bound.get(p.node, 0) + job.spec.resources.gpus_per_worker
    request = GangRequest.from_job(job)
    return AdmittedGang(
        request=replace(request, kinds=quote.kinds) if quote is not None else request,
        gpu_type=gpu_type,
        admitted_at=job.status.admitted_at or job.created,
        bound=bound,
        unbound_workers=job.spec.workers - sum(1 for p in current if p.node),
        planned_node=job.status.planned_node,
    )


async def _write_waiting(runtime: Runtime, entry: JobEntry, waiting: Waiting, now: datetime) -> None:
    job = entry.job
    changed_reason = job.status.reason != waiting.reason or job.status.message != waiting.message
    moved = job.status.queue_position != waiting.position
    last = runtime.queue_written.get(job.key, 0.0)
    if not changed_reason and not (moved and time.monotonic() - last >= POSITION_REFRESH_S):
        return
    draft = StatusDraft(entry.status, now)
    if job.status.phase is None:
        # a new job's first transition, written by the pass that saw it wait (its daemon leaves it to the pass:
        # lifecycle.admission_grace_s), with what its daemon would write at its first pass
        draft.set("submittedAt", format_time(job.created))
        draft.set("workers", {"ready": 0, "total": job.spec.workers})
        draft.set("observedGeneration", job.generation)
    draft.set("queuePosition", waiting.position)
    if waiting.expected_start is not None:
        draft.set("expectedStart", format_time(waiting.expected_start))
    draft.transition(Phase.QUEUED, waiting.reason, waiting.message, NORMAL)
    if await patch_status(runtime, entry, draft.patch(), draft.events):
        runtime.queue_written[job.key] = time.monotonic()


def _condition_status(entry: JobEntry, kind: str) -> str | None:
    return next((c.status for c in entry.job.status.conditions if c.type == kind), None)


def _queued_since(entry: JobEntry) -> datetime | None:
    queued = next((c for c in entry.job.status.conditions if c.type == Phase.QUEUED.value), None)
    return parse_time(queued.last_transition_time) if queued else None


def _update_phase_metrics(runtime: Runtime, entries: Any) -> None:
    runtime.metrics.observe_jobs(entry.job for entry in entries)
