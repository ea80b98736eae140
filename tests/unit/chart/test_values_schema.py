"""values.schema.json: helm refuses a misspelt value or a wrong type at install, naming the value, instead of
rendering something Kubernetes refuses later (or worse, accepts); every value the chart ships passes it."""

from __future__ import annotations

import json

import pytest
from chart_render import CHART, Chart

PROMETHEUS_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}

ACCEPTED = {
    "defaults": [],
    # the e2e tier's and the CI workflow's install (tests/support/e2e_support.py, .github/workflows/e2e.yaml)
    "e2e install": [
        "--set", "operator.replicas=1", "--set", "imagePullPolicy=Never",
        "--set", "operator.image.repository=localhost/strata-operator", "--set", "operator.image.tag=e2e",
        "--set", "scheduler.image.repository=localhost:5000/strata-kube-scheduler",
        "--set", "scheduler.image.tag=3f9a1c2b7d4e", "--set-string", "nodeSelector.strata\\.dev/node=real",
    ],
    "mutual TLS": ["--set", "extender.tls.secretName=t", "--set", "scheduler.extenderClientSecretName=c"],
    "monitoring on, with TLS": [
        "--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.prometheusRule.enabled=true",
        "--set-json", 'monitoring.serviceMonitor.labels={"release":"kube-prometheus-stack"}',
        "--set", "extender.tls.secretName=t", "--set", "scheduler.extenderClientSecretName=c",
    ],
    "metrics peers": ["--set-json", f"extender.networkPolicy.metricsFrom=[{json.dumps(PROMETHEUS_PEER)}]"],
    "namespaces and persistence": [
        "--set-json", 'operator.namespaces=["team-a","team-b"]', "--set", "extender.persistence.enabled=true",
        "--set", "extender.persistence.size=10Gi", "--set", "extender.prometheusURL=http://prometheus:9090",
        "--set-json", 'tolerations=[{"key":"dedicated","operator":"Equal","value":"strata","effect":"NoSchedule"}]',
        "--set", "operator.resources.limits.cpu=2",
    ],
}  # fmt: skip

REFUSED = {
    "a count as a word": (["--set", "operator.replicas=two"], "at '/operator/replicas': got string, want integer"),
    "no replicas": (["--set", "scheduler.replicas=0"], "at '/scheduler/replicas'"),
    "a misspelt value": (["--set", "operator.replica=2"], "additional properties 'replica' not allowed"),
    "an unknown pull policy": (["--set", "imagePullPolicy=Sometimes"], "at '/imagePullPolicy'"),
    "a port out of range": (["--set", "extender.port=70000"], "at '/extender/port'"),
    "a switch as a word": (["--set", "extender.enabled=yes"], "at '/extender/enabled': got string, want boolean"),
    "a namespace that is no DNS label": (["--set-json", 'operator.namespaces=["Team_A"]'], "/operator/namespaces/0"),
    "a size that is no quantity": (["--set", "extender.persistence.size=ten gigs"], "/extender/persistence/size"),
    "a relative scratch path": (["--set", "extender.forecastTmp.path=tmp"], "/extender/forecastTmp/path"),
    "a tag of digits (--set makes it a number)": (["--set", "operator.image.tag=123456"], "/operator/image/tag"),
    "a node label value that is no string": (["--set", "nodeSelector.gpu=true"], "/nodeSelector/gpu"),
    "a URL that is no URL": (["--set", "extender.prometheusURL=prometheus:9090"], "/extender/prometheusURL"),
    "a scrape interval that is no duration": (
        ["--set", "monitoring.serviceMonitor.interval=30"],
        "/monitoring/serviceMonitor/interval",
    ),
    "a misspelt resource stanza": (["--set", "extender.resources.request.cpu=1"], "'request' not allowed"),
}


def test_helm_lint_passes(chart: Chart) -> None:
    proc = chart.helm_run("lint", str(CHART), "--strict", "--kube-version", "1.36.3")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("flags", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_the_values_users_install_with_pass_the_schema(chart: Chart, flags: list[str]) -> None:
    proc = chart.template(*flags)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("flags", "message"), REFUSED.values(), ids=REFUSED.keys())
def test_a_wrong_value_is_refused_naming_it(chart: Chart, flags: list[str], message: str) -> None:
    proc = chart.template(*flags)
    assert proc.returncode != 0, f"rendered with {flags}"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr


def test_the_schema_closes_every_object_of_values_yaml() -> None:
    # a value added to values.yaml without a schema entry is refused by the default render above; this keeps the
    # schema from going open (additionalProperties) where values.yaml has a fixed set of keys
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    for name in ("operator", "extender", "scheduler"):
        assert schema["properties"][name]["additionalProperties"] is False, name
