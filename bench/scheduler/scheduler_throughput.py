"""Real kube-scheduler throughput on 1,000 kwok GPU nodes, with Strata's extender and without it, in one run.

Both runs use the shipped strata-scheduler profile (scheduler/config/kube-scheduler-config.yaml, including
``percentageOfNodesToScore: 100``); the "without" run only drops its ``extenders``. For each run the pods are
created first, while no scheduler serves their schedulerName, then the kube-scheduler is started, so the
figure is scheduling alone: pods bound per second between the first and the last binding.

    .venv/bin/python bench/scheduler/scheduler_throughput.py [--nodes 1000] [--pods 400]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import yaml

from strata_dev.cluster import ClusterSettings, LocalCluster, free_port, run_kube_scheduler
from strata_dev.fleet import create_fleet, load_fleet
from strata_operator import api
from strata_scheduler.catalog import load_catalog
from strata_scheduler.service import ExtenderService, Parts
from strata_scheduler.settings import DEFAULT_CATALOG, Settings

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "scheduler" / "config" / "kube-scheduler-config.yaml"


def gpu_pod(index: int) -> dict[str, Any]:
    resource = api.NVIDIA_GPU if index % 2 == 0 else api.AMD_GPU
    return {
        "metadata": {
            "name": f"w-{index:05d}",
            "labels": {api.LABEL_JOB: f"job-{index // 8}", api.LABEL_PRIORITY: "10"},
            "annotations": {api.ANN_CHECKPOINT_INTERVAL: "1800", api.ANN_EXPECTED_RUNTIME: "36000"},
        },
        "spec": {
            "schedulerName": api.SCHEDULER_NAME,
            "tolerations": [{"operator": "Exists"}],
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "w",
                    "image": "registry.k8s.io/pause:3.10",
                    "resources": {"requests": {resource: "1", "cpu": "1"}, "limits": {resource: "1"}},
                }
            ],
        },
    }


def one_run(core: Any, cluster: LocalCluster, config: dict[str, Any], pods: int, label: str, work: Path) -> float:
    namespace = f"bench-{label}"
    core.create_namespace({"metadata": {"name": namespace}})
    for _ in range(600):  # pods are refused until the namespace's default ServiceAccount exists
        if core.list_namespaced_service_account(namespace).items:
            break
        time.sleep(0.1)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: core.create_namespaced_pod(namespace, gpu_pod(i)), range(pods)))
    path = work / f"{label}.yaml"
    path.write_text(yaml.safe_dump(config))
    process = run_kube_scheduler(cluster.bin_dir, cluster.kubeconfig, path, work / f"{label}.log")
    try:
        first = last = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            # Raw JSON and a field selector: polling must not compete with the extender (same process) for CPU.
            raw = core.list_namespaced_pod(namespace, field_selector="spec.nodeName!=", _preload_content=False)
            bound = len(orjson.loads(raw.data)["items"])
            now = time.monotonic()
            if bound and first is None:
                first = now
            if bound == pods:
                last = now
                break
            time.sleep(0.25)
        if first is None or last is None:
            raise RuntimeError(f"{label}: not every pod was bound in time; see {work / f'{label}.log'}")
        return (pods - 1) / max(last - first, 1e-3)
    finally:
        process.terminate()
        process.wait(30)
        core.delete_namespace(namespace)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=400)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="strata-sched-bench-"))
    with LocalCluster(ClusterSettings()) as cluster:
        core = cluster_core(cluster)
        started = time.monotonic()
        create_fleet(core, load_fleet().scaled(args.nodes), wait_ready_s=600)
        print(f"fleet of {args.nodes} nodes ready in {time.monotonic() - started:.0f} s", flush=True)
        settings = Settings(port=free_port(), kubeconfig=str(cluster.kubeconfig), store=work / "demand.sqlite")
        service = ExtenderService(settings, load_catalog(DEFAULT_CATALOG), Parts(record=False, forecast=False))
        service.start()
        try:
            while not service.state.ready:
                time.sleep(0.2)
            with_extender = yaml.safe_load(SHIPPED_CONFIG.read_text())
            with_extender["extenders"][0]["urlPrefix"] = service.url
            without = {key: value for key, value in with_extender.items() if key != "extenders"}
            plain = one_run(core, cluster, without, args.pods, "without", work)
            print(f"without extender: {plain:.1f} pods/s", flush=True)
            extended = one_run(core, cluster, with_extender, args.pods, "with", work)
            print(f"with extender: {extended:.1f} pods/s", flush=True)
            print(f"| {args.nodes} | {args.pods} | {plain:.1f} | {extended:.1f} | {extended / plain:.2f} |")
        finally:
            service.stop()


def cluster_core(cluster: LocalCluster) -> Any:
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))


if __name__ == "__main__":
    main()
