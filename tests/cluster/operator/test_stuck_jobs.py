"""No stuck jobs (issue 18): what the API server refuses for good fails the job with the server's reason and gives
its GPUs back at once, and nonsense a worker reports never stops the operator from following the job."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cluster_support import eventually
from operator_harness import OperatorProcess, Strata, annotate_pods, replaced_by
from operator_manifests import a_job

import strata_api as api
from strata_operator.core import lifecycle


def test_a_gang_the_api_server_refuses_fails_with_invalid_spec_and_frees_its_gpus(
    operator: OperatorProcess, strata: Strata
) -> None:
    # valid for the CRD, refused for good when its pods are created: the namespace's LimitRange caps a container's
    # memory (the API server answers 403 Forbidden for every worker)
    limits = {"type": "Container", "max": {"memory": "1Gi"}}
    limit_range = {"metadata": {"name": "small-containers"}, "spec": {"limits": [limits]}}
    strata.core.create_namespaced_limit_range(strata.namespace, limit_range)
    pool = strata.pool("team", maxGPUs=16)
    strata.submit(a_job("greedy", pool, data=2, tensor=8, resources={"memoryPerWorker": "2Gi"}))
    strata.submit(a_job("modest", pool, data=2, tensor=8, resources={"memoryPerWorker": "512Mi"}))

    failed = strata.wait_phase("greedy", "Failed", timeout_s=30)
    assert failed["reason"] == "InvalidSpec"
    assert "maximum memory usage per Container is 1Gi" in failed["message"]
    condition = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert (condition["status"], condition["reason"]) == ("True", "InvalidSpec")
    # the Event is posted after the status write that failed the job
    eventually(lambda: "InvalidSpec" in strata.events("greedy"), 10, "the InvalidSpec Event of greedy")
    # its 16 GPUs, the pool's whole quota, went back: the job behind it is admitted and runs
    strata.wait_phase("modest", "Running", timeout_s=30)
    assert strata.live_pods("greedy") == []

    time.sleep(3)  # nothing is retried: the refusal was logged once, not in a loop
    refusals = operator.log().count(f"TrainingJob {strata.namespace}/greedy: the API server refused the gang")
    assert refusals == 1, operator.log()[-3000:]
    assert strata.status("greedy")["phase"] == "Failed"


def test_a_workers_name_held_by_a_pod_not_the_jobs_fails_it_naming_the_pod_and_leaves_the_pod_alone(
    operator: OperatorProcess, strata: Strata
) -> None:
    # a user's own pod where the job's worker 0 would go: before, the operator tried to create it at every pass
    theirs = {
        "metadata": {"name": "clash-worker-0", "labels": {"app": "mine"}},
        "spec": {"containers": [{"name": "c", "image": "registry.example/mine:1"}], "nodeSelector": {"none": "x"}},
    }
    strata.core.create_namespaced_pod(strata.namespace, theirs)
    pool = strata.pool("team", maxGPUs=16)
    strata.submit(a_job("clash", pool, data=2, tensor=8))
    failed = strata.wait_phase("clash", "Failed", timeout_s=30)
    assert failed["reason"] == "InvalidSpec"
    assert "pod clash-worker-0 exists, with no controller, not this job: delete it, or submit the job under another" \
        in failed["message"]  # fmt: skip
    eventually(lambda: strata.live_pods("clash") == [] or None, 30, "the job's own worker 1 deleted")
    pod = strata.core.read_namespaced_pod("clash-worker-0", strata.namespace)
    assert (pod.metadata.labels, pod.metadata.owner_references) == ({"app": "mine"}, None)


def test_a_worker_reporting_a_step_past_int64_does_not_stop_the_operator_following_its_job(
    operator: OperatorProcess, strata: Strata
) -> None:
    pool = strata.pool("team", maxGPUs=64)
    strata.submit(a_job("boastful", pool, data=2, tensor=8))
    strata.wait_phase("boastful", "Running")
    names = [p.metadata.name for p in strata.live_pods("boastful")]
    annotate_pods(strata.core, strata.namespace, names[:1], {api.ANN_PROGRESS: json.dumps({"step": 2**70})})
    annotate_pods(strata.core, strata.namespace, names[1:], {api.ANN_PROGRESS: json.dumps({"step": 7})})
    eventually(lambda: strata.status("boastful").get("progress") == {"step": 7}, 30, "the sane step in status")

    strata.exit_workers("boastful", 0)
    strata.wait_phase("boastful", "Succeeded")
    assert "reconcile raised" not in operator.log()


def test_memory_no_node_has_is_refused_at_admission_with_the_reason(operator: OperatorProcess, strata: Strata) -> None:
    # the default fleet's H100 nodes allocate 2048Gi: a worker of 3Ti never fits, so the job is not admitted
    # (no pods that stay Pending, no quota held) and says why, within a few admission passes
    pool = strata.pool("team", maxGPUs=64)
    strata.submit(a_job("huge", pool, data=2, tensor=8, resources={"memoryPerWorker": "3Ti"}))
    status = eventually(
        lambda: (s := strata.status("huge")).get("reason") == "NoNodeFitsWorker" and s, 20, "reason NoNodeFitsWorker"
    )
    assert status["phase"] == "Queued"
    assert "needs 0 CPUs and 3072Gi memory" in status["message"]
    assert "allocate 192 CPUs and 2048Gi" in status["message"]
    assert strata.pods("huge") == []
    strata.submit(a_job("fits", pool, data=2, tensor=8, resources={"memoryPerWorker": "2000Gi"}))
    strata.wait_phase("fits", "Running")
    assert strata.status("huge")["phase"] == "Queued"


def test_a_gang_the_scheduler_cannot_fully_place_is_requeued_with_its_reason_within_seconds(
    operator: OperatorProcess, strata: Strata
) -> None:
    # admission sees two free reserved MI300X nodes; kube-scheduler refuses one of them (a taint the workers do not
    # tolerate, as the extender refuses reserved GPUs held back for forecast demand): one worker runs, the other
    # finds no node. The job says why and gives its GPUs back after the grace, not after the 600 s start timeout.
    nodes = strata.core.list_node(label_selector=f"{api.AMD_PRODUCT},{api.NODE_CAPACITY_TYPE}=reserved").items
    assert len(nodes) == 2
    tainted = nodes[1].metadata.name
    taints = [*(nodes[1].spec.taints or []), {"key": "strata.dev/test-maintenance", "effect": "NoSchedule"}]
    strata.core.patch_node(tainted, {"spec": {"taints": taints}})
    try:
        pool = strata.pool("reserved-mi300x", gpuTypes=["MI300X"], capacityTypes=["reserved"], maxGPUs=16)
        strata.submit(a_job("split", pool, data=2, tensor=8, gpu_type="MI300X"))
        strata.wait_phase("split", "Admitted")
        started = time.monotonic()

        def requeued() -> str | None:
            events = strata.core.list_namespaced_event(strata.namespace, field_selector="involvedObject.name=split")
            return next((e.message for e in events.items if e.reason == "WorkerUnschedulable"), None)

        # the job is Queued with this reason until the next admission pass admits it again (about a second); the
        # Warning Event stays
        message = eventually(requeued, lifecycle.UNSCHEDULABLE_GRACE_S + 30, "a WorkerUnschedulable event")
        assert time.monotonic() - started < lifecycle.UNSCHEDULABLE_GRACE_S + 30
        assert "found no node for 30s after its gates were lifted (1 of 2 unplaced)" in message
        assert "untolerated taint" in message
        # given back, then admitted again
        status = eventually(lambda: (s := strata.status("split")).get("attempt", 0) >= 2 and s, 20, "a new attempt")
        assert status.get("restarts", 0) == 0  # not the workers' fault
        assert "startTime" not in status  # never ran as a whole
    finally:
        strata.core.patch_node(tainted, {"spec": {"taints": [t for t in taints[:-1]] or None}})


def test_workers_no_scheduler_looks_at_make_the_job_name_the_missing_scheduler_until_one_that_runs_is_named(
    operator: OperatorProcess, strata: Strata
) -> None:
    # the operator run as on a cluster without Strata's scheduler (the chart not installed): before, the job said
    # "Admitted" for the whole start timeout and then requeued, with no word on why no worker was placed
    flags = ("--standalone", "--scheduler-name", "absent-scheduler", "--scheduler-grace-s", "3")
    with replaced_by(operator, *flags):
        pool = strata.pool("team", maxGPUs=16)
        strata.submit(a_job("orphan", pool, data=2, tensor=8))
        status = strata.wait_reason("orphan", lifecycle.Reason.WAITING_FOR_SCHEDULER, timeout_s=30)
        assert status["phase"] == "Admitted"  # it keeps its gang: the start timeout still decides
        assert status["message"].startswith(
            "worker orphan-worker-0 has not been looked at by scheduler 'absent-scheduler' in 3s: is a kube-scheduler"
        )
        pods = strata.pods("orphan")
        assert len(pods) == 2
        assert all(p.spec.scheduler_name == "absent-scheduler" and not p.spec.scheduling_gates for p in pods)
        assert all(p.spec.node_name is None for p in pods)
        eventually(lambda: "WaitingForScheduler" in strata.events("orphan"), 10, "a WaitingForScheduler Event")
        header, row = operator.cluster.kubectl("get", "tj", "orphan", "-n", strata.namespace).splitlines()[:2]
        assert row.split()[header.split().index("REASON")] == "WaitingForScheduler", (header, row)
    # the fixture's operator is back, on --scheduler-name default-scheduler (the cluster's), as the message
    # suggests; before, the workers made for the missing scheduler then waited out the start timeout, since a pod's
    # schedulerName cannot change
    status = strata.wait_phase("orphan", "Running", timeout_s=60)
    assert status["attempt"] == 1  # made again within the same admission, not requeued
    remade = strata.live_pods("orphan")
    assert len(remade) == 2
    assert all(p.spec.scheduler_name == "default-scheduler" and p.spec.node_name for p in remade)
    assert not {p.metadata.uid for p in pods} & {p.metadata.uid for p in remade}
    assert "SchedulerChanged" in strata.events("orphan")


def test_workers_the_scheduler_fails_on_make_the_job_say_so_in_its_words(
    operator: OperatorProcess, strata: Strata, tmp_path: Path
) -> None:
    # the strata-scheduler kube-scheduler with its extender away (not ignorable: GPU pods wait for it); before, the
    # job said "Admitted" until the start timeout with no word of the scheduler's error
    from strata_dev.stack import run_strata_scheduler

    cluster = operator.cluster
    scheduler = run_strata_scheduler(cluster.bin_dir, cluster.kubeconfig, "http://127.0.0.1:9", tmp_path / "ks.log")
    try:
        with replaced_by(operator, "--standalone", "--scheduler-name", api.SCHEDULER_NAME):
            pool = strata.pool("team", maxGPUs=16)
            strata.submit(a_job("blocked", pool, data=2, tensor=8))
            status = strata.wait_reason("blocked", lifecycle.Reason.SCHEDULER_ERROR)
            assert status["phase"] == "Admitted"
            assert status["message"].startswith("the scheduler fails on worker blocked-worker-"), status["message"]
            assert "127.0.0.1:9" in status["message"], status["message"]  # kube-scheduler's own words
            eventually(lambda: "SchedulerError" in strata.events("blocked"), 10, "a SchedulerError Event")
    finally:
        scheduler.terminate()
        scheduler.wait(15)
