"""GPU demand history: what is sampled each minute, where it is kept, and where else it can come from.

A sample is the GPUs requested by pending and running pods, per (GPU type, priority class). It goes into a
SQLite file (on a PersistentVolume in a pod) so a restarted extender forecasts from its whole history at once,
and into the ``strata_demand_gpus`` gauge, so a Prometheus that scrapes the extender holds the same series;
:class:`PrometheusSource` reads it back over the HTTP API for setups where Prometheus is the system of record.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import orjson
from prometheus_client import CollectorRegistry, Gauge

from strata_api import AMD_GPU, GPUType
from strata_api.nodes import TERMINAL_PHASES
from strata_scheduler.forecast_board import HIGH, LOW
from strata_scheduler.state import ClusterState

log = logging.getLogger(__name__)

SeriesKey = tuple[str, str]
"""(GPU type, priority class)."""
History = dict[SeriesKey, list[tuple[int, float]]]
"""Per series, (unix seconds at the start of the minute, GPUs) in time order."""


def demand_sample(state: ClusterState) -> dict[SeriesKey, float]:
    """GPUs requested by pending and running pods now, with a zero for every series that has none."""
    sample: dict[SeriesKey, float] = {(gpu.value, p): 0.0 for gpu in GPUType for p in (HIGH, LOW)}
    with state.reading():
        for pod in state.pods.values():
            if not pod.gpus or pod.phase in TERMINAL_PHASES:
                continue
            node = state.nodes.get(pod.node_name or "")
            gpu = node.gpu_type if node is not None and node.gpu_type else _gpu_of_resource(pod.gpu_requests)
            high = pod.contract.priority >= state.high_priority and not pod.contract.deferrable
            sample[(gpu, HIGH if high else LOW)] += pod.gpus
    return sample


def _gpu_of_resource(requests: Mapping[str, int]) -> str:
    return GPUType.MI300X.value if AMD_GPU in requests else GPUType.H100.value


class HistorySource(Protocol):
    def history(self, since_s: int) -> History: ...


class DemandStore:
    """One row per minute and series; ``INSERT OR REPLACE`` makes a re-recorded minute harmless."""

    def __init__(self, path: Path | str) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False)
        with self._lock, self._db:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS demand (minute INTEGER NOT NULL, gpu_type TEXT NOT NULL, "
                "priority TEXT NOT NULL, gpus REAL NOT NULL, PRIMARY KEY (minute, gpu_type, priority))"
            )

    def record(self, at_s: float, sample: Mapping[SeriesKey, float]) -> None:
        minute = int(at_s // 60 * 60)
        rows = [(minute, gpu, priority, gpus) for (gpu, priority), gpus in sample.items()]
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO demand VALUES (?, ?, ?, ?)", rows)

    def history(self, since_s: int) -> History:
        with self._lock:
            rows = self._db.execute(
                "SELECT gpu_type, priority, minute, gpus FROM demand WHERE minute >= ? ORDER BY minute", (since_s,)
            ).fetchall()
        result: History = defaultdict(list)
        for gpu, priority, minute, gpus in rows:
            result[(gpu, priority)].append((minute, gpus))
        return dict(result)

    def prune(self, before_s: int) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM demand WHERE minute < ?", (before_s,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class PrometheusSource:
    """Demand history from Prometheus' ``/api/v1/query_range``, one-minute steps."""

    QUERY = "sum by (gpu_type, priority) (strata_demand_gpus)"

    def __init__(self, base_url: str, timeout_s: float = 30.0, clock: Callable[[], float] = time.time) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.clock = clock

    def history(self, since_s: int) -> History:
        # Prometheus caps a range query at 11,000 points, so long histories are fetched a week at a time.
        result: History = defaultdict(list)
        start, end, week = since_s, int(self.clock()), 7 * 86400
        while start < end:
            stop = min(start + week, end)
            for key, points in self._range(start, stop).items():
                result[key].extend(points)
            start = stop + 60
        return dict(result)

    def _range(self, start: int, end: int) -> History:
        query = urllib.parse.urlencode({"query": self.QUERY, "start": start, "end": end, "step": "60"})
        with urllib.request.urlopen(f"{self.base_url}/api/v1/query_range?{query}", timeout=self.timeout_s) as reply:
            document = orjson.loads(reply.read())
        if document.get("status") != "success":
            raise RuntimeError(f"Prometheus query failed: {document.get('error', document)}")
        result: History = {}
        for series in document["data"]["result"]:
            labels = series.get("metric", {})
            key = (str(labels.get("gpu_type", "")), str(labels.get("priority", "")))
            result[key] = [(int(float(at)), float(value)) for at, value in series.get("values", [])]
        return result


class DemandRecorder(threading.Thread):
    """Samples demand every ``interval_s`` into the store and the ``strata_demand_gpus`` gauge."""

    def __init__(
        self,
        state: ClusterState,
        store: DemandStore,
        registry: CollectorRegistry,
        stop: threading.Event,
        interval_s: float = 60.0,
        retention_days: float = 35.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name="demand-recorder", daemon=True)
        self.state, self.store, self.stop, self.interval_s, self.clock = state, store, stop, interval_s, clock
        self.retention_s = retention_days * 86400
        self.gauge = Gauge(
            "strata_demand_gpus",
            "GPUs requested by pending and running pods, by GPU type and priority class",
            ["gpu_type", "priority"],
            registry=registry,
        )

    def record_once(self) -> dict[SeriesKey, float]:
        sample = demand_sample(self.state)
        now = self.clock()
        self.store.record(now, sample)
        self.store.prune(int(now - self.retention_s))
        for (gpu, priority), gpus in sample.items():
            self.gauge.labels(gpu, priority).set(gpus)
        return sample

    def run(self) -> None:
        while not self.stop.is_set():
            if self.state.ready:
                try:
                    self.record_once()
                except Exception:
                    log.exception("recording demand failed; trying again next interval")
            self.stop.wait(self.interval_s)
