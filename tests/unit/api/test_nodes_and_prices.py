"""The one node reader (strata_api.nodes.NodeFacts), pod GPU counting and the per-GPU price that the operator's
accounting, the extender's cost and the demo's tables all use."""

from __future__ import annotations

from typing import Any

import pytest

import strata_api as api
from strata_api.catalog import Catalog
from strata_api.nodes import NodeFacts, gpu_requests, gpus_held


def h100_node(**overrides: Any) -> dict[str, Any]:
    node: dict[str, Any] = {
        "metadata": {
            "name": "h100-spot-1",
            "labels": {
                api.NVIDIA_PRODUCT: "NVIDIA-H100-80GB-HBM3",
                api.NODE_CAPACITY_TYPE: "spot",
                api.NODE_INSTANCE_TYPE: "p5.48xlarge",
                api.NODE_ZONE: "us-east-1a",
            },
            "annotations": {api.ANN_NODE_PRICE: "40"},
        },
        "spec": {},
        "status": {
            "allocatable": {api.NVIDIA_GPU: "8", "cpu": "192"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }
    node.update(overrides)
    return node


def test_a_gpu_node_reads_as_every_component_sees_it() -> None:
    facts = NodeFacts.from_body(h100_node())
    assert facts.name == "h100-spot-1"
    assert facts.gpu_type is api.GPUType.H100
    assert facts.capacity_type is api.CapacityType.SPOT
    assert (facts.instance_type, facts.zone) == ("p5.48xlarge", "us-east-1a")
    assert facts.allocatable_gpus == {api.NVIDIA_GPU: 8, api.AMD_GPU: 0}
    assert (facts.gpu_resource, facts.gpu_count) == (api.NVIDIA_GPU, 8)
    assert facts.price_override == 40.0
    assert facts.schedulable


def test_a_cordoned_or_not_ready_node_is_not_schedulable() -> None:
    assert not NodeFacts.from_body(h100_node(spec={"unschedulable": True})).schedulable
    assert not NodeFacts.from_body(h100_node(status={"allocatable": {api.NVIDIA_GPU: "8"}})).schedulable


@pytest.mark.parametrize(
    "body",
    [{}, {"metadata": None, "spec": [], "status": "x"}, {"metadata": {"labels": {"a": 1}, "annotations": []}}],
)
def test_a_malformed_node_reads_as_a_node_with_nothing_rather_than_raising(body: dict[str, Any]) -> None:
    facts = NodeFacts.from_body(body)
    assert (facts.gpu_type, facts.capacity_type, facts.gpu_resource, facts.gpu_count) == (None, None, None, 0)
    assert facts.price_override is None
    assert not facts.schedulable


def test_a_pod_asks_for_gpus_as_kube_scheduler_counts_them() -> None:
    spec = {
        "containers": [
            {"resources": {"requests": {api.NVIDIA_GPU: "4"}}},
            {"resources": {"limits": {api.NVIDIA_GPU: 2}}},
        ],
        "initContainers": [{"resources": {"requests": {api.NVIDIA_GPU: "8"}}}],
    }
    assert gpu_requests(spec) == {api.NVIDIA_GPU: 8}
    assert gpus_held({"spec": spec, "status": {"phase": "Running"}}) == 8
    assert gpus_held({"spec": spec, "status": {"phase": "Succeeded"}}) == 0
    assert gpu_requests({"containers": [{"resources": {"requests": {api.AMD_GPU: "-1"}}}]}) == {}


def test_the_per_gpu_price_is_the_node_price_shared_by_its_gpus() -> None:
    catalog = Catalog(prices={"p5.48xlarge": {"spot": 24.0}}, throughput={})
    assert catalog.gpu_price(None, "p5.48xlarge", "spot", 8) == 3.0
    assert catalog.gpu_price(40.0, "p5.48xlarge", "spot", 8) == 5.0  # the node's own annotation wins
    assert catalog.gpu_price(None, "p5.48xlarge", "reserved", 8) is None  # not in the catalog
    assert catalog.gpu_price(None, "p5.48xlarge", "spot", 0) is None  # no GPUs to share it
