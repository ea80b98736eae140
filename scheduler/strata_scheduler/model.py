"""Small typed views of the Kubernetes objects the extender reasons about, read leniently from raw JSON dicts.

The cache keeps these views instead of full objects: a 5,000-node fleet then costs a few megabytes and the
filter touches only plain attributes. Every reader tolerates missing or malformed fields (a node without
labels, a pod without Strata's annotations), because whatever kube-scheduler or the API server hands us must
never turn into an exception on the request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from strata_api import (
    ANN_NODE_PRICE,
    GPU_RESOURCES,
    LABEL_ATTEMPT,
    LABEL_POOL,
    NODE_INSTANCE_TYPE,
    NODE_ZONE,
    PodContract,
    capacity_type_of,
    gpu_type_of,
)
from strata_api.catalog import parse_price

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class NodeView:
    name: str
    gpu_type: str | None
    capacity_type: str | None
    instance_type: str | None
    zone: str | None
    allocatable_gpus: Mapping[str, int]
    price_override: float | None
    """Dollars per node-hour from the node's ``strata.dev/price-per-hour`` annotation, when valid."""
    gpu_resource: str | None = None
    """The GPU resource this node advertises the most of (a node carries one vendor in practice)."""
    gpu_count: int = 0
    """Allocatable GPUs of ``gpu_resource``."""
    cost_class: tuple[object, ...] = ()
    """Everything the cost formula reads of a node: nodes of one class cost the same, so a request prices
    each class once (a 5,000-node fleet has a few dozen) instead of each node."""


@dataclass(frozen=True)
class PodView:
    uid: str
    namespace: str
    name: str
    node_name: str | None
    phase: str
    gpu_requests: Mapping[str, int]
    contract: PodContract
    pool: str | None
    attempt: str = ""
    """The gang's restart count (``strata.dev/attempt``): a restarted gang's groups are new groups."""

    @property
    def gpus(self) -> int:
        return sum(self.gpu_requests.values())

    @property
    def holds_resources(self) -> bool:
        """Bound and not finished: its GPUs are not free for anyone else."""
        return self.node_name is not None and self.phase not in TERMINAL_PHASES

    @property
    def job_key(self) -> tuple[str, str] | None:
        return (self.namespace, self.contract.job) if self.contract.job else None

    @property
    def tp_group_key(self) -> tuple[str, str, str] | None:
        if self.contract.job is None or self.contract.tp_group is None:
            return None
        # A pod of the previous attempt may still be terminating on its old node; it must not pull the new
        # attempt's group there.
        group = f"{self.contract.tp_group}@{self.attempt}" if self.attempt else self.contract.tp_group
        return (self.namespace, self.contract.job, group)


def node_view(obj: Mapping[str, Any]) -> NodeView:
    metadata = _dict(obj.get("metadata"))
    labels = _str_dict(metadata.get("labels"))
    annotations = _str_dict(metadata.get("annotations"))
    allocatable = _dict(_dict(obj.get("status")).get("allocatable"))
    gpu_type = str(gpu_type_of(labels) or "") or None
    capacity = str(capacity_type_of(labels) or "") or None
    gpus = {resource: parse_count(allocatable.get(resource)) for resource in GPU_RESOURCES}
    best = max(gpus.items(), key=lambda item: item[1])
    resource = best[0] if best[1] > 0 else None
    instance_type, zone = labels.get(NODE_INSTANCE_TYPE), labels.get(NODE_ZONE)
    price = parse_price(annotations.get(ANN_NODE_PRICE))
    return NodeView(
        name=str(metadata.get("name", "")),
        gpu_type=gpu_type,
        capacity_type=capacity,
        instance_type=instance_type,
        zone=zone,
        allocatable_gpus=gpus,
        price_override=price,
        gpu_resource=resource,
        gpu_count=best[1] if resource else 0,
        cost_class=(gpu_type, capacity, instance_type, zone, price, resource, best[1]),
    )


def pod_view(obj: Mapping[str, Any]) -> PodView:
    metadata = _dict(obj.get("metadata"))
    spec = _dict(obj.get("spec"))
    labels = _str_dict(metadata.get("labels"))
    node_name = spec.get("nodeName")
    return PodView(
        uid=str(metadata.get("uid", "")),
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        node_name=node_name if isinstance(node_name, str) and node_name else None,
        phase=str(_dict(obj.get("status")).get("phase", "Pending")),
        gpu_requests=gpu_requests(spec),
        contract=PodContract.from_metadata(labels, _str_dict(metadata.get("annotations"))),
        pool=labels.get(LABEL_POOL),
        attempt=labels.get(LABEL_ATTEMPT, ""),
    )


def gpu_requests(spec: Mapping[str, Any]) -> dict[str, int]:
    """GPUs a pod needs, the way kube-scheduler counts them: sum of containers, at least the largest init."""
    result: dict[str, int] = {}
    for resource in GPU_RESOURCES:
        running = sum(_container_request(c, resource) for c in _list(spec.get("containers")))
        init = max((_container_request(c, resource) for c in _list(spec.get("initContainers"))), default=0)
        if max(running, init) > 0:
            result[resource] = max(running, init)
    return result


def _container_request(container: Any, resource: str) -> int:
    resources = _dict(_dict(container).get("resources"))
    # Extended resources may be given as limits only; the API server then copies them into requests.
    value = _dict(resources.get("requests")).get(resource, _dict(resources.get("limits")).get(resource))
    return parse_count(value)


def parse_count(value: Any) -> int:
    """A whole-device quantity (``"8"``, ``8``); anything else counts as zero devices."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return 0


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str_dict(value: Any) -> dict[str, str]:
    return {str(k): v for k, v in _dict(value).items() if isinstance(v, str)}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
