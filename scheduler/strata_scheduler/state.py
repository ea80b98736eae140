"""The extender's picture of the cluster: nodes, pods, pools and jobs, with the aggregates the filter needs.

Watches feed this object (see :mod:`strata_scheduler.watchers`); requests read it. It does no I/O, so unit
tests build it directly. Aggregates (GPUs in use per node, where each tensor-parallel group and each job sits)
are kept up to date on every event, so a filter call costs time proportional to the nodes it is asked about,
never to the size of the cluster. One lock guards everything: updates are short and requests only read.
"""

from __future__ import annotations

import gc
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from strata_api.nodes import NodeFacts
from strata_scheduler.columns import NodeColumns
from strata_scheduler.views import PodView, pod_view


@dataclass(frozen=True)
class PoolView:
    """What the extender reads of a ResourcePool: the capacity and GPU types it allows (empty = any).

    Not :class:`strata_api.ResourcePool`: that view reads a pool the API server validated and raises on a
    missing field or an unknown GPU type, while a watch callback must take whatever arrives (a pool of a newer
    CRD version, a GPU type this build does not know) and keep the rest of the cache going."""

    name: str
    capacity_types: frozenset[str]
    gpu_types: frozenset[str]


def pool_view(obj: Mapping[str, Any]) -> PoolView:
    metadata = _mapping(obj.get("metadata"))
    spec = _mapping(obj.get("spec"))
    return PoolView(
        name=str(metadata.get("name", "")),
        capacity_types=_strings(spec.get("capacityTypes")),
        gpu_types=_strings(spec.get("gpuTypes")),
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _strings(value: Any) -> frozenset[str]:
    return frozenset(str(v) for v in value) if isinstance(value, list) else frozenset()


@dataclass(frozen=True)
class ReservedCapacity:
    """Reserved GPUs of one type: all of them, those in use, and those in use by high-priority pods."""

    total: int
    used: int
    used_high: int


class ClusterState:
    def __init__(self, high_priority: int = 100) -> None:
        self.lock = threading.RLock()
        self.high_priority = high_priority
        self.nodes: dict[str, NodeFacts] = {}
        self.columns = NodeColumns()
        """The same nodes as arrays, with GPUs in use (see :mod:`strata_scheduler.columns`)."""
        self.pods: dict[str, PodView] = {}
        self.pools: dict[str, PoolView] = {}
        self.jobs: dict[tuple[str, str], Mapping[str, Any]] = {}
        self.used_gpus: dict[str, Counter[str]] = defaultdict(Counter)
        """node -> GPU resource -> GPUs held by pods bound there."""
        self.tp_groups: dict[tuple[str, str, str], Counter[str]] = defaultdict(Counter)
        """(namespace, job, tp group) -> node -> bound pods of the group there."""
        self.job_nodes: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        """(namespace, job) -> node -> bound pods of the job there."""
        self.awaiting_planned_node: dict[str, PodView] = {}
        """uid -> pods not bound yet of gangs admission emptied a node for (few: rule 10's, while they start)."""
        self.generation = 0
        """Bumped on every change; memoised aggregates are valid for one generation."""
        self._reserved_memo: tuple[int, dict[str, ReservedCapacity]] = (-1, {})
        self.synced: set[str] = set()
        """Kinds whose initial list has been loaded; ready once nodes and pods are in."""

    @contextmanager
    def reading(self) -> Iterator[ClusterState]:
        with self.lock:
            yield self

    @property
    def ready(self) -> bool:
        return {"nodes", "pods"} <= self.synced

    def mark_synced(self, kind: str) -> None:
        """Record that ``kind``'s initial list is in. When that makes the cache ready for the first time, the
        objects alive then (the cache, the Kubernetes client, imported modules) move out of the cyclic
        collector's reach (``gc.freeze``): the requests that follow allocate a few thousand objects each, and
        every full collection would otherwise walk all of the long-lived ones on the request path."""
        first = not self.ready
        self.synced.add(kind)
        if first and self.ready:
            gc.collect()
            gc.freeze()

    # --- updates from watches ---
    def upsert_node(self, obj: Mapping[str, Any]) -> None:
        view = NodeFacts.from_body(obj)
        with self.lock:
            self.generation += 1
            self.nodes[view.name] = view
            self.columns.upsert(view, self.used_gpus.get(view.name))

    def delete_node(self, name: str) -> None:
        with self.lock:
            self.generation += 1
            self.nodes.pop(name, None)
            self.columns.delete(name)

    def upsert_pod(self, obj: Mapping[str, Any]) -> None:
        view = pod_view(obj)
        with self.lock:
            self.generation += 1
            self._remove_pod(view.uid)
            self.pods[view.uid] = view
            if view.holds_resources:
                self._account(view, +1)
            if view.awaits_planned_node:
                self.awaiting_planned_node[view.uid] = view

    def delete_pod(self, uid: str) -> None:
        with self.lock:
            self.generation += 1
            self._remove_pod(uid)

    def replace_pods(self, objs: list[Mapping[str, Any]]) -> None:
        """Load a full list (the start of a watch, or a re-list after the watch expired)."""
        views = [pod_view(obj) for obj in objs]
        with self.lock:
            self.generation += 1
            self.pods.clear()
            self.used_gpus.clear()
            self.tp_groups.clear()
            self.job_nodes.clear()
            self.awaiting_planned_node.clear()
            for view in views:
                self.pods[view.uid] = view
                if view.holds_resources:
                    self._account(view, +1)
                if view.awaits_planned_node:
                    self.awaiting_planned_node[view.uid] = view
            self._rebuild_columns()

    def replace_nodes(self, objs: list[Mapping[str, Any]]) -> None:
        views = [NodeFacts.from_body(obj) for obj in objs]
        with self.lock:
            self.generation += 1
            self.nodes = {view.name: view for view in views}
            self._rebuild_columns()

    def replace_pools(self, objs: list[Mapping[str, Any]]) -> None:
        views = [pool_view(obj) for obj in objs]
        with self.lock:
            self.generation += 1
            self.pools = {view.name: view for view in views}

    def replace_jobs(self, objs: list[Mapping[str, Any]]) -> None:
        with self.lock:
            self.generation += 1
            self.jobs.clear()
            for obj in objs:
                self.upsert_job(obj)

    def upsert_pool(self, obj: Mapping[str, Any]) -> None:
        view = pool_view(obj)
        with self.lock:
            self.generation += 1
            self.pools[view.name] = view

    def delete_pool(self, name: str) -> None:
        with self.lock:
            self.generation += 1
            self.pools.pop(name, None)

    def upsert_job(self, obj: Mapping[str, Any]) -> None:
        metadata = obj.get("metadata")
        if isinstance(metadata, Mapping):
            with self.lock:
                self.generation += 1
                self.jobs[(str(metadata.get("namespace", "")), str(metadata.get("name", "")))] = obj

    def delete_job(self, namespace: str, name: str) -> None:
        with self.lock:
            self.generation += 1
            self.jobs.pop((namespace, name), None)

    def _remove_pod(self, uid: str) -> None:
        self.awaiting_planned_node.pop(uid, None)
        old = self.pods.pop(uid, None)
        if old is not None and old.holds_resources:
            self._account(old, -1)

    def _account(self, pod: PodView, sign: int) -> None:
        assert pod.node_name is not None
        used = self.used_gpus[pod.node_name]
        for resource, count in pod.gpu_requests.items():
            used[resource] += sign * count
        for index, key in ((self.tp_groups, pod.tp_group_key), (self.job_nodes, pod.job_key)):
            if key is not None:
                counter = index[key]  # type: ignore[index]
                counter[pod.node_name] += sign
                if counter[pod.node_name] <= 0:
                    del counter[pod.node_name]
                if not counter:
                    del index[key]  # type: ignore[arg-type]
        if not +used:
            del self.used_gpus[pod.node_name]
        self.columns.set_used(pod.node_name, self.used_gpus.get(pod.node_name))

    def _rebuild_columns(self) -> None:
        self.columns.clear()
        for view in self.nodes.values():
            self.columns.upsert(view, self.used_gpus.get(view.name))

    # --- reads for the filter and the demand recorder ---
    def reserved_capacity(self) -> dict[str, ReservedCapacity]:
        """Reserved GPUs by GPU type, recomputed at most once per change of the cluster."""
        generation, memo = self._reserved_memo
        if generation != self.generation:
            memo = self._compute_reserved()
            self._reserved_memo = (self.generation, memo)
        return memo

    def _compute_reserved(self) -> dict[str, ReservedCapacity]:
        totals: Counter[str] = Counter()
        used: Counter[str] = Counter()
        for node in self.nodes.values():
            if node.capacity_type == "reserved" and node.gpu_type and node.gpu_resource:
                totals[node.gpu_type] += node.allocatable_gpus[node.gpu_resource]
                used[node.gpu_type] += self.used_gpus.get(node.name, Counter())[node.gpu_resource]
        used_high: Counter[str] = Counter()
        for pod in self.pods.values():
            bound = self.nodes.get(pod.node_name or "")
            if (
                pod.holds_resources
                and bound is not None
                and bound.capacity_type == "reserved"
                and bound.gpu_type
                and pod.contract.priority >= self.high_priority
            ):
                used_high[bound.gpu_type] += pod.gpus
        return {gpu: ReservedCapacity(totals[gpu], used[gpu], used_high[gpu]) for gpu in totals}

    def size(self) -> dict[str, int]:
        with self.lock:
            return {"nodes": len(self.nodes), "pods": len(self.pods), "pools": len(self.pools), "jobs": len(self.jobs)}
