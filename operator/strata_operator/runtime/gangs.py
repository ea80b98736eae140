"""A gang's pods on the API server: created with their Service and access objects, deleted, ungated.

The manifests come from :mod:`strata_operator.core.pods`; what to create, delete or ungate comes from the job's
plan (:mod:`strata_operator.core.lifecycle`, :mod:`strata_operator.core.follow`). Every call is idempotent: a name
already taken answers 409 and an object already gone 404, which are outcomes, not errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from strata_api import ResourcePool, TrainingJob
from strata_operator.core.observed import WorkerPod
from strata_operator.core.pods import build_service, build_worker_access, build_worker_pods
from strata_operator.runtime.kube import Kube, pod_path, service_path
from strata_operator.runtime.shared import Runtime


async def delete_pods(kube: Kube, namespace: str, names: Sequence[str], grace_s: int | None = None) -> None:
    """Delete the named pods at once, with their own grace period (SIGTERM: the workload checkpoints) or
    ``grace_s`` (0 for pods whose node is gone: no kubelet will ever confirm their end)."""
    await asyncio.gather(*(kube.delete(pod_path(namespace, name), grace_s=grace_s) for name in names))


async def create_workers(
    runtime: Runtime, job: TrainingJob, pool: ResourcePool, indices: Sequence[int]
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
