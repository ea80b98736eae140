"""The chart's NetworkPolicy for the extender admits exactly the chart's own kube-scheduler and operator (and the
peers configured for /metrics), on the extender's port; the API server accepts it as rendered.

Whether packets are dropped is the CNI's business (the local control plane has none that enforces policies), so
this checks what the chart controls: the policy selects the extender's pods, and its peers select the pods the
chart's workloads actually run with, so a renamed label cannot silently lock kube-scheduler out.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_support import ClusterHandle

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[3] / "charts" / "strata"
PROMETHEUS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


def render(cluster: ClusterHandle, *args: str) -> dict[tuple[str, str], dict[str, Any]]:
    proc = subprocess.run(
        [
            str(cluster.bin_dir / "helm"),
            "template",
            "rel",
            str(CHART),
            "-n",
            "default",
            "--kube-version",
            "1.36.3",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(proc.stdout) if doc}


def pod_labels(objects: dict[tuple[str, str], dict[str, Any]], kind: str, name: str) -> dict[str, str]:
    labels: dict[str, str] = objects[(kind, name)]["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector["matchLabels"].items())


def test_the_extender_admits_only_the_charts_scheduler_operator_and_prometheus(cluster: ClusterHandle) -> None:
    objects = render(cluster, "--set-json", f"extender.networkPolicy.metricsFrom=[{json.dumps(PROMETHEUS)}]")
    policy = objects[("NetworkPolicy", "rel-extender")]
    extender = pod_labels(objects, "Deployment", "rel-extender")
    assert selects(policy["spec"]["podSelector"], extender)
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    port = objects[("Deployment", "rel-extender")]["spec"]["template"]["spec"]["containers"][0]["ports"][0]
    assert rule["ports"] == [{"protocol": "TCP", "port": port["containerPort"]}]
    scheduler, operator, prometheus = rule["from"]
    assert selects(scheduler["podSelector"], pod_labels(objects, "Deployment", "rel-scheduler"))
    assert selects(operator["podSelector"], pod_labels(objects, "StatefulSet", "rel-operator"))
    assert prometheus == PROMETHEUS
    for peer in (scheduler, operator):  # the chart's own pods, not whatever shares a name in the namespace
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "rel"
        assert not selects(peer["podSelector"], extender)
    applied = cluster.kubectl(
        "apply", "--dry-run=server", "-n", "default", "-f", "-", "-o", "json", input=yaml.safe_dump(policy)
    )
    assert json.loads(applied)["spec"]["ingress"] == policy["spec"]["ingress"]


def test_without_the_charts_scheduler_only_the_operator_and_extra_peers_are_admitted(cluster: ClusterHandle) -> None:
    own = {"podSelector": {"matchLabels": {"component": "kube-scheduler"}}, "namespaceSelector": {}}
    objects = render(
        cluster,
        "--set",
        "scheduler.enabled=false",
        "--set-json",
        f"extender.networkPolicy.extraFrom=[{json.dumps(own)}]",
    )
    (rule,) = objects[("NetworkPolicy", "rel-extender")]["spec"]["ingress"]
    assert [peer["podSelector"]["matchLabels"].get("app.kubernetes.io/name") for peer in rule["from"]] == [
        "strata-operator",
        None,
    ]
    assert rule["from"][1] == own


def test_the_policy_can_be_switched_off(cluster: ClusterHandle) -> None:
    objects = render(cluster, "--set", "extender.networkPolicy.enabled=false")
    assert not [key for key in objects if key[0] == "NetworkPolicy"]
