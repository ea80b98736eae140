"""The chart's RBAC grants the operator what it does only where it does it, and its PodDisruptionBudgets keep the
leader-elected components serving through a drain without ever blocking one."""

from __future__ import annotations

from typing import Any

import pytest
from chart_render import NAMESPACE, Chart, Objects

NAMESPACED = {
    "pods",
    "services",
    "serviceaccounts",
    "roles",
    "rolebindings",
    "events",
    "trainingjobs",
    "configmaps",  # the routers' ConfigMaps (the autoscaler's lead)
}

Grant = tuple[str, str, str]
"""(API group, resource, verb)."""


def grants(rules: list[dict[str, Any]]) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def resources(rules: list[dict[str, Any]]) -> set[str]:
    return {resource.split("/")[0] for rule in rules for resource in rule["resources"]}


def test_serving_some_namespaces_grants_namespaced_rights_only_there(chart: Chart) -> None:
    objects = chart.render("--set-json", 'operator.namespaces=["team-a","team-b"]')
    cluster_rules = objects[("ClusterRole", "rel-operator")]["rules"]
    assert resources(cluster_rules) & NAMESPACED == set()
    assert resources(cluster_rules) == {"resourcepools", "nodes", "namespaces", "customresourcedefinitions"}
    for namespace in ("team-a", "team-b"):
        role = objects[("Role", f"{namespace}/rel-operator")]
        assert resources(role["rules"]) >= NAMESPACED
        binding = objects[("RoleBinding", f"{namespace}/rel-operator")]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "rel-operator"}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rel-operator", "namespace": NAMESPACE}]
    assert {k for k in objects if k[0] in {"Role", "RoleBinding"} and "operator" in k[1]} == {
        (kind, f"{namespace}/rel-operator") for kind in ("Role", "RoleBinding") for namespace in ("team-a", "team-b")
    }


def test_scoping_keeps_every_right_the_cluster_wide_operator_has(chart: Chart) -> None:
    # the same rights, split: kopf's peering object is the only difference (one per namespace instead of one)
    wide = grants(chart.render()[("ClusterRole", "rel-operator")]["rules"])
    scoped_objects = chart.render("--set-json", 'operator.namespaces=["team-a"]')
    scoped = grants(scoped_objects[("ClusterRole", "rel-operator")]["rules"])
    scoped |= grants(scoped_objects[("Role", "team-a/rel-operator")]["rules"])
    peering = {(g, r, v) for g, r, v in wide | scoped if r.endswith("kopfpeerings")}
    assert {r for _, r, _ in peering & wide} == {"clusterkopfpeerings"}
    assert {r for _, r, _ in peering & scoped} == {"kopfpeerings"}
    assert wide - peering == scoped - peering


def test_the_cluster_wide_operator_has_no_roles(chart: Chart) -> None:
    objects = chart.render()
    assert [k for k in objects if k[0] == "Role" and "operator" in k[1]] == []
    assert resources(objects[("ClusterRole", "rel-operator")]["rules"]) >= NAMESPACED


def budgets(objects: Objects) -> dict[str, dict[str, Any]]:
    return {name: obj["spec"] for (kind, name), obj in objects.items() if kind == "PodDisruptionBudget"}


def pod_labels(objects: Objects, kind: str, name: str) -> dict[str, str]:
    labels: dict[str, str] = objects[(kind, name)]["spec"]["template"]["metadata"]["labels"]
    return labels


def test_default_budgets_keep_one_operator_and_let_the_single_extender_go(chart: Chart) -> None:
    objects = chart.render()
    found = budgets(objects)
    assert set(found) == {"rel-operator", "rel-extender"}  # one kube-scheduler replica by default: no budget
    assert found["rel-operator"]["minAvailable"] == 1
    assert found["rel-extender"]["maxUnavailable"] == 1  # never 0: a drain would wait forever
    assert all(spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow" for spec in found.values())
    workloads = {"rel-operator": "StatefulSet", "rel-extender": "Deployment", "rel-scheduler": "Deployment"}
    for name, spec in found.items():  # each selects its own workload's pods and no other's
        for workload, kind in workloads.items():
            labels = pod_labels(objects, kind, workload)
            selected = all(labels.get(k) == v for k, v in spec["selector"]["matchLabels"].items())
            assert selected == (workload == name), (name, workload)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--set", "operator.replicas=1"], {"rel-extender"}),
        (["--set", "scheduler.replicas=2"], {"rel-operator", "rel-scheduler", "rel-extender"}),
        (["--set", "extender.enabled=false", "--set", "scheduler.enabled=false"], {"rel-operator"}),
        (["--set", "podDisruptionBudgets.enabled=false"], set()),
    ],
    ids=["one operator", "two schedulers", "operator only", "disabled"],
)
def test_a_budget_only_where_a_replica_can_take_over(chart: Chart, flags: list[str], expected: set[str]) -> None:
    found = budgets(chart.render(*flags))
    assert set(found) == expected
    assert all(found[name]["minAvailable"] == 1 for name in expected - {"rel-extender"})
