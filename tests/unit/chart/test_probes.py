"""Every component the chart runs is probed on an endpoint it really serves: a hung operator or kube-scheduler is
restarted, and a kube-scheduler that has not synced is not counted ready."""

from __future__ import annotations

from chart_render import Chart, container, named_port

from strata_operator.main import liveness_endpoint
from strata_operator.settings import OperatorSettings


def test_the_operator_is_probed_on_kopfs_liveness_endpoint_it_is_told_to_serve(chart: Chart) -> None:
    operator = container(chart.render(), "StatefulSet", "rel-operator")
    (flag,) = [a for a in operator["args"] if a.startswith("--liveness-port=")]
    port = named_port(operator, "liveness")
    assert flag == f"--liveness-port={port}"
    # the flag the chart passes is the one the operator reads, and kopf then serves /healthz on that port
    settings = OperatorSettings.from_args([flag], env={})
    assert liveness_endpoint(settings) == f"http://0.0.0.0:{port}/healthz"
    for probe in ("startupProbe", "livenessProbe"):
        assert operator[probe]["httpGet"] == {"path": "/healthz", "port": "liveness"}, probe
    # kopf serves it only after start-up (the first cache sync): the startup probe gives that minutes, not seconds
    startup = operator["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


def test_the_operator_serves_no_liveness_endpoint_unless_asked() -> None:
    # several operators share a host in the cluster tests: a port of its own only when given one
    assert liveness_endpoint(OperatorSettings.from_args([], env={})) is None


def test_the_kube_scheduler_is_ready_only_when_its_readyz_says_so(chart: Chart) -> None:
    scheduler = container(chart.render(), "Deployment", "rel-scheduler")
    assert scheduler["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 10259, "scheme": "HTTPS"}
    assert scheduler["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 10259, "scheme": "HTTPS"}


def test_the_extender_is_probed_over_https_when_it_serves_https(chart: Chart) -> None:
    plain = container(chart.render(), "Deployment", "rel-extender")
    tls = container(
        chart.render("--set", "extender.tls.secretName=ext-tls", "--set", "scheduler.extenderClientSecretName=ks"),
        "Deployment",
        "rel-extender",
    )
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        assert plain[probe]["httpGet"] == {"path": path, "port": "http", "scheme": "HTTP"}
        assert tls[probe]["httpGet"] == {"path": path, "port": "http", "scheme": "HTTPS"}
