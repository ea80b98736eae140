"""The operator on the real control plane: the default fleet has 4 H100 nodes (2 reserved, 2 spot) and 4 MI300X
nodes of 8 GPUs each. Every job here uses whole nodes (8 GPUs per worker) so GPU counts are easy to follow."""

from __future__ import annotations

from typing import Any

from cluster_support import eventually
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_harness import OperatorProcess, Strata
from operator_manifests import a_job

import strata_api as api


def env_of(pod: Any) -> dict[str, str]:
    return {e.name: e.value for e in pod.spec.containers[0].env}


def test_a_job_queues_is_admitted_runs_and_succeeds(operator: OperatorProcess, strata: Strata) -> None:
    pool = strata.pool("team", priority=5, maxGPUs=64)
    strata.submit(a_job("llm", pool, data=2, tensor=8, pipeline=1, gpus_per_worker=8))

    status = strata.wait_phase("llm", "Running")
    assert status["workers"] == {"ready": 2, "total": 2}
    assert status["placement"]["gpuType"] == "H100"
    assert len(status["placement"]["nodes"]) == 2
    assert status["startTime"]

    pods = strata.pods("llm")
    assert [p.metadata.name for p in pods] == ["llm-worker-0", "llm-worker-1"]
    for index, pod in enumerate(pods):
        assert not pod.spec.scheduling_gates
        assert pod.spec.scheduler_name == "default-scheduler"
        env = env_of(pod)
        assert env["WORLD_SIZE"] == "16"
        assert env["RANK"] == str(8 * index)
        assert env["LOCAL_WORLD_SIZE"] == "8"
        assert env["MASTER_ADDR"] == f"llm-worker-0.strata-workers.{strata.namespace}.svc"
        assert env["STRATA_TP"] == "8"
        assert pod.metadata.labels[api.LABEL_POOL] == pool
        assert pod.metadata.owner_references[0].kind == api.TRAINING_JOB
        node = strata.core.read_node(pod.spec.node_name)
        assert api.gpu_type_of(node.metadata.labels) is api.GPUType.H100
    # the namespace's headless Service publishes each worker under its hostname: the DNS name of MASTER_ADDR
    assert strata.core.read_namespaced_service("strata-workers", strata.namespace).spec.cluster_ip == "None"
    eventually(lambda: published_hostnames(strata) >= {"llm-worker-0", "llm-worker-1"}, 30, "workers' DNS names")

    eventually(lambda: strata.status("llm").get("gpuSeconds"), 30, "GPU-seconds accounted while running")
    strata.exit_workers("llm", 0)
    done = strata.wait_phase("llm", "Succeeded")
    assert done["completionTime"]
    assert done["gpuSeconds"] >= 16  # 16 GPUs for at least a second
    assert done["cost"] > 0
    reasons = strata.events("llm")
    for reason in ("Admitted", "AllWorkersRunning", "AllWorkersSucceeded"):
        assert reason in reasons
    # no Event for the gate lift, which AllWorkersRunning follows within seconds; Submitted only if the job waited
    # past the admission pass's grace (a job admitted at submission gets the one Admitted Event)
    assert "GatesLifted" not in reasons
    assert done["submittedAt"]
    pool_status = strata.custom.get_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, pool)
    assert eventually(lambda: pool_status.get("status"), 10, "pool status") is not None


def test_a_gang_waits_until_all_of_it_fits_and_holds_no_pods_meanwhile(
    operator: OperatorProcess, strata: Strata
) -> None:
    pool = strata.pool("team")
    strata.submit(a_job("first", pool, data=3))  # 24 of the 32 H100 GPUs
    strata.wait_phase("first", "Running")
    strata.submit(a_job("second", pool, data=2))  # needs 16: only 8 are free

    waiting = strata.wait_phase("second", "Queued")
    eventually(lambda: strata.status("second").get("reason") == "WaitingForGPUs", 20, "reason WaitingForGPUs")
    assert strata.pods("second") == []
    assert strata.status("second")["queuePosition"] == 1
    assert waiting["phase"] == "Queued"

    strata.exit_workers("first", 0)
    strata.wait_phase("first", "Succeeded")
    strata.wait_phase("second", "Running")
    assert len(strata.live_pods("second")) == 2


def test_higher_priority_pool_is_admitted_first_and_preempts_preemptible_jobs(
    operator: OperatorProcess, strata: Strata
) -> None:
    low = strata.pool("low", priority=1, preemptible=True)
    high = strata.pool("high", priority=100)
    strata.submit(a_job("batch", low, data=4))  # all 32 H100 GPUs
    strata.wait_phase("batch", "Running")
    strata.submit(a_job("also-low", low, data=2))  # queued before the urgent one
    strata.wait_phase("also-low", "Queued")
    strata.submit(a_job("urgent", high, data=2))

    strata.wait_phase("urgent", "Running", timeout_s=90)
    preempted = strata.status("batch")
    assert preempted["phase"] in ("Queued", "Admitted", "Running")  # requeued; may get GPUs again later
    conditions = {c["type"]: c for c in preempted["conditions"]}
    assert conditions["Preempted"]["reason"] == "Preempted"
    assert "urgent" in conditions["Preempted"]["message"]
    assert "Preempted" in strata.events("batch")
    assert strata.status("also-low")["phase"] in ("Queued", "Admitted", "Running")


def test_losing_a_node_restarts_the_whole_gang_from_its_checkpoint(operator: OperatorProcess, strata: Strata) -> None:
    pool = strata.pool("spot", gpuTypes=["MI300X"], capacityTypes=["spot", "reserved"])
    strata.submit(a_job("resilient", pool, data=2, gpu_type="MI300X", backoffLimit=5))
    strata.wait_phase("resilient", "Running")
    strata.report_progress("resilient", step=140, checkpoint_step=100)
    eventually(lambda: strata.status("resilient").get("lastCheckpoint", {}).get("step") == 100, 20, "checkpoint")

    victim = strata.pods("resilient")[1].spec.node_name
    saved = strata.core.read_node(victim)
    since = strata.job("resilient")["metadata"]["resourceVersion"]
    strata.core.delete_node(victim)
    try:
        # watched, not polled: on an idle cluster the gang is Running again within a second
        restarting = strata.entered_phase("resilient", since, "Restarting", timeout_s=30)
        assert restarting["reason"] == "NodeLost"
        assert victim in restarting["message"]
        assert restarting["restarts"] == 1
        assert restarting["stepsLost"] == 40
        running = strata.wait_phase("resilient", "Running", timeout_s=60)
        assert victim not in running["placement"]["nodes"]
        assert {env_of(p)["STRATA_ATTEMPT"] for p in strata.live_pods("resilient")} == {"2"}
        assert running["lastCheckpoint"]["step"] == 100
    finally:
        restore_node(strata, saved)


def restore_node(strata: Strata, node: Any) -> None:
    body = strata.api_client.sanitize_for_serialization(node)
    for key in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        body["metadata"].pop(key, None)
    try:
        strata.core.create_node(body)
    except ApiException as error:
        if error.status != 409:
            raise


def test_a_failing_worker_restarts_the_gang_until_the_backoff_limit(operator: OperatorProcess, strata: Strata) -> None:
    pool = strata.pool("team")
    strata.submit(a_job("flaky", pool, data=2, backoffLimit=1))
    strata.wait_phase("flaky", "Running")
    strata.exit_workers("flaky", 1, only="flaky-worker-1")
    restarted = eventually(lambda: strata.status("flaky").get("restarts") == 1, 30, "one gang restart")
    assert restarted
    assert "WorkerFailed" in strata.events("flaky")
    strata.wait_phase("flaky", "Running", timeout_s=60)
    strata.exit_workers("flaky", 1, only="flaky-worker-0")
    failed = strata.wait_phase("flaky", "Failed", timeout_s=30)
    assert failed["reason"] == "BackoffLimitExceeded"
    eventually(lambda: not strata.live_pods("flaky") or all(p.status.phase in ("Failed", "Succeeded")
               for p in strata.live_pods("flaky")), 30, "no worker left running")  # fmt: skip


def test_the_runtime_limit_fails_the_job_with_deadline_exceeded(operator: OperatorProcess, strata: Strata) -> None:
    pool = strata.pool("short", maxRuntimeSeconds=3)
    strata.submit(a_job("slow", pool, data=1))
    failed = strata.wait_phase("slow", "Failed", timeout_s=45)
    assert failed["reason"] == "DeadlineExceeded"
    eventually(lambda: strata.live_pods("slow") == [], 30, "workers of the failed job deleted")
    # the Event follows the status write that failed the job (it may land a moment after the phase shows)
    eventually(lambda: "DeadlineExceeded" in strata.events("slow"), 30, "the DeadlineExceeded Event")


def test_suspend_releases_the_gpus_and_resume_runs_again(operator: OperatorProcess, strata: Strata) -> None:
    pool = strata.pool("team")
    strata.submit(a_job("pausable", pool, data=2))
    strata.wait_phase("pausable", "Running")
    strata.patch_spec("pausable", {"suspend": True})
    strata.wait_phase("pausable", "Suspended")
    eventually(lambda: strata.pods("pausable") == [], 30, "suspended job's pods gone")
    strata.patch_spec("pausable", {"suspend": False})
    resumed = strata.wait_phase("pausable", "Running", timeout_s=60)
    assert resumed.get("restarts", 0) == 0  # a suspend is not a failure
    assert "Resumed" in strata.events("pausable")


def test_a_killed_operator_restarts_without_duplicate_pods_or_lost_jobs(
    operator: OperatorProcess, strata: Strata
) -> None:
    pool = strata.pool("team")
    strata.submit(a_job("survivor", pool, data=4))
    strata.wait_phase("survivor", "Admitted", "Running")
    operator.kill()  # mid-reconcile: pods may be half created
    partial = {p.metadata.name for p in strata.pods("survivor")}
    operator.start()

    strata.wait_phase("survivor", "Running", timeout_s=60)
    names = [p.metadata.name for p in strata.pods("survivor")]
    assert names == [f"survivor-worker-{i}" for i in range(4)]
    assert partial <= set(names)
    assert {p.metadata.labels[api.LABEL_ATTEMPT] for p in strata.pods("survivor")} == {"1"}
    assert strata.status("survivor").get("restarts", 0) == 0


def test_deleting_a_job_cleans_up_its_pods_and_service(operator: OperatorProcess, strata: Strata) -> None:
    pool = strata.pool("team")
    strata.submit(a_job("ephemeral", pool, data=1))
    strata.wait_phase("ephemeral", "Running")
    strata.custom.delete_namespaced_custom_object(
        api.GROUP, api.VERSION, strata.namespace, api.TRAINING_JOBS, "ephemeral"
    )

    def gone() -> bool:
        services = strata.core.list_namespaced_service(strata.namespace).items
        return not strata.pods("ephemeral") and not [s for s in services if s.metadata.name == "ephemeral-workers"]

    eventually(gone, 60, "pods and service of the deleted job garbage-collected")


def published_hostnames(strata: Strata) -> set[str]:
    """Hostnames the EndpointSlices of the namespace's worker Service publish (what cluster DNS serves)."""
    slices = client.DiscoveryV1Api(strata.api_client).list_namespaced_endpoint_slice(
        strata.namespace, label_selector="kubernetes.io/service-name=strata-workers"
    )
    return {e.hostname for s in slices.items for e in s.endpoints or () if e.hostname}
