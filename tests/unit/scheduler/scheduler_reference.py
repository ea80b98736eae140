"""The extender's filter and score written as loops over nodes: the definitions the product's array versions
(``filtering.filter_nodes``, ``scoring.score_rows``) are tested against, here rather than in the product because
nothing but the tests runs them. They share the product's sentence writers and cost formula, so what they pin
down is the array bookkeeping: which node gets which verdict, sentence, count and score, in which order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from strata_api.catalog import Catalog
from strata_api.nodes import NodeFacts
from strata_scheduler.filtering import (
    UNKNOWN_NODE,
    UNRESOLVABLE,
    FilterRequest,
    GroupKey,
    HoldBack,
    PinnedGroup,
    allocatable_need,
    group_label,
    held_back,
    type_mismatch,
)
from strata_scheduler.protocol import MAX_SCORE
from strata_scheduler.scoring import COST_POINTS, Defaults, JobPlacement, cost_per_unit_work
from strata_scheduler.state import ClusterState
from strata_scheduler.views import PodView, cost_class


@dataclass
class ReferenceOutcome:
    """What ``FilterOutcome`` tells the extender, kept as plain lists and dicts."""

    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    pin: tuple[GroupKey, PinnedGroup] | None = None

    def reject(self, node: str, reason: str, message: str) -> None:
        (self.unresolvable if reason in UNRESOLVABLE else self.failed)[node] = message
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1


def filter_nodes_reference(
    pod: PodView,
    node_names: Iterable[str],
    state: ClusterState,
    hold: HoldBack,
    pins: Mapping[GroupKey, PinnedGroup],
    cheapest: Callable[[list[str]], str],
) -> ReferenceOutcome:
    """``filter_nodes`` written as a loop over nodes: the definition the array version is tested against."""
    outcome = ReferenceOutcome()
    if not pod.gpus:
        # Not a GPU pod: nothing here concerns it (kube-scheduler does not even call us for such pods).
        outcome.passed = list(node_names)
        return outcome
    r = FilterRequest.of(pod, state, hold, pins)
    resource, gpu_types, capacity_types, kept, reserved = r.resource, r.gpu_types, r.capacity_types, r.kept, r.reserved
    group, group_home, group_gpus = r.group, r.group_home, r.group_gpus
    candidates: list[str] = []
    mismatch: dict[tuple[object, object], tuple[str, str] | None] = {}  # per (GPU type, capacity type)
    nodes, used_gpus, gpus = state.nodes, state.used_gpus, pod.gpus
    needed, never_fits = allocatable_need(pod, resource, group, group_home, group_gpus)
    for name in node_names:
        node = nodes.get(name)
        if node is None:
            outcome.reject(name, "unknown_node", UNKNOWN_NODE)
            continue
        types = (node.gpu_type, node.capacity_type)
        if types not in mismatch:
            mismatch[types] = type_mismatch(node, gpu_types, capacity_types)
        message = mismatch[types]
        if message:
            outcome.reject(name, message[0], message[1])
            continue
        used = used_gpus[name][resource] if name in used_gpus else 0
        total = node.allocatable_gpus.get(resource, 0)
        if total < needed:
            outcome.reject(name, "gpu_allocatable", never_fits(total))
            continue
        free = max(0, total - used - (kept.get(name, 0) if kept else 0))
        if free < gpus:
            note = f" ({kept[name]} kept for a gang being placed there)" if kept.get(name) else ""
            outcome.reject(name, "free_gpus", f"pod needs {pod.gpus} {resource}, node has {free} free of {total}{note}")
            continue
        if group is not None and group_home is not None and group_home != name:
            outcome.reject(name, "tp_group", f"{group_label(group)} runs on node {group_home}; it never spans nodes")
            continue
        if group is not None and group_home is None and free < group_gpus:
            outcome.reject(
                name, "free_gpus", f"{group_label(group)} needs {group_gpus} GPUs on one node, node has {free} free"
            )
            continue
        held = held_back(node, pod, reserved, hold)
        if held:
            outcome.reject(name, "reserved_holdback", held)
            continue
        candidates.append(name)
    if group is not None and group_gpus > pod.gpus and candidates:
        chosen = group_home if group_home in candidates else cheapest(candidates)
        for name in candidates:
            if name != chosen:
                outcome.reject(name, "tp_group", f"{group_label(group)} is being placed on node {chosen}")
        outcome.pin = (group, PinnedGroup(chosen, group_gpus, pod.gpus))
        candidates = [chosen]
    outcome.passed = candidates
    return outcome


def score_nodes(
    catalog: Catalog,
    pod: PodView,
    candidates: Iterable[tuple[str, NodeFacts | None, int]],
    placement: JobPlacement,
    hour_utc: int,
    defaults: Defaults | None = None,
) -> list[tuple[str, int]]:
    """Score each ``(name, node or None if unknown, free GPUs)`` for ``pod``; order follows ``candidates``: the
    definition ``score_rows`` is tested against."""
    defaults = defaults or Defaults()
    rows = list(candidates)
    gpus = pod.gpus
    by_class: dict[tuple[object, ...], float | None] = {}
    for _, node, _ in rows:
        if node is not None and cost_class(node) not in by_class:
            by_class[cost_class(node)] = cost_per_unit_work(catalog, pod, node, hour_utc, defaults) if gpus else None
    # A free reserved GPU costs 0 (sunk): 8 points; paid nodes share 8 points, or 5 beside a free reserved node.
    paid = [cost for cost in by_class.values() if cost is not None and cost > 0]
    sunk = any(cost == 0 for cost in by_class.values())
    scale = 5 if sunk else COST_POINTS
    base = {
        cls: COST_POINTS if cost == 0 else math.floor(scale * min(paid) / cost + 0.5)
        for cls, cost in by_class.items()
        if cost is not None
    }
    main_zone = placement.main_zone
    packed = placement.pods_per_node
    result = []
    for name, node, free in rows:
        points = base.get(cost_class(node)) if node is not None else None
        if points is None or node is None:
            result.append((name, 0))
            continue
        if free == gpus or packed.get(name, 0) > 0:
            points += 1
        if main_zone is not None and node.zone == main_zone:
            points += 1
        score = points if points < MAX_SCORE else MAX_SCORE  # base is 0..8, never negative
        if pod.contract.planned_capacity_types:  # two tiers: the plan's capacity types 6..10, the rest 0..5
            planned = str(node.capacity_type) in pod.contract.planned_capacity_types
            score = 6 + score * 4 // 10 if planned else score // 2
        result.append((name, score))
    return result


def reference_rows(state: ClusterState, names: Iterable[str]) -> list[tuple[str, NodeFacts | None, int]]:
    """What :func:`score_nodes` takes for ``names``: each node (None if not cached) and its free GPUs of its own
    resource."""
    rows: list[tuple[str, NodeFacts | None, int]] = []
    for name in names:
        node = state.nodes.get(name)
        if node is None:
            rows.append((name, None, 0))
        elif name in state.used_gpus and node.gpu_resource:
            rows.append((name, node, node.gpu_count - state.used_gpus[name][node.gpu_resource]))
        else:
            rows.append((name, node, node.gpu_count))
    return rows
