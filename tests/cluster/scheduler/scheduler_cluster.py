"""Helpers for the scheduler's cluster tests: a test's own GPU nodes, and pods built to land only on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cluster_support import ClusterHandle, eventually

from strata_api import NODE_CAPACITY_TYPE, NODE_INSTANCE_TYPE

TEST_FLEET_LABEL = "strata.dev/test-fleet"


@dataclass
class TestFleet:
    """Nodes made for one test, all labelled with its id; pods built with :meth:`pod` land only on them."""

    __test__ = False  # not a test class, whatever its name

    id: str
    nodes: list[str]

    def pod(self, builder: Any, namespace: str) -> dict[str, Any]:
        pod: dict[str, Any] = builder.build()
        pod["metadata"]["namespace"] = namespace
        pod["metadata"].pop("uid", None)
        pod["spec"]["containers"][0]["image"] = "registry.k8s.io/pause:3.10"
        pod["spec"]["tolerations"] = [{"operator": "Exists"}]
        pod["spec"]["nodeSelector"] = {TEST_FLEET_LABEL: self.id}
        pod["spec"]["terminationGracePeriodSeconds"] = 0
        return pod

    def create(self, cluster: ClusterHandle, namespace: str, builder: Any) -> str:
        pod = self.pod(builder, namespace)
        cluster.core().create_namespaced_pod(namespace, pod)
        name: str = pod["metadata"]["name"]
        return name


def bound_node(cluster: ClusterHandle, namespace: str, name: str, timeout_s: float = 90) -> str:
    core = cluster.core()

    def probe() -> str | None:
        node: str | None = core.read_namespaced_pod(name, namespace).spec.node_name
        return node

    return eventually(probe, timeout_s, f"pod {namespace}/{name} to be bound")


def node_labels(cluster: ClusterHandle, node: str) -> dict[str, str]:
    labels: dict[str, str] = cluster.core().read_node(node).metadata.labels
    return labels


def capacity_of(cluster: ClusterHandle, node: str) -> str:
    return node_labels(cluster, node)[NODE_CAPACITY_TYPE]


def instance_of(cluster: ClusterHandle, node: str) -> str:
    return node_labels(cluster, node)[NODE_INSTANCE_TYPE]
