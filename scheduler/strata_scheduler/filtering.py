"""Which nodes a pod may use, and for every other node one sentence a user can read in the pod's events.

Checks, in order (the first failure is the reason given):

1. the node is in the cache (``unknown_node``);
2. its GPU type is one the job and its ResourcePool accept (``gpu_type``, unresolvable);
3. its capacity type is one the job and its pool allow (``capacity_type``, unresolvable);
4. it has enough free GPUs of the pod's resource, counting every pod already bound there (``free_gpus``);
5. a tensor-parallel group never spans nodes (``tp_group``): once a pod of the group is bound, the rest go to
   its node; before that, the node must fit the whole group, and when the group has several pods the filter
   picks one node for it (the cheapest; see :func:`filter_nodes`) so pods scheduled one after the other
   cannot drift apart while the first binding is still in flight;
6. low-priority or deferrable pods may use a reserved node only if enough reserved GPUs of that type stay
   free for the upper band of forecast high-priority demand (``reserved_holdback``).

"Unresolvable" failures go into ``FailedAndUnresolvableNodes`` so kube-scheduler does not try to preempt pods
there: evicting anyone would not change the node's GPU type or capacity type.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from strata_scheduler.model import NodeView, PodView
from strata_scheduler.state import ClusterState, ReservedCapacity

REASONS = ("unknown_node", "gpu_type", "capacity_type", "free_gpus", "tp_group", "reserved_holdback")
UNRESOLVABLE = frozenset({"gpu_type", "capacity_type", "tp_group"})


@dataclass(frozen=True)
class HoldBack:
    """Forecast high-priority GPU demand by GPU type: the upper end of its band, ``minutes`` ahead."""

    upper_by_gpu_type: Mapping[str, float]
    minutes: int = 15
    band: str = "80%"


GroupKey = tuple[str, str, str]
"""(namespace, job, tensor-parallel group index)."""


@dataclass(frozen=True)
class PinnedGroup:
    """A tensor-parallel group a recent filter call placed on ``node``; its unbound GPUs are kept for it there."""

    node: str
    group_gpus: int
    pod_gpus: int


@dataclass
class FilterOutcome:
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    unresolvable: dict[str, str] = field(default_factory=dict)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    pin: tuple[GroupKey, PinnedGroup] | None = None
    """A tensor-parallel group this call placed (or confirmed) on a node; the caller remembers it briefly."""

    def reject(self, node: str, reason: str, message: str) -> None:
        (self.unresolvable if reason in UNRESOLVABLE else self.failed)[node] = message
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1


def filter_nodes(
    pod: PodView,
    node_names: Iterable[str],
    state: ClusterState,
    hold: HoldBack,
    pins: Mapping[GroupKey, PinnedGroup],
    cheapest: Callable[[list[str]], str],
) -> FilterOutcome:
    """Filter ``node_names`` for ``pod``; call with ``state.lock`` held.

    ``pins`` are groups recent calls placed: each sends its own pods to its node, and keeps the GPUs its pods
    not yet seen bound will need there away from everyone else (pods of one group are scheduled one after the
    other, and their bindings reach the watch cache a moment later). ``cheapest`` picks the node for a group
    being placed now from the nodes that pass every other check.
    """
    outcome = FilterOutcome()
    if not pod.gpus:
        # Not a GPU pod: nothing here concerns it (kube-scheduler does not even call us for such pods).
        outcome.passed = list(node_names)
        return outcome
    resource = next(iter(pod.gpu_requests))
    pool = state.pools.get(pod.pool or "")
    gpu_types = _allowed(pod.contract.gpu_types, pool.gpu_types if pool else frozenset())
    capacity_types = _allowed(pod.contract.capacity_types, pool.capacity_types if pool else frozenset())
    group = pod.tp_group_key
    group_nodes = state.tp_groups.get(group) if group else None
    own_pin = pins.get(group) if group else None
    group_home = min(group_nodes) if group_nodes else (own_pin.node if own_pin else None)
    group_gpus = max(pod.contract.tp_size, pod.gpus)
    kept = _kept_for_pinned_groups(pins, state, exclude=group)
    low_priority = pod.contract.priority < state.high_priority or pod.contract.deferrable
    reserved = state.reserved_capacity() if low_priority and hold.upper_by_gpu_type else {}
    candidates: list[str] = []
    mismatch: dict[tuple[str | None, str | None], tuple[str, str] | None] = {}  # per (GPU type, capacity type)
    nodes, used_gpus, gpus = state.nodes, state.used_gpus, pod.gpus
    for name in node_names:
        node = nodes.get(name)
        if node is None:
            outcome.reject(name, "unknown_node", "node is not in the Strata extender's cache yet; it will retry")
            continue
        types = (node.gpu_type, node.capacity_type)
        if types not in mismatch:
            mismatch[types] = _type_mismatch(node, gpu_types, capacity_types)
        message = mismatch[types]
        if message:
            outcome.reject(name, message[0], message[1])
            continue
        used = used_gpus[name][resource] if name in used_gpus else 0
        free = node.allocatable_gpus.get(resource, 0) - used - (kept.get(name, 0) if kept else 0)
        if free < gpus:
            total = node.allocatable_gpus.get(resource, 0)
            note = f" ({kept[name]} kept for a tensor-parallel group being placed there)" if kept.get(name) else ""
            outcome.reject(name, "free_gpus", f"pod needs {pod.gpus} {resource}, node has {free} free of {total}{note}")
            continue
        if group is not None and group_home is not None and group_home != name:
            outcome.reject(name, "tp_group", f"{_group_label(group)} runs on node {group_home}; it never spans nodes")
            continue
        if group is not None and group_home is None and free < group_gpus:
            outcome.reject(
                name, "free_gpus", f"{_group_label(group)} needs {group_gpus} GPUs on one node, node has {free} free"
            )
            continue
        held = _held_back(node, pod, reserved, hold)
        if held:
            outcome.reject(name, "reserved_holdback", held)
            continue
        candidates.append(name)
    if group is not None and group_gpus > pod.gpus and candidates:
        chosen = group_home if group_home in candidates else cheapest(candidates)
        for name in candidates:
            if name != chosen:
                outcome.reject(name, "tp_group", f"{_group_label(group)} is being placed on node {chosen}")
        outcome.pin = (group, PinnedGroup(chosen, group_gpus, pod.gpus))
        candidates = [chosen]
    outcome.passed = candidates
    return outcome


def _kept_for_pinned_groups(
    pins: Mapping[GroupKey, PinnedGroup], state: ClusterState, exclude: GroupKey | None
) -> dict[str, int]:
    """GPUs per node that pinned groups (other than ``exclude``) still need for pods not yet bound."""
    kept: dict[str, int] = {}
    for key, pin in pins.items():
        if key == exclude:
            continue
        bound_pods = state.tp_groups[key][pin.node] if key in state.tp_groups else 0
        missing = max(0, pin.group_gpus - bound_pods * pin.pod_gpus)
        kept[pin.node] = kept.get(pin.node, 0) + missing
    return kept


def _allowed(job: frozenset[str], pool: frozenset[str]) -> frozenset[str] | None:
    """The intersection of two allow-lists where empty means "any"; None means any at all."""
    if job and pool:
        return job & pool
    return job or pool or None


def _type_mismatch(
    node: NodeView, gpu_types: frozenset[str] | None, capacity_types: frozenset[str] | None
) -> tuple[str, str] | None:
    if gpu_types is not None and node.gpu_type not in gpu_types:
        have = node.gpu_type or "no GPU type label"
        return "gpu_type", f"job accepts GPU types {','.join(sorted(gpu_types)) or 'none'}, node has {have}"
    if capacity_types is not None and node.capacity_type not in capacity_types:
        have = f"node is {node.capacity_type}" if node.capacity_type else "node has no karpenter.sh/capacity-type label"
        allowed = ",".join(sorted(capacity_types)) or "none"
        return "capacity_type", f"job and pool allow capacity types {allowed}, {have}"
    return None


def _held_back(node: NodeView, pod: PodView, reserved: Mapping[str, ReservedCapacity], hold: HoldBack) -> str | None:
    if node.capacity_type != "reserved" or node.gpu_type is None or node.gpu_type not in reserved:
        return None
    capacity = reserved[node.gpu_type]
    upper = hold.upper_by_gpu_type.get(node.gpu_type)
    if upper is None or not math.isfinite(upper):
        return None
    total, used, used_high = capacity.total, capacity.used, capacity.used_high
    keep = max(0, min(total, math.ceil(upper)) - used_high)
    left = total - used - pod.gpus
    if left >= keep:
        return None
    return (
        f"reserved {node.gpu_type} GPUs are held for forecast high-priority demand (up to {upper:.0f} GPUs in "
        f"{hold.minutes} min, {hold.band} band): {keep} must stay free, this pod would leave {max(left, 0)}"
    )


def _group_label(group: tuple[str, str, str]) -> str:
    namespace, job, index = group
    return f"tensor-parallel group {index.split('@')[0]} of job {namespace}/{job}"
