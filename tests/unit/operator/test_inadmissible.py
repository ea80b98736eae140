"""A job whose workers ask more CPU or memory than any node of its kind has is never admitted (issue 18: pods then
stayed Pending under "Admitted", holding quota until the start timeout, and again after every requeue); it stays
Queued with reason NoNodeFitsWorker and the figures, as Kueue leaves an inadmissible workload pending."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from operator_builders import a_job, a_node, a_pool

import strata_api as api
from strata_api import GPUType
from strata_operator.core.admission import GangRequest, Reason, admit
from strata_operator.core.observed import Node
from strata_operator.runtime.admission_pass import readable_request

GI = 2**30
H100, MI300X = GPUType.H100, GPUType.MI300X


def node(name: str, gpu: GPUType | None, cpus: int, memory_gi: int, capacity: str | None = "on-demand") -> Node:
    base = a_node(name, gpu, capacity or "on-demand")
    return replace(base, capacity_type=capacity, allocatable_cpu_millis=cpus * 1000, allocatable_memory=memory_gi * GI)


FLEET = [
    *(node(f"h100-{i}", H100, 192, 2048) for i in range(2)),
    *(node(f"mi300x-{i}", MI300X, 96, 1850) for i in range(2)),
    node("cpu", None, 32, 128),
    node("on-prem", None, 64, 256, capacity=None),  # no capacity-type label: counts as on-demand
]


def request(gpu_type: str = "H100", tensor: int = 8, gpus_per_worker: int = 8, **resources: str) -> GangRequest:
    if gpu_type == api.CPU:
        spec = {"gpuType": api.CPU, "workers": 2, "cpuPerWorker": "2", "memoryPerWorker": "4Gi", **resources}
        job = a_job(name="j", data=2, tensor=1, gpu_type=api.CPU, resources=spec)
    else:
        spec = {"gpus": 16, "gpusPerWorker": gpus_per_worker, "gpuType": gpu_type, **resources}
        job = a_job(name="j", data=16 // tensor, tensor=tensor, resources=spec)
    return GangRequest.from_job(job)


def decide(job: GangRequest, fleet: list[Node] = FLEET) -> tuple[str | None, str]:
    pool = a_pool(max_gpus=1000, maxCPUs="1000")
    decision = admit([job], [], {"pool": pool}, fleet, {n.name: n.allocatable_gpus for n in fleet})
    if job.key in decision.admit or job.key in decision.admit_cpu:
        return None, str(decision.admit.get(job.key, api.CPU))
    waiting = decision.waiting[job.key]
    return waiting.reason, waiting.message


def test_memory_no_node_has_keeps_the_job_queued_with_the_largest_nodes_figures() -> None:
    reason, message = decide(request(memoryPerWorker="3Ti"))
    assert reason == Reason.NO_NODE_FITS
    assert "needs 0 CPUs and 3072Gi memory" in message
    assert "the largest of the 2 H100 nodes of on-demand/reserved/spot capacity allocate 192 CPUs and 2048Gi" in message
    assert "spec.resources.memoryPerWorker" in message


def test_cpu_no_node_has_keeps_a_cpu_job_queued() -> None:
    reason, message = decide(request(api.CPU, cpuPerWorker="65"))
    assert reason == Reason.NO_NODE_FITS
    assert "needs 65 CPUs" in message
    assert "the largest of the 2 CPU nodes" in message
    assert decide(request(api.CPU, cpuPerWorker="64")) == (None, api.CPU)  # the unlabelled node holds it


def test_workers_of_a_tensor_group_share_a_node_so_their_requests_add_up() -> None:
    # tensor 8 on 4 GPUs per worker: two workers per node, 1100Gi each is 2200Gi on one H100 node (2048Gi)
    reason, message = decide(request(tensor=8, gpus_per_worker=4, memoryPerWorker="1100Gi"))
    assert reason == Reason.NO_NODE_FITS
    assert "a node's 2 workers of a tensor-parallel group" in message
    assert decide(request(tensor=4, gpus_per_worker=4, memoryPerWorker="1100Gi")) == (None, "H100")


def test_gpu_type_any_is_admitted_on_the_type_whose_nodes_hold_the_workers() -> None:
    assert decide(request("Any", cpuPerWorker="100")) == (None, "H100")  # MI300X nodes have 96 CPUs
    assert decide(request("Any", cpuPerWorker="200"))[0] == Reason.NO_NODE_FITS


def test_requests_that_fit_and_nodes_that_do_not_say_are_admitted() -> None:
    assert decide(request(cpuPerWorker="192", memoryPerWorker="2Ti")) == (None, "H100")
    silent = [replace(n, allocatable_cpu_millis=None, allocatable_memory=None) for n in FLEET]
    assert decide(request(memoryPerWorker="3Ti"), silent) == (None, "H100")


def test_a_node_body_gives_its_allocatable_cpu_and_memory_and_nonsense_reads_as_unknown() -> None:
    body = {"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "191500m", "memory": "2Ti"}}}
    read = Node.from_body(body)
    assert (read.allocatable_cpu_millis, read.allocatable_memory) == (191_500, 2 * 2**40)
    odd = Node.from_body({"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "lots", "memory": [1]}}})
    assert (odd.allocatable_cpu_millis, odd.allocatable_memory) == (None, None)


def test_a_request_this_reader_cannot_parse_skips_the_check_rather_than_stop_admission() -> None:
    # the API server validated the quantity; should this stricter reader ever disagree, the job is admitted as
    # before (kube-scheduler places it) and the pass goes on for every other job
    assert request(memoryPerWorker="1.2.3Gi").worker_memory == 0
    assert decide(request(memoryPerWorker="1.2.3Gi")) == (None, "H100")


def test_a_job_whose_spec_cannot_be_read_is_left_out_of_admission_naming_it(caplog: pytest.LogCaptureFixture) -> None:
    odd = {"gpuType": api.CPU, "workers": 2, "cpuPerWorker": "1.2.3", "memoryPerWorker": "4Gi"}
    job = a_job(name="odd", data=2, tensor=1, gpu_type=api.CPU, resources=odd)
    with caplog.at_level(logging.WARNING):
        assert readable_request(job, None) is None
    assert "TrainingJob team/odd: left out of admission" in caplog.text
    assert readable_request(a_job(name="fine", data=2, tensor=8), None) is not None
