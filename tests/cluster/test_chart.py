"""The Helm chart installs, and what it grants is exactly enough: the extender and a real kube-scheduler, each
run with its chart ServiceAccount's own token and the chart's rendered configuration, place a GPU pod; an operator
installed for one namespace may act only there, and runs a gang there as that identity, answering its liveness
probe."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_support import CHART, ClusterHandle, eventually, helm, service_account_kubeconfig
from kubernetes import client

import strata_api as api
from strata_api.catalog import load_catalog
from strata_dev.cluster import free_port, run_kube_scheduler
from strata_scheduler.service import ExtenderService, Parts
from strata_scheduler.settings import Settings


@pytest.fixture
def release(cluster: ClusterHandle, namespace: str) -> Iterator[str]:
    name = f"s{namespace[-6:]}"
    helm(cluster, "install", name, str(CHART), "-n", namespace, "--wait", "--timeout", "120s")
    try:
        yield name
    finally:
        helm(cluster, "uninstall", name, "-n", namespace, "--wait")


def can_i(cluster: ClusterHandle, who: str, verb: str, resource: str, namespace: str = "default") -> bool:
    answer = cluster.kubectl("auth", "can-i", verb, resource, f"--as={who}", "-n", namespace, check=False).strip()
    return answer == "yes"


@pytest.fixture
def scoped_release(cluster: ClusterHandle, namespace: str) -> Iterator[str]:
    """The operator alone (no extender, no kube-scheduler), serving only the test's namespace."""
    name = f"n{namespace[-6:]}"
    values = ["--set-json", f'operator.namespaces=["{namespace}"]', "--set", "extender.enabled=false"]
    values += ["--set", "scheduler.enabled=false"]
    helm(cluster, "install", name, str(CHART), "-n", namespace, *values, "--wait", "--timeout", "120s")
    try:
        yield name
    finally:
        helm(cluster, "uninstall", name, "-n", namespace, "--wait")


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
    by_name = {e["name"]: e for e in env}
    assert "STRATA_OPERATOR_PRIORITY" in by_name  # distinct kopf priorities: equal ones freeze both
    assert by_name["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # kopf's peering identity
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


def test_an_operator_serving_one_namespace_may_act_only_there(
    cluster: ClusterHandle, namespace: str, scoped_release: str
) -> None:
    who = f"system:serviceaccount:{namespace}:{scoped_release}-operator"
    in_served = [
        ("create", "pods"),
        ("patch", "pods"),
        ("create", "services"),
        ("create", "serviceaccounts"),
        ("create", "roles.rbac.authorization.k8s.io"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
        ("patch", "trainingjobs.strata.dev/status"),
        ("create", "events"),
        ("create", "kopfpeerings.kopf.dev"),
    ]
    assert [r for r in in_served if not can_i(cluster, who, *r, namespace=namespace)] == []
    # anywhere else: none of it, so a scoped operator cannot make pods or grant rights outside its namespaces
    assert [r for r in in_served if can_i(cluster, who, *r, namespace="default")] == []
    cluster_wide = [("watch", "nodes"), ("patch", "resourcepools.strata.dev/status"), ("watch", "namespaces")]
    assert [r for r in cluster_wide if not can_i(cluster, who, *r)] == []
    refused = [("create", "clusterkopfpeerings.kopf.dev"), ("get", "secrets"), ("delete", "trainingjobs.strata.dev")]
    assert [r for r in refused if can_i(cluster, who, *r, namespace=namespace)] == []


def test_the_scoped_chart_identity_runs_the_operator_and_its_liveness_endpoint(
    cluster: ClusterHandle, namespace: str, scoped_release: str, tmp_path: Path
) -> None:
    """The real operator, as the scoped release's ServiceAccount with the chart's flags for it, starts (kopf's
    peering in the namespace), answers the liveness probe's /healthz, and runs a job's gang there."""
    kubeconfig = service_account_kubeconfig(cluster, namespace, f"{scoped_release}-operator", tmp_path / "op")
    port = free_port()
    args = [sys.executable, "-m", "strata_operator", f"--namespaces={namespace}", f"--liveness-port={port}"]
    args += ["--metrics-port=0", "--scheduler-name=default-scheduler", f"--peering-name={scoped_release}"]
    custom = client.CustomObjectsApi(cluster.api_client())
    pool = f"{scoped_release}-pool"
    body = {"apiVersion": api.API_VERSION, "kind": api.RESOURCE_POOL, "metadata": {"name": pool}}
    custom.create_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, {**body, "spec": {"maxGPUs": 64}})
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    with (tmp_path / "operator.log").open("wb") as log:
        operator = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        eventually(lambda: healthz(port), 120, "the operator's liveness endpoint to answer 200")
        custom.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.TRAINING_JOBS, a_job(pool))
        core = cluster.core()

        def workers() -> list[Any] | None:
            pods = core.list_namespaced_pod(namespace, label_selector=f"{api.LABEL_JOB}=scoped").items
            return pods or None

        eventually(workers, 90, "the operator, with the namespace's Role only, to create the job's workers")
        assert operator.poll() is None, (tmp_path / "operator.log").read_text()[-3000:]
    finally:
        operator.terminate()
        operator.wait(20)
        custom.delete_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, pool)


def healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def a_job(pool: str) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.TRAINING_JOB,
        "metadata": {"name": "scoped"},
        "spec": {
            "pool": pool,
            "workload": {"image": "registry.invalid/strata/workloads:test"},
            "parallelism": {"data": 1, "tensor": 8, "pipeline": 1},
            "training": {"globalBatchSize": 8, "steps": 1000},
            "resources": {"gpus": 8, "gpusPerWorker": 8, "gpuType": "H100"},
        },
    }


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
