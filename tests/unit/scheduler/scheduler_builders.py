"""Builders for the Kubernetes objects the extender sees, as the JSON dicts the API server sends.

``a_node("h1").h100().spot()`` and ``a_pod("w0").gpus(8).of_job("llm").tp_group("0", size=16)`` instead of
copied YAML, so each test says only what matters to it.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import strata_api as api

INSTANCE = {"H100": "p5.48xlarge", "MI300X": "Standard_ND96isr_MI300X_v5"}
PRODUCT = {"H100": (api.NVIDIA_PRODUCT, "NVIDIA-H100-80GB-HBM3"), "MI300X": (api.AMD_PRODUCT, "AMD_Instinct_MI300X")}
_uids = itertools.count(1)


class NodeBuilder:
    def __init__(self, name: str) -> None:
        self.obj: dict[str, Any] = {
            "metadata": {"name": name, "labels": {api.NODE_ZONE: "zone-a"}, "annotations": {}},
            "status": {"allocatable": {"cpu": "96", "memory": "1Ti"}},
        }

    def _gpu(self, gpu: str, count: int = 8) -> NodeBuilder:
        label, product = PRODUCT[gpu]
        self.obj["metadata"]["labels"].update({label: product, api.NODE_INSTANCE_TYPE: INSTANCE[gpu]})
        self.obj["status"]["allocatable"][api.GPUType(gpu).resource] = str(count)
        return self

    def h100(self, count: int = 8) -> NodeBuilder:
        return self._gpu("H100", count)

    def mi300x(self, count: int = 8) -> NodeBuilder:
        return self._gpu("MI300X", count)

    def capacity(self, capacity: str) -> NodeBuilder:
        self.obj["metadata"]["labels"][api.NODE_CAPACITY_TYPE] = capacity
        return self

    def spot(self) -> NodeBuilder:
        return self.capacity("spot")

    def reserved(self) -> NodeBuilder:
        return self.capacity("reserved")

    def on_demand(self) -> NodeBuilder:
        return self.capacity("on-demand")

    def zone(self, zone: str) -> NodeBuilder:
        self.obj["metadata"]["labels"][api.NODE_ZONE] = zone
        return self

    def instance(self, instance_type: str) -> NodeBuilder:
        self.obj["metadata"]["labels"][api.NODE_INSTANCE_TYPE] = instance_type
        return self

    def price(self, dollars: str) -> NodeBuilder:
        self.obj["metadata"]["annotations"][api.ANN_NODE_PRICE] = dollars
        return self

    def without_label(self, key: str) -> NodeBuilder:
        self.obj["metadata"]["labels"].pop(key, None)
        return self

    def build(self) -> dict[str, Any]:
        return copy.deepcopy(self.obj)


class PodBuilder:
    def __init__(self, name: str, namespace: str = "team") -> None:
        self.resource = api.NVIDIA_GPU
        self.count = 0
        self.obj: dict[str, Any] = {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"uid-{next(_uids)}",
                "labels": {},
                "annotations": {},
            },
            "spec": {"schedulerName": api.SCHEDULER_NAME, "containers": [{"name": "worker", "resources": {}}]},
            "status": {"phase": "Pending"},
        }

    def gpus(self, count: int, resource: str = api.NVIDIA_GPU) -> PodBuilder:
        self.resource, self.count = resource, count
        return self

    def amd(self, count: int) -> PodBuilder:
        return self.gpus(count, api.AMD_GPU)

    def of_job(self, job: str) -> PodBuilder:
        self.obj["metadata"]["labels"][api.LABEL_JOB] = job
        return self

    def tp_group(self, index: str, size: int) -> PodBuilder:
        self.obj["metadata"]["labels"][api.LABEL_TP_GROUP] = index
        return self.annotate(api.ANN_TP_SIZE, str(size))

    def priority(self, value: int) -> PodBuilder:
        self.obj["metadata"]["labels"][api.LABEL_PRIORITY] = str(value)
        return self

    def pool(self, name: str) -> PodBuilder:
        self.obj["metadata"]["labels"][api.LABEL_POOL] = name
        return self

    def annotate(self, key: str, value: str) -> PodBuilder:
        self.obj["metadata"]["annotations"][key] = value
        return self

    def accepts(self, gpu_types: str) -> PodBuilder:
        return self.annotate(api.ANN_GPU_TYPES, gpu_types)

    def capacity_types(self, types: str) -> PodBuilder:
        return self.annotate(api.ANN_CAPACITY_TYPES, types)

    def planned_on(self, types: str) -> PodBuilder:
        return self.annotate(api.ANN_PLANNED_CAPACITY_TYPES, types)

    def planned_node(self, node: str, gpus: int) -> PodBuilder:
        """Of a gang admission emptied ``node`` for, counting ``gpus`` for it there (rule 10)."""
        return self.annotate(api.ANN_PLANNED_NODE, api.PlannedNode(node, gpus).annotation())

    def checkpoint_every(self, seconds: float) -> PodBuilder:
        return self.annotate(api.ANN_CHECKPOINT_INTERVAL, str(seconds))

    def runtime(self, seconds: float) -> PodBuilder:
        return self.annotate(api.ANN_EXPECTED_RUNTIME, str(seconds))

    def throughput(self, table: str) -> PodBuilder:
        return self.annotate(api.ANN_THROUGHPUT, table)

    def on(self, node: str, phase: str = "Running") -> PodBuilder:
        self.obj["spec"]["nodeName"] = node
        self.obj["status"]["phase"] = phase
        return self

    def build(self) -> dict[str, Any]:
        obj = copy.deepcopy(self.obj)
        if self.count:
            amount = {self.resource: str(self.count)}
            obj["spec"]["containers"][0]["resources"] = {"requests": dict(amount), "limits": dict(amount)}
        return obj


def a_node(name: str) -> NodeBuilder:
    return NodeBuilder(name)


def a_pod(name: str = "worker-0", namespace: str = "team") -> PodBuilder:
    return PodBuilder(name, namespace)


TEST_CATALOG = {
    "prices": {
        "p5.48xlarge": {"on-demand": 80, "reserved": 48, "spot": 32},
        "Standard_ND96isr_MI300X_v5": {"on-demand": 64, "reserved": 40, "spot": 24},
    },
    "throughput": {"bf16": {"H100": 1.0, "MI300X": 0.9}},
    "interruption": {"hazardPerHour": {"spot": 0.1}},
}


def an_extender(*objects: Any, synced: bool = True) -> Any:
    """An extender over a cache holding ``objects`` (node and pod builders), with the test catalog."""
    from strata_api.catalog import parse_catalog
    from strata_scheduler.extender import Extender
    from strata_scheduler.forecast_board import ForecastBoard
    from strata_scheduler.metrics import ExtenderMetrics
    from strata_scheduler.state import ClusterState

    state = ClusterState()
    for builder in objects:
        obj = builder.build()
        (state.upsert_node if isinstance(builder, NodeBuilder) else state.upsert_pod)(obj)
    if synced:
        state.synced |= {"nodes", "pods"}
    return Extender(state, parse_catalog(TEST_CATALOG), ForecastBoard(), ExtenderMetrics(state.size))
