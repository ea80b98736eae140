"""The chart's Grafana dashboard, ServiceMonitor/PodMonitor and PrometheusRule: off where they need the Prometheus
Operator's CRDs, and every metric a dashboard panel or an alert reads is one a Strata component exports (a
renamed metric fails here, not on a blank panel in production)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from chart_render import CHART, Chart, Objects
from prometheus_client import CollectorRegistry

from strata_operator.runtime.metrics import Metrics
from strata_scheduler.demand import DemandRecorder
from strata_scheduler.metrics import ExtenderMetrics
from strata_workloads.telemetry import TrainMetrics

DASHBOARD = json.loads((CHART / "files" / "strata-dashboard.json").read_text())
MONITORING = ["--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.prometheusRule.enabled=true"]
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",), "summary": ("",)}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "le"}


def exported() -> set[str]:
    """Every series name the operator, the extender (with its demand recorder) and a training process export."""
    extender = ExtenderMetrics(lambda: {})
    registries = [Metrics().registry, extender.registry, TrainMetrics(port=0).registry]
    demand = CollectorRegistry()
    DemandRecorder(None, None, demand, threading.Event())  # type: ignore[arg-type]  # its gauge only
    registries.append(demand)
    names = set()
    for registry in registries:
        for family in registry.collect():
            names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    expr = re.sub(r'"[^"]*"', "", expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", expr))
    return {w for w in words if w not in PROMQL_WORDS and not w.startswith("__")}


def dashboard_exprs() -> Iterator[str]:
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            yield target["expr"]


def rules(objects: Objects) -> list[dict[str, Any]]:
    return [rule for group in objects[("PrometheusRule", "rel")]["spec"]["groups"] for rule in group["rules"]]


def test_the_dashboard_ships_as_a_configmap_grafana_loads(chart: Chart) -> None:
    configmap = chart.render()[("ConfigMap", "rel-dashboard")]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["strata.json"]) == DASHBOARD
    titles = " / ".join(panel["title"] for panel in DASHBOARD["panels"]).lower()
    for topic in ("queue", "admitted gpus per pool", "cost per hour", "forecast band vs demand", "extender latency"):
        assert topic in titles, topic
    for topic in ("restarts", "steps/s"):
        assert topic in titles, topic
    assert ("ConfigMap", "rel-dashboard") not in chart.render("--set", "monitoring.dashboard.enabled=false")


def test_every_metric_a_panel_reads_is_exported() -> None:
    names = exported()
    missing = {(expr, name) for expr in dashboard_exprs() for name in metric_names(expr) if name not in names}
    assert missing == set()
    assert "strata_train_steps_total" in metric_names(" ".join(dashboard_exprs()))


def test_the_prometheus_operator_objects_are_off_by_default(chart: Chart) -> None:
    kinds = {kind for kind, _ in chart.render()}
    assert kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"} == set()


def test_every_alert_reads_exported_metrics_and_has_its_threshold(chart: Chart) -> None:
    objects = chart.render(*MONITORING, "--set", "monitoring.prometheusRule.queuedTooLongSeconds=900")
    found = {rule["alert"]: rule for rule in rules(objects)}
    assert set(found) == {
        "StrataJobQueuedTooLong",
        "StrataJobsRestarting",
        "StrataComponentRestarting",
        "StrataExtenderErrors",
        "StrataExtenderBadRequests",
        "StrataForecastStale",
    }
    assert found["StrataJobQueuedTooLong"]["expr"].endswith("> 900")
    names = exported()
    for name, rule in found.items():
        assert metric_names(rule["expr"]) <= names, name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"], name


def test_the_service_monitor_scrapes_the_operator_and_extender_services(chart: Chart) -> None:
    objects = chart.render(*MONITORING)
    monitor = objects[("ServiceMonitor", "rel")]["spec"]
    services = [obj for (kind, _), obj in objects.items() if kind == "Service"]
    selected = [
        s
        for s in services
        if all(s["metadata"]["labels"].get(k) == v for k, v in monitor["selector"]["matchLabels"].items())
    ]
    ports = {p["name"] for s in selected for p in s["spec"]["ports"]}
    assert {e["port"] for e in monitor["endpoints"]} == {"metrics", "http"} <= ports
    assert {s["metadata"]["name"] for s in selected} == {"rel-operator", "rel-extender"}
    workers = objects[("PodMonitor", "rel-workers")]["spec"]
    assert workers["namespaceSelector"] == {"any": True}
    scoped = chart.render(*MONITORING, "--set-json", 'operator.namespaces=["team-a"]')
    assert scoped[("PodMonitor", "rel-workers")]["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}


@pytest.mark.parametrize("expr", list(dashboard_exprs()))
def test_dashboard_queries_use_only_grafanas_rate_interval(expr: str) -> None:
    # the cluster test evaluates them with $__rate_interval replaced; any other variable would stay unresolved
    assert set(re.findall(r"\$\w+", expr)) <= {"$__rate_interval"}
