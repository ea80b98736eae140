"""The API server itself refuses bad TrainingJobs and ResourcePools, with a message naming the field."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_support import ClusterHandle
from kubernetes.client.exceptions import ApiException
from operator_harness import Strata
from operator_manifests import a_job

import strata_api as api

ROOT = Path(__file__).resolve().parents[3]

Edit = Callable[[dict[str, Any]], None]


def setter(path: str, value: Any) -> Edit:
    def edit(body: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = body["spec"]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    return edit


def both(first: Edit, second: Edit) -> Edit:
    def edit(body: dict[str, Any]) -> None:
        first(body)
        second(body)

    return edit


INVALID_JOBS: list[tuple[str, Edit, str]] = [
    ("gpus-not-the-degree-product", setter("resources.gpus", 16), "resources.gpus must equal parallelism.data"),
    ("batch-not-divisible", setter("training.globalBatchSize", 9), "training.globalBatchSize must be divisible"),
    ("tensor-beyond-a-node", setter("parallelism.tensor", 16), "spec.parallelism.tensor"),
    ("expert-does-not-divide", setter("parallelism.expert", 4), "parallelism.expert must divide parallelism.data"),
    ("gpus-not-whole-workers", setter("resources.gpusPerWorker", 3), "resources.gpus must be a multiple"),
    ("unknown-pipeline-schedule", setter("parallelism.pipelineSchedule", "ZeroBubble"), "pipelineSchedule"),
    ("unknown-gpu-type", setter("resources.gpuType", "A100"), "spec.resources.gpuType"),
    ("negative-steps", setter("training.steps", -5), "spec.training.steps"),
    ("zero-data-degree", setter("parallelism.data", 0), "spec.parallelism.data"),
    ("negative-backoff-limit", setter("backoffLimit", -1), "spec.backoffLimit"),
    ("negative-runtime", setter("maxRuntimeSeconds", -10), "spec.maxRuntimeSeconds"),
    ("unknown-precision", setter("training.precision", "fp8"), "spec.training.precision"),
    ("unknown-capacity-type", setter("resources.capacityTypes", ["preemptible"]), "spec.resources.capacityTypes"),
    ("preference-not-allowed", setter("resources.capacityPreference", "spot"), "resources.capacityPreference must"),
    ("too-few-microbatches", setter("parallelism.pipeline", 2), "parallelism.microBatches must be at least"),
    ("model-dir-off-the-volume", setter("workload.modelDir", "/models/llama"), "workload.modelDir, workload.tok"),
    ("data-dir-off-the-volume", setter("workload.dataDir", "/data/train.jsonl"), "and workload.dataDir must lie"),
    # under checkpoint.path by its prefix only: '..' climbed out of the volume
    ("model-dir-climbing-out", setter("workload.modelDir", "/checkpoints/../etc"), "workload.modelDir must be a clean"),
    ("tokenizer-dot-segment", setter("workload.tokenizer", "/checkpoints/./t.json"), "workload.tokenizer must be a"),
    ("data-dir-double-slash", setter("workload.dataDir", "/checkpoints//data"), "workload.dataDir must be a clean"),
    (
        "microbatches-do-not-divide",
        both(setter("parallelism.pipeline", 2), setter("parallelism.microBatches", 3)),
        "training.microBatchSize must be divisible by parallelism.microBatches",
    ),
    ("relative-checkpoint-path", setter("checkpoint.path", "ckpt"), "spec.checkpoint.path"),
    ("bad-cpu-quantity", setter("resources.cpuPerWorker", "lots"), "resources.cpuPerWorker must be"),
    ("missing-image", lambda b: b["spec"]["workload"].pop("image"), "spec.workload.image"),
    ("missing-pool", lambda b: b["spec"].pop("pool"), "spec.pool"),
    # what the API server used to accept and Kubernetes then refused at pod or Service creation (issue 18)
    ("image-in-whitespace", setter("workload.image", " ghcr.io/strata/workloads:1 "), "spec.workload.image must be"),
    ("image-uppercase-repository", setter("workload.image", "ghcr.io/Strata/workloads"), "spec.workload.image must"),
    ("image-empty-tag", setter("workload.image", "ghcr.io/strata/workloads:"), "spec.workload.image must be"),
    ("negative-cpu", setter("resources.cpuPerWorker", "-8"), "resources.cpuPerWorker must be a positive quantity"),
    ("zero-cpu", setter("resources.cpuPerWorker", 0), "resources.cpuPerWorker must be a positive quantity"),
    ("zero-memory", setter("resources.memoryPerWorker", "0Gi"), "resources.memoryPerWorker must be a positive"),
    ("absurd-memory", setter("resources.memoryPerWorker", "2Ei"), "resources.memoryPerWorker must be a positive"),
    ("checkpoint-on-dev-shm", setter("checkpoint.path", "/dev/shm"), "spec.checkpoint.path must not be a system"),
    ("checkpoint-in-proc", setter("checkpoint.path", "/proc/ckpt"), "spec.checkpoint.path must not be a system"),
    (
        "checkpoint-on-the-token",
        setter("checkpoint.path", "/var/run/secrets/kubernetes.io/serviceaccount"),
        "spec.checkpoint.path must not be a system",
    ),
    ("checkpoint-on-etc", setter("checkpoint.path", "/etc"), "spec.checkpoint.path must not be a system"),
    ("checkpoint-on-root", setter("checkpoint.path", "/"), "spec.checkpoint.path must be a clean absolute path"),
    ("checkpoint-dot-dot", setter("checkpoint.path", "/data/../dev/shm"), "spec.checkpoint.path must be a clean"),
    ("checkpoint-trailing-slash", setter("checkpoint.path", "/data/"), "spec.checkpoint.path must be a clean"),
    ("pvc-not-a-dns-name", setter("checkpoint.persistentVolumeClaim", "My_Claim"), "persistentVolumeClaim must be"),
    ("pvc-with-space", setter("checkpoint.persistentVolumeClaim", "claim "), "persistentVolumeClaim must be"),
    ("runtime-int64-max", setter("maxRuntimeSeconds", 2**63 - 1), "spec.maxRuntimeSeconds"),
    ("runtime-past-ten-years", setter("maxRuntimeSeconds", 315360001), "spec.maxRuntimeSeconds"),
    ("steps-past-the-bound", setter("training.steps", 10**13), "spec.training.steps"),
    ("batch-past-int32", setter("training.globalBatchSize", 2**40), "spec.training.globalBatchSize"),
    ("interval-past-int32", setter("checkpoint.intervalSeconds", 2**31), "spec.checkpoint.intervalSeconds"),
    ("pool-name-past-a-label", setter("pool", "p" * 64), "spec.pool"),
    # what the API server then refused at worker creation, failing the job only once admitted
    ("node-selector-key-with-space", setter("resources.nodeSelector", {"my team": "ml"}), "nodeSelector keys must be"),
    ("node-selector-empty-key", setter("resources.nodeSelector", {"": "ml"}), "nodeSelector keys must be label keys"),
    ("node-selector-long-name", setter("resources.nodeSelector", {"t" * 64: "ml"}), "nodeSelector keys must be"),
    ("node-selector-value-with-space", setter("resources.nodeSelector", {"team": "m l"}), "nodeSelector values must"),
    ("node-selector-unicode-value", setter("resources.nodeSelector", {"team": "é"}), "nodeSelector values must be"),
    ("memory-int-past-1pi", setter("resources.memoryPerWorker", 2**62), "resources.memoryPerWorker must be a positive"),
]


def valid_job(name: str = "valid") -> dict[str, Any]:
    body = a_job(name, "some-pool", data=2, tensor=4, gpus_per_worker=8)
    body["spec"]["resources"]["capacityTypes"] = ["on-demand", "reserved"]
    return body


def refusal(strata: Strata, body: dict[str, Any]) -> str:
    with pytest.raises(ApiException) as caught:
        strata.submit(body)
    assert caught.value.status == 422, caught.value.body
    return field_message(caught.value)


SKIPPED_NOTE = "some validation rules were not checked because the object was invalid"
"""The API server's own note, without a field, that CEL rules wait until the schema errors are fixed."""


def field_message(error: ApiException) -> str:
    """The API server's message, once each cause of the refusal is known to name a field (a cause without one
    reads ``<nil>: ...``)."""
    status = json.loads(error.body)
    causes = [c for c in status["details"]["causes"] if SKIPPED_NOTE not in c.get("message", "")]
    assert causes, status["message"]
    assert all(c.get("field") not in (None, "", "<nil>") for c in causes), status["message"]
    return str(status["message"])


def test_the_valid_baseline_is_accepted_and_defaulted(strata: Strata) -> None:
    strata.submit(valid_job())
    spec = strata.job("valid")["spec"]
    assert spec["parallelism"]["pipelineSchedule"] == "1F1B"
    assert spec["training"]["precision"] == "bf16"
    assert spec["checkpoint"] == {"intervalSeconds": 600, "keep": 3, "path": "/checkpoints"}
    assert spec["backoffLimit"] == 3
    assert spec["suspend"] is False


@pytest.mark.parametrize(("case", "edit", "names"), INVALID_JOBS, ids=[c[0] for c in INVALID_JOBS])
def test_an_invalid_trainingjob_is_refused_naming_the_field(strata: Strata, case: str, edit: Edit, names: str) -> None:
    body = copy.deepcopy(valid_job(case))
    edit(body)
    assert names in refusal(strata, body)


def test_a_name_too_long_for_worker_hostnames_is_refused(strata: Strata) -> None:
    # worker 65535's hostname <name>-worker-65535 is a DNS label of at most 63 characters
    strata.submit(valid_job("x" * 50))
    assert "metadata.name: Invalid value" in refusal(strata, valid_job("y" * 51))
    assert "metadata.name must be at most 50 characters" in refusal(strata, valid_job("y" * 51))


@pytest.mark.parametrize("name", ["job.v2", "2nd-job", "job-"])
def test_a_name_that_makes_no_service_name_is_refused(strata: Strata, name: str) -> None:
    # the headless Service <name>-workers needs a DNS-1035 label: no dot, a letter first
    message = refusal(strata, valid_job(name))
    assert "metadata.name must be a DNS-1035 label" in message


def test_the_largest_values_the_schema_allows_are_accepted(strata: Strata) -> None:
    body = valid_job("largest")
    body["spec"]["maxRuntimeSeconds"] = 315360000
    body["spec"]["training"]["steps"] = 10**12
    body["spec"]["checkpoint"] = {"path": "/mnt/ckpt-v1.2", "persistentVolumeClaim": "ckpt.team-a"}
    body["spec"]["workload"]["image"] = "localhost:5000/strata/workloads_cuda:1.0-rc.1@sha256:" + "ab" * 32
    strata.submit(body)


def test_a_node_selector_takes_any_label_key_and_value_a_pod_takes(strata: Strata) -> None:
    body = valid_job("labelled")
    selector = {"example.com/team": "ml", "t" * 63: "v" * 63, "tier": "", "Zone_A.b": "x_1.Y"}
    body["spec"]["resources"]["nodeSelector"] = selector
    strata.submit(body)
    assert strata.job("labelled")["spec"]["resources"]["nodeSelector"] == selector


def test_layout_fields_are_immutable_while_the_job_runs_but_suspend_is_not(strata: Strata) -> None:
    strata.submit(valid_job("running"))
    strata.custom.patch_namespaced_custom_object_status(
        api.GROUP, api.VERSION, strata.namespace, api.TRAINING_JOBS, "running", {"status": {"phase": "Running"}}
    )
    with pytest.raises(ApiException) as caught:
        strata.patch_spec("running", {"parallelism": {"data": 1}, "resources": {"gpus": 4}})
    assert caught.value.status == 422
    message = field_message(caught.value)  # the whole-object rule names spec, not <nil>
    assert "spec: Forbidden: spec.parallelism" in message
    assert "immutable while the job is Admitted, Running or Restarting" in message
    strata.patch_spec("running", {"suspend": True})
    assert strata.job("running")["spec"]["suspend"] is True


def test_queued_jobs_may_still_change_their_layout(strata: Strata) -> None:
    strata.submit(valid_job("queued"))
    strata.patch_spec("queued", {"parallelism": {"data": 1}, "resources": {"gpus": 4, "gpusPerWorker": 4}})
    assert strata.job("queued")["spec"]["resources"]["gpus"] == 4


def valid_cpu_job(name: str = "cpu") -> dict[str, Any]:
    body = a_job(name, "some-pool", data=2, tensor=1)
    body["spec"]["resources"] = {"gpuType": "CPU", "workers": 2, "cpuPerWorker": "1", "memoryPerWorker": "2Gi"}
    return body


def test_a_cpu_job_is_accepted_without_any_gpu_field(strata: Strata) -> None:
    strata.submit(valid_cpu_job())
    resources = strata.job("cpu")["spec"]["resources"]
    assert resources["gpuType"] == "CPU"
    assert "gpus" not in resources
    assert "gpusPerWorker" not in resources  # no GPU default lands on a CPU job


def test_a_gpu_job_may_leave_gpus_per_worker_to_its_default_of_8(strata: Strata) -> None:
    body = valid_job("default-per-worker")
    del body["spec"]["resources"]["gpusPerWorker"]
    strata.submit(body)
    body = valid_job("not-whole-nodes")
    del body["spec"]["resources"]["gpusPerWorker"]
    body["spec"]["parallelism"] = {"data": 3, "tensor": 4}
    body["spec"]["training"]["globalBatchSize"] = 12
    body["spec"]["resources"]["gpus"] = 12
    assert "resources.gpus must be a multiple of resources.gpusPerWorker (default 8)" in refusal(strata, body)


def drop(path: str) -> Edit:
    def edit(body: dict[str, Any]) -> None:
        del body["spec"]["resources"][path]

    return edit


INVALID_CPU_JOBS: list[tuple[str, Edit, str]] = [
    ("gpus-on-cpu", setter("resources.gpus", 2), "resources.gpus must not be set when resources.gpuType is CPU"),
    (
        "gpus-per-worker-on-cpu",
        setter("resources.gpusPerWorker", 1),
        "resources.gpusPerWorker must not be set when resources.gpuType is CPU",
    ),
    ("no-workers", drop("workers"), "resources.workers is required when resources.gpuType is CPU"),
    (
        "workers-not-the-degree-product",
        setter("resources.workers", 4),
        "resources.workers must equal parallelism.data x parallelism.tensor x parallelism.pipeline",
    ),
    ("no-cpu", drop("cpuPerWorker"), "resources.cpuPerWorker is required when resources.gpuType is CPU"),
    ("no-memory", drop("memoryPerWorker"), "resources.memoryPerWorker is required when resources.gpuType is CPU"),
    ("bad-memory", setter("resources.memoryPerWorker", "much"), "resources.memoryPerWorker must be"),
]


@pytest.mark.parametrize(("case", "edit", "names"), INVALID_CPU_JOBS, ids=[c[0] for c in INVALID_CPU_JOBS])
def test_an_invalid_cpu_job_is_refused_naming_the_field(strata: Strata, case: str, edit: Edit, names: str) -> None:
    body = valid_cpu_job(case)
    edit(body)
    assert names in refusal(strata, body)


def test_a_gpu_job_must_size_itself_in_gpus_not_workers(strata: Strata) -> None:
    body = valid_job("gpu-workers")
    body["spec"]["resources"]["workers"] = 1
    assert "resources.workers is only for resources.gpuType CPU" in refusal(strata, body)
    body = valid_job("no-gpus")
    del body["spec"]["resources"]["gpus"]
    assert "resources.gpus is required unless resources.gpuType is CPU" in refusal(strata, body)


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ({"maxGPUs": -8}, "spec.maxGPUs"),
        ({"maxGPUs": 8, "gpuTypes": ["TPU"]}, "spec.gpuTypes"),
        ({"maxGPUs": 8, "maxRuntimeSeconds": 0}, "spec.maxRuntimeSeconds"),
        ({"maxGPUs": 8, "capacityTypes": []}, "spec.capacityTypes"),
        ({"maxGPUs": 0, "maxCPUs": "-2"}, "spec.maxCPUs must be a non-negative quantity"),
        ({"maxGPUs": 0, "maxCPUs": "plenty"}, "spec.maxCPUs must be a non-negative quantity"),
        ({"maxGPUs": 0, "maxCPUs": "1e40"}, "spec.maxCPUs must be a non-negative quantity"),
        ({"maxGPUs": 8, "gpuTypes": ["H100", "H100"]}, "spec.gpuTypes[1]: Duplicate value"),
        ({"maxGPUs": 8, "capacityTypes": ["spot", "spot"]}, "spec.capacityTypes[1]: Duplicate value"),
        ({"maxGPUs": 8, "priority": 1000001}, "spec.priority"),
        ({"maxGPUs": 2**40}, "spec.maxGPUs"),
        ({"maxGPUs": 8, "maxRuntimeSeconds": 2**63 - 1}, "spec.maxRuntimeSeconds"),
        ({"maxGPUs": 8, "defragmentAfterSeconds": -1}, "spec.defragmentAfterSeconds"),
        ({"maxGPUs": 8, "defragmentAfterSeconds": 315360001}, "spec.defragmentAfterSeconds"),
        ({"maxGPUs": 8, "defragmentAfterSeconds": "6h"}, "spec.defragmentAfterSeconds"),
        ({"maxGPUs": 8, "onDemandMaxDurationSeconds": -1}, "spec.onDemandMaxDurationSeconds"),
        ({"maxGPUs": 8, "onDemandMaxDurationSeconds": 315360001}, "spec.onDemandMaxDurationSeconds"),
        ({"maxGPUs": 8, "onDemandMaxDurationSeconds": "8h"}, "spec.onDemandMaxDurationSeconds"),
        ({"maxGPUs": 8, "consolidation": {"minRemainingSeconds": -1}}, "spec.consolidation.minRemainingSeconds"),
        ({"maxGPUs": 8, "consolidation": {"afterSeconds": "5m"}}, "spec.consolidation.afterSeconds"),
        ({"maxGPUs": 8, "consolidation": {"afterSeconds": 315360001}}, "spec.consolidation.afterSeconds"),
        ({"maxGPUs": 8, "consolidation": "yes"}, "spec.consolidation"),
    ],
)
def test_an_invalid_resourcepool_is_refused_naming_the_field(strata: Strata, spec: dict[str, Any], names: str) -> None:
    with pytest.raises(ApiException) as caught:
        strata.pool("bad", **spec)
    assert caught.value.status == 422
    assert names in field_message(caught.value)


def test_a_pool_name_longer_than_a_label_value_is_refused(strata: Strata) -> None:
    # worker pods carry the pool's name in a label (at most 63 characters); the harness adds "-<suffix>"
    with pytest.raises(ApiException) as caught:
        strata.pool("p" * 60)
    assert caught.value.status == 422
    assert "metadata.name must be at most 63 characters" in str(caught.value.body)


EXAMPLES = sorted([*(ROOT / "examples" / "pools").glob("*.yaml"), *(ROOT / "examples" / "trainingjobs").glob("*.yaml")])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_shipped_example_is_accepted_by_the_api_server(crds: ClusterHandle, namespace: str, path: Path) -> None:
    assert yaml.safe_load(path.read_text())["kind"] in (api.TRAINING_JOB, api.RESOURCE_POOL)
    crds.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path))


def test_kubectl_explain_reads_the_descriptions(crds: ClusterHandle) -> None:
    text = crds.kubectl("explain", "trainingjobs.spec.parallelism.tensor")
    assert "At most 8, the GPUs of one node" in text
    pool_text = crds.kubectl("explain", "resourcepools.spec.onDemandMaxDurationSeconds")
    assert "takes reserved or spot capacity only" in pool_text


def test_kubectl_get_wide_shows_how_long_a_pools_gangs_wait_before_jobs_are_moved(
    crds: ClusterHandle, strata: Strata
) -> None:
    name = strata.pool("moves", defragmentAfterSeconds=3600)
    header, row = crds.kubectl("get", "resourcepool", name, "-o", "wide").splitlines()[:2]
    at = header.index("DEFRAGMENT-AFTER")  # kubectl aligns the columns; unset ones are blank
    assert row[at:].split()[0] == "3600"
