"""What the handlers share while the operator runs: settings, the API client, the pod and node caches, metrics,
quotes and wake-ups (:class:`Runtime`, in kopf's memo), and how handlers read kopf's indices.

Nothing here is state a restart would need: jobs, queues and admissions live in the cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from strata_operator.runtime.kube import Kube
from strata_operator.runtime.metrics import Metrics
from strata_operator.runtime.quoter import Quoter
from strata_operator.runtime.watches import ClusterCache
from strata_operator.settings import OperatorSettings

T = TypeVar("T")

GANGS_CREATING = 64
"""Enough gangs (two rounds of calls each) to keep the client's 64 connections full: 16 left them idle between
rounds (500 gangs: 16 pods/s instead of 30); unbounded, admitting 500 gangs at once held 4,000 pod manifests in
waiting calls (peak memory 505 MiB instead of 275)."""

IndexOf = Mapping[str, Collection[T]]
"""How kopf's in-memory indices look to the handlers: key -> the values of the objects under that key."""


def first(index: IndexOf[T], key: str) -> T | None:
    return next(iter(index.get(key, ())), None)


class IndexMapping(Mapping[str, T]):
    """One value per key over a kopf index (nodes by name), read live."""

    def __init__(self, index: IndexOf[T]) -> None:
        self._index = index

    def __getitem__(self, key: str) -> T:
        value = first(self._index, key)
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._index))

    def __len__(self) -> int:
        return len(self._index)


@dataclass
class Runtime:
    settings: OperatorSettings
    metrics: Metrics = field(default_factory=Metrics)
    kube: Kube | None = None
    cache: ClusterCache | None = None
    """Pods and nodes, from the operator's own watches; None until start-up."""
    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)
    """Each job daemon's wake-up, by job key (``namespace/name``); how many there are is how many jobs are followed."""
    last_admission: float = 0.0
    admission_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """One admission pass at a time, however many pool timers fire."""
    creating: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(GANGS_CREATING))
    """Gangs whose objects are being created at once (first come, first served)."""
    quoter: Quoter | None = None
    """The scheduler extender's GPU type quotes (``gpuType: Any``); None until start-up."""
    queue_written: dict[str, float] = field(default_factory=dict)
    """When each queued job's position was last written (positions shift often; writes are throttled)."""
    written_from: dict[str, tuple[str, float]] = field(default_factory=dict)
    """By job key: the resourceVersion the job's last status write was decided from (by its daemon or the admission
    pass, whether it landed or conflicted) and when (``time.monotonic``). A view still at that version is older than
    the job as stored: deciding from it again would only conflict (see ``runtime.jobs.patch_status``)."""
    namespace_objects: dict[str, tuple[asyncio.Task[None], float]] = field(default_factory=dict)
    """By namespace: the creation of its workers' headless Service, ServiceAccount, Role and RoleBinding, shared by
    every gang created there, and when it began (``time.monotonic``; see ``gangs.ensure_namespace_objects``)."""

    @property
    def api(self) -> Kube:
        if self.kube is None:
            raise RuntimeError("the operator has not logged in yet")
        return self.kube

    @property
    def observed(self) -> ClusterCache:
        if self.cache is None:
            raise RuntimeError("the operator has not started watching pods and nodes yet")
        return self.cache

    def wake(self, key: str) -> None:
        event = self.wakeups.get(key)
        if event is not None:
            event.set()
