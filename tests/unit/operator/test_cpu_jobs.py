"""CPU TrainingJobs (``resources.gpuType: CPU``): their worker pods, their admission on the pool's CPU quota, and
the view of their spec. Exact manifests and decisions, no cluster."""

from __future__ import annotations

from typing import Any

import pytest
from operator_builders import a_job, a_node, a_pool, at

import strata_api as api
from strata_api import GPUType
from strata_operator.core.admission import AdmittedGang, GangRequest, Reason, admit
from strata_operator.core.pods import build_worker_pods, gang_gpu_type, placement_type, worker_env
from strata_operator.settings import OperatorSettings

SETTINGS = OperatorSettings()
NO_GPU_PRODUCT = [
    {"key": "nvidia.com/gpu.product", "operator": "DoesNotExist"},
    {"key": "amd.com/gpu.product-name", "operator": "DoesNotExist"},
]


def cpu_job(name: str = "tiny", data: int = 2, **kwargs: Any) -> api.TrainingJob:
    status = {"phase": "Admitted", "attempt": 1, "placement": {"gpuType": "CPU"}}
    return a_job(name=name, data=data, gpu_type=api.CPU, status=status, **kwargs)


def cpu_pool(name: str = "pool", max_cpus: str | int | None = 8, **spec: Any) -> api.ResourcePool:
    if max_cpus is not None:
        spec["maxCPUs"] = max_cpus
    return a_pool(name, **spec)


def test_a_cpu_worker_requests_cpu_and_memory_only_and_runs_one_process() -> None:
    pods = build_worker_pods(cpu_job(), cpu_pool(capacityTypes=["on-demand", "reserved"]), SETTINGS)

    assert [p["metadata"]["name"] for p in pods] == ["tiny-worker-0", "tiny-worker-1"]
    pod = pods[1]
    container = pod["spec"]["containers"][0]
    assert container["resources"] == {
        "limits": {"cpu": "2", "memory": "4Gi"},
        "requests": {"cpu": "2", "memory": "4Gi"},
    }
    assert pod["spec"]["tolerations"] == []
    assert pod["spec"]["affinity"] == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": "karpenter.sh/capacity-type",
                                "operator": "In",
                                "values": ["on-demand", "reserved"],
                            },
                            *NO_GPU_PRODUCT,
                        ]
                    },
                    # a node nobody labelled with a capacity type (on-premises, the local real node) is on-demand
                    {
                        "matchExpressions": [
                            {"key": "karpenter.sh/capacity-type", "operator": "DoesNotExist"},
                            *NO_GPU_PRODUCT,
                        ]
                    },
                ]
            }
        }
    }
    assert pod["metadata"]["annotations"] == {
        "strata.dev/gang-size": "2",
        "strata.dev/tensor-parallel-size": "1",
        "strata.dev/gpu-types": "CPU",
        "strata.dev/capacity-types": "on-demand,reserved",
        "strata.dev/capacity-preference": "none",
        "strata.dev/checkpoint-interval-seconds": "600",
        "strata.dev/precision": "bf16",
    }
    # the same gang admission and entry point as a GPU worker
    assert pod["spec"]["schedulingGates"] == [{"name": api.SCHEDULING_GATE}]
    assert pod["spec"]["schedulerName"] == "strata-scheduler"
    assert container["command"] == ["python", "-m", "strata_workloads.launch"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["WORLD_SIZE"], env["RANK"], env["LOCAL_WORLD_SIZE"]) == ("2", "1", "1")
    assert (env["NODE_RANK"], env["NNODES"], env["STRATA_DP_SHARD"]) == ("1", "2", "2")
    assert env["OMP_NUM_THREADS"] == "2"  # the 2 cores of cpuPerWorker, not the host's


@pytest.mark.parametrize(("cpu", "threads"), [("500m", "1"), ("1", "1"), ("2500m", "2"), (16, "16")])
def test_a_cpu_workers_thread_pool_is_its_whole_cores_and_at_least_one(cpu: str | int, threads: str) -> None:
    job = cpu_job(resources={"gpuType": "CPU", "workers": 2, "cpuPerWorker": cpu, "memoryPerWorker": "1Gi"})
    assert worker_env(job, SETTINGS, 0)["OMP_NUM_THREADS"] == threads
    assert "OMP_NUM_THREADS" not in worker_env(a_job(data=8), SETTINGS, 0)  # GPU workers: the launcher's business


def test_every_cpu_process_has_its_own_worker_and_rank() -> None:
    job = cpu_job(data=2, tensor=2, pipeline=2)
    envs = [worker_env(job, SETTINGS, i) for i in range(job.spec.workers)]

    assert job.spec.workers == job.spec.world_size == 8
    assert [e["RANK"] for e in envs] == [str(i) for i in range(8)]
    assert {e["WORLD_SIZE"] for e in envs} == {"8"}
    assert {e["LOCAL_WORLD_SIZE"] for e in envs} == {"1"}
    assert job.spec.pods_per_tp_group == 2  # a tensor-parallel group of 2 spans 2 single-process workers


def test_a_cpu_job_on_spot_tolerates_only_the_spot_taint_and_never_a_gpu_taint() -> None:
    job = cpu_job(resources={"gpuType": "CPU", "workers": 2, "cpuPerWorker": "500m", "memoryPerWorker": "1Gi",
                             "capacityTypes": ["spot"], "capacityPreference": "spot"})  # fmt: skip
    pod = build_worker_pods(job, cpu_pool(), SETTINGS)[0]

    assert pod["spec"]["tolerations"] == [
        {"key": "karpenter.sh/capacity-type", "operator": "Equal", "value": "spot", "effect": "NoSchedule"}
    ]
    affinity = pod["spec"]["affinity"]["nodeAffinity"]
    assert affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"] == [
        {
            "matchExpressions": [
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]},
                *NO_GPU_PRODUCT,
            ]
        }
    ]  # spot only: an unlabelled node is not spot
    assert affinity["preferredDuringSchedulingIgnoredDuringExecution"][0]["preference"] == {
        "matchExpressions": [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]
    }
    assert pod["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "500m", "memory": "1Gi"}


def test_a_cpu_job_has_no_gpu_type_and_its_placement_says_cpu() -> None:
    job = cpu_job()
    assert job.spec.gpu_types == ()
    assert placement_type(job) == "CPU"
    assert placement_type(a_job(status={"placement": {"gpuType": "MI300X"}}, gpu_type="Any")) == "MI300X"
    with pytest.raises(ValueError, match="gpuType is CPU"):
        gang_gpu_type(job)


def cpu_request(key: str, millis: int, *, pool: str = "pool", submitted: float = 0) -> GangRequest:
    return GangRequest(
        key=key,
        pool=pool,
        workers=2,
        gpus_per_worker=0,
        pods_per_group=1,
        gpu_types=(),
        capacity_types=frozenset({"on-demand"}),
        submitted=at(submitted),
        cpu_millis=millis,
    )


def test_the_request_of_a_cpu_job_counts_its_cpu_and_no_gpus() -> None:
    request = GangRequest.from_job(cpu_job(resources={"gpuType": "CPU", "workers": 2, "cpuPerWorker": "1500m",
                                                      "memoryPerWorker": "1Gi"}))  # fmt: skip
    assert (request.on_cpu, request.gpus, request.cpu_millis) == (True, 0, 3000)
    assert GangRequest.from_job(a_job(data=8)).cpu_millis == 0  # GPU jobs' CPUs come with their GPU nodes


def test_a_cpu_job_is_admitted_on_its_pools_cpu_quota_without_gpu_nodes() -> None:
    decision = admit([cpu_request("team/tiny", 4000)], [], {"pool": cpu_pool(max_cpus=4)}, [], {})
    assert decision.admit_cpu == ["team/tiny"]
    assert decision.admit == {}
    assert decision.waiting == {}


@pytest.mark.parametrize(
    ("max_cpus", "reason", "message"),
    [
        (None, Reason.NO_CPU_QUOTA, "pool pool admits no CPU jobs: its spec.maxCPUs is unset"),
        ("3500m", Reason.EXCEEDS_QUOTA, "needs 4 CPUs; pool pool allows 3500m in all (spec.maxCPUs)"),
    ],
)
def test_a_cpu_job_its_pool_cannot_hold_waits_with_the_reason(max_cpus: str | None, reason: str, message: str) -> None:
    decision = admit([cpu_request("team/tiny", 4000)], [], {"pool": cpu_pool(max_cpus=max_cpus)}, [], {})
    assert decision.admit_cpu == []
    waiting = decision.waiting["team/tiny"]
    assert (waiting.reason, waiting.message) == (reason, message)


def test_admitted_cpu_jobs_hold_the_quota_until_they_finish_and_gpu_jobs_do_not_count() -> None:
    holding = AdmittedGang(request=cpu_request("team/first", 6000), gpu_type=None, admitted_at=at(0))
    gpu_gang = GangRequest.from_job(a_job(name="big", data=8))
    gpu_holding = AdmittedGang(request=gpu_gang, gpu_type=GPUType.H100, admitted_at=at(0), bound={"n0": 8})
    queue = [cpu_request("team/second", 4000, submitted=1), cpu_request("team/small", 2000, submitted=2)]

    decision = admit(queue, [holding, gpu_holding], {"pool": cpu_pool(max_cpus=8)}, [a_node("n0")], {"n0": 0})

    assert decision.admit_cpu == ["team/small"]
    waiting = decision.waiting["team/second"]
    assert (waiting.reason, waiting.message) == (Reason.WAITING_FOR_QUOTA, "needs 4 CPUs; pool pool has 2 of 8 left")
    assert decision.preempt == []


def test_a_waiting_cpu_job_blocks_no_gpu_job_and_a_full_gpu_fleet_blocks_no_cpu_job() -> None:
    nodes = [a_node("n0")]
    queue = [
        GangRequest.from_job(a_job(name="gpu", data=16)),  # needs 2 nodes: never fits
        cpu_request("team/cpu", 2000, submitted=1),
        GangRequest.from_job(a_job(name="later", data=8, created=at(2))),
    ]
    decision = admit(queue, [], {"pool": cpu_pool(max_cpus=2)}, nodes, {"n0": 8})
    assert decision.admit_cpu == ["team/cpu"]
    assert decision.admit == {"team/later": GPUType.H100}
