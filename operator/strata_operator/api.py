"""The shared contract between the operator, the scheduler extender and the fleet.

Everything two components must agree on lives here and nowhere else: the API group and kinds, the label and
annotation keys the operator writes on pods and the extender reads, the node labels real GPU clusters carry,
and small typed views over them. This module imports only the standard library so the extender may use it
without pulling in the operator (import-linter enforces that).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

GROUP = "strata.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

TRAINING_JOB = "TrainingJob"
TRAINING_JOBS = "trainingjobs"
INFERENCE_SERVICE = "InferenceService"
INFERENCE_SERVICES = "inferenceservices"
RESOURCE_POOL = "ResourcePool"
RESOURCE_POOLS = "resourcepools"

SCHEDULER_NAME = "strata-scheduler"
"""The kube-scheduler profile whose extender is Strata's; the operator sets it as the pods' schedulerName."""

SCHEDULING_GATE = f"{GROUP}/gang-admission"
"""Pods are created with this gate; the operator lifts all gates of a gang together on admission."""

# --- labels on pods (selectable) ---
LABEL_JOB = f"{GROUP}/job"
LABEL_JOB_KIND = f"{GROUP}/job-kind"
LABEL_WORKER_INDEX = f"{GROUP}/worker-index"
LABEL_TP_GROUP = f"{GROUP}/tensor-parallel-group"
"""Index of the tensor-parallel group a worker belongs to; every pod of one group must share a node."""
LABEL_POOL = f"{GROUP}/pool"
LABEL_PRIORITY = f"{GROUP}/priority"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "strata-operator"

# --- annotations on pods (read by the extender) ---
ANN_GANG_SIZE = f"{GROUP}/gang-size"
ANN_TP_SIZE = f"{GROUP}/tensor-parallel-size"
ANN_GPU_TYPES = f"{GROUP}/gpu-types"
"""Comma-separated GPU types the job accepts (``H100,MI300X``); absent or ``any`` accepts every type."""
ANN_CAPACITY_TYPES = f"{GROUP}/capacity-types"
"""Comma-separated capacity types allowed by the job and its pool (``spot,on-demand,reserved``)."""
ANN_CAPACITY_PREFERENCE = f"{GROUP}/capacity-preference"
ANN_CHECKPOINT_INTERVAL = f"{GROUP}/checkpoint-interval-seconds"
ANN_EXPECTED_RUNTIME = f"{GROUP}/expected-runtime-seconds"
ANN_PRECISION = f"{GROUP}/precision"
ANN_THROUGHPUT = f"{GROUP}/relative-throughput"
"""Per-job override of the throughput catalog: ``H100=1.0,MI300X=1.3``."""
ANN_DEFERRABLE = f"{GROUP}/deferrable"

# --- annotations on nodes ---
ANN_NODE_PRICE = f"{GROUP}/price-per-hour"
"""Overrides the catalog price of one node, in dollars per node-hour."""

# --- labels real clusters put on nodes ---
NODE_INSTANCE_TYPE = "node.kubernetes.io/instance-type"
NODE_ZONE = "topology.kubernetes.io/zone"
NODE_CAPACITY_TYPE = "karpenter.sh/capacity-type"
NVIDIA_PRODUCT = "nvidia.com/gpu.product"
AMD_PRODUCT = "amd.com/gpu.product-name"
NVIDIA_GPU = "nvidia.com/gpu"
AMD_GPU = "amd.com/gpu"

TAINT_SPOT = NODE_CAPACITY_TYPE
"""Spot nodes carry ``karpenter.sh/capacity-type=spot:NoSchedule``; only pods that tolerate reclaims land there."""


class GPUType(enum.StrEnum):
    H100 = "H100"
    MI300X = "MI300X"

    @property
    def resource(self) -> str:
        """The extended resource name the device plugin advertises for this type."""
        return AMD_GPU if self is GPUType.MI300X else NVIDIA_GPU


class CapacityType(enum.StrEnum):
    SPOT = "spot"
    ON_DEMAND = "on-demand"
    RESERVED = "reserved"


GPU_RESOURCES = (NVIDIA_GPU, AMD_GPU)

_PRODUCT_MARKERS: tuple[tuple[str, GPUType], ...] = (("H100", GPUType.H100), ("MI300X", GPUType.MI300X))


def gpu_type_of(node_labels: Mapping[str, str]) -> GPUType | None:
    """The GPU type a node carries, read from the vendors' own product labels; None for a CPU node."""
    product = (node_labels.get(NVIDIA_PRODUCT) or node_labels.get(AMD_PRODUCT) or "").upper()
    for marker, gpu in _PRODUCT_MARKERS:
        if marker in product:
            return gpu
    return None


def capacity_type_of(node_labels: Mapping[str, str]) -> CapacityType | None:
    """The node's capacity type; None when the label is missing or not one Strata knows."""
    try:
        return CapacityType(node_labels.get(NODE_CAPACITY_TYPE, ""))
    except ValueError:
        return None


def parse_list(value: str | None) -> frozenset[str]:
    """Split a comma-separated annotation; empty or ``any`` means no restriction (an empty set)."""
    items = frozenset(part.strip() for part in (value or "").split(",") if part.strip())
    return frozenset() if "any" in items else items


@dataclass(frozen=True)
class PodContract:
    """What the extender needs to know about a pod, read from Strata's labels and annotations."""

    job: str | None
    gang_size: int
    tp_size: int
    tp_group: str | None
    priority: int
    gpu_types: frozenset[str]
    capacity_types: frozenset[str]
    checkpoint_interval_s: float | None
    expected_runtime_s: float | None
    precision: str
    throughput_override: Mapping[str, float]
    deferrable: bool

    @classmethod
    def from_metadata(cls, labels: Mapping[str, str], annotations: Mapping[str, str]) -> PodContract:
        """Read a pod's metadata leniently: a malformed value falls back to the neutral default."""
        return cls(
            job=labels.get(LABEL_JOB),
            gang_size=_int(annotations.get(ANN_GANG_SIZE), 1),
            tp_size=_int(annotations.get(ANN_TP_SIZE), 1),
            tp_group=labels.get(LABEL_TP_GROUP),
            priority=_int(labels.get(LABEL_PRIORITY), 0),
            gpu_types=parse_list(annotations.get(ANN_GPU_TYPES)),
            capacity_types=parse_list(annotations.get(ANN_CAPACITY_TYPES)),
            checkpoint_interval_s=_float(annotations.get(ANN_CHECKPOINT_INTERVAL)),
            expected_runtime_s=_float(annotations.get(ANN_EXPECTED_RUNTIME)),
            precision=annotations.get(ANN_PRECISION, "bf16"),
            throughput_override=parse_throughput(annotations.get(ANN_THROUGHPUT)),
            deferrable=annotations.get(ANN_DEFERRABLE, "").lower() == "true",
        )


def parse_throughput(value: str | None) -> dict[str, float]:
    """Parse ``H100=1.0,MI300X=1.3``; entries that are not ``TYPE=positive number`` are ignored."""
    result: dict[str, float] = {}
    for part in (value or "").split(","):
        name, _, number = part.partition("=")
        parsed = _float(number)
        if name.strip() and parsed is not None and parsed > 0:
            result[name.strip()] = parsed
    return result


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
