"""What ``make demo`` shows of the cluster, as plain-text tables: the fleet, and where each job runs at what cost.

Pure functions over the API objects as ``kubectl get -o json`` returns them. Nodes are read by
:class:`strata_api.nodes.NodeFacts` and priced by :meth:`strata_api.catalog.Catalog.gpu_price`, the same reader
and formula the operator and the extender use, so the demo's figures are theirs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import strata_api as api
from strata_api.catalog import Catalog
from strata_api.nodes import NodeFacts, gpu_requests


def node_table(nodes: Iterable[Mapping[str, Any]]) -> str:
    """The fleet as a user sees it: GPU type, count, capacity type, instance type, zone, readiness."""
    rows: list[tuple[str, ...]] = [("NAME", "GPU", "GPUS", "CAPACITY", "INSTANCE-TYPE", "ZONE", "READY")]
    for node in sorted(nodes, key=lambda n: str(n["metadata"]["name"])):
        facts = NodeFacts.from_body(node)
        rows.append(
            (
                facts.name,
                facts.gpu_type.value if facts.gpu_type else "-",
                str(facts.gpu_count) if facts.gpu_type else "0",
                facts.capacity_type.value if facts.capacity_type else "-",
                facts.instance_type or "-",
                facts.zone or "-",
                "Ready" if is_ready(node) else "NotReady",
            )
        )
    return format_table(rows)


def placement_table(
    jobs: Iterable[Mapping[str, Any]],
    pods: Sequence[Mapping[str, Any]],
    nodes: Iterable[Mapping[str, Any]],
    catalog: Catalog,
    hour_utc: int,
) -> str:
    """Each job: its pool, phase (and queue position), where its workers run, and what that capacity costs per
    hour now: for each placed worker, its GPUs x its node's price per GPU-hour x the zone's time-of-use
    multiplier at ``hour_utc``."""
    by_name = {facts.name: facts for facts in map(NodeFacts.from_body, nodes)}
    rows: list[tuple[str, ...]] = [("JOB", "POOL", "PHASE", "GPU", "CAPACITY", "NODES", "$/HOUR")]
    for job in jobs:
        name = job["metadata"]["name"]
        placed = [
            (pod, by_name[pod["spec"]["nodeName"]])
            for pod in pods
            if (pod["metadata"].get("labels") or {}).get(api.LABEL_JOB) == name
            and pod["spec"].get("nodeName") in by_name
        ]
        cost = sum(_worker_cost(pod, node, catalog, hour_utc) for pod, node in placed)
        kinds = {_kind(node) for _, node in placed}
        status = job.get("status") or {}
        phase = status.get("phase", "-")
        if status.get("queuePosition"):
            phase += f" (queue {status['queuePosition']})"
        rows.append(
            (
                name,
                job["spec"].get("pool", "-"),
                phase,
                ",".join(sorted({gpu for gpu, _ in kinds})) or "-",
                ",".join(sorted({capacity for _, capacity in kinds})) or "-",
                ",".join(sorted({node.name for _, node in placed})) or "-",
                f"{cost:.2f}" if placed else "-",
            )
        )
    return format_table(rows)


def format_table(rows: Sequence[tuple[str, ...]]) -> str:
    """Left-aligned columns two spaces apart, as kubectl prints them."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def is_ready(node: Mapping[str, Any]) -> bool:
    """The node's Ready condition is True."""
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _worker_cost(pod: Mapping[str, Any], node: NodeFacts, catalog: Catalog, hour_utc: int) -> float:
    capacity = node.capacity_type.value if node.capacity_type else None
    per_gpu = catalog.gpu_price(node.price_override, node.instance_type, capacity, node.gpu_count) or 0.0
    gpus = gpu_requests(pod["spec"]).get(node.gpu_resource, 0) if node.gpu_resource else 0
    return per_gpu * gpus * catalog.power_multiplier(node.zone, hour_utc)


def _kind(node: NodeFacts) -> tuple[str, str]:
    return (
        node.gpu_type.value if node.gpu_type else "-",
        node.capacity_type.value if node.capacity_type else "-",
    )
