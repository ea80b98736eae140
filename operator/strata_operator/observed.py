"""Small, immutable summaries of the cluster objects the operator watches (pods, nodes), read from raw bodies.

kopf's in-memory indices hold these, so one admission pass or one job reconcile reads memory, not the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import strata_api as api
from strata_api import GPUType
from strata_api.catalog import parse_price
from strata_api.workload import Progress


@dataclass(frozen=True, slots=True)
class WorkerPod:
    """One worker pod as a job's reconcile needs to see it."""

    name: str
    index: int
    attempt: int
    phase: str
    node: str | None
    gated: bool
    other_gates: tuple[str, ...]
    """Scheduling gates of other controllers; lifting Strata's gate keeps them."""
    deleting: bool
    ready: bool
    exit_code: int | None
    reason: str
    progress: Progress
    uid: str = ""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> WorkerPod:
        meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status") or {}
        labels = meta.get("labels") or {}
        exit_code, reason = None, status.get("reason") or ""
        for cs in status.get("containerStatuses") or ():
            terminated = (cs.get("state") or {}).get("terminated")
            if terminated:
                exit_code = terminated.get("exitCode")
                reason = terminated.get("reason") or reason
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
        gates = [g.get("name", "") for g in spec.get("schedulingGates") or ()]
        return cls(
            name=meta.get("name", ""),
            index=_int(labels.get(api.LABEL_WORKER_INDEX)),
            attempt=_int(labels.get(api.LABEL_ATTEMPT)),
            phase=status.get("phase") or "Pending",
            node=spec.get("nodeName"),
            gated=api.SCHEDULING_GATE in gates,
            other_gates=tuple(g for g in gates if g != api.SCHEDULING_GATE),
            deleting=meta.get("deletionTimestamp") is not None,
            ready=ready,
            exit_code=exit_code,
            reason=reason,
            progress=Progress.parse((meta.get("annotations") or {}).get(api.ANN_PROGRESS)),
            uid=meta.get("uid", ""),
        )


@dataclass(frozen=True, slots=True)
class Node:
    """A node as admission and accounting see it."""

    name: str
    gpu_type: GPUType | None
    capacity_type: str | None
    allocatable_gpus: int
    schedulable: bool
    price_per_hour: float | None
    """The node's own price annotation (dollars per node-hour), if any."""
    instance_type: str | None = None
    """``node.kubernetes.io/instance-type``: the row of the price catalog when the node has no price annotation."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Node:
        meta, spec, status = body.get("metadata", {}), body.get("spec") or {}, body.get("status") or {}
        labels = meta.get("labels") or {}
        gpu = api.gpu_type_of(labels)
        allocatable = (status.get("allocatable") or {}).get(gpu.resource, "0") if gpu else "0"
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
        capacity = api.capacity_type_of(labels)
        price = parse_price((meta.get("annotations") or {}).get(api.ANN_NODE_PRICE))
        return cls(
            name=meta.get("name", ""),
            gpu_type=gpu,
            capacity_type=capacity.value if capacity else None,
            allocatable_gpus=_int(allocatable),
            schedulable=ready and not spec.get("unschedulable", False),
            price_per_hour=price,
            instance_type=labels.get(api.NODE_INSTANCE_TYPE),
        )


def gpu_request(body: Mapping[str, Any]) -> int:
    """GPUs (of either vendor) a pod holds on its node; 0 once it finished (its GPUs are free again)."""
    if (body.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return 0
    total = 0
    for container in (body.get("spec") or {}).get("containers") or ():
        resources = container.get("resources") or {}
        requests = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        total += sum(_int(requests.get(name)) for name in api.GPU_RESOURCES)
    return total


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0
