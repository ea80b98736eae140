"""``python -m strata_dev``: build the binaries, run a local cluster with the GPU fleet, show it.

python -m strata_dev demo            # start, create the fleet, run Strata and the examples: queue, run, finish; stop
python -m strata_dev up [--nodes N]  # keep a dev cluster running in the background
python -m strata_dev down            # stop it
python -m strata_dev env             # print `export KUBECONFIG=...` for the running dev cluster
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import strata_api as api
from strata_dev import binaries
from strata_dev.cluster import EXIT_CODE_ANNOTATION, ClusterError, ClusterSettings, LocalCluster, annotate_pods
from strata_dev.fleet import DEFAULT_FLEET, Fleet, FleetError, create_fleet, create_namespace, load_fleet
from strata_dev.pki import PKIError
from strata_dev.stack import ROOT, Stack, get_json

DEV_DIR = binaries.cache_root() / "dev-cluster"
EXAMPLES = ROOT / "examples"


def _fleet(args: argparse.Namespace) -> Fleet:
    fleet = load_fleet(Path(args.fleet))
    return fleet.scaled(args.nodes) if args.nodes else fleet


def _core(cluster: LocalCluster) -> Any:
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(str(cluster.kubeconfig)))


def start_with_fleet(settings: ClusterSettings, fleet: Fleet) -> LocalCluster:
    cluster = LocalCluster(settings).start()
    print(f"control plane up in {cluster.started_s:.1f}s", flush=True)
    took = create_fleet(_core(cluster), fleet)
    print(f"fleet: {fleet.size} kwok nodes Ready in {took:.1f}s", flush=True)
    return cluster


def node_table(core: Any) -> str:
    """The fleet as a user sees it: GPU type, count, capacity type, instance type, zone, readiness."""
    rows: list[tuple[str, ...]] = [("NAME", "GPU", "GPUS", "CAPACITY", "INSTANCE-TYPE", "ZONE", "READY")]
    for node in sorted(core.list_node().items, key=lambda n: n.metadata.name):
        labels = node.metadata.labels or {}
        gpu = api.gpu_type_of(labels)
        allocatable = node.status.allocatable or {}
        ready = any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
        rows.append(
            (
                node.metadata.name,
                gpu.value if gpu else "-",
                allocatable.get(gpu.resource, "0") if gpu else "0",
                labels.get(api.NODE_CAPACITY_TYPE, "-"),
                labels.get(api.NODE_INSTANCE_TYPE, "-"),
                labels.get(api.NODE_ZONE, "-"),
                "Ready" if ready else "NotReady",
            )
        )
    return _table(rows)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def placement_table(cluster: LocalCluster, namespace: str) -> str:
    """Each example job: phase, where its workers run, and what that capacity costs per hour now (catalog
    price of the node share it holds x the time-of-use multiplier)."""
    import datetime

    from strata_scheduler.catalog import load_catalog
    from strata_scheduler.settings import DEFAULT_CATALOG

    catalog = load_catalog(DEFAULT_CATALOG)
    hour = datetime.datetime.now(datetime.UTC).hour
    core = _core(cluster)
    nodes = {n.metadata.name: n for n in core.list_node().items}
    jobs = get_json(cluster.bin_dir, cluster.kubeconfig, "trainingjobs", "-n", namespace)["items"]
    rows: list[tuple[str, ...]] = [("JOB", "POOL", "PHASE", "GPU", "CAPACITY", "NODES", "$/HOUR")]
    for job in jobs:
        name = job["metadata"]["name"]
        pods = core.list_namespaced_pod(namespace, label_selector=f"{api.LABEL_JOB}={name}").items
        placed = [p for p in pods if p.spec.node_name in nodes]
        cost = 0.0
        kinds: set[tuple[str, str]] = set()
        for pod in placed:
            node = nodes[pod.spec.node_name]
            labels = node.metadata.labels or {}
            gpu = api.gpu_type_of(labels)
            capacity = labels.get(api.NODE_CAPACITY_TYPE, "-")
            kinds.add((gpu.value if gpu else "-", capacity))
            price = catalog.price(labels.get(api.NODE_INSTANCE_TYPE), capacity) or 0.0
            node_gpus = int((node.status.allocatable or {}).get(gpu.resource, "0")) if gpu else 0
            limits = pod.spec.containers[0].resources.limits or {}
            share = int(limits.get(gpu.resource, "0")) / node_gpus if gpu and node_gpus else 0.0
            cost += price * share * catalog.power_multiplier(labels.get(api.NODE_ZONE), hour)
        status = job.get("status", {})
        phase = status.get("phase", "-")
        if status.get("queuePosition"):
            phase += f" (queue {status['queuePosition']})"
        rows.append(
            (
                name,
                job["spec"].get("pool", "-"),
                phase,
                ",".join(sorted({g for g, _ in kinds})) or "-",
                ",".join(sorted({c for _, c in kinds})) or "-",
                ",".join(sorted({p.spec.node_name for p in placed})) or "-",
                f"{cost:.2f}" if placed else "-",
            )
        )
    return _table(rows)


def cmd_demo(args: argparse.Namespace) -> int:
    cluster = start_with_fleet(ClusterSettings(), _fleet(args))
    try:
        print(cluster.describe())
        print(node_table(_core(cluster)))
        print(cluster.kubectl("version"))
        with Stack(cluster.bin_dir, cluster.kubeconfig, cluster.workdir / "stack") as stack:
            print(
                f"CRDs installed; extender at {stack.extender_url}; kube-scheduler (strata-scheduler) and operator up"
            )
            cluster.kubectl("apply", "-f", str(EXAMPLES / "pools"))
            create_namespace(_core(cluster), "demo")
            print(cluster.kubectl("apply", "-n", "demo", "-f", str(EXAMPLES / "trainingjobs")).strip())
            timeline = Timeline(cluster, "demo")
            timeline.follow(timeline.settled, args.wait)
            print(cluster.kubectl("get", "resourcepools"))
            print(cluster.kubectl("get", "trainingjobs", "-n", "demo", "-o", "wide"))
            print(placement_table(cluster, "demo"))
            spot = next((n for n in timeline.running() if "spot" in n), None)
            if spot is not None:
                print(f"\n{spot}'s workers report a checkpoint at step 100 (at step 140), as the workload does")
                spot_reclaim(cluster, "demo", spot, timeline, args.wait)
            print(
                "\nkwok nodes run no containers: the demo ends each job's workers the way their processes would, "
                f"with exit code 0 (the {EXIT_CODE_ANNOTATION} annotation)"
            )
            # one job first (debug-h100 with the examples), so the queued job is admitted into the GPUs it frees
            running = timeline.running()
            if running:
                first = running[0]
                end_workers(cluster, "demo", first)
                timeline.follow(lambda: not timeline.waiting() and first in timeline.finished(), args.wait)
            for name in timeline.running():
                end_workers(cluster, "demo", name)
            timeline.follow(timeline.all_finished, args.wait)
            print(cluster.kubectl("get", "trainingjobs", "-n", "demo"))
            deadline = time.monotonic() + 15  # the pools' status follows at the next admission pass
            while time.monotonic() < deadline and not _pools_idle(cluster):
                time.sleep(0.5)
            print(cluster.kubectl("get", "resourcepools"))
    finally:
        cluster.stop()
    print("demo done: the cluster is stopped (keep one running with `make up`)")
    return 0


class Timeline:
    """Prints each example job's phase changes as they happen (seconds since the demo submitted the jobs)."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.started = time.monotonic()
        self.statuses: dict[str, dict[str, Any]] = {}
        """Each job's status as last fetched."""
        self.phases: dict[str, str] = {}
        self.said: dict[str, tuple[str, str]] = {}
        """What was printed last per job: its phase and why (a queued job's reason changes as admission runs)."""
        self.history: dict[str, list[str]] = {}
        """Every phase each job was seen in, in order."""

    def follow(self, done: Callable[[], bool], timeout_s: float) -> None:
        """Poll until ``done()`` holds (it reads what the poll fetched) or ``timeout_s`` passes, printing every
        change."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._poll()
            if done() or time.monotonic() > deadline:
                return
            time.sleep(0.5)

    def _poll(self) -> None:
        jobs = get_json(self.cluster.bin_dir, self.cluster.kubeconfig, "trainingjobs", "-n", self.namespace)
        for job in jobs["items"]:
            name, status = job["metadata"]["name"], job.get("status") or {}
            self.statuses[name] = status
            phase = status.get("phase")
            why = status.get("message") or status.get("reason") or ""
            position = f" (queue position {status['queuePosition']})" if status.get("queuePosition") else ""
            if not phase or self.said.get(name) == (phase, why + position):
                continue
            self.phases[name], self.said[name] = phase, (phase, why + position)
            self.history.setdefault(name, []).append(phase)
            print(f"  {time.monotonic() - self.started:5.1f}s  {name:14} {phase:10} {why}{position}", flush=True)

    def settled(self) -> bool:
        """Every job Running, or waiting in the queue with its position and reason, or done."""
        statuses = list(self.statuses.values())
        phases = [s.get("phase") for s in statuses]
        queued_known = all(s.get("queuePosition") for s in statuses if s.get("phase") == "Queued")
        known = all(p in {"Running", "Queued", "Succeeded", "Failed"} for p in phases)
        return bool(statuses) and known and queued_known and "Running" in phases

    def running(self) -> list[str]:
        return sorted(n for n, p in self.phases.items() if p == "Running")

    def waiting(self) -> list[str]:
        return sorted(n for n, p in self.phases.items() if p in ("Queued", "Admitted"))

    def finished(self) -> list[str]:
        return sorted(n for n, p in self.phases.items() if p in ("Succeeded", "Failed"))

    def all_finished(self) -> bool:
        return bool(self.phases) and len(self.finished()) == len(self.phases)


def spot_reclaim(cluster: LocalCluster, namespace: str, job: str, timeline: Timeline, wait_s: float) -> None:
    """The job's workers report a checkpoint (as the workload does after each one), then the spot node under them
    is taken away (in a cloud: reclaimed; here: the kwok node deleted): the whole gang restarts from that
    checkpoint on other nodes, after the operator's backoff."""
    from datetime import UTC, datetime

    from strata_workloads.progress import ProgressReporter

    core = _core(cluster)
    pods = core.list_namespaced_pod(namespace, label_selector=f"{api.LABEL_JOB}={job}").items
    value = ProgressReporter.value(140, 100, datetime.now(UTC))
    annotate_pods(core, namespace, [p.metadata.name for p in pods], {api.ANN_PROGRESS: value})
    timeline.follow(lambda: (timeline.statuses[job].get("lastCheckpoint") or {}).get("step") == 100, wait_s)
    node = pods[0].spec.node_name
    print(f"spot reclaim: node {node} is taken away from {job} (its last checkpoint: step 100)", flush=True)
    core.delete_node(node)
    timeline.follow(lambda: "Restarting" in timeline.history[job] and timeline.phases[job] == "Running", wait_s)
    print(cluster.kubectl("get", "trainingjob", job, "-n", namespace, "-o", "wide"))


def end_workers(cluster: LocalCluster, namespace: str, job: str, code: int = 0) -> None:
    """End every live worker of ``job`` with ``code``, as its process would."""
    core = _core(cluster)
    pods = core.list_namespaced_pod(namespace, label_selector=f"{api.LABEL_JOB}={job}").items
    names = [p.metadata.name for p in pods if p.metadata.deletion_timestamp is None]
    annotate_pods(core, namespace, names, {EXIT_CODE_ANNOTATION: str(code)})
    print(f"ended the workers of {job} (exit code {code})", flush=True)


def _pools_idle(cluster: LocalCluster) -> bool:
    """No ResourcePool's status counts an admitted or a queued job any more."""
    statuses = [p.get("status") or {} for p in get_json(cluster.bin_dir, cluster.kubeconfig, "resourcepools")["items"]]
    return not any(s.get("admittedJobs") or s.get("queuedJobs") for s in statuses)


def cmd_up(args: argparse.Namespace) -> int:
    if (DEV_DIR / "pid").exists() and _alive(int((DEV_DIR / "pid").read_text())):
        print(f"a dev cluster is already running; {_env_line()}")
        return 0
    DEV_DIR.mkdir(parents=True, exist_ok=True)
    (DEV_DIR / "ready").unlink(missing_ok=True)
    log = DEV_DIR / "daemon.log"
    argv = [sys.executable, "-m", "strata_dev", "_serve", "--fleet", args.fleet, "--nodes", str(args.nodes or 0)]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while not (DEV_DIR / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            print(f"error: the dev cluster did not start; log: {log}\n{log.read_text()[-2000:]}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    print(log.read_text().strip())
    print(f"dev cluster running (pid {proc.pid}). Point kubectl at it with:\n  {_env_line()}\nStop it: make down")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The daemon behind `up`: holds the cluster until SIGTERM (`down`)."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    workdir = DEV_DIR / "state"
    cluster = start_with_fleet(ClusterSettings(workdir=workdir, keep_workdir=True), _fleet(args))
    (DEV_DIR / "pid").write_text(str(os.getpid()))
    (DEV_DIR / "kubeconfig").write_bytes(cluster.kubeconfig.read_bytes())
    (DEV_DIR / "kubectl").unlink(missing_ok=True)
    (DEV_DIR / "kubectl").symlink_to(cluster.bin_dir / "kubectl")
    print(cluster.describe(), flush=True)
    (DEV_DIR / "ready").write_text("ok")
    try:
        while not stop.wait(1.0):
            dead = [c.name for c in cluster.components.values() if c.process.poll() is not None]
            if dead:
                print(f"error: {', '.join(dead)} died; stopping the dev cluster", flush=True)
                return 1
    finally:
        cluster.stop()
        for name in ("pid", "ready", "kubeconfig"):
            (DEV_DIR / name).unlink(missing_ok=True)
    return 0


def cmd_down(_: argparse.Namespace) -> int:
    pid_file = DEV_DIR / "pid"
    if not pid_file.exists():
        print("no dev cluster is running")
        return 0
    pid = int(pid_file.read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)
    print("dev cluster stopped")
    return 0


def cmd_env(_: argparse.Namespace) -> int:
    print(_env_line())
    return 0


def _env_line() -> str:
    return f"export KUBECONFIG={DEV_DIR / 'kubeconfig'} PATH={binaries.bin_dir()}:$PATH"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strata_dev", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("demo", cmd_demo), ("up", cmd_up), ("_serve", cmd_serve)):
        p = sub.add_parser(name)
        if name == "demo":
            p.add_argument("--wait", type=float, default=90, help="seconds to wait for the example jobs to settle")
        p.add_argument("--fleet", default=str(DEFAULT_FLEET), help="fleet file (default: examples/fleet.yaml)")
        p.add_argument("--nodes", type=int, default=0, help="scale the fleet's pools to this many nodes in all")
        p.set_defaults(func=func)
    sub.add_parser("down").set_defaults(func=cmd_down)
    sub.add_parser("env").set_defaults(func=cmd_env)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except (ClusterError, FleetError, PKIError, binaries.BuildError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
