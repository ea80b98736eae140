"""Lenient readers of the node and pod bodies every component sees: what a node offers, what a pod asks for.

The operator's accounting and admission and the extender's filter and cost read a node the same way through
:class:`NodeFacts`, and count a pod's GPUs the same way through :func:`gpu_requests`. Whatever the API server
hands over (a node without labels, a malformed quantity) reads as "nothing" rather than raising: these run in
watch callbacks and on the extender's request path. Standard library only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from strata_api import (
    ANN_NODE_PRICE,
    GPU_RESOURCES,
    NODE_INSTANCE_TYPE,
    NODE_ZONE,
    CapacityType,
    GPUType,
    capacity_type_of,
    gpu_type_of,
)
from strata_api.catalog import parse_price

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})
"""Pod phases whose GPUs are free again."""


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """A node as every Strata component reads it: labels real GPU clusters carry, allocatable GPUs, its price."""

    name: str
    gpu_type: GPUType | None
    """From the vendors' product labels; None for a CPU node."""
    capacity_type: CapacityType | None
    instance_type: str | None
    zone: str | None
    allocatable_gpus: Mapping[str, int]
    """Allocatable count of each GPU resource (``nvidia.com/gpu``, ``amd.com/gpu``)."""
    gpu_resource: str | None
    """The GPU resource this node advertises the most of (a node carries one vendor in practice)."""
    gpu_count: int
    """Allocatable GPUs of ``gpu_resource``; 0 for a CPU node."""
    price_override: float | None
    """Dollars per node-hour from the node's ``strata.dev/price-per-hour`` annotation, when valid."""
    schedulable: bool
    """Ready and not cordoned."""

    @classmethod
    def from_body(cls, obj: Mapping[str, Any]) -> NodeFacts:
        metadata, spec, status = _dict(obj.get("metadata")), _dict(obj.get("spec")), _dict(obj.get("status"))
        labels = _str_dict(metadata.get("labels"))
        allocatable = _dict(status.get("allocatable"))
        gpus = {resource: parse_count(allocatable.get(resource)) for resource in GPU_RESOURCES}
        resource, count = max(gpus.items(), key=lambda item: item[1])
        conditions = [_dict(c) for c in _list(status.get("conditions"))]
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        return cls(
            name=str(metadata.get("name", "")),
            gpu_type=gpu_type_of(labels),
            capacity_type=capacity_type_of(labels),
            instance_type=labels.get(NODE_INSTANCE_TYPE),
            zone=labels.get(NODE_ZONE),
            allocatable_gpus=gpus,
            gpu_resource=resource if count > 0 else None,
            gpu_count=count,
            price_override=parse_price(_str_dict(metadata.get("annotations")).get(ANN_NODE_PRICE)),
            schedulable=ready and spec.get("unschedulable") is not True,
        )


def gpu_requests(spec: Mapping[str, Any]) -> dict[str, int]:
    """GPUs a pod needs, the way kube-scheduler counts them: sum of containers, at least the largest init
    container; limits count where requests are absent (the API server copies them for extended resources)."""
    result: dict[str, int] = {}
    for resource in GPU_RESOURCES:
        running = sum(_container_request(c, resource) for c in _list(spec.get("containers")))
        init = max((_container_request(c, resource) for c in _list(spec.get("initContainers"))), default=0)
        if max(running, init) > 0:
            result[resource] = max(running, init)
    return result


def gpus_held(obj: Mapping[str, Any]) -> int:
    """GPUs (of either vendor) a pod holds on its node; 0 once it finished (its GPUs are free again)."""
    if _dict(obj.get("status")).get("phase") in TERMINAL_PHASES:
        return 0
    return sum(gpu_requests(_dict(obj.get("spec"))).values())


def parse_count(value: Any) -> int:
    """A whole-device quantity (``"8"``, ``8``); anything else counts as zero devices."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return 0


def _container_request(container: Any, resource: str) -> int:
    resources = _dict(_dict(container).get("resources"))
    return parse_count(_dict(resources.get("requests")).get(resource, _dict(resources.get("limits")).get(resource)))


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str_dict(value: Any) -> dict[str, str]:
    return {str(k): v for k, v in _dict(value).items() if isinstance(v, str)}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
