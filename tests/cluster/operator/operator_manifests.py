"""TrainingJob manifests as a user writes them (no defaults filled in: the API server does that)."""

from __future__ import annotations

from typing import Any

import strata_api as api


def a_job(
    name: str,
    pool: str,
    *,
    data: int = 1,
    tensor: int = 8,
    pipeline: int = 1,
    gpus_per_worker: int = 8,
    gpu_type: str = "H100",
    **spec: Any,
) -> dict[str, Any]:
    resources = {"gpus": data * tensor * pipeline, "gpusPerWorker": gpus_per_worker, "gpuType": gpu_type}
    resources.update(spec.pop("resources", {}))
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.TRAINING_JOB,
        "metadata": {"name": name},
        "spec": {
            "pool": pool,
            "workload": {"image": "registry.invalid/strata/workloads:test"},
            "parallelism": {"data": data, "tensor": tensor, "pipeline": pipeline, **spec.pop("parallelism", {})},
            "training": {"globalBatchSize": 8 * data, "steps": 1000, **spec.pop("training", {})},
            "resources": resources,
            **spec,
        },
    }
