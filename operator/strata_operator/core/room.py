"""Free GPUs of the fleet during one admission pass, by node kind and free amount (pure; see
:mod:`strata_operator.core.admission`)."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping

from strata_api import GPUType
from strata_operator.core.observed import Node

Kind = tuple[GPUType, str]
"""A node kind: GPU type x capacity type."""


class Room:
    """Free GPUs of the fleet, bucketed by node kind (GPU type, capacity type) and by free amount, so that a fit
    check costs O(distinct amounts) rather than O(nodes): one pass over thousands of jobs and nodes stays cheap."""

    def __init__(self, nodes: Iterable[Node], free: Mapping[str, int]) -> None:
        self.free: dict[str, int] = {}
        self.kind: dict[str, tuple[GPUType | None, str | None]] = {}
        self.buckets: dict[tuple[GPUType | None, str | None], dict[int, set[str]]] = {}
        for node in nodes:  # each node straight into its bucket: a pass builds rooms of the whole fleet
            kind = self.kind[node.name] = (node.gpu_type, node.capacity_type)
            amount = self.free[node.name] = max(0, free.get(node.name, 0))
            self.buckets.setdefault(kind, {}).setdefault(amount, set()).add(node.name)

    def copy(self) -> Room:
        other = Room((), {})
        other.free = dict(self.free)
        other.kind = self.kind
        other.buckets = {k: {a: set(names) for a, names in b.items()} for k, b in self.buckets.items()}
        return other

    def put(self, name: str, amount: int) -> None:
        bucket = self._bucket(name)
        old = self.free[name]
        bucket[old].discard(name)
        if not bucket[old]:
            del bucket[old]
        bucket.setdefault(amount, set()).add(name)
        self.free[name] = amount

    def slots(self, gpu_type: GPUType, capacity: Iterable[str], group_gpus: int) -> int:
        """How many groups of ``group_gpus`` GPUs (each on one node) fit now."""
        return sum(
            len(names) * (amount // group_gpus)
            for c in capacity
            for amount, names in self.buckets.get((gpu_type, c), {}).items()
            if amount >= group_gpus
        )

    def free_gpus(self, gpu_type: GPUType, capacity: str) -> int:
        """Free GPUs on the nodes of one kind, all together."""
        return sum(amount * len(names) for amount, names in self.buckets.get((gpu_type, capacity), {}).items())

    def take(self, gpu_type: GPUType, capacity: Iterable[str], group_gpus: int, groups: int) -> dict[str, int]:
        """Place up to ``groups`` groups, fullest usable nodes first (best fit); returns GPUs taken per node."""
        taken: dict[str, int] = {}
        kinds = [(gpu_type, c) for c in sorted(capacity)]
        amounts = sorted({a for k in kinds for a in self.buckets.get(k, {}) if a >= group_gpus})
        for amount in amounts:
            per_node = amount // group_gpus
            candidates = [n for k in kinds for n in self.buckets.get(k, {}).get(amount, ())]
            for name in heapq.nsmallest(-(-groups // per_node), candidates):
                count = min(groups, per_node)
                self.put(name, amount - count * group_gpus)
                taken[name] = count * group_gpus
                groups -= count
            if groups <= 0:
                break
        return taken

    def most_free(self) -> dict[Kind, int]:
        """The most free GPUs on one node of each kind (what decides whether a kind has room for a worker)."""
        return {
            (gpu_type, capacity): max(amounts, default=0)
            for (gpu_type, capacity), amounts in self.buckets.items()
            if gpu_type is not None and capacity is not None
        }

    def _bucket(self, name: str) -> dict[int, set[str]]:
        return self.buckets.setdefault(self.kind[name], {})


def fleet_rooms(fleet: Iterable[Node], free: Mapping[str, int]) -> tuple[Room, Room]:
    """The schedulable GPU nodes of ``fleet`` as rooms: with ``free`` (free GPUs by node name), and empty."""
    nodes = [n for n in fleet if n.gpu_type is not None and n.schedulable]
    return Room(nodes, free), Room(nodes, {n.name: n.allocatable_gpus for n in nodes})
