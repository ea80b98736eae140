"""Builders of TrainingJobs, pools, pods and nodes for the operator's tests.

``a_job(data=2, tensor=4)`` gives the TrainingJob the API server would store: the defaults are applied from the
CRD's own schema (crds/trainingjob.yaml), exactly as the API server's structural defaulting does, so tests never
copy the defaults.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

import strata_api as api
from strata_api import GPUType, ResourcePool, TrainingJob
from strata_api.workload import Progress
from strata_operator.core.observed import Node, WorkerPod

ROOT = Path(__file__).resolve().parents[3]
CRDS = ROOT / "crds"
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def crd(kind_file: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((CRDS / kind_file).read_text())
    return doc


def schema(kind_file: str) -> dict[str, Any]:
    result: dict[str, Any] = crd(kind_file)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the API server does it: fill absent properties that have a default, recursively."""
    if isinstance(value, dict) and "properties" in node:
        for key, sub in node["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
    elif isinstance(value, list) and "items" in node:
        value = [apply_defaults(node["items"], item) for item in value]
    return value


def job_body(
    name: str = "train",
    namespace: str = "team",
    *,
    data: int = 1,
    tensor: int = 1,
    pipeline: int = 1,
    expert: int = 1,
    gpus_per_worker: int | None = None,
    gpu_type: str = "H100",
    pool: str = "pool",
    created: datetime = T0,
    status: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    gpus = data * tensor * pipeline
    per_worker = min(8, gpus) if gpus_per_worker is None else gpus_per_worker
    resources: dict[str, Any] = {"gpus": gpus, "gpusPerWorker": per_worker, "gpuType": gpu_type}
    if gpu_type == api.CPU:  # one process per worker: as many workers as the layout's processes
        resources = {"gpuType": api.CPU, "workers": gpus, "cpuPerWorker": "2", "memoryPerWorker": "4Gi"}
    resources = spec.pop("resources", resources)
    body: dict[str, Any] = {
        "apiVersion": api.API_VERSION,
        "kind": api.TRAINING_JOB,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": api.format_time(created),
        },
        "spec": {
            "pool": pool,
            "workload": {"image": "registry.example/strata/workloads:1"},
            "parallelism": {"data": data, "tensor": tensor, "pipeline": pipeline, "expert": expert},
            "training": {"globalBatchSize": 64 * data, "steps": 100},
            "resources": resources,
            **spec,
        },
    }
    if status is not None:
        body["status"] = status
    defaulted: dict[str, Any] = apply_defaults(schema("trainingjob.yaml"), body)
    return defaulted


def a_job(**kwargs: Any) -> TrainingJob:
    return TrainingJob.from_body(job_body(**kwargs))


def a_pool(
    name: str = "pool",
    *,
    priority: int = 0,
    max_gpus: int = 1000,
    preemptible: bool = False,
    max_runtime_seconds: int | None = None,
    **spec: Any,
) -> ResourcePool:
    body: dict[str, Any] = {
        "metadata": {"name": name},
        "spec": {"priority": priority, "maxGPUs": max_gpus, "preemptible": preemptible, **spec},
    }
    if max_runtime_seconds is not None:
        body["spec"]["maxRuntimeSeconds"] = max_runtime_seconds
    return ResourcePool.from_body(apply_defaults(schema("resourcepool.yaml"), body))


INSTANCE_TYPES = {GPUType.H100: "p5.48xlarge", GPUType.MI300X: "Standard_ND96isr_MI300X_v5", None: "m7i.8xlarge"}
"""The instance types of the default fleet (examples/fleet.yaml), as the price catalog lists them."""


def a_node(name: str, gpu: GPUType | None = GPUType.H100, capacity: str = "reserved", gpus: int = 8) -> Node:
    return Node(
        name=name,
        gpu_type=gpu,
        capacity_type=capacity,
        allocatable_gpus=gpus if gpu else 0,
        schedulable=True,
        price_per_hour=None,
        instance_type=INSTANCE_TYPES[gpu],
    )


def a_worker(
    job: str,
    index: int,
    *,
    attempt: int = 1,
    phase: str = "Running",
    node: str | None = "n0",
    gated: bool = False,
    deleting: bool = False,
    ready: bool | None = None,
    exit_code: int | None = None,
    step: int | None = None,
    checkpoint_step: int | None = None,
    loss: float | None = None,
) -> WorkerPod:
    return WorkerPod(
        name=f"{job}-worker-{index}",
        index=index,
        attempt=attempt,
        phase=phase,
        node=None if gated else node,
        gated=gated,
        other_gates=(),
        deleting=deleting,
        ready=(phase == "Running") if ready is None else ready,
        exit_code=exit_code,
        reason="Error" if exit_code else "",
        progress=Progress(step=step, checkpoint_step=checkpoint_step, checkpoint_time=None, loss=loss),
        scheduler_name=api.SCHEDULER_NAME,  # the operator's by default
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)
