"""ResourcePool handlers: an index of pools, and a timer that runs the admission pass and keeps pool status.

Each pool's timer may start the (cluster-wide) admission pass; a lock and the pass's own clock make one pass
per interval however many pools there are. Timers run only on the active replica (kopf peering).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import kopf

import strata_api as api
from strata_api import ResourcePool
from strata_operator.core.pool_status import pool_status
from strata_operator.core.serving import serving_shares
from strata_operator.runtime.admission_pass import admission_pass
from strata_operator.runtime.jobs import JobEntry
from strata_operator.runtime.kube import ApiError, custom_path
from strata_operator.runtime.serving import ServiceEntry
from strata_operator.runtime.shared import IndexOf, Runtime, first


async def index_resourcepools(body: kopf.Body, name: str, logger: Any, **_: Any) -> dict[str, ResourcePool] | None:
    try:
        return {name: ResourcePool.from_body(body)}
    except (KeyError, ValueError, TypeError) as error:
        logger.warning(f"unreadable ResourcePool (is the CRD installed from crds/?): {error!r}")
        return None


async def admit_and_report(
    name: str, status: kopf.Status, meta: kopf.Meta, memo: Any, logger: Any, **indices: Any
) -> None:
    runtime: Runtime = memo.runtime
    lock = runtime.admission_lock
    started = time.perf_counter()
    async with lock:
        if time.monotonic() - runtime.last_admission >= runtime.settings.admission_interval_s * 0.9:
            try:
                await admission_pass(runtime, indices)
            except ApiError as error:
                logger.warning(f"admission pass failed, retrying next tick: {error}")
            runtime.metrics.reconcile.labels("Admission").observe(time.perf_counter() - started)
    pool = first(indices["resourcepools"], name)
    if pool is None:
        return
    jobs: IndexOf[JobEntry] = indices["trainingjobs"]
    entries = {e.job.key: e.job for store in list(jobs.values()) for e in store}
    nodes = [n for store in list(runtime.observed.nodes.values()) for n in store] if runtime.observed.synced else None
    now = datetime.now(UTC).replace(microsecond=0)
    services: IndexOf[ServiceEntry] = indices.get("inferenceservices", {})
    shares = serving_shares((e.service, e.status) for store in list(services.values()) for e in store)
    draft = pool_status(pool, int(meta.get("generation") or 1), entries.values(), nodes, status, now, shares.get(name))
    patch = draft.patch()
    if patch:
        path = custom_path(api.GROUP, api.VERSION, api.RESOURCE_POOLS, name) + "/status"
        await runtime.api.merge_patch(path, {"status": patch})


def register(registry: kopf.OperatorRegistry, interval_s: float) -> None:
    kopf.index(api.GROUP, api.VERSION, api.RESOURCE_POOLS, id="resourcepools", registry=registry)(index_resourcepools)
    kopf.timer(api.GROUP, api.VERSION, api.RESOURCE_POOLS, id="admission", interval=interval_s, registry=registry)(
        admit_and_report
    )
