"""``make demo``: the local cluster with the GPU fleet, Strata on it, and the example jobs from queue to finish.

:func:`run_demo` is the scenario; each step is a function below, in the order the README describes them:

1. start the local cluster with the fleet, and show it;
2. start Strata on it: the CRDs, the scheduler extender, a kube-scheduler with the ``strata-scheduler`` profile
   calling it, and the operator;
3. submit the example ResourcePools and TrainingJobs and follow them until they settle: three run at once,
   ``finetune-h100`` waits in the queue with its reason and position;
4. show where each job landed and what its capacity costs per hour;
5. reclaim a spot node: the spot job's workers report a checkpoint, the node under them is taken away, and the
   whole gang restarts from that checkpoint after the operator's backoff;
6. end the first job's workers, so the queued job is admitted into the GPUs it frees;
7. end every other job's workers, wait until all have finished;
8. with the real node (the default): train ``cpu-tiny`` in real pods on it, from the workloads image built by
   ``make images`` and imported into the node's containerd meanwhile (with the serving image), printing worker
   0's loss as it falls, until the job has Succeeded, its checkpoints on the claim the example InferenceService
   reads;
9. serve them: the example InferenceService on the real node, asked and loaded through its router until it
   scales up, and one replica replaced under the load (:mod:`strata_dev.demo_serving`); then stop everything.

kwok nodes run no containers, so for the GPU jobs the demo acts as the workers would: it annotates their pods
with progress (:class:`strata_api.workload.Progress`) and with the exit code their processes end with.
``cpu-tiny`` is the one job that really trains; without the real node (``--no-real-node``) it runs on the kwok CPU
nodes with the others.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

import strata_api as api
from strata_api.catalog import DEFAULT_CATALOG, load_catalog
from strata_api.workload import ExitCode, Progress
from strata_dev import demo_serving, images
from strata_dev.cluster import (
    EXIT_CODE_ANNOTATION,
    ClusterError,
    ClusterSettings,
    LocalCluster,
    annotate_pods,
    core_api,
    free_port,
)
from strata_dev.fleet import Fleet, create_namespace, start_cluster_with_fleet
from strata_dev.node import KWOK_ONLY_HINT, NODE_ROOTS, preflight
from strata_dev.node_config import NODE_NAME, REAL_NODE_LABEL
from strata_dev.paths import EXAMPLES
from strata_dev.stack import Stack
from strata_dev.tables import node_table, placement_table
from strata_dev.timeline import Timeline

NAMESPACE = "demo"
"""Where the example TrainingJobs run."""
CHECKPOINT_STEP, REACHED_STEP = 100, 140
"""What the spot job's workers report before their node is reclaimed: the restart loses the steps between."""
FIRST_TO_FINISH = "debug-h100"
"""The example job the demo ends first: it holds one of the two reserved H100 nodes that ``finetune-h100`` waits for."""
POOLS_SETTLE_S = 15.0
"""The pools' status follows at the next admission pass."""
REAL_JOB = EXAMPLES / "trainingjobs" / "cpu-tiny.yaml"
"""The example that trains in real pods when the demo has the real node."""
REAL_NAMESPACE = "demo-real"
"""Where it runs: apart from the GPU story's jobs, whose workers the demo ends by annotation."""
REAL_JOB_TIMEOUT_S = 600.0
"""Longest the demo waits for it to finish: 200 steps train in about a minute on 2 cores."""
LOSS_EVERY = 20
"""Print worker 0's loss every this many steps (and at the first and the last)."""
LOG_POLL_S = 1.0
"""How often the demo reads worker 0's log."""
IMPORT_HEADROOM_BYTES = 2 * 2**30
"""Free space the import must leave behind (the pods' own files, logs, the rest of the machine)."""


def run_demo(fleet: Fleet, wait_s: float, real_node: bool = True) -> int:
    """The whole scenario; ``wait_s`` bounds each wait on the GPU jobs. ``real_node``: add the real node, train
    ``cpu-tiny`` on it in real pods and serve what it trained (a host that cannot run containers is told why before
    anything starts)."""
    real = real_node_images() if real_node else None
    cluster = start_cluster_with_fleet(ClusterSettings(real_node=real_node), fleet)
    forwarded = free_port()  # where the host's operator reads the example service's router (demo_serving)
    try:
        show_the_cluster(cluster)
        loading = ImageImport(cluster, *(built.archive for built in real.values())) if real else None
        serving_args = demo_serving.operator_args(REAL_NAMESPACE, forwarded, real["serving"].ref) if real else []
        with strata_running(cluster, serving_args):
            timeline = submit_the_examples(cluster, leave_out=REAL_JOB if real_node else None)
            timeline.follow(timeline.settled, wait_s)
            show_where_jobs_run(cluster)
            reclaim_a_spot_node(cluster, timeline, wait_s)
            end_the_first_job(cluster, timeline, wait_s)
            end_every_job(cluster, timeline, wait_s)
            if real and loading:
                train_in_real_pods(cluster, real["workloads"].ref, loading)
                demo_serving.serve_what_it_trained(cluster, REAL_NAMESPACE, real["workloads"].ref, forwarded)
    finally:
        cluster.stop()
    print("demo done: the cluster is stopped (keep one running with `make up`)")
    return 0


REAL_NODE_IMAGES = ("workloads", "serving")
"""What the real node runs: ``cpu-tiny``'s workers and the example service's replicas, and the service's router."""


def real_node_images() -> dict[str, images.Built]:
    """The real node's image archives by name (``make images`` builds them; cached by content hash), once the host
    is known to be able to run the real node and to hold the images in its containerd."""
    preflight()
    built = {image.name: image for image in images.ensure(list(REAL_NODE_IMAGES))}
    size = sum(image.archive.stat().st_size for image in built.values())
    problem = import_space_problem(shutil.disk_usage(NODE_ROOTS).free, size)
    if problem:
        raise ClusterError(f"{problem}\n    {KWOK_ONLY_HINT}")
    return built


def import_space_problem(free_bytes: int, archive_bytes: int) -> str | None:
    """Why the real node's containerd cannot take the archive (None when it can): it keeps the image's layers and
    their unpacked snapshot, twice the archive, under :data:`NODE_ROOTS`; an import that runs out of space fills
    the disk that everything else on the machine writes to, and fails only after a minute or two."""
    needed = 2 * archive_bytes + IMPORT_HEADROOM_BYTES
    if free_bytes >= needed:
        return None
    return (
        f"the real node needs {needed / 2**30:.1f} GiB free under {NODE_ROOTS} for its images "
        f"({archive_bytes / 2**30:.1f} GiB, kept as layers and unpacked), {free_bytes / 2**30:.1f} GiB are free"
    )


def show_the_cluster(cluster: LocalCluster) -> None:
    """Its components and logs, the fleet's nodes, and the versions of kubectl and the API server."""
    print(cluster.describe())
    print(node_table(cluster.kubectl_json("nodes")["items"]))
    print(cluster.kubectl("version"))


@contextlib.contextmanager
def strata_running(cluster: LocalCluster, operator_args: list[str]) -> Iterator[Stack]:
    """Strata's CRDs, extender, ``strata-scheduler`` kube-scheduler and operator (with ``operator_args``) on
    ``cluster``, stopped on exit."""
    with Stack(cluster.bin_dir, cluster.kubeconfig, cluster.workdir / "stack", operator_args) as stack:
        print(f"CRDs installed; extender at {stack.extender_url}; kube-scheduler (strata-scheduler) and operator up")
        yield stack


def submit_the_examples(cluster: LocalCluster, leave_out: Path | None = None) -> Timeline:
    """Apply ``examples/pools`` and ``examples/trainingjobs`` (but ``leave_out``); the timeline of the jobs starts
    now."""
    cluster.kubectl("apply", "-f", str(EXAMPLES / "pools"))
    create_namespace(core_api(cluster.kubeconfig), NAMESPACE)
    files = [f"--filename={path}" for path in sorted((EXAMPLES / "trainingjobs").glob("*.yaml")) if path != leave_out]
    print(cluster.kubectl("apply", "-n", NAMESPACE, *files).strip())
    if leave_out is not None:
        print(f"({leave_out.stem} trains in real pods on {NODE_NAME} once the GPU jobs are done)")
    return Timeline(cluster, NAMESPACE)


def show_where_jobs_run(cluster: LocalCluster) -> None:
    """The pools and jobs as kubectl shows them, then each job's GPUs, capacity, nodes and cost per hour now."""
    print(cluster.kubectl("get", "resourcepools"))
    print(cluster.kubectl("get", "trainingjobs", "-n", NAMESPACE, "-o", "wide"))
    jobs = cluster.kubectl_json("trainingjobs", "-n", NAMESPACE)["items"]
    pods = cluster.kubectl_json("pods", "-n", NAMESPACE, "-l", api.LABEL_JOB)["items"]
    nodes = cluster.kubectl_json("nodes")["items"]
    print(placement_table(jobs, pods, nodes, load_catalog(DEFAULT_CATALOG), datetime.now(UTC).hour))


def reclaim_a_spot_node(cluster: LocalCluster, timeline: Timeline, wait_s: float) -> None:
    """A running spot job's workers report a checkpoint (as the workload does after each one), then the spot node
    under them is taken away (in a cloud: reclaimed; here: the kwok node deleted): the whole gang restarts from that
    checkpoint on other nodes, after the operator's backoff."""
    job = next((name for name in timeline.running() if "spot" in name), None)
    if job is None:
        return
    print(
        f"\n{job}'s workers report a checkpoint at step {CHECKPOINT_STEP} (at step {REACHED_STEP}), "
        "as the workload does"
    )
    core = core_api(cluster.kubeconfig)
    workers = _workers(core, job)
    progress = Progress(step=REACHED_STEP, checkpoint_step=CHECKPOINT_STEP, checkpoint_time=datetime.now(UTC))
    annotate_pods(core, NAMESPACE, [w.metadata.name for w in workers], {api.ANN_PROGRESS: progress.encode()})
    timeline.follow(lambda: timeline.last_checkpoint_step(job) == CHECKPOINT_STEP, wait_s)
    node = workers[0].spec.node_name
    print(
        f"spot reclaim: node {node} is taken away from {job} (its last checkpoint: step {CHECKPOINT_STEP})", flush=True
    )
    core.delete_node(node)
    timeline.follow(lambda: timeline.restarted_and_running(job), wait_s)
    print(cluster.kubectl("get", "trainingjob", job, "-n", NAMESPACE, "-o", "wide"))


def end_the_first_job(cluster: LocalCluster, timeline: Timeline, wait_s: float) -> None:
    """End :data:`FIRST_TO_FINISH`, so the queued job is admitted into the GPUs it frees; wait until nothing is
    queued and it has finished."""
    print(
        "\nkwok nodes run no containers: the demo ends each job's workers the way their processes would, "
        f"with exit code 0 (the {EXIT_CODE_ANNOTATION} annotation)"
    )
    if FIRST_TO_FINISH not in timeline.running():
        return
    end_workers(cluster, FIRST_TO_FINISH)
    timeline.follow(lambda: not timeline.waiting() and FIRST_TO_FINISH in timeline.finished(), wait_s)


def end_every_job(cluster: LocalCluster, timeline: Timeline, wait_s: float) -> None:
    """End each job's workers once it runs (a job admitted meanwhile too), wait until all have finished and the
    pools count none, and show jobs and pools."""
    ended: set[str] = set()

    def end_the_running() -> bool:
        for name in timeline.running():
            if name not in ended:
                end_workers(cluster, name)
                ended.add(name)
        return timeline.all_finished()

    timeline.follow(end_the_running, wait_s)
    print(cluster.kubectl("get", "trainingjobs", "-n", NAMESPACE))
    deadline = time.monotonic() + POOLS_SETTLE_S
    while time.monotonic() < deadline and not pools_idle(cluster):
        time.sleep(0.5)
    print(cluster.kubectl("get", "resourcepools"))


def end_workers(cluster: LocalCluster, job: str, code: int = ExitCode.SUCCEEDED) -> None:
    """End every live worker of ``job`` with ``code``, as its process would."""
    core = core_api(cluster.kubeconfig)
    names = [w.metadata.name for w in _workers(core, job) if w.metadata.deletion_timestamp is None]
    annotate_pods(core, NAMESPACE, names, {EXIT_CODE_ANNOTATION: str(code)})
    print(f"ended the workers of {job} (exit code {code})", flush=True)


def pools_idle(cluster: LocalCluster) -> bool:
    """No ResourcePool's status counts an admitted or a queued job any more."""
    statuses = [pool.get("status") or {} for pool in cluster.kubectl_json("resourcepools")["items"]]
    return not any(s.get("admittedJobs") or s.get("queuedJobs") for s in statuses)


class ImageImport:
    """Image archives imported into the real node's containerd in the background, while the GPU story runs
    (containerd unpacks the 5.8 GiB workloads image for over a minute)."""

    def __init__(self, cluster: LocalCluster, *archives: Path) -> None:
        self.archives = archives
        self.seconds: float | None = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(cluster,), name="strata-demo-import", daemon=True)
        self._thread.start()

    def _run(self, cluster: LocalCluster) -> None:
        begin = time.monotonic()
        try:
            cluster.load_images(*self.archives)
        except Exception as err:  # raised again in the demo's own thread by wait()
            self.error = err
        else:
            self.seconds = time.monotonic() - begin

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> float:
        """The seconds the import took, once it is done; its error if it failed."""
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.seconds is not None
        return self.seconds


def real_job_manifest(example: Path, image: str, claim: str) -> dict[str, Any]:
    """The TrainingJob in ``example`` on the real node (``resources.nodeSelector``: kwok's CPU nodes fit its
    workers too, and run no containers), with ``image`` as its workload image, never pulled (the node holds it), and
    its checkpoints on ``claim`` (which the example service then serves)."""
    job: dict[str, Any] = yaml.safe_load(example.read_text())
    job["spec"]["workload"].update(image=image, imagePullPolicy="Never")
    job["spec"]["resources"]["nodeSelector"] = {REAL_NODE_LABEL: "true"}
    job["spec"].setdefault("checkpoint", {})["persistentVolumeClaim"] = claim
    return job


@dataclass(frozen=True)
class StepReport:
    """One optimizer step as rank 0 of the workload logs it: the step, its loss, and when (Unix seconds)."""

    step: int
    loss: float
    at: float


def step_report(line: str) -> StepReport | None:
    """A step line of the workload's JSON log (``{"ts": 1764880000.1, "msg": "step", "step": 10, "loss": 5.4,
    ...}``); None for any other line (start-up messages, checkpoints, what kubectl says while the pod starts)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("msg") != "step":
        return None
    step, loss, at = record.get("step"), _number(record.get("loss")), _number(record.get("ts"))
    if type(step) is not int or loss is None or at is None:
        return None
    return StepReport(step, loss, at)


def _number(value: object) -> float | None:
    """A finite JSON number as a float (not a bool, which JSON tells apart); None otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class TrainingLog:
    """Worker 0's log, read every :data:`LOG_POLL_S` from the moment its container starts (again after a restart)
    until :meth:`close`: its step reports, every :data:`LOSS_EVERY`-th one printed as it arrives with the seconds
    since ``since`` (Unix time: the log's timestamps are the container's clock, which is the host's).

    The log is read whole each time, not followed (``kubectl logs --follow``): on the real node a follow that
    began while the workload was starting delivered no line until the container ended, and a read shows every
    line written so far."""

    def __init__(self, cluster: LocalCluster, namespace: str, job: str, total_steps: int, since: float) -> None:
        self.kubeconfig, self.namespace = cluster.kubeconfig, namespace
        self.selector = f"{api.LABEL_JOB}={job},{api.LABEL_WORKER_INDEX}=0"
        self.job, self.total_steps, self.since = job, total_steps, since
        self.steps: list[StepReport] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="strata-demo-training-log", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        core = core_api(self.kubeconfig)  # a client of this thread's own
        while not self._closing.wait(LOG_POLL_S):
            self._read(core)
        self._read(core)  # what was written since the last read: the job has finished

    def _read(self, core: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            for pod in core.list_namespaced_pod(self.namespace, label_selector=self.selector).items:
                # the raw text: the client would parse a log that is one JSON document into a dict
                response = core.read_namespaced_pod_log(pod.metadata.name, self.namespace, _preload_content=False)
                for line in response.data.decode(errors="replace").splitlines():
                    self._take(step_report(line))
        except ApiException:
            return  # no container yet (ContainerCreating), or the pod is being replaced: read again later

    def _take(self, report: StepReport | None) -> None:
        if report is None or (self.steps and report.step <= self.steps[-1].step):
            return  # not a step, or a step taken before (read again, or repeated by a gang restarted from a checkpoint)
        self.steps.append(report)
        if report.step == 1 or report.step % LOSS_EVERY == 0 or report.step == self.total_steps:
            elapsed = report.at - self.since
            line = f"step {report.step:>4}/{self.total_steps}  loss {report.loss:.4f}"
            print(f"  {elapsed:5.1f}s  {self.job:14} {line}", flush=True)

    def close(self) -> None:
        """Read the log a last time and stop."""
        self._closing.set()
        self._thread.join(30.0)


def train_in_real_pods(cluster: LocalCluster, image: str, loading: ImageImport) -> None:
    """:data:`REAL_JOB` from ``image`` on the real node, its loss printed as it trains, until it has Succeeded."""
    print(f"\nA job that really trains: {REAL_JOB.stem} in real pods on {NODE_NAME}, image {image}", flush=True)
    if not loading.done():
        print(f"  waiting for the image's import into {NODE_NAME}'s containerd ...", flush=True)
    print(f"  imported into {NODE_NAME}'s containerd in {loading.wait():.0f}s (nothing is pulled)")
    create_namespace(core_api(cluster.kubeconfig), REAL_NAMESPACE)
    job = real_job_manifest(REAL_JOB, image, demo_serving.checkpoint_claim(cluster, REAL_NAMESPACE))
    name, total_steps = job["metadata"]["name"], int(job["spec"]["training"]["steps"])
    applied = time.time()
    print(cluster.kubectl("apply", "-n", REAL_NAMESPACE, "-f", "-", input=json.dumps(job)).strip(), flush=True)
    timeline = Timeline(cluster, REAL_NAMESPACE)
    log = TrainingLog(cluster, REAL_NAMESPACE, name, total_steps, applied)
    try:
        timeline.follow(lambda: name in timeline.finished(), REAL_JOB_TIMEOUT_S)
    finally:
        log.close()
    show_the_real_run(cluster, name, timeline.phases.get(name), log, applied)


def show_the_real_run(cluster: LocalCluster, job: str, phase: str | None, log: TrainingLog, applied: float) -> None:
    """Where the workers ran (node, container runtime, container ids, exit codes) and how the loss fell; a job
    that did not succeed fails the demo with its status and worker 0's last lines."""
    print(cluster.kubectl("get", "pods", "-n", REAL_NAMESPACE, "-o", "wide"))
    info = cluster.kubectl_json("node", NODE_NAME)["status"]["nodeInfo"]
    runtime = f"kubelet {info['kubeletVersion']}, {info['containerRuntimeVersion']}"
    print(f"{job}'s workers ran as containers on {NODE_NAME} ({runtime}; a real node, not a kwok one):")
    selector = f"{api.LABEL_JOB}={job}"
    for pod in cluster.kubectl_json("pods", "-n", REAL_NAMESPACE, "-l", selector)["items"]:
        for container in pod.get("status", {}).get("containerStatuses", []):
            ended = container.get("state", {}).get("terminated") or {}
            started = api.parse_time(ended.get("startedAt"))
            after = f"started {started.timestamp() - applied:.0f}s after kubectl apply, " if started else ""
            container_id = container.get("containerID", "-")[:25]
            print(f"  {pod['metadata']['name']:20} {container_id}...  {after}exit code {ended.get('exitCode', '-')}")
    if phase != "Succeeded":
        status = cluster.kubectl("get", "trainingjob", job, "-n", REAL_NAMESPACE, "-o", "jsonpath={.status}")
        tail = cluster.kubectl("logs", "-n", REAL_NAMESPACE, "-l", f"{selector},{api.LABEL_WORKER_INDEX}=0",
                               "--tail=20", check=False)  # fmt: skip
        raise ClusterError(f"{job} in real pods ended {phase or 'without a phase'}: {status}\nworker 0:\n{tail}")
    if log.steps:
        first, last = log.steps[0], log.steps[-1]
        print(
            f"{job} Succeeded: loss {first.loss:.4f} at step {first.step} -> {last.loss:.4f} at step {last.step}; "
            f"its first training step came {first.at - applied:.1f}s after kubectl apply"
        )


def _workers(core: Any, job: str) -> list[Any]:
    return list(core.list_namespaced_pod(NAMESPACE, label_selector=f"{api.LABEL_JOB}={job}").items)
