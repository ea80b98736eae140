"""A ResourcePool's status from the jobs that name it and the fleet: what it holds, what waits, and its conditions.

Pure: the pool's timer (:mod:`strata_operator.handlers.resourcepool`) computes it from the operator's caches at
every tick, so after any restart the status is again what the admitted jobs hold, and writes only what changed.

Conditions (metav1.Condition):

- ``Ready``: True when the pool can admit jobs: it has a quota (``maxGPUs`` above 0, or ``maxCPUs`` set) and the
  fleet has nodes of its GPU and capacity types (CPU nodes for a CPU quota). False says which is missing.
- ``QuotaExceeded``: True while jobs of the pool wait because its quota is used up or smaller than they are, and
  while what the pool's jobs and services hold is over its quota (a quota lowered under running jobs: they keep
  what they hold, and nothing more is admitted until it is back under).

``gpusInUse`` and ``cpusInUse`` count what the admitted jobs hold and what the pool's InferenceServices' replicas
hold, as admission counts both (:func:`strata_operator.core.serving.serving_shares`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from strata_api import CapacityType, Phase, ResourcePool, TrainingJob, format_cpu_millis
from strata_operator.core.admission import Reason, ServingShare
from strata_operator.core.observed import Node
from strata_operator.core.status import StatusDraft

READY = "Ready"
QUOTA_EXCEEDED = "QuotaExceeded"
QUOTA_REASONS = frozenset({Reason.EXCEEDS_QUOTA, Reason.WAITING_FOR_QUOTA, Reason.NO_CPU_QUOTA})
"""Why a queued job waits (its status.reason, from :func:`strata_operator.core.admission.admit`) when the pool's
quota is what stops it."""


def pool_status(
    pool: ResourcePool,
    generation: int,
    jobs: Iterable[TrainingJob],
    fleet: Iterable[Node] | None,
    stored: Mapping[str, Any],
    now: datetime,
    serving: ServingShare | None = None,
) -> StatusDraft:
    """The pool's status as a draft over ``stored``; ``fleet`` None while the node cache has not listed yet (Ready
    is then left as it was); ``serving``: what the pool's InferenceServices hold (None: no service names it)."""
    mine = [j for j in jobs if j.spec.pool == pool.name]
    holding = [j for j in mine if j.phase.holds_gpus]
    queued = [j for j in mine if j.status.phase == Phase.QUEUED]
    serving = serving or ServingShare()
    gpus = sum(j.spec.resources.gpus for j in holding) + sum(serving.gpus.values())
    cpu_millis = sum(j.spec.cpu_millis for j in holding if j.spec.on_cpu) + sum(serving.cpu_millis.values())
    draft = StatusDraft(stored, now)
    draft.set("gpusInUse", gpus)
    draft.set("cpusInUse", format_cpu_millis(cpu_millis))
    draft.set("admittedJobs", len(holding))
    draft.set("queuedJobs", len(queued))
    draft.set(
        "inferenceServices", len({k for share in (serving.gpus, serving.cpu_millis) for k, v in share.items() if v})
    )
    draft.set("observedGeneration", generation)
    if fleet is not None:
        draft.condition(READY, *_readiness(pool, fleet))
    waiting = sorted(j.key for j in queued if j.status.reason in QUOTA_REASONS)
    wait = ""
    if waiting:
        names = ", ".join(waiting[:5]) + (f" and {len(waiting) - 5} more" if len(waiting) > 5 else "")
        wait = f"{len(waiting)} job(s) wait for quota: {names}"
    over = _over_quota(pool, gpus, cpu_millis)
    if over:
        message = f"{over}: what holds it keeps it, and nothing more is admitted until use is back under the quota"
        draft.condition(QUOTA_EXCEEDED, "True", "InUseOverQuota", message + (f"; {wait}" if wait else ""))
    elif wait:
        draft.condition(QUOTA_EXCEEDED, "True", "JobsWaitForQuota", wait)
    else:
        draft.condition(QUOTA_EXCEEDED, "False", "WithinQuota", "no job of the pool waits for its quota")
    return draft


def _over_quota(pool: ResourcePool, gpus: int, cpu_millis: int) -> str:
    """What the pool holds beyond its quota, in words, or "" (a quota lowered under what runs)."""
    over = []
    if gpus > pool.max_gpus:
        over.append(f"{gpus} GPUs in use, over spec.maxGPUs {pool.max_gpus}")
    if cpu_millis and cpu_millis > (pool.max_cpu_millis or 0):
        quota = format_cpu_millis(pool.max_cpu_millis) if pool.max_cpu_millis is not None else "unset"
        over.append(f"{format_cpu_millis(cpu_millis)} CPUs in use, over spec.maxCPUs {quota}")
    return "; ".join(over)


def _readiness(pool: ResourcePool, fleet: Iterable[Node]) -> tuple[str, str, str]:
    """(status, reason, message) of Ready."""
    if pool.max_gpus == 0 and pool.max_cpu_millis is None:
        return "False", "NoQuota", "spec.maxGPUs is 0 and spec.maxCPUs is unset: the pool admits no job"
    nodes = list(fleet)
    gpu_nodes = sum(1 for n in nodes if n.gpu_type in pool.gpu_types and n.capacity_type in pool.capacity_types)
    cpu_nodes = sum(
        1 for n in nodes if n.gpu_type is None and (n.capacity_type or CapacityType.ON_DEMAND) in pool.capacity_types
    )
    kinds = f"{'/'.join(sorted(pool.capacity_types))} capacity"
    offers = []
    if pool.max_gpus > 0:
        if gpu_nodes == 0:
            types = "/".join(sorted(pool.gpu_types))
            message = f"no {types} node of {kinds} is in the fleet (spec.gpuTypes, spec.capacityTypes)"
            return "False", "NoMatchingNodes", message
        offers.append(f"up to {pool.max_gpus} GPUs on {gpu_nodes} nodes")
    if pool.max_cpu_millis is not None:
        if cpu_nodes == 0:
            message = f"no CPU node of {kinds} is in the fleet (spec.maxCPUs, spec.capacityTypes)"
            return "False", "NoMatchingNodes", message
        offers.append(f"up to {format_cpu_millis(pool.max_cpu_millis)} CPUs on {cpu_nodes} CPU nodes")
    return "True", "QuotaAndNodes", f"admits jobs: {' and '.join(offers)}"
