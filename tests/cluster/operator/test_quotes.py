"""gpuType Any with the scheduler extender running: admission asks its POST /quote and the job gets the GPU type
whose unit of work is cheapest. In fp32 an MI300X does 1.10 of an H100's work (the catalog's throughput table)
and a reserved MI300X node costs $33.60 an hour against $38.53 for an H100 one, so the quote says MI300X, where
the job's own order (the fallback without an extender) would have started with H100. The quote ranks node kinds
(GPU type x capacity type), and one admission pass gives each job the first kind that still holds it."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ClusterHandle, eventually, running_extender
from operator_builders import a_pool
from operator_harness import OperatorProcess, Strata, cleaned_up_then_stopped
from operator_manifests import a_job

import strata_api as api
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
        cleaned_up_then_stopped(strata, operator)


def someone_elses_pod(name: str, node: str, resource: str, gpus: int) -> dict[str, Any]:
    """A pod of no Strata job holding ``gpus`` of ``resource`` on ``node`` (bound by name)."""
    limits = {resource: str(gpus)}
    container = {"name": "c", "image": "registry.invalid/other:1", "resources": {"limits": limits, "requests": limits}}
    spec = {"nodeName": node, "containers": [container], "tolerations": [{"operator": "Exists"}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_one_pass_gives_each_any_job_the_first_node_kind_that_still_holds_it(
    crds: ClusterHandle, namespace: str, strata: Strata, extender: ExtenderService, tmp_path: Path
) -> None:
    """Issue 21, finding 6, on the real operator and extender. Every reserved GPU is taken but one MI300X GPU;
    spot is free. The quote's kinds: MI300X reserved ($0: paid anyway), H100 spot ($2.75 a GPU-hour), MI300X spot
    ($2.40 / 0.85 = $2.82). Two one-GPU Any jobs submitted before the operator starts are decided in one pass:
    the first gets MI300X (the reserved GPU), the second H100 (spot). By type alone both got MI300X, the second
    on MI300X spot."""

    def reserved(product: str) -> list[str]:
        selector = f"{product},{api.NODE_CAPACITY_TYPE}=reserved"
        return sorted(n.metadata.name for n in strata.core.list_node(label_selector=selector).items)

    h100, mi300x = reserved(api.NVIDIA_PRODUCT), reserved(api.AMD_PRODUCT)
    assert (len(h100), len(mi300x)) == (2, 2)
    fills = [(n, api.NVIDIA_GPU, 8) for n in h100] + [(mi300x[0], api.AMD_GPU, 8), (mi300x[1], api.AMD_GPU, 7)]
    for index, (node, resource, gpus) in enumerate(fills):
        strata.core.create_namespaced_pod(namespace, someone_elses_pod(f"other-{index}", node, resource, gpus))
    eventually(lambda: all(extender.state.used_gpus.get(n) for n, _, _ in fills), 30, "the extender to see them")
    pool = strata.pool("kinds", capacityTypes=["reserved", "spot"])
    either = {"capacityTypes": ["reserved", "spot"]}
    for name in ("first", "second"):
        strata.submit(a_job(name, pool, data=1, tensor=1, gpus_per_worker=1, gpu_type="Any", resources=either))
    operator = OperatorProcess(crds, tmp_path, (namespace,), "--standalone", "--extender-url", extender.url).start()
    try:
        granted = {
            name: strata.wait_phase(name, "Admitted", "Running")["placement"]["gpuType"] for name in ("first", "second")
        }
        assert granted == {"first": "MI300X", "second": "H100"}
        assert strata.status("first")["admittedAt"] == strata.status("second")["admittedAt"]  # one pass
        # where the pass counted each: the workers carry it, and the extender scores those nodes first
        planned = {name: strata.status(name)["placement"]["plannedCapacityTypes"] for name in ("first", "second")}
        assert planned == {"first": ["reserved"], "second": ["spot"]}
        for name, (types,) in planned.items():
            pods = eventually(lambda name=name: strata.pods(name), 30, f"{name}'s workers")
            assert {p.metadata.annotations[api.ANN_PLANNED_CAPACITY_TYPES] for p in pods} == {types}
    finally:
        cleaned_up_then_stopped(strata, operator)
        for index in range(len(fills)):
            strata.core.delete_namespaced_pod(f"other-{index}", namespace, grace_period_seconds=0)


def test_a_waiting_gangs_quote_is_asked_again_when_a_kind_it_does_not_list_frees(
    crds: ClusterHandle, namespace: str, strata: Strata, extender: ExtenderService, tmp_path: Path
) -> None:
    """A quote is kept for 30 s, but a kind that gains room for the gang's workers outdates it at once. Every GPU
    is taken but one H100 spot node's: a gang of two 8-GPU workers waits, with a quote that lists H100 spot alone.
    Then both reserved MI300X nodes free: the next pass asks again, and the gang is admitted on MI300X with the
    plan of the reserved GPUs (with the kept quote it was admitted there too, but with no plan: the quote knew
    nothing of reserved MI300X, so its workers went by the extender's cost order alone)."""

    def nodes(product: str, capacity: str) -> list[str]:
        selector = f"{product},{api.NODE_CAPACITY_TYPE}={capacity}"
        return sorted(n.metadata.name for n in strata.core.list_node(label_selector=selector).items)

    mi300x_reserved = nodes(api.AMD_PRODUCT, "reserved")
    h100 = [*nodes(api.NVIDIA_PRODUCT, "reserved"), nodes(api.NVIDIA_PRODUCT, "spot")[0]]  # one H100 spot node free
    mi300x = [*mi300x_reserved, *nodes(api.AMD_PRODUCT, "spot")]
    fills = {f"other-{i}": node for i, node in enumerate([*h100, *mi300x])}
    for name, node in fills.items():
        resource = api.NVIDIA_GPU if node in h100 else api.AMD_GPU
        strata.core.create_namespaced_pod(namespace, someone_elses_pod(name, node, resource, 8))
    eventually(lambda: all(extender.state.used_gpus.get(n) for n in fills.values()), 30, "the extender to see them")
    pool = strata.pool("requote", capacityTypes=["reserved", "spot"])
    either = {"capacityTypes": ["reserved", "spot"]}
    freed = [name for name, node in fills.items() if node in mi300x_reserved]
    operator = OperatorProcess(crds, tmp_path, (namespace,), "--standalone", "--extender-url", extender.url).start()
    try:
        strata.submit(a_job("gang", pool, data=2, tensor=8, gpu_type="Any", resources=either))
        eventually(lambda: strata.status("gang").get("queuePosition") or None, 30, "the gang waiting in the queue")
        time.sleep(2)  # passes go by with the gang's quote kept
        assert strata.status("gang")["phase"] == "Queued"
        for name in freed:
            strata.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
        status = strata.wait_phase("gang", "Admitted", "Running", timeout_s=20)  # well inside the quote's 30 s
        assert status["placement"]["gpuType"] == "MI300X"
        assert status["placement"]["plannedCapacityTypes"] == ["reserved"]
    finally:
        cleaned_up_then_stopped(strata, operator)
        for name in fills:
            if name not in freed:
                strata.core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
