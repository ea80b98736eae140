"""Prometheus metrics of one extender instance, on a registry of its own (tests run several side by side).

Counts are counters named ``..._total`` (requests and decisions: the latency histogram's ``_count`` per verb, nodes
rejected by reason, 4xx and internal errors); gauges hold what goes up and down (the cache, the forecast band, the
forecast's age, computed when scraped).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import PLATFORM_COLLECTOR, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

VERBS = ("filter", "prioritize", "quote")
"""The extender's verbs (server.VERBS as paths): their error counters start at zero, so rate() and the alerts see a
series before the first error rather than nothing."""

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
"""Seconds; fine at the low end because the aim is a p99 under 5 ms and kube-scheduler waits on every call."""


class _CacheSize(Collector):
    def __init__(self, sizes: Callable[[], Mapping[str, int]]) -> None:
        self.sizes = sizes

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "strata_extender_cache_objects", "Objects in the extender's watch cache, by kind", labels=["kind"]
        )
        for kind, count in self.sizes().items():
            family.add_metric([kind], count)
        yield family


class ExtenderMetrics:
    def __init__(self, cache_sizes: Callable[[], Mapping[str, int]]) -> None:
        self.registry = CollectorRegistry()
        # process_start_time_seconds and friends: a restart shows as a new start time (resets() and changes())
        ProcessCollector(registry=self.registry)
        self.registry.register(PLATFORM_COLLECTOR)
        self.latency = Histogram(
            "strata_extender_request_duration_seconds",
            "Time to answer one extender call, by verb",
            ["verb"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rejected = Counter(
            "strata_extender_nodes_rejected_total",
            "Nodes the filter rejected, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.bad_requests = Counter(
            "strata_extender_bad_requests_total", "Requests answered 4xx, by verb", ["verb"], registry=self.registry
        )
        self.internal_errors = Counter(
            "strata_extender_internal_errors_total",
            "Calls that hit a bug and got the documented neutral answer, by verb",
            ["verb"],
            registry=self.registry,
        )
        self.connections_dropped = Counter(
            "strata_extender_connections_dropped_total",
            "Client connections the server closed unasked, by reason (idle_timeout, request_timeout, over_cap: "
            "closed to make room past max_connections, over_cap_all_busy: a new one refused)",
            ["reason"],
            registry=self.registry,
        )
        self.forecast = Gauge(
            "strata_forecast_gpus",
            "Forecast GPU demand 15 minutes ahead, by GPU type, priority class and band edge",
            ["gpu_type", "priority", "bound"],
            registry=self.registry,
        )
        self.forecast_error = Gauge(
            "strata_forecast_abs_error_gpus",
            "Absolute error of the last forecast that came due, in GPUs",
            ["gpu_type", "priority"],
            registry=self.registry,
        )
        self.forecast_fit_seconds = Gauge(
            "strata_forecast_fit_seconds", "Time the last forecaster fit took", registry=self.registry
        )
        self.forecast_candidate_failures = Counter(
            "strata_forecast_candidate_failures_total",
            "Forecast candidates dropped from a round's blend because they failed, by candidate and reason "
            "(raised, wrongLength, nonFinite)",
            ["candidate", "reason"],
            registry=self.registry,
        )
        self.forecast_age = Gauge(
            "strata_forecast_age_seconds",
            "Seconds since the forecaster last published forecasts (since it started, if it has not yet)",
            registry=self.registry,
        )
        self.registry.register(_CacheSize(cache_sizes))
        for verb in VERBS:
            self.bad_requests.labels(verb)
            self.internal_errors.labels(verb)
