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
7. end every other job's workers, wait until all have finished, and stop everything.

kwok nodes run no containers, so the demo acts as the workers would: it annotates their pods with progress
(:class:`strata_api.workload.Progress`) and with the exit code their processes end with.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import strata_api as api
from strata_api.catalog import DEFAULT_CATALOG, load_catalog
from strata_api.workload import ExitCode, Progress
from strata_dev.cluster import EXIT_CODE_ANNOTATION, ClusterSettings, LocalCluster, annotate_pods, core_api
from strata_dev.fleet import Fleet, create_namespace, start_cluster_with_fleet
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


def run_demo(fleet: Fleet, wait_s: float) -> int:
    """The whole scenario; ``wait_s`` bounds each wait on the jobs."""
    cluster = start_cluster_with_fleet(ClusterSettings(), fleet)
    try:
        show_the_cluster(cluster)
        with strata_running(cluster):
            timeline = submit_the_examples(cluster)
            timeline.follow(timeline.settled, wait_s)
            show_where_jobs_run(cluster)
            reclaim_a_spot_node(cluster, timeline, wait_s)
            end_the_first_job(cluster, timeline, wait_s)
            end_every_job(cluster, timeline, wait_s)
    finally:
        cluster.stop()
    print("demo done: the cluster is stopped (keep one running with `make up`)")
    return 0


def show_the_cluster(cluster: LocalCluster) -> None:
    """Its components and logs, the fleet's nodes, and the versions of kubectl and the API server."""
    print(cluster.describe())
    print(node_table(cluster.kubectl_json("nodes")["items"]))
    print(cluster.kubectl("version"))


@contextlib.contextmanager
def strata_running(cluster: LocalCluster) -> Iterator[Stack]:
    """Strata's CRDs, extender, ``strata-scheduler`` kube-scheduler and operator on ``cluster``, stopped on exit."""
    with Stack(cluster.bin_dir, cluster.kubeconfig, cluster.workdir / "stack") as stack:
        print(f"CRDs installed; extender at {stack.extender_url}; kube-scheduler (strata-scheduler) and operator up")
        yield stack


def submit_the_examples(cluster: LocalCluster) -> Timeline:
    """Apply ``examples/pools`` and ``examples/trainingjobs``; the timeline of the jobs starts now."""
    cluster.kubectl("apply", "-f", str(EXAMPLES / "pools"))
    create_namespace(core_api(cluster.kubeconfig), NAMESPACE)
    print(cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLES / "trainingjobs")).strip())
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


def _workers(core: Any, job: str) -> list[Any]:
    return list(core.list_namespaced_pod(NAMESPACE, label_selector=f"{api.LABEL_JOB}={job}").items)
