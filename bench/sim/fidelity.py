"""Fidelity of the simulator: one trace slice replayed on the real local control plane and in the simulator, and
their per-job decisions compared (issue 21, item 6; docs/simulation.md, "Fidelity").

    .venv/bin/python bench/sim/fidelity.py [--trace alibaba|synthetic:N] [--jobs 150] [--hour-s 20] [--scale 1]

1. The slice: the first ``--jobs`` jobs of the trace in arrival order, renamed ``j0000``, ``j0001``, ... in that
   order (both sides break ties between jobs submitted at one instant by name), each job's work capped at 30
   days (the longest ``spec.scheduling.expectedDurationSeconds`` the API takes; a capped job runs past the slice
   anyway).
2. The simulator: :class:`strata_sim.policies.StrataPolicy` without the hold-back (``strata-no-holdback``) on the
   simulator's fleet file, the shipped catalog, no spot reclaims (the real replay has none either).
3. The control plane: a :class:`strata_dev.cluster.LocalCluster` with the same fleet as kwok nodes (each pool's
   node count as the simulator scaled it), the CRDs and the chart's worker policy, a ResourcePool per trace pool
   (``high``: priority 100, not preemptible; ``low``: priority 10, preemptible; every GPU and capacity type, quota
   the whole fleet, as :func:`strata_sim.policies.pools`), the extender as a process (its forecast and demand
   recording off, so no hold-back, as in the simulation), a kube-scheduler with the shipped ``strata-scheduler``
   profile calling it, and the operator (``python -m strata_operator``) asking the extender's ``/quote``. Each
   job is submitted as a TrainingJob (``gpuType: Any``, every capacity type, its workers and GPUs, the pool of its
   priority, 30-minute checkpoints, its run time as ``expectedDurationSeconds`` as the simulator tells the
   extender) when its compressed arrival time comes (``--hour-s`` real seconds per trace hour); a job's workers
   exit 0 (the kwok annotation the tests use) once its compressed run time on the GPU type it got has passed
   since its admission. A watch records when each job is admitted (status.placement.gpuType) and running
   (status.placement.capacityTypes and nodes). The components' logs are kept only when the replay fails.
4. The comparison (:func:`strata_sim.fidelity.compare`): same GPU type, same capacity type, Spearman's rho of the
   admitted order, real minus simulated waits in trace minutes; then the disagreeing kinds, and the control
   plane's own latencies (the floor of every real wait, which the simulator does not have).
5. One step (:func:`shadowed`): the control plane's placements replayed in the simulator, and Strata's policy
   asked at each admission pass what it would decide on that state: single decisions compared without the drift
   of two runs that differ once.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import strata_api as api
from strata_api import GPUType
from strata_api.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from strata_api.fleet import FleetPool
from strata_sim.__main__ import FLEET, TRACES
from strata_sim.engine import JobRecord, SimState, simulate
from strata_sim.fidelity import Decision, compare, percentile, same_kinds_by_group, table
from strata_sim.model import HOUR_S, Fleet, Job, load_fleet, throughput
from strata_sim.policies import StrataPolicy, expected_duration_s, pools
from strata_sim.traces import read_alibaba, synthetic

MAX_EXPECTED_S = api.MAX_EXPECTED_DURATION_SECONDS
"""The API's largest ``spec.scheduling.expectedDurationSeconds`` (30 days): every job's work is capped at it."""
NAMESPACE = "fidelity"
CHECKPOINT_S = 1800


# -- the slice -------------------------------------------------------------------------------------------------
def trace_slice(trace: str, jobs: int, traces: Path, checkpoint_s: float = CHECKPOINT_S) -> list[Job]:
    """The first ``jobs`` jobs in arrival order, renamed in that order, work capped (module docstring)."""
    if trace == "alibaba":
        every, _ = read_alibaba(traces / "alibaba_gpu_v2023", days=30, checkpoint_s=checkpoint_s)
    elif trace.startswith("synthetic:"):
        every = synthetic(int(trace.split(":", 1)[1]), days=7, seed=0, checkpoint_s=checkpoint_s)
    else:
        raise SystemExit(f"error: --trace {trace!r}: alibaba or synthetic:<jobs>")
    every.sort(key=lambda j: (j.arrival_s, j.key))
    return [
        dataclasses.replace(job, key=f"j{index:04d}", work_h=min(job.work_h, MAX_EXPECTED_S / HOUR_S))
        for index, job in enumerate(every[:jobs])
    ]


def simulated(jobs: Sequence[Job], fleet: Fleet, catalog: Catalog) -> list[Decision]:
    """The simulator's decisions: Strata without the hold-back, no spot reclaims (the placement still prices the
    catalog's hazard, as the extender does); each job's first placement, as the control plane's side records it."""
    calm = dataclasses.replace(catalog, hazard_per_hour={})
    policy = FirstPlacement(StrataPolicy(fleet, catalog, None, name="strata-no-holdback"))
    outcome = simulate(jobs, fleet, calm, policy)
    return [_decision(record, policy.first.get(record.job.key)) for record in outcome.records]


class FirstPlacement:
    """Strata's policy, noting each job's first GPU type and capacity type: :class:`JobRecord` keeps those of the
    last start, which differ for a job preempted and started again elsewhere."""

    def __init__(self, policy: StrataPolicy) -> None:
        self.policy, self.name = policy, policy.name
        self.first: dict[str, tuple[str, str]] = {}

    def tick(self, now_s: float, state: SimState) -> bool:
        return self.policy.tick(now_s, state)

    def schedule(self, now_s: float, state: SimState) -> None:
        self.policy.schedule(now_s, state)
        for key, run in state.runs.items():
            if run.started_s is not None and key not in self.first:
                capacity = "/".join(sorted({state.nodes[n].capacity_type for n in run.placed}))
                self.first[key] = (run.gpu_type.value, capacity)


def _decision(record: JobRecord, first: tuple[str, str] | None) -> Decision:
    gpu_type, capacity = first or (None, None)
    return Decision(record.job.key, record.job.arrival_s, record.first_start_s, gpu_type, capacity)


# -- the control plane -----------------------------------------------------------------------------------------
def job_manifest(job: Job) -> dict[str, Any]:
    """The trace job as a user would submit it: its gang, its pool, every GPU and capacity type."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.TRAINING_JOB,
        "metadata": {"name": job.key, "namespace": NAMESPACE},
        "spec": {
            "pool": job.pool,
            "workload": {"image": "registry.invalid/strata/workloads:fidelity"},
            "parallelism": {"data": job.workers, "tensor": job.gpus_per_worker},
            "training": {"globalBatchSize": 8 * job.workers, "steps": 1000, "precision": "bf16"},
            "checkpoint": {"intervalSeconds": int(job.checkpoint_s or CHECKPOINT_S)},
            "resources": {
                "gpus": job.gpus,
                "gpusPerWorker": job.gpus_per_worker,
                "gpuType": "Any",
                "capacityTypes": [c.value for c in api.CapacityType],
            },
            "scheduling": {"expectedDurationSeconds": expected_duration_s(job)},
        },
    }


def pool_manifests(fleet: Fleet) -> list[dict[str, Any]]:
    """The simulator's two pools (:func:`strata_sim.policies.pools`) as ResourcePools."""
    return [
        {
            "apiVersion": api.API_VERSION,
            "kind": api.RESOURCE_POOL,
            "metadata": {"name": pool.name},
            "spec": {
                "priority": pool.priority,
                "maxGPUs": pool.max_gpus,
                "gpuTypes": sorted(t.value for t in pool.gpu_types),
                "capacityTypes": sorted(pool.capacity_types),
                "preemptible": pool.preemptible,
            },
        }
        for pool in pools(fleet).values()
    ]


def dev_fleet(fleet: Fleet) -> Any:
    """The simulator's fleet (already scaled) as the dev tooling's kwok pools: one pool per fleet-file pool."""
    from strata_dev.fleet import Fleet as DevFleet

    counts: dict[tuple[str, str, str, str | None], int] = {}
    for node in fleet.nodes:
        key = (node.name.rsplit("-", 1)[0], node.gpu_type.value, node.capacity_type, node.zone)
        counts[key] = counts.get(key, 0) + 1
    return DevFleet(
        tuple(FleetPool(name, gpu, api.CapacityType(cap), n, zone) for (name, gpu, cap, zone), n in counts.items())
    )


@dataclasses.dataclass
class Seen:
    """What the watch saw of one job, in seconds since the replay's start (this process's monotonic clock)."""

    created: float | None = None
    admitted: float | None = None
    running: float | None = None
    gpu_type: str | None = None
    capacity: str | None = None
    nodes: tuple[str, ...] = ()
    """The nodes its workers first ran on (kwok names, ``<pool>-0007``)."""
    attempts: int = 0
    preempted: bool = False
    finished: bool = False
    """Its workers were told to exit."""
    succeeded: float | None = None
    exited: float | None = None
    """When its workers were told to exit (the operator frees its GPUs once they have, before it writes Succeeded)."""
    since: float | None = None
    """When the current attempt was admitted (None while queued)."""
    since_type: str | None = None
    since_running: bool = False
    done_h: float = 0.0
    """Reference work saved by earlier attempts, at their checkpoints (the simulator's rule)."""


class Watcher(threading.Thread):
    """Follows the namespace's TrainingJobs and records, per job, the first admission, the first run, the GPU
    type granted and the capacity types the workers ran on."""

    def __init__(self, custom: Any, t0: float, seen: dict[str, Seen], saved_h: Any) -> None:
        super().__init__(daemon=True)
        self.custom, self.t0, self.seen = custom, t0, seen
        self.saved_h = saved_h
        """(job, GPU type, real seconds it ran) -> reference hours its checkpoints saved."""
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run(self) -> None:
        from kubernetes import watch

        while not self.stopping.is_set():
            try:
                listed = self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.TRAINING_JOBS)
                for item in listed["items"]:
                    self.record(item)
                stream = watch.Watch().stream(
                    self.custom.list_namespaced_custom_object, api.GROUP, api.VERSION, NAMESPACE, api.TRAINING_JOBS,
                    resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=30,
                )  # fmt: skip
                for event in stream:
                    self.record(event["object"])
                    if self.stopping.is_set():
                        return
            except Exception as error:  # an expired or broken watch is relisted; one ended by the stop is not
                if self.stopping.is_set():
                    return
                print(f"watch: {type(error).__name__}: {error}; relisting", file=sys.stderr)
                time.sleep(0.2)

    def record(self, item: dict[str, Any]) -> None:
        now = time.monotonic() - self.t0
        status = item.get("status") or {}
        phase = status.get("phase")
        placement = status.get("placement") or {}
        with self.lock:
            seen = self.seen.setdefault(item["metadata"]["name"], Seen())
            attempt = int(status.get("attempt") or 0)
            if attempt > seen.attempts and seen.attempts:
                seen.preempted = True  # admitted again: the first admission's GPUs were taken back
            seen.attempts = max(seen.attempts, attempt)
            if phase in ("Admitted", "Running", "Succeeded") and seen.admitted is None:
                seen.admitted = now
                seen.gpu_type = placement.get("gpuType")
            if phase in ("Running", "Succeeded") and placement.get("capacityTypes") and seen.capacity is None:
                seen.running = now
                seen.capacity = "/".join(sorted(placement["capacityTypes"]))
                seen.nodes = tuple(placement.get("nodes") or ())
            if phase == "Succeeded" and seen.succeeded is None:
                seen.succeeded = now
            admitted = phase in ("Admitted", "Running")
            if admitted and seen.since is None:
                seen.since, seen.since_type, seen.since_running = now, placement.get("gpuType"), False
            if phase == "Running" and seen.since is not None:
                seen.since_running = True
            if phase in ("Queued", "Restarting") and seen.since is not None:  # preempted or restarted: requeued
                name = item["metadata"]["name"]
                seen.done_h += self.saved_h(name, seen.since_type, now - seen.since)
                seen.since, seen.preempted, seen.finished = None, True, False


def serve_extender(kubeconfig: str, port: int, store: Path) -> int:
    """The extender as its own process, without demand recording or forecasts (no hold-back), until SIGTERM."""
    from strata_scheduler.service import ExtenderService, Parts
    from strata_scheduler.settings import Settings

    sys.setswitchinterval(Settings.gil_switch_interval_s)
    settings = Settings(port=port, kubeconfig=kubeconfig, store=store)
    service = ExtenderService(settings, load_catalog(DEFAULT_CATALOG), Parts(record=False, forecast=False)).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    service.stop()
    return 0


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def replay(
    jobs: Sequence[Job], fleet: Fleet, catalog: Catalog, hour_s: float, args: argparse.Namespace
) -> dict[str, Seen]:
    """Run the slice on a fresh local control plane (module docstring, step 3); what the watch saw of each job."""
    workdir = Path(tempfile.mkdtemp(prefix="strata-fidelity-"))
    try:
        seen = _replay_in(workdir, jobs, fleet, catalog, hour_s, args)
    except BaseException:
        print(f"the replay failed; the components' logs are in {workdir}", file=sys.stderr)
        raise
    shutil.rmtree(workdir, ignore_errors=True)
    return seen


def _replay_in(
    workdir: Path, jobs: Sequence[Job], fleet: Fleet, catalog: Catalog, hour_s: float, args: argparse.Namespace
) -> dict[str, Seen]:
    from kubernetes import client, config

    from strata_dev import binaries
    from strata_dev.cluster import EXIT_CODE_ANNOTATION, ClusterSettings, LocalCluster, annotate_pods
    from strata_dev.fleet import create_fleet, create_namespace
    from strata_dev.paths import CRDS
    from strata_dev.processes import free_port, spawn, terminate
    from strata_dev.stack import apply_worker_policy, run_strata_scheduler
    from strata_operator.core.pods import worker_name

    bin_dir = binaries.ensure(quiet=True)
    processes = []
    with LocalCluster(ClusterSettings(), bin_dir=bin_dir) as cluster:
        api_client = config.new_client_from_config(str(cluster.kubeconfig))
        core, custom = client.CoreV1Api(api_client), client.CustomObjectsApi(api_client)
        took = create_fleet(core, dev_fleet(fleet))
        print(f"control plane up; fleet of {len(fleet.nodes)} kwok nodes Ready in {took:.0f} s", file=sys.stderr)
        cluster.kubectl("apply", "-f", str(CRDS))  # as the cluster tests install them
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        apply_worker_policy(bin_dir, cluster.kubeconfig)
        create_namespace(core, NAMESPACE)
        for body in pool_manifests(fleet):
            custom.create_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, body)
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PYTHONUNBUFFERED": "1"}
        try:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            extender_args = [sys.executable, __file__, "--serve-extender", "--kubeconfig", str(cluster.kubeconfig),
                             "--port", str(port), "--store", str(workdir / "demand.sqlite")]  # fmt: skip
            processes.append(spawn(extender_args, workdir / "extender.log", env=env))
            deadline = time.monotonic() + 120
            while not _ready(f"{url}/readyz"):
                if processes[-1].poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"error: the extender did not become ready; log: {workdir / 'extender.log'}")
                time.sleep(0.5)
            processes.append(run_strata_scheduler(bin_dir, cluster.kubeconfig, url, workdir / "kube-scheduler.log"))
            operator_args = [sys.executable, "-m", "strata_operator", "--standalone", "--namespaces", NAMESPACE,
                             "--extender-url", url, "--metrics-port", "0", "--log-level", "WARNING",
                             "--admission-interval-s", str(args.admission_interval_s)]  # fmt: skip
            processes.append(spawn(operator_args, workdir / "operator.log", env=env))
            time.sleep(3)
            return _drive(jobs, catalog, hour_s, args.settle_s, core, custom, annotate_pods, EXIT_CODE_ANNOTATION,
                          worker_name)  # fmt: skip
        finally:
            for process in reversed(processes):
                terminate(process)


def _drive(
    jobs: Sequence[Job],
    catalog: Catalog,
    hour_s: float,
    settle_s: float,
    core: Any,
    custom: Any,
    annotate_pods: Any,
    exit_annotation: str,
    worker_name: Any,
) -> dict[str, Seen]:
    """Submit each job at its compressed arrival, end each at its compressed run time after admission; what the
    watch saw of each job, in real seconds from the start."""
    seen: dict[str, Seen] = {job.key: Seen() for job in jobs}
    t0 = time.monotonic()
    by_key = {job.key: job for job in jobs}

    def saved_h(key: str, gpu_type: str | None, ran_s: float) -> float:
        job = by_key[key]
        if gpu_type is None or not job.checkpoint_s:
            return 0.0
        ran = ran_s * HOUR_S / hour_s
        return math.floor(ran / job.checkpoint_s) * job.checkpoint_s / HOUR_S * throughput(catalog, GPUType(gpu_type))

    watcher = Watcher(custom, t0, seen, saved_h)
    watcher.start()
    queue = sorted(jobs, key=lambda j: (j.arrival_s, j.key))
    last_arrival = queue[-1].arrival_s / HOUR_S * hour_s if queue else 0.0
    submitted = 0
    creators = ThreadPoolExecutor(8)

    def create(job: Job) -> None:
        body = job_manifest(job)
        custom.create_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.TRAINING_JOBS, body)

    while True:
        now = time.monotonic() - t0
        arrived = []
        while submitted < len(queue) and queue[submitted].arrival_s / HOUR_S * hour_s <= now:
            arrived.append(queue[submitted])
            submitted += 1
        if arrived:  # jobs of one instant are created together, as they arrive together in the trace
            for job in arrived:
                seen[job.key].created = time.monotonic() - t0
            list(creators.map(create, arrived))
        with watcher.lock:
            due = [
                job
                for job in queue
                if (s := seen[job.key]).since is not None
                and s.since_running
                and s.since_type is not None
                and not s.finished
                and now >= s.since + (job.work_h - s.done_h) / throughput(catalog, GPUType(s.since_type)) * hour_s
            ]
            for job in due:
                seen[job.key].finished = True
        for job in due:
            try:
                annotate_pods(
                    core, NAMESPACE, [worker_name(job.key, i) for i in range(job.workers)], {exit_annotation: "0"}
                )
            except Exception as error:  # its pods went away meanwhile (preempted): it ends in its next attempt
                print(f"{job.key}: cannot end its workers: {type(error).__name__}", file=sys.stderr)
                continue
            with watcher.lock:
                seen[job.key].exited = now
        with watcher.lock:
            all_running = all(s.running is not None for s in seen.values())
        if submitted == len(queue) and (all_running or now > last_arrival + settle_s):
            break
        time.sleep(0.05)
    watcher.stopping.set()
    creators.shutdown()
    print(f"replayed {len(jobs)} jobs in {time.monotonic() - t0:.0f} s ({hour_s:g} s per trace hour)", file=sys.stderr)
    with watcher.lock:
        return {key: dataclasses.replace(s) for key, s in seen.items()}


def run_h(job: Job, gpu_type: str, catalog: Catalog) -> float:
    """Hours the job runs on ``gpu_type`` (the simulator's model: reference work over relative throughput)."""
    return job.work_h / throughput(catalog, GPUType(gpu_type))


def real_decisions(jobs: Sequence[Job], seen: dict[str, Seen], hour_s: float) -> list[Decision]:
    """What the control plane decided, in trace seconds: arrival at the job's creation, start at its admission
    (a job counts as started once its workers ran, which gives its capacity type)."""
    scale = HOUR_S / hour_s
    out = []
    for job in jobs:
        s = seen[job.key]
        arrival = s.created * scale if s.created is not None else job.arrival_s
        start = s.admitted * scale if s.admitted is not None and s.capacity is not None else None
        out.append(Decision(job.key, arrival, start, s.gpu_type, s.capacity))
    return out


PASS_S = 0.2
"""Jobs the watch saw admitted within this many real seconds of each other came from one admission pass (passes
are ``--admission-interval-s`` apart): the shadow decides them together, as the pass did."""


@dataclasses.dataclass(frozen=True)
class Matched:
    """The one-step comparison (:func:`shadowed`): for every job the control plane admitted, what Strata's policy
    decides on the control plane's own state at that moment (earlier jobs where they really ran, until they really
    ended), against what the control plane did."""

    decisions: list[Decision]
    """The shadow's choice per job, at the real admission time (not started: it would have left the job waiting)."""
    real: list[Decision]
    passes: dict[str, str]
    """Job -> the admission pass it came from (its first job's key)."""
    misplaced: int
    """Jobs whose real node had no room in the replayed state (the watch saw it freed late): put on another node
    of the same kind."""


class Shadowed:
    """A policy that places every job where the control plane did, when it did; before each pass it asks Strata's
    policy, on a copy of the state, what it would do."""

    name = "shadowed"

    def __init__(self, strata: StrataPolicy, real: dict[str, Seen]) -> None:
        self.strata, self.real = strata, real
        self.chosen: dict[str, tuple[str, str] | None] = {}
        self.misplaced = 0

    def tick(self, now_s: float, state: SimState) -> bool:
        return False

    def schedule(self, now_s: float, state: SimState) -> None:
        due = state.waiting()  # every job arrives at its real admission
        if not due:
            return
        shadow = copy.deepcopy(state)
        shadow._finish = lambda key, at: None  # the copy's runs never finish: it is asked, then dropped
        self.strata.schedule(now_s, shadow)
        for job in due:
            run = shadow.runs.get(job.key)
            placed = run is not None and run.workers == job.workers
            kinds = "/".join(sorted({shadow.nodes[n].capacity_type for n in run.placed})) if run else ""
            self.chosen[job.key] = (run.gpu_type.value, kinds) if run is not None and placed else None
        for job in due:
            self._place_as_real(job, state)

    def _place_as_real(self, job: Job, state: SimState) -> None:
        seen = self.real[job.key]
        assert seen.gpu_type is not None
        gpu_type = GPUType(seen.gpu_type)
        wanted = [_sim_name(n) for n in seen.nodes]
        capacity = {state.nodes[n].capacity_type for n in wanted if n in state.nodes}
        for _ in range(job.workers):
            fits = [n for n in wanted if n in state.free and state.free[n] >= job.gpus_per_worker]
            if not fits:
                self.misplaced += 1
                kind = [
                    n
                    for n, node in state.nodes.items()
                    if (node.gpu_type, node.capacity_type in capacity) == (gpu_type, True)
                ]
                fits = sorted(
                    (n for n in kind if state.free[n] >= job.gpus_per_worker), key=lambda n: (state.free[n], n)
                )
            if not fits:
                return  # no room of that kind at all: it stays queued (counted as misplaced)
            state.place(job, gpu_type, fits[0], 1)


def _sim_name(kwok_name: str) -> str:
    """A kwok node's name (``h100-reserved-0001``, :func:`strata_dev.fleet.node_manifest`) as the simulator names
    the same node (``h100-reserved-1``, :func:`strata_sim.model.load_fleet`)."""
    pool, index = kwok_name.rsplit("-", 1)
    return f"{pool}-{int(index)}"


def shadowed(jobs: Sequence[Job], seen: dict[str, Seen], hour_s: float, fleet: Fleet, catalog: Catalog) -> Matched:
    """Replay the control plane's placements in the simulator (each job from its admission until it was seen
    Succeeded, on the nodes it ran on) and ask Strata's policy at each pass what it would decide: the agreement of
    single decisions on one state, free of the drift two runs accumulate once they differ."""
    scale = HOUR_S / hour_s
    admitted = sorted((s.admitted, k) for k, s in seen.items() if s.admitted is not None and s.nodes and s.gpu_type)
    pass_start: dict[str, float] = {}
    passes: dict[str, str] = {}
    first, head = -math.inf, ""
    for at, key in admitted:
        if at - first > PASS_S:
            first, head = at, key
        pass_start[key], passes[key] = first, head
    replayed = []
    for job in jobs:
        s = seen[job.key]
        if job.key not in pass_start or s.gpu_type is None:
            continue
        work_h = job.work_h
        ended = min((t for t in (s.exited, s.succeeded) if t is not None), default=None)
        if ended is not None:
            held_h = (ended - pass_start[job.key]) * scale / HOUR_S
            work_h = max(work_h, held_h * throughput(catalog, GPUType(s.gpu_type)))
        replayed.append(dataclasses.replace(job, arrival_s=pass_start[job.key] * scale, work_h=work_h))
    policy = Shadowed(StrataPolicy(fleet, catalog, None, name="strata-no-holdback"), seen)
    simulate(replayed, fleet, dataclasses.replace(catalog, hazard_per_hour={}), policy)
    real = [d for d in real_decisions(jobs, seen, hour_s) if d.key in pass_start]
    decisions = []
    for d in real:
        chosen = policy.chosen.get(d.key)
        start = d.start_s if chosen is not None else None
        decisions.append(Decision(d.key, d.arrival_s, start, *(chosen or (None, None))))
    return Matched(decisions, real, passes, policy.misplaced)


def timings(jobs: Sequence[Job], seen: dict[str, Seen], hour_s: float, catalog: Catalog) -> str:
    """The control plane's own latencies (real seconds and trace minutes): what every real wait starts from."""
    scale = HOUR_S / hour_s
    by_key = {job.key: job for job in jobs}
    admit = [s.admitted - s.created for s in seen.values() if s.admitted is not None and s.created is not None]
    run = [s.running - s.admitted for s in seen.values() if s.running is not None and s.admitted is not None]
    extra = [  # how much longer than its compressed run time a job held its GPUs (exit -> Succeeded seen)
        s.succeeded - s.admitted - run_h(by_key[k], s.gpu_type, catalog) * hour_s
        for k, s in seen.items()
        if s.succeeded is not None and s.admitted is not None and s.gpu_type is not None and not s.preempted
    ]

    def show(values: list[float]) -> str:
        median, p95 = percentile(values, 0.5), percentile(values, 0.95)
        return f"median {median:.2f} s, p95 {p95:.2f} s ({median * scale / 60:.1f} / {p95 * scale / 60:.1f} trace min)"

    preempted = sum(s.preempted for s in seen.values())
    return (
        f"created -> Admitted: {show(admit)}\nAdmitted -> Running: {show(run)}\n"
        f"held past the run time ({len(extra)} jobs ended): {show(extra)}\njobs admitted twice (preempted): {preempted}"
    )


# -- the command -----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", default="alibaba", help="alibaba, or synthetic:<jobs> (7 days, seed 0)")
    parser.add_argument("--traces", type=Path, default=TRACES)
    parser.add_argument("--jobs", type=int, default=150, help="the slice: the first jobs in arrival order")
    parser.add_argument("--fleet", type=Path, default=FLEET)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument(
        "--hour-s",
        type=float,
        default=20.0,
        help="real seconds per trace hour (at 10 the control plane's own latencies decide races between a job's end "
        "and the next arrival: docs/simulation.md, Fidelity)",
    )
    parser.add_argument(
        "--settle-s", type=float, default=60.0, help="real seconds to wait for starts after the last arrival"
    )
    parser.add_argument("--admission-interval-s", type=float, default=0.5, help="the operator's admission interval")
    parser.add_argument("--json", type=Path, default=None, help="write both sides' decisions here")
    parser.add_argument("--sim-only", action="store_true", help="the simulator's side alone (no cluster)")
    parser.add_argument("--serve-extender", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--kubeconfig", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_extender:
        return serve_extender(args.kubeconfig, args.port, args.store)
    catalog = load_catalog(DEFAULT_CATALOG)
    fleet = load_fleet(args.fleet, args.scale)
    jobs = trace_slice(args.trace, args.jobs, args.traces)
    span_h = max((j.arrival_s for j in jobs), default=0.0) / HOUR_S
    print(
        f"slice: {len(jobs)} jobs of {args.trace} over {span_h:.1f} trace hours ({span_h * args.hour_s / 60:.1f} "
        f"min at {args.hour_s:g} s per hour); fleet {len(fleet.nodes)} nodes, {fleet.gpus()} GPUs"
    )
    sim = simulated(jobs, fleet, catalog)
    if args.sim_only:
        print(table(compare(sim, sim)))
        return 0
    seen = replay(jobs, fleet, catalog, args.hour_s, args)
    real = real_decisions(jobs, seen, args.hour_s)
    print(timings(jobs, seen, args.hour_s, catalog))
    print(f"\nsimulated ({len(jobs)} jobs at their trace times) against the control plane:")
    print(table(compare(sim, real)))
    matched = shadowed(jobs, seen, args.hour_s, fleet, catalog)
    one_step = compare(matched.decisions, matched.real)
    print(
        f"\none step: Strata's policy on the control plane's own state at each admission pass ({one_step.jobs} jobs; "
        f"{matched.misplaced} put on another node of their kind, their real node not yet free in the replay):"
    )
    lines = table(one_step).splitlines()
    by_pass = same_kinds_by_group(matched.decisions, matched.real, matched.passes)
    share = by_pass / one_step.started_both if one_step.started_both else 0.0
    print("\n".join([*lines[1:4], f"{'same kinds within each pass':<33}  {by_pass} ({share:.1%})", *lines[8:]]))
    if args.json is not None:
        step = {d.key: dataclasses.asdict(d) for d in matched.decisions}
        rows = [
            {"sim": dataclasses.asdict(s), "real": dataclasses.asdict(r), "one_step": step.get(s.key),
             "pass": matched.passes.get(s.key), "seen": dataclasses.asdict(seen[s.key])}
            for s, r in zip(sim, real, strict=True)
        ]  # fmt: skip
        args.json.write_text(json.dumps(rows, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
