"""Prometheus metrics of the operator, on their own registry (no process-wide globals)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from strata_api import Phase


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Gauge("strata_trainingjobs", "TrainingJobs by phase.", ["phase"], registry=self.registry)
        self.admission_wait = Histogram(
            "strata_admission_wait_seconds",
            "Time from entering the queue to admission.",
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
            "strata_cost_dollars_total", "Dollars spent by running gangs.", ["gpu_type"], registry=self.registry
        )
        self.api_retries = Counter(
            "strata_operator_api_retries_total",
            "Calls of the operator's own API client sent again, by reason: unauthorized (logged in again after a "
            "401), throttled (429), server_error (5xx), connection (refused, dropped or timed out).",
            ["reason"],
            registry=self.registry,
        )
        for phase in Phase:
            self.jobs.labels(phase.value)

    def set_phases(self, counts: Mapping[Phase, int]) -> None:
        for phase in Phase:
            self.jobs.labels(phase.value).set(counts.get(phase, 0))

    def serve(self, port: int) -> None:
        if port:
            start_http_server(port, registry=self.registry)
