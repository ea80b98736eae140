"""The local cluster is real: the real scheduler binds GPU pods, controllers reconcile, RBAC refuses, and a
node's disappearance (a spot reclaim) takes its pods with it."""

from __future__ import annotations

from typing import Any

import pytest
from cluster_support import ClusterHandle, eventually
from kubernetes import client
from kubernetes.client.exceptions import ApiException

import strata_api as api
from strata_api.fleet import FleetPool
from strata_dev.fleet import node_manifest


def gpu_pod(name: str, resource: str, count: int, tolerate_spot: bool = False) -> dict[str, Any]:
    tolerations = [{"key": resource, "operator": "Exists", "effect": "NoSchedule"}]
    if tolerate_spot:
        tolerations.append({"key": api.TAINT_SPOT, "operator": "Exists", "effect": "NoSchedule"})
    return {
        "metadata": {"name": name},
        "spec": {
            "containers": [
                {"name": "main", "image": "registry.invalid/worker:1", "resources": {"limits": {resource: str(count)}}}
            ],
            "tolerations": tolerations,
        },
    }


def running_on(core: Any, namespace: str, name: str) -> client.V1Node:
    def probe() -> str | None:
        pod = core.read_namespaced_pod(name, namespace)
        return pod.spec.node_name if pod.status.phase == "Running" else None

    node_name = eventually(probe, what=f"pod {name} Running")
    node: client.V1Node = core.read_node(node_name)
    return node


def test_h100_pod_is_bound_by_the_real_scheduler_and_runs(cluster: ClusterHandle, namespace: str) -> None:
    core = cluster.core()
    core.create_namespaced_pod(namespace, gpu_pod("trainer", api.NVIDIA_GPU, 8))
    node = running_on(core, namespace, "trainer")
    assert api.gpu_type_of(node.metadata.labels) is api.GPUType.H100
    # it tolerates the GPU taint but not spot reclaims, so only reserved H100 capacity fits
    assert node.metadata.labels[api.NODE_CAPACITY_TYPE] == "reserved"
    binding = [e for e in core.list_namespaced_event(namespace).items if e.reason == "Scheduled"]
    assert binding, "no Scheduled event"
    core.delete_namespaced_pod("trainer", namespace, grace_period_seconds=0)


def test_amd_pod_lands_on_an_mi300x_node(cluster: ClusterHandle, namespace: str) -> None:
    core = cluster.core()
    core.create_namespaced_pod(namespace, gpu_pod("amd", api.AMD_GPU, 4, tolerate_spot=True))
    node = running_on(core, namespace, "amd")
    assert api.gpu_type_of(node.metadata.labels) is api.GPUType.MI300X
    assert node.metadata.labels[api.NODE_INSTANCE_TYPE] == "Standard_ND96isr_MI300X_v5"
    core.delete_namespaced_pod("amd", namespace, grace_period_seconds=0)


def test_pod_wanting_more_gpus_than_any_node_stays_pending_with_the_reason(
    cluster: ClusterHandle, namespace: str
) -> None:
    core = cluster.core()
    core.create_namespaced_pod(namespace, gpu_pod("too-big", api.NVIDIA_GPU, 16, tolerate_spot=True))

    def failed_scheduling() -> str | None:
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=too-big").items
        return next((e.message for e in events if e.reason == "FailedScheduling"), None)

    message = eventually(failed_scheduling, what="a FailedScheduling event")
    assert "Insufficient nvidia.com/gpu" in message
    assert core.read_namespaced_pod("too-big", namespace).status.phase == "Pending"


def test_deployment_gets_replicaset_and_pods_and_deleting_it_collects_them(
    cluster: ClusterHandle, namespace: str
) -> None:
    apps = client.AppsV1Api(cluster.api_client())
    core = cluster.core()
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
                },
            },
        },
    )

    def running_pods() -> list[Any] | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
        running = [p for p in pods if p.status.phase == "Running"]
        return running if len(running) == 3 else None

    pods = eventually(running_pods, what="3 running pods of the Deployment")
    replica_sets = apps.list_namespaced_replica_set(namespace).items
    assert len(replica_sets) == 1
    assert {p.metadata.owner_references[0].name for p in pods} == {replica_sets[0].metadata.name}
    assert all(api.gpu_type_of(core.read_node(p.spec.node_name).metadata.labels) is None for p in pods)

    apps.delete_namespaced_deployment("web", namespace, propagation_policy="Background")
    eventually(lambda: not apps.list_namespaced_replica_set(namespace).items, what="the ReplicaSet collected")
    eventually(lambda: not core.list_namespaced_pod(namespace).items, what="the pods collected")


def test_service_account_without_rights_is_refused_by_rbac(cluster: ClusterHandle, namespace: str) -> None:
    core = cluster.core()
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    admin = cluster.api_client().configuration
    configuration = client.Configuration(host=admin.host, api_key={"authorization": f"Bearer {token}"})
    configuration.ssl_ca_cert = admin.ssl_ca_cert
    as_nobody = client.CoreV1Api(client.ApiClient(configuration))
    with pytest.raises(ApiException) as refused:
        as_nobody.list_namespaced_pod(namespace)
    assert refused.value.status == 403
    assert f"system:serviceaccount:{namespace}:nobody" in refused.value.body


def test_deleting_a_node_evicts_its_pods_like_a_spot_reclaim(cluster: ClusterHandle, namespace: str) -> None:
    core = cluster.core()
    node = node_manifest(FleetPool("reclaim", "H100", api.CapacityType.SPOT, 1, "us-east-1b"), 0)
    node["metadata"]["name"] = name = f"reclaim-{namespace[-6:]}"
    node["metadata"]["labels"]["kubernetes.io/hostname"] = name
    core.create_node(node)
    try:
        pod = gpu_pod("victim", api.NVIDIA_GPU, 8, tolerate_spot=True)
        pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": name}
        core.create_namespaced_pod(namespace, pod)
        assert running_on(core, namespace, "victim").metadata.name == name
    finally:
        core.delete_node(name)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("victim", namespace)
        except ApiException as err:
            return err.status == 404
        return False

    # the pod garbage collector removes pods bound to a node that no longer exists (after a 40 s quarantine)
    eventually(gone, timeout_s=150, what="the pod of the deleted node to be removed")
