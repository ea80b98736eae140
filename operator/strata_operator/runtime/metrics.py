"""Prometheus metrics of the operator, on their own registry (no process-wide globals).

Counts are counters (``..._total``; dashboards take ``rate()``), and gauges are things that go up and down: jobs by
phase, GPUs admitted per pool, the oldest queued job's start. The job gauges are computed at scrape time from the
last admission pass's snapshot, so a pool or a GPU type that no longer has jobs disappears instead of reporting
its last value forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from strata_api import Phase, TrainingJob, parse_time

QUEUED = Phase.QUEUED.value


@dataclass(frozen=True)
class JobSnapshot:
    """What one admission pass saw of the jobs, as the job gauges report it."""

    phases: Mapping[Phase, int] = field(default_factory=dict)
    queued: Mapping[str, int] = field(default_factory=dict)
    """Queued jobs (suspended ones aside) by pool."""
    oldest_queued: Mapping[str, float] = field(default_factory=dict)
    """Unix time the longest-waiting queued job of each pool entered the queue."""
    admitted_gpus: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """GPUs held by Admitted and Running jobs, by (pool, GPU type)."""

    @classmethod
    def of(cls, jobs: Iterable[TrainingJob]) -> JobSnapshot:
        phases: dict[Phase, int] = {}
        queued: dict[str, int] = {}
        oldest: dict[str, float] = {}
        gpus: dict[tuple[str, str], int] = {}
        for job in jobs:
            phases[job.phase] = phases.get(job.phase, 0) + 1
            pool = job.spec.pool
            if job.phase is Phase.QUEUED and not job.spec.suspend:
                queued[pool] = queued.get(pool, 0) + 1
                since = queued_since(job)
                oldest[pool] = min(oldest.get(pool, since), since)
            elif job.phase.holds_gpus and job.status.gpu_type is not None and job.spec.resources.gpus:
                key = (pool, job.status.gpu_type.value)
                gpus[key] = gpus.get(key, 0) + job.spec.resources.gpus
        return cls(phases, queued, oldest, gpus)


def queued_since(job: TrainingJob) -> float:
    """When the job last entered the queue: its Queued condition's transition, else its submission."""
    condition = next((c for c in job.status.conditions if c.type == QUEUED and c.status == "True"), None)
    moment = parse_time(condition.last_transition_time) if condition else None
    return (moment or job.status.submitted_at or job.created).timestamp()


class _JobGauges(Collector):
    def __init__(self) -> None:
        self.snapshot = JobSnapshot()

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        phases = GaugeMetricFamily("strata_trainingjobs", "TrainingJobs by phase.", labels=["phase"])
        for phase in Phase:
            phases.add_metric([phase.value], snapshot.phases.get(phase, 0))
        yield phases
        queued = GaugeMetricFamily(
            "strata_queued_trainingjobs", "Queued TrainingJobs (suspended ones aside) by pool.", labels=["pool"]
        )
        for pool, count in sorted(snapshot.queued.items()):
            queued.add_metric([pool], count)
        yield queued
        oldest = GaugeMetricFamily(
            "strata_queue_oldest_timestamp_seconds",
            "Unix time the longest-waiting queued TrainingJob of a pool entered the queue (time() minus it: how "
            "long it has waited).",
            labels=["pool"],
        )
        for pool, since in sorted(snapshot.oldest_queued.items()):
            oldest.add_metric([pool], since)
        yield oldest
        gpus = GaugeMetricFamily(
            "strata_admitted_gpus",
            "GPUs held by Admitted and Running TrainingJobs, by pool and GPU type.",
            labels=["pool", "gpu_type"],
        )
        for (pool, gpu_type), count in sorted(snapshot.admitted_gpus.items()):
            gpus.add_metric([pool, gpu_type], count)
        yield gpus


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_start_time_seconds and friends: a restart shows as a new start time (resets() and changes())
        ProcessCollector(registry=self.registry)
        self.registry.register(PLATFORM_COLLECTOR)
        self._jobs = _JobGauges()
        self.registry.register(self._jobs)
        self.admission_wait = Histogram(
            "strata_admission_wait_seconds",
            "Time from entering the queue to admission (its _count: admissions, by pool).",
            ["pool"],
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600),
            registry=self.registry,
        )
        self.reconcile = Histogram(
            "strata_reconcile_duration_seconds",
            "Duration of one reconcile.",
            ["kind"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.restarts = Counter(
            "strata_trainingjob_restarts_total",
            "Gang restarts after failures or lost nodes.",
            ["reason"],
            registry=self.registry,
        )
        self.preemptions = Counter(
            "strata_trainingjob_preemptions_total", "Jobs preempted for higher-priority pools.", registry=self.registry
        )
        self.gpu_seconds = Counter(
            "strata_gpu_seconds_total", "GPU-seconds used by running gangs.", ["gpu_type"], registry=self.registry
        )
        self.cost = Counter(
            "strata_cost_dollars_total",
            "Dollars spent by running gangs (rate() times 3600: dollars per hour).",
            ["gpu_type"],
            registry=self.registry,
        )
        self.scale_decisions = Counter(
            "strata_inferenceservice_scale_decisions_total",
            "Router scaling decisions the operator applied, by direction of the replica count: up, down, none.",
            ["direction"],
            registry=self.registry,
        )
        self.api_retries = Counter(
            "strata_operator_api_retries_total",
            "Calls of the operator's own API client sent again, by reason: unauthorized (logged in again after a "
            "401), throttled (429), server_error (5xx), connection (refused, dropped or timed out).",
            ["reason"],
            registry=self.registry,
        )

    def observe_jobs(self, jobs: Iterable[TrainingJob]) -> None:
        """The job gauges from one admission pass's view of every job."""
        self._jobs.snapshot = JobSnapshot.of(jobs)

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)
