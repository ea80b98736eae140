"""InferenceService handlers: an index of services, indices of their Deployments, Services, budgets and
router ConfigMaps, and one daemon per service.

The daemon is thin: it reads the service, its pool, the pool's TrainingJobs and the service's Deployment from
memory, asks :mod:`strata_operator.core.serving` for the replica count the quota holds, the manifests and the
status, and applies them. A change of the service or of what it owns (a replica became ready; the Service was
deleted) wakes it at once; otherwise it wakes every resync interval (quota freed by a finished TrainingJob).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf
import orjson

import strata_api as api
from strata_api import InferenceService, ResourcePool, TrainingJob
from strata_operator.core import canary, replicas, router, serving
from strata_operator.core.backoff import failure_backoff_s
from strata_operator.core.canary import RolloutPlan
from strata_operator.core.serving import ModelSource, ObservedDeployment
from strata_operator.runtime.events import with_volume_failures
from strata_operator.runtime.jobs import JobEntry
from strata_operator.runtime.kube import ApiError, Kube
from strata_operator.runtime.serving import (
    NameTaken,
    ServiceEntry,
    ServingState,
    config_maps_path,
    deployments_path,
    disruption_budgets_path,
    ensure,
    put_deployment,
    read_scale,
    services_path,
    write_status,
)
from strata_operator.runtime.shared import IndexMapping, IndexOf, Runtime, first
from strata_operator.settings import OperatorSettings

STALE_VIEW_S = 5.0
"""After writing a service's status, wait at most this long for the write to come back through the watch."""
WAKE_DEBOUNCE_S = 0.05
"""A wake-up waits this long before reading memory: one reconcile for a burst of Deployment events."""


async def index_inferenceservices(body: kopf.Body, logger: Any, memo: Any, **_: Any) -> dict[str, ServiceEntry] | None:
    try:
        service = InferenceService.from_body(body)
    except (KeyError, ValueError, TypeError) as error:
        logger.warning(f"unreadable InferenceService (is the CRD installed from crds/?): {error!r}")
        return None
    memo.serving.wake(service.key)
    status = orjson.loads(orjson.dumps(body.get("status") or {}))  # a private copy
    return {service.key: ServiceEntry(service, status, str(body["metadata"].get("resourceVersion", "")))}


def _owner_key(body: kopf.Body) -> str | None:
    meta = body.get("metadata") or {}
    name = (meta.get("labels") or {}).get(api.LABEL_INFERENCE_SERVICE)
    return f"{meta.get('namespace')}/{name}" if name else None


def _own_key(body: kopf.Body) -> str:
    """An owned object's own ``namespace/name``: a service owns two Deployments (replicas ``<name>``, routers
    ``<name>-router``), two Services and two budgets, so the indices key them by their own names."""
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


async def index_deployments(body: kopf.Body, memo: Any, **_: Any) -> dict[str, ObservedDeployment] | None:
    """Each service's Deployments, by their own key; every change wakes the service's daemon."""
    key = _owner_key(body)
    if key is None:
        return None
    memo.serving.wake(key)
    return {_own_key(body): ObservedDeployment.from_body(body)}


async def index_owned_specs(body: kopf.Body, memo: Any, **_: Any) -> dict[str, dict[str, Any]] | None:
    """Each service's Services and PodDisruptionBudgets (their specs), by their own key; a change wakes the
    service's daemon."""
    return _index_part(body, memo, "spec")


async def index_owned_data(body: kopf.Body, memo: Any, **_: Any) -> dict[str, dict[str, Any]] | None:
    """Each service's router ConfigMap (its data: the autoscaler's lead), by its own key; a change wakes the
    service's daemon."""
    return _index_part(body, memo, "data")


def _index_part(body: kopf.Body, memo: Any, part: str) -> dict[str, dict[str, Any]] | None:
    key = _owner_key(body)
    if key is None:
        return None
    memo.serving.wake(key)
    copied: dict[str, Any] = orjson.loads(orjson.dumps(body.get(part) or {}))
    return {_own_key(body): copied}


async def wake_on_deletion(body: kopf.Body, type: str | None, memo: Any, **_: Any) -> None:
    """A deleted Deployment, Service, budget or ConfigMap leaves its index without a call to it: wake its service
    to make it again."""
    key = _owner_key(body)
    if type == "DELETED" and key is not None:
        memo.serving.wake(key)


async def run_inferenceservice(
    stopped: Any, namespace: str | None, name: str, memo: Any, logger: Any, **indices: Any
) -> None:
    """The daemon of one InferenceService, alive while it exists and this replica is the active one."""
    runtime: Runtime = memo.runtime
    state: ServingState = memo.serving
    key = f"{namespace}/{name}"
    wake = state.wakeups.setdefault(key, asyncio.Event())
    written_from: str | None = None
    written_at = 0.0
    failures = 0
    try:
        while not stopped:
            wake.clear()
            entry: ServiceEntry | None = first(indices["inferenceservices"], key)
            delay = runtime.settings.resync_interval_s
            if entry is not None and router.autoscaled(entry.service):
                delay = min(delay, runtime.settings.scale_poll_interval_s)  # the router's next decision
            if entry is None:
                delay = 0.2
            elif entry.resource_version == written_from and time.monotonic() - written_at < STALE_VIEW_S:
                delay = 0.1  # our own status write has not come back yet
            else:
                started = time.perf_counter()
                try:
                    written = await reconcile(runtime, entry, indices)
                    written_from, written_at = (entry.resource_version if written else None), time.monotonic()
                    failures = 0
                except (ApiError, aiohttp.ClientError, TimeoutError) as error:
                    failures += 1
                    delay = failure_backoff_s(failures, delay)
                    logger.warning(f"InferenceService {key}: reconcile failed, retrying in {delay:.1f}s: {error}")
                except Exception as error:  # a bug, or a value nobody foresaw: name the service, never retry hot
                    failures += 1
                    delay = failure_backoff_s(failures, delay)
                    logger.exception(f"InferenceService {key}: reconcile raised {error!r}; retrying in {delay:.1f}s")
                runtime.metrics.reconcile.labels(api.INFERENCE_SERVICE).observe(time.perf_counter() - started)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=delay)
            await asyncio.sleep(WAKE_DEBOUNCE_S)
    finally:
        if state.wakeups.get(key) is wake:
            del state.wakeups[key]


async def reconcile(runtime: Runtime, entry: ServiceEntry, indices: Mapping[str, Any]) -> bool:
    """One pass: the router's scaling decision (autoscaled services), the rollout (a canary beside the stable
    revision, :mod:`strata_operator.core.canary`), the replica count the quota holds, the Deployments, Services and
    budgets (each written only when missing or different from what the watch shows), then the status; whether a
    status change was written."""
    service, settings = entry.service, runtime.settings
    services_index: IndexOf[ServiceEntry] = indices["inferenceservices"]
    pools_index: IndexOf[ResourcePool] = indices["resourcepools"]
    jobs_index: IndexOf[JobEntry] = indices["trainingjobs"]
    deployments: IndexOf[ObservedDeployment] = indices["servingdeployments"]
    pools = {p.name: p for store in list(pools_index.values()) for p in store}
    same_pool = [
        e for store in list(services_index.values()) for e in store if e.service.spec.pool == service.spec.pool
    ]
    jobs = [e.job for store in list(jobs_index.values()) for e in store]
    ns = service.namespace
    observed: ObservedDeployment | None = first(deployments, service.key)
    observed_canary: ObservedDeployment | None = first(deployments, f"{ns}/{serving.canary_name(service)}")
    cache = runtime.observed
    now = datetime.now(UTC).replace(microsecond=0)
    grace_s = settings.scheduler_grace_s
    pods = await with_volume_failures(runtime.api, ns, cache.replica_pods.get(service.key, ()), now, grace_s)
    router_pods = await with_volume_failures(runtime.api, ns, cache.router_pods.get(service.key, ()), now, grace_s)
    model = serving.resolve_model(service, _training_job(service, jobs_index))
    stored_backoff = replicas.ModelBackoff.from_status(entry.status.get("modelBackoff"))
    if isinstance(model, ModelSource) and model.checkpoint_step is not None:  # a TrainingJob's steps
        rolling = serving.rolling_deployment(service, observed, observed_canary)
        stuck = rolling is not None and (
            replicas.model_failure(pods, rolling.revision) is not None
            or (stored_backoff is not None and stored_backoff.revision == rolling.revision)  # replicas stopped
            or replicas.held_up(pods, rolling.revision, now, grace_s) is not None
        )
        model = serving.one_roll_at_a_time(model, rolling, stuck)
    pool = pools.get(service.spec.pool)
    plan: RolloutPlan | None = None
    rev: str | None = None
    if pool is not None and isinstance(model, ModelSource):
        rev = serving.build_deployment(service, pool, model, 0, settings)["metadata"]["annotations"][api.LABEL_REVISION]
        canary_service = first(indices["servingservices"], f"{ns}/{canary.canary_service_name(service)}") is not None
        plan = canary.plan_rollout(service, rev, observed, observed_canary, canary_service)
    report = None
    routers = first(deployments, f"{ns}/{router.router_name(service)}")
    if router.autoscaled(service) and routers is not None and routers.ready > 0:
        # not before a router is ready: until then the Service's name may not resolve, and DNS caches the miss
        # (CoreDNS for its negative TTL) for the clients that ask next, who then cannot find the new service
        applied = sum(d.replicas for d in (observed, observed_canary) if d is not None)
        report = await read_scale(router.scale_url(service, settings, applied), settings.scale_timeout_s)
    wanted = {
        e.service.key: canary.stored_ask(e.service, e.status, router.wanted_replicas(e.service, None, e.status))
        for e in same_pool
    }
    own = router.wanted_replicas(service, report, entry.status)
    wanted[service.key] = canary.asked(own, plan)
    allotment = serving.allot(
        [e.service for e in same_pool], pools, [j for j in jobs if j.spec.pool == service.spec.pool], wanted
    )[service.key]
    stable_count, canary_count = canary.split(allotment.replicas, own, plan)
    backoff = replicas.model_backoff(stored_backoff, rev, pods, now, settings.model_retry_s)
    if backoff is not None and backoff.stopped(now):  # the refused revision's replicas stop: no crash loop
        if plan is not None and plan.splitting:
            canary_count = 0
        else:
            stable_count = 0
    kube = runtime.api
    startup: float | None = None
    restored: str | None = None
    taken: str | None = None
    if pool is not None and isinstance(model, ModelSource) and plan is not None and rev is not None:
        startup = replicas.startup_seconds(pods, rev)
        stored_startup = entry.status.get("startupSeconds")
        measured = (
            startup if startup is not None else stored_startup if isinstance(stored_startup, float | int) else None
        )
        try:
            restored = await _apply_replicas(
                kube, service, pool, model, settings, plan, stable_count, canary_count, observed, observed_canary
            )
            await _apply_routing(kube, service, settings, plan, measured, indices)
        except NameTaken as error:
            taken = str(error)
    else:
        # no pool or no model: a replica could only wait for nothing or crash-loop; scaled to 0, kept for later
        for name, seen in ((service.name, observed), (serving.canary_name(service), observed_canary)):
            if seen is not None and seen.replicas:
                await kube.merge_patch(deployments_path(ns, name), {"spec": {"replicas": 0}})
    cost = replicas.cost_per_hour(service, pods, IndexMapping(cache.nodes), settings.prices) if cache.synced else None
    trial = observed_canary if plan is not None and plan.splitting else None
    refused = backoff.problem(now) if backoff is not None else None
    draft = serving.service_status(
        service,
        entry.status,
        model,
        allotment,
        observed,
        rev,
        now,
        report,
        cost,
        startup,
        canary_deployment=trial,
        model_failure=refused,
        name_taken=taken,
        held_up=replicas.held_up(pods, rev, now, grace_s) if rev is not None else None,
        routers=routers,
        routers_held_up=replicas.held_up(router_pods, "", now, grace_s, what="router"),
    )
    draft.set("modelBackoff", backoff.to_status() if backoff is not None else None)
    if plan is not None:
        canary.rollout_status(
            draft, plan, observed_canary, canary_count, service.generation, restored, serving=model.message
        )
    patch = draft.patch()
    written = await write_status(kube, entry, patch, draft.events)
    if written and report is not None and "lastScale" in patch:
        before, after = entry.status.get("desiredReplicas"), patch.get("desiredReplicas")
        direction = "none"
        if isinstance(before, int) and isinstance(after, int) and before != after:
            direction = "up" if after > before else "down"
        runtime.metrics.scale_decisions.labels(direction).inc()
    return written and bool(patch)


async def _apply_routing(
    kube: Kube,
    service: InferenceService,
    settings: OperatorSettings,
    plan: RolloutPlan,
    measured_startup: float | None,
    indices: Mapping[str, Any],
) -> None:
    """The routers' ConfigMap (the autoscaler's lead: before the routers, which mount it) and Deployment, the
    Services and the budgets, each written only when missing or different from what the watch shows."""
    ns = service.namespace
    deployments: IndexOf[ObservedDeployment] = indices["servingdeployments"]
    config = router.build_router_config(service, measured_startup)
    seen_config = first(indices["servingconfigs"], f"{ns}/{router.router_name(service)}")
    if serving.drifted(config, seen_config, "data"):
        await ensure(kube, config_maps_path(ns), config, seen_config, "data")
    routers = router.build_router_deployment(service, settings, plan)
    if serving.needs_update(routers, first(deployments, f"{ns}/{router.router_name(service)}")):
        await put_deployment(kube, routers)
    owned = [
        (services_path(ns), router.build_front_service(service), "servingservices"),
        (services_path(ns), serving.build_replicas_service(service), "servingservices"),
        (disruption_budgets_path(ns), serving.build_disruption_budget(service), "servingbudgets"),
        (disruption_budgets_path(ns), router.build_router_budget(service), "servingbudgets"),
    ]
    if plan.splitting:
        owned.append((services_path(ns), canary.build_canary_service(service), "servingservices"))
    for collection, manifest, index in owned:
        observed_spec = first(indices[index], f"{ns}/{manifest['metadata']['name']}")
        if serving.drifted(manifest, observed_spec):
            await ensure(kube, collection, manifest, observed_spec)


async def _apply_replicas(
    kube: Kube,
    service: InferenceService,
    pool: ResourcePool,
    model: ModelSource,
    settings: OperatorSettings,
    plan: RolloutPlan,
    stable_count: int,
    canary_count: int,
    stable: ObservedDeployment | None,
    observed_canary: ObservedDeployment | None,
) -> str | None:
    """The replicas' Deployments as ``plan`` has them: while a canary runs, the stable one keeps its template (only
    its count is patched; edited or deleted by hand, it is put back as the canary's Deployment keeps it) and the
    canary's is written from the spec, keeping the stable one; otherwise the stable one runs the spec's template
    and a canary that is there goes, with its headless Service. Returns how the stable one had changed when it was
    put back (for its Event), else None."""
    ns = service.namespace
    restored = None
    if plan.splitting:
        kept = canary.kept_stable(plan, stable, observed_canary)
        if kept is not None and canary.stable_tampered(kept, stable):
            restored = "deleted" if stable is None else "edited"
            await put_deployment(kube, canary.build_stable_deployment(service, kept, stable_count))
        elif stable is not None and stable.replicas != stable_count:
            await kube.merge_patch(deployments_path(ns, service.name), {"spec": {"replicas": stable_count}})
        manifest = serving.build_deployment(service, pool, model, canary_count, settings, canary=True)
        manifest = canary.keeping(manifest, kept)
        if serving.needs_update(manifest, observed_canary) or (
            observed_canary is not None and observed_canary.kept != kept
        ):
            await put_deployment(kube, manifest)
        return restored
    deployment = serving.build_deployment(service, pool, model, stable_count, settings)
    if serving.needs_update(deployment, stable):
        await put_deployment(kube, deployment)
    if plan.remove_canary:
        await kube.delete(deployments_path(ns, serving.canary_name(service)))
        await kube.delete(services_path(ns, canary.canary_service_name(service)))
    return None


def _training_job(service: InferenceService, jobs: IndexOf[JobEntry]) -> TrainingJob | None:
    name = service.spec.model.training_job
    found = first(jobs, f"{service.namespace}/{name}") if name else None
    return found.job if found is not None else None


def register(registry: kopf.OperatorRegistry) -> None:
    owned = {api.LABEL_JOB_KIND: api.INFERENCE_SERVICE}
    kopf.index(api.GROUP, api.VERSION, api.INFERENCE_SERVICES, id="inferenceservices", registry=registry)(
        index_inferenceservices
    )
    kopf.index("apps", "v1", "deployments", id="servingdeployments", labels=owned, registry=registry)(index_deployments)
    kopf.index("", "v1", "services", id="servingservices", labels=owned, registry=registry)(index_owned_specs)
    kopf.index("policy", "v1", "poddisruptionbudgets", id="servingbudgets", labels=owned, registry=registry)(
        index_owned_specs
    )
    kopf.index("", "v1", "configmaps", id="servingconfigs", labels=owned, registry=registry)(index_owned_data)
    for group, plural in (
        ("apps", "deployments"),
        ("", "services"),
        ("policy", "poddisruptionbudgets"),
        ("", "configmaps"),
    ):
        kopf.on.event(group, "v1", plural, id=f"deleted-{plural}", labels=owned, registry=registry)(wake_on_deletion)
    kopf.daemon(
        api.GROUP, api.VERSION, api.INFERENCE_SERVICES, id="serve", cancellation_timeout=5.0, registry=registry
    )(run_inferenceservice)
