"""Real kube-scheduler throughput on 1,000 kwok GPU nodes, with Strata's extender and without it, in one run.

Both runs use the shipped strata-scheduler profile (scheduler/config/kube-scheduler-config.yaml, including
``percentageOfNodesToScore: 100``); the "without" run only drops its ``extenders``. For each run the pods are
created first, while no scheduler serves their schedulerName, then the kube-scheduler is started, so the
figure is scheduling alone: pods bound per second between the first and the last binding, timed by the
eventTime (microseconds) of kube-scheduler's Scheduled events; completion is polled once a second for a single
unbound pod, so the poll costs neither the API server nor the extender in this process more than a trace. The
process sets the GIL switch interval the service's ``__main__`` sets. Each run waits until the previous run's
namespace (and its pods) is gone, so neither run shares the API server with a deletion.

``--repeat N`` alternates the two runs N times and reports each pair and the median ratio. ``--feature-gates``
is passed to both kube-schedulers: kube-scheduler 1.36 turns pod signatures (opportunistic batching) off for a
profile with extenders, so ``--feature-gates OpportunisticBatching=false`` compares like for like. After each run
with the extender, the extender's own time per call (its latency histogram) is printed.

``--floor`` adds a third run to each repeat: the same configuration with the extender's ``urlPrefix`` pointed
at bench/scheduler/nullextender, a Go extender (standard library only, built here with ``go build``) that keeps
every node and scores every node 0 at no cost of its own. Its ratio is what kube-scheduler's extender protocol
(two HTTP calls and their JSON per pod) costs on this machine before any extender does any work: the best any
extender can reach here. Every run also prints the CPU time each process used per bound pod over the run's
scheduling window (kube-scheduler started to the last pod bound; /proc/<pid>/stat), so a ratio can be read as
where the CPU went: kube-scheduler, the API server, etcd, the extender.

    .venv/bin/python bench/scheduler/scheduler_throughput.py [--nodes 1000] [--pods 400] [--repeat 1]
        [--feature-gates OpportunisticBatching=false] [--floor]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

import strata_api as api
from strata_api.catalog import DEFAULT_CATALOG, load_catalog
from strata_dev.cluster import ClusterSettings, LocalCluster, free_port, scheduler_config
from strata_dev.fleet import create_fleet, load_fleet
from strata_dev.paths import SCHEDULER_CONFIG
from strata_scheduler.service import ExtenderService, Parts
from strata_scheduler.settings import Settings

NULL_EXTENDER = Path(__file__).resolve().parent / "nullextender"
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a live process so far (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


@contextlib.contextmanager
def null_extender(work: Path, enabled: bool) -> Iterator[tuple[subprocess.Popen[bytes] | None, str]]:
    """Build and run bench/scheduler/nullextender while the block runs; yields the process and its URL."""
    if not enabled:
        yield None, ""
        return
    go = shutil.which("go")
    if go is None:
        raise SystemExit("--floor needs the Go toolchain on PATH (it builds bench/scheduler/nullextender)")
    binary = work / "nullextender"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=NULL_EXTENDER, check=True)
    port = free_port()
    process = subprocess.Popen([str(binary), f"-listen=127.0.0.1:{port}"], stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"the null extender did not answer at {url}")
        yield process, url
    finally:
        process.terminate()
        process.wait(10)


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


def start_scheduler(cluster: LocalCluster, config: Path, log: Path, feature_gates: str) -> subprocess.Popen[bytes]:
    """kube-scheduler as strata_dev.cluster.run_kube_scheduler starts it, plus ``--feature-gates``."""
    rendered = log.with_suffix(".config.json")
    rendered.write_text(scheduler_config(config, cluster.kubeconfig, 200, False))
    command = [
        str(cluster.bin_dir / "kube-scheduler"),
        f"--config={rendered}",
        f"--authentication-kubeconfig={cluster.kubeconfig}",
        f"--authorization-kubeconfig={cluster.kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={free_port()}",
        f"--cert-dir={log.parent}",
    ]
    if feature_gates:
        command.append(f"--feature-gates={feature_gates}")
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_gone(core: Any, namespace: str) -> None:
    from kubernetes.client.exceptions import ApiException

    for _ in range(1200):
        try:
            core.read_namespace(namespace)
        except ApiException as error:
            if error.status == 404:
                return
            raise
        time.sleep(0.25)
    raise RuntimeError(f"namespace {namespace} was not deleted in 5 minutes")


def one_run(
    core: Any,
    cluster: LocalCluster,
    config: dict[str, Any],
    pods: int,
    label: str,
    work: Path,
    feature_gates: str,
    watched: dict[str, int],
) -> float:
    """Pods bound per second; prints the CPU each process in ``watched`` (name -> pid) and kube-scheduler used."""
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
    process = start_scheduler(cluster, path, work / f"{label}.log", feature_gates)
    watched = {"kube-scheduler": process.pid, **watched}
    cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items()}
    try:
        deadline = time.monotonic() + 900
        # Done when no pod is left unbound: one item at most per poll, once a second, so that polling costs
        # neither the API server nor the extender (same process) more than a trace of CPU. The rate itself comes
        # from kube-scheduler's Scheduled events (microsecond eventTime, recorded once each binding succeeded).
        while core.list_namespaced_pod(namespace, field_selector="spec.nodeName=", limit=1).items:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: not every pod was bound in time; see {work / f'{label}.log'}")
            time.sleep(1)
        used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in watched.items()}
        print(f"  {label} CPU per pod: " + ", ".join(f"{n} {s / pods * 1e3:.1f} ms" for n, s in used.items()))
        times = bind_times(cluster, namespace, pods)
        return (pods - 1) / max(times[-1] - times[0], 1e-3)
    finally:
        process.terminate()
        process.wait(30)
        core.delete_namespace(namespace)
        wait_gone(core, namespace)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--feature-gates", default="", help="passed to both kube-schedulers")
    parser.add_argument("--floor", action="store_true", help="also run against a null extender (needs Go)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="strata-sched-bench-"))
    with null_extender(work, args.floor) as (null_process, null_url), LocalCluster(ClusterSettings()) as cluster:
        core = cluster_core(cluster)
        started = time.monotonic()
        create_fleet(core, load_fleet().scaled(args.nodes), wait_ready_s=600)
        print(f"fleet of {args.nodes} nodes ready in {time.monotonic() - started:.0f} s", flush=True)
        settings = Settings(port=free_port(), kubeconfig=str(cluster.kubeconfig), store=work / "demand.sqlite")
        sys.setswitchinterval(settings.gil_switch_interval_s)  # as the service's __main__ sets it
        service = ExtenderService(settings, load_catalog(DEFAULT_CATALOG), Parts(record=False, forecast=False))
        service.start()
        watched = {name: cluster.components[name].process.pid for name in ("kube-apiserver", "etcd")}
        watched["bench+extender"] = os.getpid()
        if null_process is not None:
            watched["null extender"] = null_process.pid
        try:
            while not service.state.ready:
                time.sleep(0.2)
            with_extender = yaml.safe_load(SCHEDULER_CONFIG.read_text())
            with_extender["extenders"][0]["urlPrefix"] = service.url
            without = {key: value for key, value in with_extender.items() if key != "extenders"}
            floor = copy.deepcopy(with_extender)
            floor["extenders"][0]["urlPrefix"] = null_url
            ratios: dict[str, list[float]] = {"extended": [], "floor": []}

            def timed(config: dict[str, Any], label: str) -> float:
                return one_run(core, cluster, config, args.pods, label, work, args.feature_gates, watched)

            for attempt in range(args.repeat):
                plain = timed(without, f"without-{attempt}")
                print(f"without extender: {plain:.1f} pods/s", flush=True)
                before = extender_seconds(service)
                extended = timed(with_extender, f"with-{attempt}")
                print(f"with extender: {extended:.1f} pods/s; {extender_calls(before, extender_seconds(service))}")
                ratios["extended"].append(extended / plain)
                row = f"| {args.nodes} | {args.pods} | {plain:.1f} | {extended:.1f} | {extended / plain:.2f} |"
                if null_process is not None:
                    nulled = timed(floor, f"floor-{attempt}")
                    print(f"with the null extender: {nulled:.1f} pods/s", flush=True)
                    ratios["floor"].append(nulled / plain)
                    row += f" {nulled:.1f} | {nulled / plain:.2f} |"
                print(row, flush=True)
            for name, values in ratios.items():
                if values:
                    print(f"median {name} ratio over {len(values)}: {statistics.median(values):.2f}")
        finally:
            service.stop()


def extender_seconds(service: ExtenderService) -> dict[str, tuple[float, float]]:
    """(calls, seconds) per verb so far, from the extender's latency histogram."""
    totals: dict[str, list[float]] = {}
    for metric in service.metrics.latency.collect():
        for sample in metric.samples:
            verb = sample.labels.get("verb", "")
            if sample.name.endswith("_count"):
                totals.setdefault(verb, [0.0, 0.0])[0] = sample.value
            elif sample.name.endswith("_sum"):
                totals.setdefault(verb, [0.0, 0.0])[1] = sample.value
    return {verb: (calls, seconds) for verb, (calls, seconds) in totals.items()}


def extender_calls(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> str:
    parts = []
    for verb, (total_calls, total_seconds) in sorted(after.items()):
        calls = total_calls - before.get(verb, (0.0, 0.0))[0]
        seconds = total_seconds - before.get(verb, (0.0, 0.0))[1]
        if calls:
            parts.append(f"{verb}: {calls:.0f} calls, {seconds / calls * 1e3:.2f} ms each in the extender")
    return "; ".join(parts) or "no extender calls"


def bind_times(cluster: LocalCluster, namespace: str, pods: int) -> list[float]:
    """When each pod's Scheduled event was recorded (unix seconds, sorted), once kube-scheduler has sent them all."""
    from kubernetes import client, config

    events = client.EventsV1Api(config.new_client_from_config(str(cluster.kubeconfig)))
    for _ in range(120):
        listed = events.list_namespaced_event(namespace, field_selector="reason=Scheduled").items
        times = sorted(e.event_time.timestamp() for e in listed if e.event_time is not None)
        if len(times) >= pods:
            return times
        time.sleep(0.5)  # the events are sent after the bindings, asynchronously
    raise RuntimeError(f"{namespace}: {len(times)} Scheduled events for {pods} bound pods")


def cluster_core(cluster: LocalCluster) -> Any:
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))


if __name__ == "__main__":
    main()
