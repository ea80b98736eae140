"""A gang's pods on the API server: created (after, once per namespace, the workers' Service and account),
deleted, ungated.

The manifests come from :mod:`strata_operator.core.pods`; what to create, delete or ungate comes from the job's
plan (:mod:`strata_operator.core.lifecycle`, :mod:`strata_operator.core.follow`). Every call is idempotent: a name
already taken answers 409 and an object already gone 404, which are outcomes, not errors.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from strata_api import ResourcePool, TrainingJob
from strata_operator.core.observed import WorkerPod
from strata_operator.core.pods import (
    WORKER_SERVICE_ACCOUNT,
    build_service,
    build_worker_access,
    build_worker_pods,
    worker_name_held,
)
from strata_operator.runtime.kube import ApiError, Kube, pod_path, service_path
from strata_operator.runtime.shared import Runtime

NAMESPACE_OBJECTS_RECHECK_S = 60.0
"""How long the namespace's worker Service and account are taken to exist after the operator made (or found) them:
four requests a minute at most per namespace, and a Service deleted by hand is back for the next gang within that
time (pods would be created without error, but with no DNS name for their rendezvous)."""


async def delete_pods(kube: Kube, namespace: str, names: Sequence[str], grace_s: int | None = None) -> None:
    """Delete the named pods at once, with their own grace period (SIGTERM: the workload checkpoints) or
    ``grace_s`` (0 for pods whose node is gone: no kubelet will ever confirm their end)."""
    await asyncio.gather(*(kube.delete(pod_path(namespace, name), grace_s=grace_s) for name in names))


async def create_workers(
    runtime: Runtime, job: TrainingJob, pool: ResourcePool, indices: Sequence[int]
) -> list[WorkerPod]:
    """The workers' pods, in one round of calls (the namespace's worker Service and account exist first); the pods
    that were new, as the API server stored them."""
    async with runtime.creating:
        try:
            return await _create_gang(runtime, job, pool, indices)
        except ApiError as error:
            if not missing_worker_account(error):
                raise
            runtime.namespace_objects.pop(job.namespace, None)  # deleted behind our back: make them again, retry
            return await _create_gang(runtime, job, pool, indices)


class NameHeld(ApiError):
    """A worker's name is held by a pod this job does not control (a user's own, or one of an earlier job of the
    same name not yet collected): the gang cannot be made under its names, and nothing of the other pod is
    touched. Permanent, as the API server's refusals are: the job fails with InvalidSpec, naming the pod."""

    @property
    def permanent(self) -> bool:
        return True


async def _create_gang(
    runtime: Runtime, job: TrainingJob, pool: ResourcePool, indices: Sequence[int]
) -> list[WorkerPod]:
    await ensure_namespace_objects(runtime, job.namespace)
    kube, manifests = runtime.api, build_worker_pods(job, pool, runtime.settings)
    created = await asyncio.gather(*(kube.create_returning(pod_path(job.namespace), manifests[i]) for i in indices))
    for index, body in zip(indices, created, strict=True):
        if body is None:  # the name is taken: by this job's own pod (an earlier creation), or by another's
            await _check_held(kube, job, manifests[index]["metadata"]["name"])
    return [WorkerPod.from_body(body) for body in created if body is not None]


async def _check_held(kube: Kube, job: TrainingJob, name: str) -> None:
    """Raise :class:`NameHeld` when the pod ``name`` is not this job's."""
    existing = await kube.read(pod_path(job.namespace, name))
    if existing is None:
        return  # gone since: the next pass creates it
    holder = worker_name_held(existing, job)
    if holder is not None:
        message = f"pod {name} exists, {holder}, not this job: delete it, or submit the job under another name"
        raise NameHeld(409, "POST", pod_path(job.namespace), message)


async def ensure_namespace_objects(runtime: Runtime, namespace: str) -> None:
    """The namespace's workers' headless Service, ServiceAccount, Role and RoleBinding, created by the first gang
    of the namespace (every other gang waits for that one creation); a failed creation is tried again by the next
    gang, and a gang created :data:`NAMESPACE_OBJECTS_RECHECK_S` later creates them again (409 when they are there),
    so an object someone deleted comes back."""
    task, since = runtime.namespace_objects.get(namespace, (None, 0.0))
    failed = task is not None and task.done() and (task.cancelled() or task.exception() is not None)
    if task is None or failed or time.monotonic() - since > NAMESPACE_OBJECTS_RECHECK_S:
        made = _create_namespace_objects(runtime.api, namespace, build_service(namespace, runtime.settings))
        task = asyncio.ensure_future(made)
        runtime.namespace_objects[namespace] = (task, time.monotonic())
    await asyncio.shield(task)


async def _create_namespace_objects(kube: Kube, namespace: str, service: dict[str, Any]) -> None:
    """Service, account and Role at once, then the binding (409: already there, from an earlier operator)."""
    account, role, binding = build_worker_access(namespace)
    await asyncio.gather(kube.create(service_path(namespace), service), kube.create(*account), kube.create(*role))
    await kube.create(*binding)


def missing_worker_account(error: ApiError) -> bool:
    """A pod refused because the namespace's worker ServiceAccount does not exist (someone deleted it)."""
    return error.status == 403 and f'serviceaccount "{WORKER_SERVICE_ACCOUNT}" not found' in error.message


async def lift_gates(kube: Kube, namespace: str, pods: Sequence[WorkerPod]) -> list[tuple[WorkerPod, BaseException]]:
    """Remove Strata's scheduling gate from every pod at once (other controllers' gates stay); the pods whose
    patch failed, with why."""
    outcomes = await asyncio.gather(
        *(
            kube.merge_patch(
                pod_path(namespace, p.name), {"spec": {"schedulingGates": [{"name": g} for g in p.other_gates]}}
            )
            for p in pods
        ),
        return_exceptions=True,
    )
    return [(p, o) for p, o in zip(pods, outcomes, strict=True) if isinstance(o, BaseException)]
