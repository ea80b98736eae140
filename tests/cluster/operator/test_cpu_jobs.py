"""A CPU TrainingJob end to end on the real control plane: admitted on its pool's CPU quota, its pods created
gated and ungated together, placed by a real kube-scheduler running the shipped strata-scheduler profile (with
the extender, which CPU pods never need) onto the fleet's kwok CPU nodes, and Succeeded once its workers exit 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ClusterHandle, eventually, running_extender
from kubernetes import watch
from operator_harness import OperatorProcess, Strata
from operator_manifests import a_job

import strata_api as api

KWOK_NODE = "kwok.x-k8s.io/node"


@pytest.fixture(scope="module")
def strata_kube_scheduler(crds: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The shipped strata-scheduler kube-scheduler, pointed at an extender in this process; yields its log."""
    from strata_dev.stack import run_strata_scheduler

    folder = tmp_path_factory.mktemp("strata-kube-scheduler")
    with running_extender(crds.kubeconfig, folder / "demand.sqlite") as extender:
        log = folder / "kube-scheduler.log"
        process = run_strata_scheduler(crds.bin_dir, crds.kubeconfig, extender.url, log)
        try:
            yield log
        finally:
            process.terminate()
            process.wait(15)


@pytest.fixture
def operator_on_strata_scheduler(
    strata_kube_scheduler: Path, crds: ClusterHandle, namespace: str, tmp_path: Path
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(crds, tmp_path, (namespace,), "--standalone", "--scheduler-name", api.SCHEDULER_NAME)
    yield process.start()
    process.stop()


def a_cpu_job(name: str, pool: str, workers: int = 2, cpu: str = "1") -> dict[str, Any]:
    body = a_job(name, pool, data=workers, tensor=1)
    body["spec"]["resources"] = {"gpuType": "CPU", "workers": workers, "cpuPerWorker": cpu, "memoryPerWorker": "1Gi"}
    return body


def pod_history(strata: Strata, since: str) -> dict[str, list[tuple[bool, str | None]]]:
    """Every state each pod of the namespace went through since ``since`` (a resourceVersion): (gated, node)."""
    history: dict[str, list[tuple[bool, str | None]]] = {}
    stream = watch.Watch().stream(
        strata.core.list_namespaced_pod, strata.namespace, resource_version=since, timeout_seconds=3
    )
    for event in stream:
        pod = event["object"]
        history.setdefault(pod.metadata.name, []).append((bool(pod.spec.scheduling_gates), pod.spec.node_name))
    return history


def test_a_cpu_job_is_admitted_on_cpu_quota_gated_then_placed_on_cpu_nodes_and_succeeds(
    operator_on_strata_scheduler: OperatorProcess, strata: Strata
) -> None:
    pool = strata.pool("cpu", maxGPUs=0, maxCPUs="3", capacityTypes=["on-demand"])
    since = strata.core.list_namespaced_pod(strata.namespace).metadata.resource_version
    strata.submit(a_cpu_job("tiny", pool))

    status = strata.wait_phase("tiny", "Running")
    assert status["placement"]["gpuType"] == "CPU"
    assert status["workers"] == {"ready": 2, "total": 2}
    pods = strata.pods("tiny")
    assert [p.metadata.name for p in pods] == ["tiny-worker-0", "tiny-worker-1"]
    for index, pod in enumerate(pods):
        assert pod.spec.scheduler_name == api.SCHEDULER_NAME
        assert not pod.spec.scheduling_gates
        assert pod.spec.containers[0].resources.requests == {"cpu": "1", "memory": "1Gi"}
        assert pod.spec.containers[0].resources.limits == {"cpu": "1", "memory": "1Gi"}
        assert not pod.spec.tolerations or all(t.key not in api.GPU_RESOURCES for t in pod.spec.tolerations)
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        assert (env["WORLD_SIZE"], env["RANK"], env["LOCAL_WORLD_SIZE"]) == ("2", str(index), "1")
        node = strata.core.read_node(pod.spec.node_name)
        assert api.gpu_type_of(node.metadata.labels) is None, f"{pod.spec.node_name} is a GPU node"
        assert node.metadata.annotations.get(KWOK_NODE) == "fake"
    assert sorted(status["placement"]["nodes"]) == sorted({p.spec.node_name for p in pods})
    # each pod was created gated and bound only after its gate was lifted, by the strata-scheduler profile
    for name, states in pod_history(strata, since).items():
        assert states[0] == (True, None), f"{name} was created as {states[0]}"
        assert all(node is None for gated, node in states if gated), f"{name} was bound while gated: {states}"
    eventually(lambda: pool_cpus(strata, pool) == "2", 20, "the pool to count the gang's 2 CPUs")

    # a second gang of 2 CPUs does not fit the 1 CPU left of the quota: it waits, holding no pods
    strata.submit(a_cpu_job("second", pool))
    eventually(lambda: strata.status("second").get("reason") == "WaitingForQuota", 30, "reason WaitingForQuota")
    assert "needs 2 CPUs; pool" in strata.status("second")["message"]
    assert strata.pods("second") == []

    strata.exit_workers("tiny", 0)
    done = strata.wait_phase("tiny", "Succeeded")
    assert done["completionTime"]
    assert "AllWorkersSucceeded" in strata.events("tiny")
    strata.wait_phase("second", "Running")
    assert {p.spec.node_name for p in strata.live_pods("second")} <= set(cpu_nodes(strata))
    strata.exit_workers("second", 0)
    strata.wait_phase("second", "Succeeded")
    eventually(lambda: pool_cpus(strata, pool) == "0", 20, "the pool to count no CPUs once both jobs finished")


def test_a_pool_without_cpu_quota_keeps_a_cpu_job_queued_saying_why(
    operator_on_strata_scheduler: OperatorProcess, strata: Strata
) -> None:
    pool = strata.pool("gpu-only", maxGPUs=64)
    strata.submit(a_cpu_job("no-quota", pool))
    eventually(lambda: strata.status("no-quota").get("reason") == "NoCPUQuota", 30, "reason NoCPUQuota")
    assert strata.status("no-quota")["message"] == f"pool {pool} admits no CPU jobs: its spec.maxCPUs is unset"
    assert strata.pods("no-quota") == []


def cpu_nodes(strata: Strata) -> list[str]:
    nodes = strata.core.list_node().items
    return [n.metadata.name for n in nodes if api.gpu_type_of(n.metadata.labels or {}) is None]


def pool_cpus(strata: Strata, pool: str) -> str | None:
    """The pool's ``status.cpusInUse``."""
    body = strata.custom.get_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, pool)
    return (body.get("status") or {}).get("cpusInUse")
