"""Operator throughput on the local control plane (a benchmark, not a test: pytest does not collect it).

    .venv/bin/python tests/cluster/operator/bench_operator.py --jobs 500 --workers 8 [--gpus-per-worker 1]

1. Starts a local cluster with a fleet big enough for every gang at once, plus 5% of each GPU type (by default
   1 GPU per worker, so eight workers share a node: 4,000 pods on ~630 kwok nodes).
2. Raw rates: a plain client (aiohttp, 64 requests in flight) creates the same worker pods the operator would,
   four times: gated (creation alone: nothing else happens to them), ungated (kube-scheduler binds them and kwok
   starts them while the client goes on creating, as happens to the operator's pods once their gates are
   lifted), as gangs (each job's pods created gated, then their gates lifted together: the least the
   all-or-nothing rule asks of any client; every gang at once, so all creates come before the lifts), and as
   gangs pipelined (the same calls, each gang lifted as soon as it exists, as the operator does); each time it
   then deletes them. For all but the first it also reports pods Ready per second (first pod created -> last pod
   Ready).
3. Runs ``python -m strata_operator`` and applies all TrainingJobs at once; reports, by the API server's clock,
   pods created per second from the first job's creation to the last pod's, the stages of a pod (created, gate
   lifted, bound, Ready) and of a job, the ratio to the raw rate, the operator's CPU time and peak memory, and
   the API requests per job by verb and resource next to the pipelined gang client's (the API server's
   apiserver_request_total read before and after each phase, with the cluster's admin credentials).

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client, config

import strata_api as api
from strata_api import TrainingJob
from strata_dev import binaries
from strata_dev.cluster import ClusterSettings, LocalCluster
from strata_dev.fleet import create_fleet, load_fleet
from strata_operator.core.pods import build_worker_pods
from strata_operator.runtime.kube import Kube, custom_path, pod_path
from strata_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[3]
NAMESPACE = "bench"
POOL = "bench"
IN_FLIGHT = 64
SCHEDULER = "default-scheduler"
MODES = ("gated", "ungated", "gangs", "pipelined")
"""The bench runs no Strata extender: plain kube-scheduler places the operator's pods and the raw client's."""


def job_manifest(index: int, workers: int, gpus_per_worker: int) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.TRAINING_JOB,
        "metadata": {"name": f"job-{index:04d}", "namespace": NAMESPACE},
        "spec": {
            "pool": POOL,
            "workload": {"image": "registry.invalid/strata/workloads:bench"},
            "parallelism": {"data": workers, "tensor": gpus_per_worker},
            "training": {"globalBatchSize": 8 * workers, "steps": 1000},
            "resources": {"gpus": gpus_per_worker * workers, "gpusPerWorker": gpus_per_worker, "gpuType": "Any"},
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


async def in_batches(calls: list[Any], slots: asyncio.Semaphore | None = None) -> None:
    """Await every call, at most ``IN_FLIGHT`` at once (or as many as ``slots``, shared between batches)."""
    semaphore = slots or asyncio.Semaphore(IN_FLIGHT)

    async def run(call: Any) -> None:
        async with semaphore:
            await call

    await asyncio.gather(*(run(c) for c in calls))


Calls = dict[tuple[str, str], float]
"""API requests by (verb, resource[/subresource][ (code)]), as :func:`api_calls` reads them."""


async def raw_rate(
    kube: Kube, custom: Any, core: Any, calls: Any, jobs: int, workers: int, gpus_per_worker: int, mode: str
) -> tuple[float, float | None, Calls]:
    """Pods per second a plain client reaches creating the operator's exact worker pods, (unless ``gated``) pods
    per second from the first pod created to the last pod Ready, by the API server's clock, and the API requests
    made meanwhile (``calls()`` before the first create and after the last pod is Ready; every client's, so
    kube-scheduler's bindings and kwok's status writes count too, as they do for the operator). ``mode``:

    - ``gated``: creation alone (the pods keep their gate: nothing else happens to them);
    - ``ungated``: the gate dropped, so the pods are bound and started as they come (the load the operator's pods
      bring);
    - ``gangs``: the least the issue's all-or-nothing rule asks of any client: each job's pods created gated, then
      their gates lifted together once all of them exist, every job at once (64 calls in flight in all, first come
      first served, so every create is queued before the first lift and most bindings come after the window);
    - ``pipelined``: the same calls gang after gang, as the operator makes them: 64 / workers gangs at a time, each
      with all its creates in flight, then all its lifts, so bindings and kwok's status writes share the window
      with later gangs' creates."""
    pool = api.ResourcePool(POOL, 0, frozenset(api.GPUType), 10**6, None, frozenset({"reserved", "spot"}), False)
    gangs: list[list[dict[str, Any]]] = []
    for i in range(jobs):
        body = custom.create_namespaced_custom_object(
            api.GROUP,
            api.VERSION,
            NAMESPACE,
            api.TRAINING_JOBS,
            job_manifest(i, workers, gpus_per_worker),
            dry_run="All",
        )  # the API server's defaults, without storing the job
        body["metadata"].update(uid=f"raw-{i}", creationTimestamp="2026-01-01T00:00:00Z")
        body["status"] = {"attempt": 1, "placement": {"gpuType": "H100" if i % 2 else "MI300X"}}  # as admission splits
        gang = build_worker_pods(TrainingJob.from_body(body), pool, OperatorSettings(scheduler_name=SCHEDULER))
        for pod in gang:
            pod["metadata"]["name"] = "raw-" + pod["metadata"]["name"]
            pod["metadata"].pop("ownerReferences")
            if mode == "ungated":
                pod["spec"].pop("schedulingGates")
        gangs.append(gang)
    manifests = [pod for gang in gangs for pod in gang]
    # the pods run as the namespace's worker ServiceAccount, which must exist first (set-up, not timed; the
    # operator's run creates it, and its Role and RoleBinding, within its time)
    accounts = sorted({m["spec"]["serviceAccountName"] for m in manifests})
    sa_path = f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts"
    await in_batches([kube.create(sa_path, {"metadata": {"name": n}}) for n in accounts])
    slots = asyncio.Semaphore(IN_FLIGHT)  # shared by every gang: 64 calls in flight in all
    lift = {"spec": {"schedulingGates": None}}

    async def gang_of(pods: list[dict[str, Any]]) -> None:
        await in_batches([kube.create(pod_path(NAMESPACE), m) for m in pods], slots)
        await in_batches([kube.merge_patch(pod_path(NAMESPACE, m["metadata"]["name"]), lift) for m in pods], slots)

    calls0 = calls()
    started, cpu0 = time.perf_counter(), time.process_time()
    gang_slots = asyncio.Semaphore(max(1, IN_FLIGHT // workers))

    async def pipelined(pods: list[dict[str, Any]]) -> None:
        async with gang_slots:
            await asyncio.gather(*(kube.create(pod_path(NAMESPACE), m) for m in pods))
            await asyncio.gather(*(kube.merge_patch(pod_path(NAMESPACE, m["metadata"]["name"]), lift) for m in pods))

    if mode == "gangs":
        await asyncio.gather(*(gang_of(g) for g in gangs))
    elif mode == "pipelined":
        await asyncio.gather(*(pipelined(g) for g in gangs))
    else:
        await in_batches([kube.create(pod_path(NAMESPACE), m) for m in manifests])
    elapsed = time.perf_counter() - started
    # the client's own CPU while creating: on a machine the control plane saturates, a client's CPU is taken from it
    print(f"raw client ({mode}): CPU {time.process_time() - cpu0:.1f} s in {elapsed:.1f} s", file=sys.stderr)
    ready_rate = None if mode == "gated" else len(manifests) / await until_ready(core, len(manifests))
    made = subtract(calls(), calls0)
    await delete_all(kube, core, manifests)
    await in_batches([kube.delete(f"{sa_path}/{n}") for n in accounts])
    return len(manifests) / elapsed, ready_rate, made


def subtract(after: Calls, before: Calls) -> Calls:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)}


async def until_ready(core: Any, count: int, timeout_s: float = 900) -> float:
    """Seconds from the first pod's creation to the last pod's Ready, by the API server's clock (whole seconds),
    once all ``count`` pods in the namespace are Ready."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        items = core.list_namespaced_pod(NAMESPACE).items
        ready = [last_ready(p) for p in items]
        if len(items) >= count and all(ready):
            first = min(p.metadata.creation_timestamp for p in items)
            return max(1.0, float((max(r for r in ready if r) - first).total_seconds()))
        await asyncio.sleep(1)
    raise TimeoutError(f"{count} pods not Ready within {timeout_s:.0f} s")


def last_ready(pod: Any) -> Any:
    """When the pod became Ready (API server clock), or None."""
    up = next((c for c in pod.status.conditions or () if c.type == "Ready"), None)
    return up.last_transition_time if up is not None and up.status == "True" else None


async def delete_all(kube: Kube, core: Any, manifests: list[dict[str, Any]]) -> None:
    await in_batches([kube.delete(pod_path(NAMESPACE, m["metadata"]["name"]), grace_s=0) for m in manifests])
    while count_pods(core):  # noqa: ASYNC110  (polling the API server is the point)
        await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--gpus-per-worker",
        type=int,
        default=1,
        help="1 (default): 8 worker pods share a node, so 500 jobs need ~630 kwok nodes; 8: one worker per node, "
        "~5,250 nodes, more than kwok keeps Ready on 2 busy cores (the pods and API calls are the same)",
    )
    parser.add_argument("--timeout-s", type=float, default=1800)
    parser.add_argument("--profile", type=Path, default=None, help="write a cProfile of the operator here")
    parser.add_argument(
        "--apiserver-profile",
        type=Path,
        default=None,
        help="write the API server's Go CPU profile of the first --apiserver-profile-s of the gang client's and of "
        "the operator's run into this folder (gangs.pprof, operator.pprof; read with `go tool pprof -top`)",
    )
    parser.add_argument("--apiserver-profile-s", type=int, default=20)
    args = parser.parse_args()
    gang_nodes = math.ceil(args.jobs * args.workers * args.gpus_per_worker / 8)
    # 80% of the default fleet are GPU nodes of 8 GPUs, half H100 and half MI300X: 5% spare per type
    fleet = load_fleet().scaled(math.ceil(gang_nodes / 0.8 * 1.05) + 8)

    bin_dir = binaries.ensure(quiet=True)
    profiling = args.apiserver_profile is not None
    with LocalCluster(ClusterSettings(api_qps=1000, profiling=profiling), bin_dir=bin_dir) as cluster:
        profile_to = functools.partial(apiserver_profile, cluster, args.apiserver_profile, args.apiserver_profile_s)
        api_client = config.new_client_from_config(str(cluster.kubeconfig))
        core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
        fleet_s = create_fleet(core, fleet, wait_ready_s=900)  # 5,000 kwok nodes take minutes on a busy machine
        cluster.kubectl("apply", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/trainingjobs.strata.dev")
        cluster.kubectl("create", "namespace", NAMESPACE)
        time.sleep(2)  # the namespace's default ServiceAccount
        os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
        info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
        assert info is not None
        kube = Kube(info)
        shape = (args.jobs, args.workers, args.gpus_per_worker)
        raws: dict[str, tuple[float, float | None, Calls]] = {}
        for mode in MODES:
            kube = Kube(info)  # a client per event loop (its semaphore belongs to one)
            counter = functools.partial(api_calls, cluster)
            profiler = profile_to("gangs") if mode == "gangs" else None
            raws[mode] = asyncio.run(_with_close(kube, raw_rate(kube, custom, core, counter, *shape, mode=mode)))
            if profiler is not None:
                profiler.join()
        raw_gated, raw, raw_gangs, raw_piped = (raws[m][0] for m in MODES)
        raw_ready, gangs_ready, piped_ready = (raws[m][1] or 0.0 for m in MODES[1:])
        print(
            f"raw client: {raw_gated:.0f} pods/s gated, {raw:.0f} ungated ({raw_ready:.0f} Ready/s), {raw_gangs:.0f} "
            f"as gangs ({gangs_ready:.0f} Ready/s), {raw_piped:.0f} as gangs pipelined ({piped_ready:.0f} Ready/s); "
            f"fleet of {fleet.size} nodes Ready in {fleet_s:.0f} s",
            file=sys.stderr,
        )

        pool = {"apiVersion": api.API_VERSION, "kind": api.RESOURCE_POOL, "metadata": {"name": POOL},
                "spec": {"maxGPUs": 10**6, "capacityTypes": ["spot", "on-demand", "reserved"]}}  # fmt: skip
        custom.create_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, pool)
        log = Path(tempfile.mkdtemp(prefix="strata-bench-")) / "operator.log"
        print(f"operator log: {log}", file=sys.stderr)
        with log.open("wb") as out:
            level = os.environ.get("BENCH_LOG_LEVEL", "WARNING")
            profile = ["-m", "cProfile", "-o", str(args.profile)] if args.profile else []
            operator = subprocess.Popen(
                [sys.executable, *profile, "-m", "strata_operator", "--standalone",
                 "--scheduler-name", SCHEDULER, "--metrics-port", "0", "--log-level", level,
                 "--start-timeout-s", str(args.timeout_s),  # a slow bind is not a failed start here
                 "--namespaces", NAMESPACE],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ},
            )  # fmt: skip
        try:
            time.sleep(3)
            cpu0 = proc_cpu_s(operator.pid)
            calls0 = api_calls(cluster)
            kube = Kube(info)
            started = time.perf_counter()
            profiler = profile_to("operator")
            asyncio.run(_with_close(kube, submit(kube, args.jobs, args.workers, args.gpus_per_worker)))
            results = follow(custom, operator.pid, args.jobs, started, args.timeout_s)
            results["cpu_s"] = proc_cpu_s(operator.pid) - cpu0
            calls = subtract(api_calls(cluster), calls0)
            results.update(server_times(core, custom))
            results["events"] = event_reasons(core)
            if profiler is not None:
                profiler.join()
        finally:
            operator.terminate()
            operator.wait(60)

    pods = args.jobs * args.workers
    rate = pods / results["last_pod_s"] if results["last_pod_s"] else 0.0
    ready_rate = pods / results["last_ready_s"] if results["last_ready_s"] else 0.0
    rows = [
        ("fleet", f"{fleet.size} nodes created in {fleet_s:.0f} s"),
        ("jobs x workers", f"{args.jobs} x {args.workers} = {pods} pods of {args.gpus_per_worker} GPUs"),
        ("raw client pod creation, ungated (bound and started as created)", f"{raw:.0f} pods/s"),
        ("raw client pod creation, gated (creation alone)", f"{raw_gated:.0f} pods/s"),
        ("operator pod creation", f"{rate:.0f} pods/s (first job created -> last pod created: "
         f"{results['last_pod_s']:.0f} s, API server clock)"),
        ("raw client as gangs (each job's pods created gated, then lifted together; all creates queued first)",
         f"{raw_gangs:.0f} pods/s"),
        ("raw client as gangs pipelined (8 gangs at a time, each lifted as soon as it exists)",
         f"{raw_piped:.0f} pods/s"),
        ("ratio operator / raw ungated", f"{rate / raw:.2f}"),
        ("ratio operator / raw gated", f"{rate / raw_gated:.2f}"),
        ("ratio operator / raw as gangs", f"{rate / raw_gangs:.2f}"),
        ("ratio operator / raw as gangs pipelined", f"{rate / raw_piped:.2f}"),
        ("pods Ready per second (raw: first pod created, operator: first job created -> last pod Ready): "
         "raw ungated / raw as gangs / raw as gangs pipelined / operator",
         f"{raw_ready:.0f} / {gangs_ready:.0f} / {piped_ready:.0f} / {ready_rate:.0f}"),
        ("ratio of pods Ready per second, operator / raw ungated / as gangs / as gangs pipelined",
         f"{ready_rate / raw_ready:.2f} / {ready_rate / gangs_ready:.2f} / {ready_rate / piped_ready:.2f}"),
        ("first pod created after", f"{results['first_pod_s']:.0f} s"),
        ("every job Running after", f"{results['all_running_s']:.0f} s ({results['running']} of {args.jobs})"),
        ("median / max created -> admitted", f"{results['admit_p50']:.0f} / {results['admit_max']:.0f} s"),
        (
            "median / max created -> finalizer added (kopf; admission waits for it)",
            f"{results['finalized_p50']:.0f} / {results['finalized_max']:.0f} s",
        ),
        (
            "median / max admitted -> first pod created",
            f"{results['first_pod_p50']:.0f} / {results['first_pod_max']:.0f} s",
        ),
        ("median / max admitted -> Running", f"{results['start_p50']:.0f} / {results['start_max']:.0f} s"),
        ("median pod: created -> gate lifted -> bound -> Ready",
         f"{results['lift_p50']:.0f} / {results['bind_p50']:.0f} / {results['ready_p50']:.0f} s"),
        ("median job: last pod Ready -> job Running", f"{results['noticed_p50']:.0f} s"),
        ("operator CPU time", f"{results['cpu_s']:.1f} s"),
        ("operator peak memory", f"{results['peak_rss_mib']:.0f} MiB"),
    ]  # fmt: skip
    print("| operator benchmark | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\nEvents per job by reporting component and reason:")
    for (component, reason), count in sorted(results["events"].items(), key=lambda kv: -kv[1]):
        print(f"  {component:24} {reason:24} {count / args.jobs:6.2f}")
    print(requests_table(raws["pipelined"][2], calls, args.jobs))


def requests_table(gangs: Calls, operator: Calls, jobs: int) -> str:
    """API requests per job by verb and resource, the pipelined gang client's (first create -> last pod Ready: the
    same calls as the other gang client's, made in the operator's order, so the latencies compare) next to the
    operator's (first job created -> every job Running); every client's requests, the bench's own polling too."""
    lines = ["\nAPI requests per job (every client, from apiserver_request_total), and their mean latency at the "
             "API server (apiserver_request_duration_seconds):", "",
             "| verb | resource | gang client | operator | mean ms, gang client / operator |",
             "|---|---|---|---|---|"]  # fmt: skip
    counted = [k for k in set(gangs) | set(operator) if not k[1].startswith(LATENCY)]
    for key in sorted(counted, key=lambda k: -max(gangs.get(k, 0), operator.get(k, 0))):
        if max(gangs.get(key, 0), operator.get(key, 0)) >= jobs / 20:  # at least one call in 20 jobs
            ms = [mean_latency_ms(c, *key) for c in (gangs, operator)]
            latency = " / ".join("-" if m is None else f"{m:.0f}" for m in ms)
            lines.append(
                f"| {key[0]} | {key[1]} | {gangs.get(key, 0) / jobs:.2f} | {operator.get(key, 0) / jobs:.2f} "
                f"| {latency} |"
            )
    totals = (
        ("all", lambda k: True),
        ("all but leases", lambda k: not k[1].startswith("leases")),
        ("all but leases, successful only", lambda k: not k[1].startswith("leases") and not k[1].endswith(")")),
    )
    for name, kept in totals:
        theirs = sum(gangs.get(k, 0) for k in counted if kept(k)) / jobs
        mine = sum(operator.get(k, 0) for k in counted if kept(k)) / jobs
        lines.append(f"| {name} | | {theirs:.1f} | {mine:.1f} (**{mine / theirs:.2f}x**) | |")
    lines.append(
        "\n(leases: node and component heartbeats, which grow with the run's length, not with its jobs; failed "
        "requests, code in brackets, are the operator's conflicts and kwok's refused status patches)"
    )
    return "\n".join(lines)


def apiserver_profile(cluster: LocalCluster, folder: Path | None, seconds: int, name: str) -> threading.Thread | None:
    """Start taking the API server's CPU profile for ``seconds`` in the background, into ``folder/name.pprof``
    (None when not asked for)."""
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    command = [str(cluster.bin_dir / "kubectl"), f"--kubeconfig={cluster.kubeconfig}", "get", "--raw",
               f"/debug/pprof/profile?seconds={seconds}"]  # fmt: skip

    def take() -> None:
        out = subprocess.run(command, capture_output=True, timeout=seconds + 120, check=False)
        if out.returncode != 0:
            print(f"API server profile {name} failed: {out.stderr.decode()[:300]}", file=sys.stderr)
            return
        (folder / f"{name}.pprof").write_bytes(out.stdout)
        print(f"API server CPU profile: {folder / name}.pprof", file=sys.stderr)

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    return thread


async def _with_close(kube: Kube, work: Any) -> Any:
    try:
        return await work
    finally:
        await kube.close()


async def submit(kube: Kube, jobs: int, workers: int, gpus_per_worker: int) -> None:
    path = custom_path(api.GROUP, api.VERSION, api.TRAINING_JOBS, "", NAMESPACE).rstrip("/")
    await in_batches([kube.create(path, job_manifest(i, workers, gpus_per_worker)) for i in range(jobs)])


def follow(custom: Any, pid: int, jobs: int, started: float, timeout_s: float) -> dict[str, Any]:
    """Wait until every job is Running, sampling the operator's memory; the times come from the API server."""
    peak = 0.0
    while time.perf_counter() - started < timeout_s:
        for _ in range(4):
            peak = max(peak, proc_rss_mib(pid))
            time.sleep(0.5)
        try:
            if count_running(custom) >= jobs:
                break
        except Exception as error:  # a saturated API server may cut a large list: poll again
            print(f"listing jobs failed, polling again: {error!r}"[:200], file=sys.stderr)
    return {"peak_rss_mib": peak}


def count_running(custom: Any) -> int:
    listed = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.TRAINING_JOBS)
    return sum(1 for j in listed["items"] if (j.get("status") or {}).get("phase") == "Running")


def server_times(core: Any, custom: Any) -> dict[str, Any]:
    """Seconds from the first job's creation, all by the API server's clock (creationTimestamp, whole seconds):
    when the first and the last worker pod were created, and when the last job started Running."""
    listed = custom.list_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.TRAINING_JOBS)
    jobs = [TrainingJob.from_body(item) for item in listed["items"]]
    t0 = min(j.created for j in jobs)
    items = core.list_namespaced_pod(NAMESPACE).items
    pods = [p.metadata.creation_timestamp for p in items]
    admit = [(j.status.admitted_at - j.created).total_seconds() for j in jobs if j.status.admitted_at]
    finalized = [f for item in listed["items"] if (f := finalized_after(item)) is not None]
    first_pod: dict[str, Any] = {}
    for p in items:
        job = (p.metadata.labels or {}).get(api.LABEL_JOB, "")
        first_pod[job] = min(first_pod.get(job, p.metadata.creation_timestamp), p.metadata.creation_timestamp)
    created_after = [
        (first_pod[j.name] - j.status.admitted_at).total_seconds()
        for j in jobs
        if j.status.admitted_at and j.name in first_pod
    ]
    start = [
        (j.status.start_time - j.status.admitted_at).total_seconds()
        for j in jobs
        if j.status.admitted_at and j.status.start_time
    ]
    running = [j.status.start_time for j in jobs if j.status.phase == api.Phase.RUNNING and j.status.start_time]
    return {
        "first_pod_s": (min(pods) - t0).total_seconds() if pods else 0.0,
        "last_pod_s": (max(pods) - t0).total_seconds() if pods else 0.0,
        "last_ready_s": max(((r - t0).total_seconds() for p in items if (r := last_ready(p))), default=0.0),
        "all_running_s": (max(running) - t0).total_seconds() if running else 0.0,
        "running": len(running),
        "admit_p50": statistics.median(admit or [0]),
        "finalized_p50": statistics.median(finalized or [0]),
        "finalized_max": max(finalized or [0]),
        "first_pod_p50": statistics.median(created_after or [0]),
        "first_pod_max": max(created_after or [0]),
        "admit_max": max(admit or [0]),
        "start_p50": statistics.median(start or [0]),
        "start_max": max(start or [0]),
        **pod_stages(items, jobs),
    }


def finalized_after(item: dict[str, Any]) -> float | None:
    """Seconds from a job's creation to kopf's finalizer patch (its managedFields entry that owns the finalizers;
    the admission pass takes a job only after it), or None when it has none."""
    meta = item["metadata"]
    created = datetime.fromisoformat(meta["creationTimestamp"])
    for entry in meta.get("managedFields") or ():
        if "f:finalizers" in (entry.get("fieldsV1") or {}).get("f:metadata", {}):
            return (datetime.fromisoformat(entry["time"]) - created).total_seconds()
    return None


def pod_stages(items: list[Any], jobs: list[TrainingJob]) -> dict[str, float]:
    """Median seconds of each stage of a worker pod, by the API server's timestamps: created -> gate lifted (the
    operator's patch, from managedFields) -> bound (PodScheduled) -> Ready (kwok), and the job's last Ready pod
    -> the job's status Running (the operator noticing)."""
    lifted, bound, ready = [], [], []
    job_ready: dict[str, Any] = {}
    for pod in items:
        lift = next((m.time for m in pod.metadata.managed_fields or () if m.manager == "strata-operator"), None)
        scheduled = next((c for c in pod.status.conditions or () if c.type == "PodScheduled"), None)
        up = last_ready(pod)
        if lift is None or scheduled is None or scheduled.status != "True" or up is None:
            continue
        lifted.append((lift - pod.metadata.creation_timestamp).total_seconds())
        bound.append((scheduled.last_transition_time - lift).total_seconds())
        ready.append((up - scheduled.last_transition_time).total_seconds())
        job = pod.metadata.labels.get(api.LABEL_JOB, "")
        job_ready[job] = max(job_ready.get(job, up), up)
    noticed = [
        (j.status.start_time - job_ready[j.name]).total_seconds()
        for j in jobs
        if j.status.start_time and j.name in job_ready
    ]
    return {
        "lift_p50": statistics.median(lifted or [0]),
        "bind_p50": statistics.median(bound or [0]),
        "ready_p50": statistics.median(ready or [0]),
        "noticed_p50": statistics.median(noticed or [0]),
    }


LATENCY = "seconds in "
"""Prefix of the resource in :func:`api_calls`' keys that hold the summed request seconds rather than counts."""


def api_calls(cluster: LocalCluster) -> dict[tuple[str, str], float]:
    """apiserver_request_total by verb and resource(/subresource) (and the HTTP code when not a success), from the
    API server's own metrics; under ``(verb, LATENCY + resource)`` the seconds those requests took in all
    (apiserver_request_duration_seconds_sum, which has no code)."""
    counts: dict[tuple[str, str], float] = {}
    for line in cluster.kubectl("get", "--raw", "/metrics").splitlines():
        total = line.startswith("apiserver_request_total{")
        if not total and not line.startswith("apiserver_request_duration_seconds_sum{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
        resource = labels.get("resource", "") + ("/" + labels["subresource"] if labels.get("subresource") else "")
        code = labels.get("code", "")
        if total:
            key = (labels.get("verb", ""), resource + (f" ({code})" if code not in ("200", "201") else ""))
        else:
            key = (labels.get("verb", ""), LATENCY + resource)
        counts[key] = counts.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def mean_latency_ms(calls: Calls, verb: str, resource: str) -> float | None:
    """The mean seconds (as ms) of a verb on a resource, every answer code together, from :func:`api_calls`."""
    if resource.endswith(")"):
        return None
    count = sum(v for (b, r), v in calls.items() if b == verb and (r == resource or r.startswith(resource + " (")))
    seconds = calls.get((verb, LATENCY + resource))
    return 1000 * seconds / count if seconds is not None and count else None


def event_reasons(core: Any) -> dict[tuple[str, str], int]:
    """Events in the namespace by reporting component (or source) and reason."""
    counts: dict[tuple[str, str], int] = {}
    for event in core.list_namespaced_event(NAMESPACE).items:
        component = event.reporting_component or (event.source.component if event.source else "") or ""
        key = (component, event.reason or "")
        counts[key] = counts.get(key, 0) + (event.count or 1)
    return counts


def count_pods(core: Any) -> int:
    """Pods in the namespace without listing them all: one item plus the server's count of the rest."""
    page = core.list_namespaced_pod(NAMESPACE, limit=1)
    return len(page.items) + int(page.metadata.remaining_item_count or 0)


if __name__ == "__main__":
    main()
