"""In-memory indices of pods and nodes (kopf keeps them current from its watches), and pod-event wake-ups.

Every handler here (and every index function of the operator) is ``async`` although none awaits: kopf runs a sync
handler in a thread pool, and at thousands of pod events a second those thread hand-offs (and the GIL contention
they bring) cost more than the handlers themselves.
"""

from __future__ import annotations

from typing import Any

import kopf

from strata_operator import api
from strata_operator.observed import Node, WorkerPod, gpu_request
from strata_operator.runtime import Runtime

MANAGED = {api.LABEL_MANAGED_BY: api.MANAGED_BY}


async def worker_pods(
    body: kopf.Body, namespace: str | None, labels: kopf.Labels, **_: Any
) -> dict[str, WorkerPod] | None:
    """Strata's worker pods by ``<namespace>/<job>``."""
    job = labels.get(api.LABEL_JOB)
    return {f"{namespace}/{job}": WorkerPod.from_body(body)} if job else None


async def nodes(body: kopf.Body, name: str, **_: Any) -> dict[str, Node]:
    return {name: Node.from_body(body)}


async def gpu_usage(body: kopf.Body, spec: kopf.Spec, **_: Any) -> dict[str, int]:
    """GPUs held on each node by bound, unfinished pods, Strata's or anyone's."""
    return {str(spec["nodeName"]): gpu_request(body)}


def holds_gpus(body: kopf.Body, spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("nodeName")) and gpu_request(body) > 0


async def wake_job(namespace: str | None, labels: kopf.Labels, memo: Any, **_: Any) -> None:
    """A worker pod changed: its job reconciles now instead of at the next resync."""
    runtime: Runtime = memo.runtime
    runtime.wake(f"{namespace}/{labels.get(api.LABEL_JOB)}")


def register(registry: kopf.OperatorRegistry) -> None:
    kopf.index("pods", labels=MANAGED, id="worker_pods", registry=registry)(worker_pods)
    kopf.index("nodes", id="nodes", registry=registry)(nodes)
    kopf.index("pods", when=holds_gpus, id="gpu_usage", registry=registry)(gpu_usage)
    kopf.on.event("pods", labels=MANAGED, registry=registry)(wake_job)
