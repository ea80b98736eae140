"""The CRD views of CPU jobs and CPU quota: the quantity reader behind a pool's ``maxCPUs``, the spec's sizes, and
the one default the schema cannot hold (``gpusPerWorker`` of a GPU job) kept equal to what the CRD says."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import strata_api as api

CRD = Path(__file__).resolve().parents[3] / "crds" / "trainingjob.yaml"


@pytest.mark.parametrize(
    ("quantity", "millis"),
    [(2, 2000), ("2", 2000), ("500m", 500), ("1.5", 1500), ("0.0001", 1), ("1k", 1_000_000), ("2e3", 2_000_000)],
)
def test_cpu_quantities_read_as_millicores_rounded_up(quantity: object, millis: int) -> None:
    assert api.cpu_millis(quantity) == millis


@pytest.mark.parametrize("quantity", ["", "two", "1.5.1", "2 cores"])
def test_a_malformed_cpu_quantity_is_refused_naming_it(quantity: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(quantity))):
        api.cpu_millis(quantity)


@pytest.mark.parametrize(("millis", "text"), [(4000, "4"), (1500, "1500m"), (0, "0")])
def test_millicores_are_written_as_the_shortest_quantity(millis: int, text: str) -> None:
    assert api.format_cpu_millis(millis) == text


def spec(resources: dict[str, Any]) -> api.TrainingJobSpec:
    return api.TrainingJobSpec.from_dict(
        {
            "workload": {"image": "i", "preset": "debug", "imagePullPolicy": "IfNotPresent"},
            "parallelism": {"data": 2, "tensor": 1, "pipeline": 1, "expert": 1, "microBatches": 1,
                            "pipelineSchedule": "1F1B"},
            "training": {"globalBatchSize": 8, "microBatchSize": 1, "steps": 1, "precision": "fp32",
                         "activationCheckpointing": "none", "gradientClipping": 1.0, "learningRate": 0.001},
            "checkpoint": {"intervalSeconds": 600, "keep": 3, "path": "/checkpoints"},
            "resources": {"capacityTypes": ["on-demand"], "capacityPreference": "none", **resources},
            "pool": "p",
            "backoffLimit": 3,
            "suspend": False,
        }
    )  # fmt: skip


def test_a_cpu_spec_has_one_process_per_worker_and_no_gpus() -> None:
    cpu = spec({"gpuType": "CPU", "workers": 2, "cpuPerWorker": "750m", "memoryPerWorker": "1Gi"})
    assert (cpu.on_cpu, cpu.workers, cpu.processes_per_worker, cpu.world_size) == (True, 2, 1, 2)
    assert (cpu.resources.gpus, cpu.resources.gpus_per_worker, cpu.gpu_types) == (0, 0, ())
    assert cpu.cpu_millis == 1500


def test_a_gpu_spec_without_gpus_per_worker_gets_the_documented_default() -> None:
    gpu = spec({"gpuType": "H100", "gpus": 16})
    assert (gpu.on_cpu, gpu.resources.gpus_per_worker, gpu.workers, gpu.world_size) == (False, 8, 2, 16)
    assert api.DEFAULT_GPUS_PER_WORKER == 8


def test_the_crd_says_the_same_gpus_per_worker_default_as_the_view() -> None:
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    resources = schema["properties"]["spec"]["properties"]["resources"]["properties"]
    assert "default" not in resources["gpusPerWorker"]  # a schema default would land on CPU jobs too
    assert f"Default {api.DEFAULT_GPUS_PER_WORKER};" in resources["gpusPerWorker"]["description"]
    rules = [r["rule"] for r in schema["properties"]["spec"]["x-kubernetes-validations"]]
    fallbacks = {int(n) for rule in rules for n in re.findall(r"self\.resources\.gpusPerWorker : (\d+)\)", rule)}
    assert fallbacks == {api.DEFAULT_GPUS_PER_WORKER}
    assert api.CPU in resources["gpuType"]["enum"]
