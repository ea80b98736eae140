"""Operator throughput on the local control plane (a benchmark, not a test: pytest does not collect it).

    .venv/bin/python tests/cluster/operator/bench_operator.py --jobs 500 --workers 8

1. Starts a local cluster with a fleet big enough for every gang at once (8 GPUs per worker, one worker a node).
2. Raw rate: a plain client (aiohttp, 64 requests in flight) creates the same worker pods the operator would
   (gated, so only creation is measured), then deletes them.
3. Runs ``python -m strata_operator`` and applies all TrainingJobs at once; reports pods created per second,
   time until every job is Running, the ratio to the raw rate, and the operator's CPU time and peak memory.

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client, config

from strata_dev import binaries
from strata_dev.cluster import ClusterSettings, LocalCluster
from strata_dev.fleet import create_fleet, load_fleet
from strata_operator import api
from strata_operator.api import TrainingJob
from strata_operator.kube import Kube, custom_path, pod_path
from strata_operator.pods import build_worker_pods
from strata_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[3]
NAMESPACE = "bench"
POOL = "bench"
IN_FLIGHT = 64


def job_manifest(index: int, workers: int) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.TRAINING_JOB,
        "metadata": {"name": f"job-{index:04d}", "namespace": NAMESPACE},
        "spec": {
            "pool": POOL,
            "workload": {"image": "registry.invalid/strata/workloads:bench"},
            "parallelism": {"data": workers, "tensor": 8},
            "training": {"globalBatchSize": 8 * workers, "steps": 1000},
            "resources": {"gpus": 8 * workers, "gpusPerWorker": 8, "gpuType": "Any"},
        },
    }


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def in_batches(calls: list[Any]) -> None:
    semaphore = asyncio.Semaphore(IN_FLIGHT)

    async def run(call: Any) -> None:
        async with semaphore:
            await call

    await asyncio.gather(*(run(c) for c in calls))


async def raw_rate(kube: Kube, custom: Any, core: Any, jobs: int, workers: int) -> float:
    """Pods per second a plain client reaches creating the operator's exact worker pods (gated: creation only)."""
    pool = api.ResourcePool(POOL, 0, frozenset(api.GPUType), 10**6, None, frozenset({"reserved", "spot"}), False)
    manifests: list[dict[str, Any]] = []
    for i in range(jobs):
        body = custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, NAMESPACE, api.TRAINING_JOBS, job_manifest(i, workers), dry_run="All"
        )  # the API server's defaults, without storing the job
        body["metadata"].update(uid=f"raw-{i}", creationTimestamp="2026-01-01T00:00:00Z")
        body["status"] = {"attempt": 1, "placement": {"gpuType": "H100" if i % 2 else "MI300X"}}  # as admission splits
        for pod in build_worker_pods(TrainingJob.from_body(body), pool, OperatorSettings()):
            pod["metadata"]["name"] = "raw-" + pod["metadata"]["name"]
            pod["metadata"].pop("ownerReferences")
            manifests.append(pod)
    started = time.perf_counter()
    await in_batches([kube.create(pod_path(NAMESPACE), m) for m in manifests])
    elapsed = time.perf_counter() - started
    await delete_all(kube, core, manifests)
    return len(manifests) / elapsed


async def delete_all(kube: Kube, core: Any, manifests: list[dict[str, Any]]) -> None:
    await in_batches([kube.delete(pod_path(NAMESPACE, m["metadata"]["name"]), grace_s=0) for m in manifests])
    while count_pods(core):  # noqa: ASYNC110  (polling the API server is the point)
        await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--timeout-s", type=float, default=1800)
    args = parser.parse_args()
    gang_nodes = args.jobs * args.workers
    fleet = load_fleet().scaled(math.ceil(gang_nodes / 0.8) + 8)  # the default fleet is 80% GPU nodes

    bin_dir = binaries.ensure(quiet=True)
    with LocalCluster(ClusterSettings(api_qps=1000), bin_dir=bin_dir) as cluster:
        api_client = config.new_client_from_config(str(cluster.kubeconfig))
        core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
        fleet_s = create_fleet(core, fleet)
        cluster.kubectl("apply", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/trainingjobs.strata.dev")
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        time.sleep(2)  # the namespace's default ServiceAccount
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
        assert info is not None
        kube = Kube(info)
        raw = asyncio.run(_with_close(kube, raw_rate(kube, custom, core, args.jobs, args.workers)))

        pool = {"apiVersion": api.API_VERSION, "kind": api.RESOURCE_POOL, "metadata": {"name": POOL},
                "spec": {"maxGPUs": 10**6, "capacityTypes": ["spot", "on-demand", "reserved"]}}  # fmt: skip
        custom.create_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, pool)
        log = Path(tempfile.mkdtemp(prefix="strata-bench-")) / "operator.log"
        print(f"operator log: {log}", file=sys.stderr)
        with log.open("wb") as out:
            level = os.environ.get("BENCH_LOG_LEVEL", "WARNING")
            operator = subprocess.Popen(
                [sys.executable, "-m", "strata_operator", "--standalone", "--scheduler-name", "default-scheduler",
                 "--metrics-port", "0", "--log-level", level, "--namespaces", NAMESPACE],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ},
            )  # fmt: skip
        try:
            time.sleep(3)
            cpu0 = proc_cpu_s(operator.pid)
            kube = Kube(info)
            started = time.perf_counter()
            asyncio.run(_with_close(kube, submit(kube, args.jobs, args.workers)))
            results = follow(core, custom, operator.pid, args.jobs * args.workers, args.jobs, started, args.timeout_s)
            results["cpu_s"] = proc_cpu_s(operator.pid) - cpu0
            results.update(phase_times(custom))
        finally:
            operator.terminate()
            operator.wait(30)

    pods = args.jobs * args.workers
    rate = pods / results["all_pods_s"] if results["all_pods_s"] else 0.0
    rows = [
        ("fleet", f"{fleet.size} nodes created in {fleet_s:.0f} s"),
        ("jobs x workers", f"{args.jobs} x {args.workers} = {pods} pods"),
        ("raw client pod creation", f"{raw:.0f} pods/s"),
        ("operator pod creation", f"{rate:.0f} pods/s (all pods exist after {results['all_pods_s']:.1f} s)"),
        ("ratio operator / raw", f"{rate / raw:.2f}"),
        ("every job Running after", f"{results['all_running_s']:.1f} s"),
        ("median / max submit -> admitted", f"{results['admit_p50']:.1f} / {results['admit_max']:.1f} s"),
        ("median / max admitted -> Running", f"{results['start_p50']:.1f} / {results['start_max']:.1f} s"),
        ("operator CPU time", f"{results['cpu_s']:.1f} s"),
        ("operator peak memory", f"{results['peak_rss_mib']:.0f} MiB"),
    ]
    print("| operator benchmark | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


async def _with_close(kube: Kube, work: Any) -> Any:
    try:
        return await work
    finally:
        await kube.close()


async def submit(kube: Kube, jobs: int, workers: int) -> None:
    path = custom_path(api.GROUP, api.VERSION, api.TRAINING_JOBS, "", NAMESPACE).rstrip("/")
    await in_batches([kube.create(path, job_manifest(i, workers)) for i in range(jobs)])


def follow(
    core: Any, custom: Any, pid: int, pods: int, jobs: int, started: float, timeout_s: float
) -> dict[str, float]:
    peak, all_pods, all_running = 0.0, 0.0, 0.0
    while time.perf_counter() - started < timeout_s:
        peak = max(peak, proc_rss_mib(pid))
        if not all_pods and count_pods(core) >= pods:
            all_pods = time.perf_counter() - started
        listed = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.TRAINING_JOBS)
        running = sum(1 for j in listed["items"] if (j.get("status") or {}).get("phase") == "Running")
        if running >= jobs:
            all_running = time.perf_counter() - started
            all_pods = all_pods or all_running
            break
        time.sleep(0.5)
    return {"all_pods_s": all_pods, "all_running_s": all_running, "peak_rss_mib": peak}


def phase_times(custom: Any) -> dict[str, float]:
    """From the jobs' own status: how long admission and gang start took (whole seconds, as status has them)."""
    listed = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.TRAINING_JOBS)
    admit, start = [], []
    for item in listed["items"]:
        job = TrainingJob.from_body(item)
        if job.status.admitted_at and job.status.start_time:
            admit.append((job.status.admitted_at - job.created).total_seconds())
            start.append((job.status.start_time - job.status.admitted_at).total_seconds())
    return {
        "admit_p50": statistics.median(admit or [0]),
        "admit_max": max(admit or [0]),
        "start_p50": statistics.median(start or [0]),
        "start_max": max(start or [0]),
    }


def count_pods(core: Any) -> int:
    """Pods in the namespace without listing them all: one item plus the server's count of the rest."""
    page = core.list_namespaced_pod(NAMESPACE, limit=1)
    return len(page.items) + int(page.metadata.remaining_item_count or 0)


if __name__ == "__main__":
    main()
