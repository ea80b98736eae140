"""gpuType Any with the scheduler extender running: admission asks its POST /quote and the job gets the GPU type
whose unit of work is cheapest. In fp32 an MI300X does 1.10 of an H100's work (the catalog's throughput table)
and a reserved MI300X node costs $33.60 an hour against $38.53 for an H100 one, so the quote says MI300X, where
the job's own order (the fallback without an extender) would have started with H100."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import ClusterHandle, running_extender
from operator_builders import a_pool
from operator_harness import OperatorProcess, Strata
from operator_manifests import a_job

from strata_api import GPUType, TrainingJob
from strata_operator.core.quotes import quote_template
from strata_operator.settings import OperatorSettings
from strata_scheduler.service import ExtenderService


@pytest.fixture
def extender(crds: ClusterHandle, tmp_path: Path) -> Iterator[ExtenderService]:
    with running_extender(crds.kubeconfig, tmp_path / "demand.sqlite") as service:
        yield service


def fp32_any(name: str, pool: str) -> dict[str, object]:
    return a_job(
        name,
        pool,
        data=1,
        tensor=8,
        gpu_type="Any",
        training={"precision": "fp32"},
        resources={"capacityTypes": ["reserved"]},
    )


def test_an_any_job_gets_the_gpu_type_the_extender_quotes(
    crds: ClusterHandle, namespace: str, strata: Strata, extender: ExtenderService, tmp_path: Path
) -> None:
    pool = strata.pool("quoted", capacityTypes=["reserved"])
    body = fp32_any("quoted", pool)
    stored = strata.custom.create_namespaced_custom_object(
        "strata.dev", "v1alpha1", namespace, "trainingjobs", body, dry_run="All"
    )
    job = TrainingJob.from_body(stored)
    assert job.spec.gpu_types[0] is GPUType.H100  # without a quote, admission would try H100 first
    template = quote_template(job, a_pool(pool, capacityTypes=["reserved"]), OperatorSettings())
    request = urllib.request.Request(f"{extender.url}/quote", data=json.dumps({"Pod": template}).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read())["recommended"] == "MI300X"

    operator = OperatorProcess(crds, tmp_path, (namespace,), "--standalone", "--extender-url", extender.url).start()
    try:
        strata.submit(body)
        status = strata.wait_phase("quoted", "Running")
        assert status["placement"]["gpuType"] == "MI300X"
        assert {p.spec.containers[0].resources.limits.get("amd.com/gpu") for p in strata.pods("quoted")} == {"8"}
    finally:
        operator.stop()
