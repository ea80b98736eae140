"""Builders of InferenceServices for the operator's unit and cluster tests.

``service_body(min_replicas=2)`` is what a user would apply; ``a_service(...)`` the view of what the API server
would store (the defaults applied from crds/inferenceservice.yaml's own schema, as the API server does).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from operator_builders import T0, apply_defaults, schema

import strata_api as api
from strata_api import InferenceService

IMAGE = "registry.example/strata/workloads:1"


def service_body(
    name: str = "chat",
    pool: str = "pool",
    *,
    min_replicas: int = 1,
    max_replicas: int | None = None,
    gpu_type: str = api.CPU,
    model: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """An InferenceService as a user writes it: CPU replicas of 1 CPU and 2Gi unless ``resources`` says else."""
    replicas: dict[str, Any] = {"min": min_replicas}
    if max_replicas is not None:
        replicas["max"] = max_replicas
    resources: dict[str, Any] = {"gpuType": gpu_type}
    if gpu_type == api.CPU:
        resources.update(cpuPerReplica="1", memoryPerReplica="2Gi")
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.INFERENCE_SERVICE,
        "metadata": {"name": name},
        "spec": {
            "pool": pool,
            "workload": {"image": IMAGE},
            "model": model if model is not None else {"preset": "debug"},
            "replicas": replicas,
            "resources": spec.pop("resources", resources),
            **spec,
        },
    }


def a_service(
    name: str = "chat", namespace: str = "team", *, created: datetime = T0, uid: str | None = None, **kwargs: Any
) -> InferenceService:
    body = service_body(name, **kwargs)
    body["metadata"].update(
        namespace=namespace, uid=uid or f"uid-{name}", generation=1, creationTimestamp=api.format_time(created)
    )
    return InferenceService.from_body(apply_defaults(schema("inferenceservice.yaml"), body))
