"""TrainingJobs that really train: the chart's operator, extender and kube-scheduler in containers place the gang,
the kubelet runs each worker as a container, the workers find each other through the headless Service's DNS,
train, write checkpoints on a volume, report progress into the job's status and finish; a deleted worker (a real
SIGTERM) resumes from the newest checkpoint; a configuration error fails the job once, a crash retries; an image the
node does not have or a checkpoint volume the kubelet cannot mount keeps the job admitted, saying so in its words."""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_support import eventually
from e2e_support import Strata, a_cpu_job, a_cpu_pool, initial_loss

import strata_api as api


@pytest.fixture
def pool(strata: Strata) -> Iterator[str]:
    name = f"e2e-{secrets.token_hex(3)}"
    strata.apply(a_cpu_pool(name))
    yield name
    strata.kubectl("delete", "resourcepool", name, "--wait=false", check=False)


def step_lines(strata: Strata, namespace: str, pod: str, *, previous: bool = False) -> list[dict[str, Any]]:
    """The JSON `step` lines of a worker's log (``kubectl logs``)."""
    out = strata.kubectl("logs", pod, "-n", namespace, *(["--previous"] if previous else []))
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("msg") == "step"]


@pytest.mark.timeout(900)  # the first test also waits for the session: images, cluster, import, install
def test_the_release_runs_as_real_containers_under_the_charts_restrictions(strata: Strata) -> None:
    pods = strata.get("pods", "-n", strata.namespace)["items"]
    components = {p["metadata"]["labels"].get("app.kubernetes.io/name"): p for p in pods}
    assert {"strata-operator", "strata-extender", "strata-scheduler"} <= set(components), list(components)
    for name, pod in components.items():
        [status] = pod["status"]["containerStatuses"]
        assert status["ready"], (name, status)
        assert "running" in status["state"], (name, status)
        assert status["containerID"].startswith("containerd://"), (name, status["containerID"])
        assert pod["spec"]["serviceAccountName"].startswith(strata.release), name
        context = pod["spec"]["containers"][0]["securityContext"]
        assert context["readOnlyRootFilesystem"], (name, context)
        assert context["runAsNonRoot"], (name, context)
        assert context["capabilities"]["drop"] == ["ALL"], (name, context)
        assert not context["allowPrivilegeEscalation"], (name, context)
        node = strata.get("node", pod["spec"]["nodeName"])
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://"), name


@pytest.mark.timeout(600)
def test_a_cpu_job_trains_to_succeeded_with_its_loss_in_status_and_its_log_in_kubectl_logs(
    strata: Strata, namespace: str, pool: str
) -> None:
    claim = strata.checkpoint_claim(namespace)
    job = a_cpu_job(strata, "tiny", pool, claim=claim, steps=60, every=20)
    strata.apply(job | {"metadata": {"name": "tiny", "namespace": namespace}})
    status = strata.wait_for_phase(namespace, "tiny", (api.Phase.SUCCEEDED.value,), 480)

    assert status["progress"]["step"] == 60, status
    assert status["lastCheckpoint"]["step"] == 60, status
    assert status.get("restarts", 0) == 0, status
    final = status["progress"]["loss"]
    assert final < initial_loss() - 1.0, status  # it learned something (a NaN fails this too)

    lines = step_lines(strata, namespace, "tiny-worker-0")
    assert [line["step"] for line in lines] == list(range(1, 61))
    assert lines[-1]["loss"] == pytest.approx(final, rel=1e-6)  # the status reports what the worker logged
    assert lines[-1]["loss"] < lines[0]["loss"]
    for index in (0, 1):
        pod = strata.get("pod", f"tiny-worker-{index}", "-n", namespace)
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["exitCode"] == 0, pod["status"]
        if strata.node_selector:
            assert pod["spec"]["nodeSelector"] == strata.node_selector


@pytest.mark.timeout(600)
def test_four_processes_in_data_x_pipeline_train_together(strata: Strata, namespace: str, pool: str) -> None:
    job = a_cpu_job(strata, "dp-pp", pool, steps=12, every=6, data=2, pipeline=2, cpu="250m")
    strata.apply(job | {"metadata": {"name": "dp-pp", "namespace": namespace}})
    status = strata.wait_for_phase(namespace, "dp-pp", (api.Phase.SUCCEEDED.value,), 480)
    assert status["workers"]["total"] == 4, status
    assert status["progress"]["step"] == 12, status
    assert math.isfinite(status["progress"]["loss"]), status


@pytest.mark.timeout(900)
def test_a_deleted_worker_resumes_the_gang_from_the_newest_checkpoint(
    strata: Strata, namespace: str, pool: str
) -> None:
    claim = strata.checkpoint_claim(namespace)
    every = 10
    job = a_cpu_job(strata, "resumes", pool, claim=claim, steps=80, every=every)
    strata.apply(job | {"metadata": {"name": "resumes", "namespace": namespace}})

    def checkpointed() -> dict[str, Any] | None:
        status = strata.status(namespace, "resumes")
        return status if (status.get("lastCheckpoint") or {}).get("step", 0) >= 2 * every else None

    from cluster_support import eventually

    before = eventually(checkpointed, 480, "two checkpoints of resumes")
    lines_before = step_lines(strata, namespace, "resumes-worker-0")
    strata.kubectl("delete", "pod", "resumes-worker-1", "-n", namespace, "--wait=false")  # SIGTERM to a worker

    status = strata.wait_for_phase(namespace, "resumes", (api.Phase.SUCCEEDED.value,), 600)
    assert status.get("restarts", 0) >= 1 or status.get("attempt", 1) >= 2, status
    assert status["stepsLost"] <= every, status  # at most the work since the last checkpoint
    lines_after = step_lines(strata, namespace, "resumes-worker-0")
    first = lines_after[0]
    assert first["step"] > before["lastCheckpoint"]["step"], (first, before)  # resumed, not started over
    assert lines_after[-1]["step"] == 80
    # the loss goes on from where it was, not from an untrained model's
    reached = {line["step"]: line["loss"] for line in lines_before}
    last_seen = max(step for step in reached if step < first["step"]) if reached else None
    assert first["loss"] < initial_loss() - 1.0, first
    if last_seen is not None:
        assert first["loss"] == pytest.approx(reached[last_seen], rel=0.25), (first, last_seen, reached[last_seen])


@pytest.mark.timeout(600)
def test_a_configuration_error_fails_the_job_once_with_the_reason(strata: Strata, namespace: str, pool: str) -> None:
    job = a_cpu_job(strata, "misconfigured", pool, preset="no-such-model", backoff_limit=3)
    strata.apply(job | {"metadata": {"name": "misconfigured", "namespace": namespace}})
    status = strata.wait_for_phase(namespace, "misconfigured", (api.Phase.FAILED.value,), 300)
    assert status["reason"] == "InvalidConfiguration", status
    assert (status.get("restarts", 0), status.get("attempt", 1)) == (0, 1), status  # no retry loop
    events = strata.get("events", "-n", namespace, "--field-selector", "involvedObject.name=misconfigured")["items"]
    assert any(e["reason"] == "InvalidConfiguration" for e in events), [e["reason"] for e in events]
    # the worker that refused its configuration is named in the message and kept (the others are stopped)
    found = re.search(r"worker (misconfigured-worker-\d+) refused its configuration", status["message"])
    assert found, status["message"]
    log = strata.kubectl("logs", found.group(1), "-n", namespace)
    assert "no-such-model" in log, log[-2000:]


def status_with_reason(strata: Strata, namespace: str, job: str, reason: str, timeout_s: float) -> dict[str, Any]:
    """The job's status once its reason is ``reason``."""

    def reached() -> dict[str, Any] | None:
        status = strata.job(namespace, job).get("status") or {}
        return status if status.get("reason") == reason else None

    return eventually(reached, timeout_s, f"{job}'s reason {reason}")


@pytest.mark.timeout(300)
def test_an_image_the_node_cannot_have_keeps_the_job_admitted_saying_so_in_the_kubelets_words(
    strata: Strata, namespace: str, pool: str
) -> None:
    # a typo in the image: the kubelet cannot start the workers (with pull policy Never it has no image to pull);
    # before, the job said "Admitted" until the start timeout, then requeued, with no word on why
    job = a_cpu_job(strata, "typo", pool)
    job["spec"]["workload"] |= {"image": "strata.local/no-such-image:1", "imagePullPolicy": "Never"}
    strata.apply(job | {"metadata": {"name": "typo", "namespace": namespace}})

    status = status_with_reason(strata, namespace, "typo", "WorkerCannotStart", 120)
    assert status["phase"] == api.Phase.ADMITTED.value, status
    assert re.match(r"the kubelet cannot start worker typo-worker-\d: container trainer: ErrImageNeverPull: ",
                    status["message"]), status["message"]  # fmt: skip
    assert '"strata.local/no-such-image:1" is not present with pull policy of Never' in status["message"]
    events = strata.get("events", "-n", namespace, "--field-selector", "involvedObject.name=typo")["items"]
    assert any(e["reason"] == "WorkerCannotStart" and e["type"] == "Warning" for e in events), events


@pytest.mark.timeout(300)
def test_a_checkpoint_volume_the_kubelet_cannot_mount_keeps_the_job_admitted_saying_so_in_its_words(
    strata: Strata, namespace: str, pool: str
) -> None:
    # the workers are placed, the kubelet cannot mount their checkpoint volume and says so only in FailedMount Events;
    # before, the job said "workers starting" until the start timeout
    with strata.claim_of_a_missing_folder(namespace) as claim:
        strata.apply(
            a_cpu_job(strata, "unmounted", pool, claim=claim)
            | {"metadata": {"name": "unmounted", "namespace": namespace}}
        )
        status = status_with_reason(strata, namespace, "unmounted", "WorkerCannotStart", 150)
    assert status["phase"] == api.Phase.ADMITTED.value, status
    assert re.match(r"the volumes of worker unmounted-worker-\d cannot be mounted: FailedMount: ",
                    status["message"]), status["message"]  # fmt: skip
    assert "is not a directory" in status["message"], status["message"]  # the kubelet's words on the folder


@pytest.mark.timeout(900)
def test_a_worker_that_crashes_is_restarted_until_the_backoff_limit(strata: Strata, namespace: str, pool: str) -> None:
    # 64 MiB cannot hold torch: the kernel's OOM killer ends the worker (exit 137), a crash that is worth retrying
    job = a_cpu_job(strata, "crashes", pool, memory="64Mi", backoff_limit=1)
    strata.apply(job | {"metadata": {"name": "crashes", "namespace": namespace}})
    status = strata.wait_for_phase(namespace, "crashes", (api.Phase.FAILED.value,), 600)
    assert status["reason"] == "BackoffLimitExceeded", status
    assert (status.get("restarts", 0), status.get("attempt", 1)) == (1, 2), status


def extender_filter_calls(strata: Strata) -> float:
    """How many filter calls the release's extender has answered, read inside its container."""
    read = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8888/metrics').read().decode())"
    extender = f"deployment/{strata.release}-extender"
    metrics = strata.kubectl("exec", "-n", strata.namespace, extender, "--", "python", "-c", read)
    pattern = re.compile(r'^strata_extender_request_duration_seconds_count\{verb="filter"\} (\S+)$', re.MULTILINE)
    found = pattern.search(metrics)
    return float(found.group(1)) if found else 0.0


@pytest.mark.timeout(600)
def test_a_gpu_gang_is_placed_by_the_charts_kube_scheduler_through_its_extender(
    strata: Strata, namespace: str, gpu_node: str
) -> None:
    pool = f"e2e-gpu-{secrets.token_hex(3)}"
    strata.apply(
        a_cpu_pool(pool) | {"spec": {"priority": 50, "maxGPUs": 8, "capacityTypes": ["reserved"], "preemptible": False}}
    )
    before = extender_filter_calls(strata)
    job = {
        "apiVersion": api.API_VERSION,
        "kind": api.TRAINING_JOB,
        "metadata": {"name": "on-gpus", "namespace": namespace},
        "spec": {
            "pool": pool,
            "workload": {"image": strata.workloads_image},
            "parallelism": {"data": 1, "tensor": 8},
            "training": {"globalBatchSize": 8, "steps": 10},
            "resources": {"gpus": 8, "gpuType": "H100", "capacityTypes": ["reserved"]},
        },
    }
    try:
        strata.apply(job)
        status = strata.wait_for_phase(namespace, "on-gpus", (api.Phase.RUNNING.value,), 300)
        assert status["placement"]["nodes"] == [gpu_node], status
        assert extender_filter_calls(strata) > before  # kube-scheduler's container asked the extender's
    finally:
        strata.kubectl("delete", "trainingjob", "on-gpus", "-n", namespace, "--wait=false", check=False)
        strata.kubectl("delete", "resourcepool", pool, "--wait=false", check=False)
