"""What the extender keeps of each pod and node, read leniently from the raw JSON dicts the API server sends.

Nodes are read by the contract's one node reader, :class:`strata_api.nodes.NodeFacts`; pods are
:class:`PodView`, with GPUs counted by :func:`strata_api.nodes.gpu_requests` (kube-scheduler's way). The cache
keeps these views instead of full objects: a 5,000-node fleet then costs a few megabytes and the filter touches
only plain attributes. Every reader tolerates missing or malformed fields (a node without labels, a pod without
Strata's annotations), because whatever kube-scheduler or the API server hands us must never turn into an
exception on the request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from strata_api import LABEL_ATTEMPT, LABEL_POOL, PodContract
from strata_api.nodes import TERMINAL_PHASES, NodeFacts, gpu_requests


def cost_class(node: NodeFacts) -> tuple[object, ...]:
    """Everything the cost formula reads of a node: nodes of one class cost the same, so a request prices each
    class once (a 5,000-node fleet has a few dozen) instead of each node."""
    return (
        node.gpu_type,
        node.capacity_type,
        node.instance_type,
        node.zone,
        node.price_override,
        node.gpu_resource,
        node.gpu_count,
    )


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
    def awaits_planned_node(self) -> bool:
        """Not bound yet, of a gang admission emptied a node for (``contract.planned_node``): the extender keeps
        that node's GPUs for the gang until its pods are bound there."""
        return (
            self.node_name is None
            and self.phase not in TERMINAL_PHASES
            and self.contract.planned_node is not None
            and self.job_key is not None
        )

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


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str_dict(value: Any) -> dict[str, str]:
    return {str(k): v for k, v in _dict(value).items() if isinstance(v, str)}
