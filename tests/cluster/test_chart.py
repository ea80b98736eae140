"""The Helm chart installs, and what it grants is exactly enough: the extender and a real kube-scheduler, each
run with its chart ServiceAccount's own token and the chart's rendered configuration, place a GPU pod."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_support import ClusterHandle, eventually, service_account_kubeconfig

import strata_api as api
from strata_api.catalog import load_catalog
from strata_dev.cluster import free_port, run_kube_scheduler
from strata_scheduler.service import ExtenderService, Parts
from strata_scheduler.settings import Settings

CHART = Path(__file__).resolve().parents[2] / "charts" / "strata"


def helm(cluster: ClusterHandle, *args: str) -> str:
    proc = subprocess.run(
        [str(cluster.bin_dir / "helm"), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"helm {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@pytest.fixture
def release(cluster: ClusterHandle, namespace: str) -> Iterator[str]:
    name = f"s{namespace[-6:]}"
    helm(cluster, "install", name, str(CHART), "-n", namespace, "--wait", "--timeout", "120s")
    try:
        yield name
    finally:
        helm(cluster, "uninstall", name, "-n", namespace, "--wait")


def can_i(cluster: ClusterHandle, who: str, verb: str, resource: str) -> bool:
    answer = cluster.kubectl("auth", "can-i", verb, resource, f"--as={who}", check=False).strip()
    return answer == "yes"


def test_chart_installs_crds_and_ready_workloads(cluster: ClusterHandle, namespace: str, release: str) -> None:
    for crd in ("trainingjobs.strata.dev", "resourcepools.strata.dev", "clusterkopfpeerings.kopf.dev"):
        assert "True" in cluster.kubectl(
            "get", "crd", crd, "-o", "jsonpath={.status.conditions[?(@.type=='Established')].status}"
        )
    # `helm install --wait` returned, so these report ready replicas; check the shape users rely on
    operator = yaml.safe_load(
        cluster.kubectl("get", "statefulset", f"{release}-operator", "-n", namespace, "-o", "yaml")
    )
    assert operator["status"]["readyReplicas"] == 2
    env = operator["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[0]["name"] == "STRATA_OPERATOR_PRIORITY"  # distinct kopf priorities: equal ones freeze both
    config = yaml.safe_load(
        yaml.safe_load(
            cluster.kubectl("get", "configmap", f"{release}-scheduler-config", "-n", namespace, "-o", "yaml")
        )["data"]["config.yaml"]
    )
    assert config["extenders"][0]["urlPrefix"] == f"http://{release}-extender.{namespace}.svc:8888"
    assert config["profiles"][0]["schedulerName"] == api.SCHEDULER_NAME


def test_operator_identity_has_the_rights_it_needs_and_no_more(
    cluster: ClusterHandle, namespace: str, release: str
) -> None:
    who = f"system:serviceaccount:{namespace}:{release}-operator"
    needed = [
        ("patch", "trainingjobs.strata.dev/status"),
        ("watch", "resourcepools.strata.dev"),
        ("create", "pods"),
        ("delete", "pods"),
        ("create", "services"),
        ("patch", "pods"),
        ("create", "serviceaccounts"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
        ("watch", "nodes"),
        ("create", "events"),
        ("patch", "clusterkopfpeerings.kopf.dev"),
    ]
    assert [n for n in needed if not can_i(cluster, who, *n)] == []
    refused = [("get", "secrets"), ("delete", "nodes"), ("create", "clusterrolebindings"), ("delete", "trainingjobs")]
    assert [r for r in refused if can_i(cluster, who, *r)] == []


def test_chart_identities_and_config_place_a_gpu_pod(
    cluster: ClusterHandle, namespace: str, release: str, tmp_path: Path
) -> None:
    extender_kubeconfig = service_account_kubeconfig(cluster, namespace, f"{release}-extender", tmp_path / "ext")
    settings = Settings(port=free_port(), kubeconfig=str(extender_kubeconfig), store=tmp_path / "demand.sqlite")
    catalog_text = yaml.safe_load(
        cluster.kubectl("get", "configmap", f"{release}-catalog", "-n", namespace, "-o", "yaml")
    )["data"]["catalog.yaml"]
    (tmp_path / "catalog.yaml").write_text(catalog_text)
    service = ExtenderService(settings, load_catalog(tmp_path / "catalog.yaml"), Parts(record=False, forecast=False))
    service.start()
    scheduler = None
    try:
        # the cache syncs only if the chart's ClusterRole lets it list and watch everything it needs
        eventually(lambda: service.state.ready, 60, "the extender's cache to sync with the chart's rights")
        rendered = yaml.safe_load(
            yaml.safe_load(
                cluster.kubectl("get", "configmap", f"{release}-scheduler-config", "-n", namespace, "-o", "yaml")
            )["data"]["config.yaml"]
        )
        rendered["extenders"][0]["urlPrefix"] = service.url  # the in-cluster Service is not reachable from here
        (tmp_path / "scheduler.yaml").write_text(yaml.safe_dump(rendered))
        scheduler_kubeconfig = service_account_kubeconfig(cluster, namespace, f"{release}-scheduler", tmp_path / "s")
        scheduler = run_kube_scheduler(
            cluster.bin_dir, scheduler_kubeconfig, tmp_path / "scheduler.yaml", tmp_path / "ks.log", leader_elect=True
        )
        core = cluster.core()
        core.create_namespaced_pod(namespace, gpu_pod())

        def bound() -> str | None:
            node: str | None = core.read_namespaced_pod("worker", namespace).spec.node_name
            return node

        node = eventually(bound, 90, "the chart's scheduler to bind the pod")
        assert api.gpu_type_of(core.read_node(node).metadata.labels) is api.GPUType.H100
        # it led through its own lease, which only the chart's Role lets it hold
        lease = client_lease(cluster, f"{release}-scheduler")
        assert lease.spec.holder_identity
    finally:
        if scheduler is not None:
            scheduler.terminate()
            scheduler.wait(10)
        service.stop()


def gpu_pod() -> dict[str, Any]:
    return {
        "metadata": {"name": "worker", "labels": {api.LABEL_JOB: "chart-check", api.LABEL_PRIORITY: "10"}},
        "spec": {
            "schedulerName": api.SCHEDULER_NAME,
            "containers": [
                {"name": "w", "image": "registry.invalid/w:1", "resources": {"limits": {api.NVIDIA_GPU: "8"}}}
            ],
            "tolerations": [{"key": api.NVIDIA_GPU, "operator": "Exists", "effect": "NoSchedule"}],
        },
    }


def client_lease(cluster: ClusterHandle, name: str) -> Any:
    from kubernetes import client

    return client.CoordinationV1Api(cluster.api_client()).read_namespaced_lease(name, "kube-system")
