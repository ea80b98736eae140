"""The shared contract of Strata's components: the operator, the scheduler extender, the workloads, the dev tooling.

Everything two components must agree on lives in this package and nowhere else. This module: the API group and
kinds, the label and annotation keys the operator writes on pods and the extender reads, the node labels real
GPU clusters carry, and typed views of the CRDs. Beside it: :mod:`strata_api.workload` (what a worker pod and the
workload tell each other), :mod:`strata_api.nodes` (the one node reader), :mod:`strata_api.catalog` (prices and
the per-GPU price), :mod:`strata_api.settings` (the one settings loader). The package is a leaf: it imports no
other Strata package and nothing heavier than PyYAML (import-linter and tests/unit/api enforce both).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

GROUP = "strata.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

TRAINING_JOB = "TrainingJob"
TRAINING_JOBS = "trainingjobs"
RESOURCE_POOL = "ResourcePool"
RESOURCE_POOLS = "resourcepools"
INFERENCE_SERVICE = "InferenceService"
INFERENCE_SERVICES = "inferenceservices"

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
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_INFERENCE_SERVICE = f"{GROUP}/inference-service"
"""On an InferenceService's Deployment, Service, PodDisruptionBudget and replica pods: the service's name."""
LABEL_REVISION = f"{GROUP}/revision"
"""On an InferenceService's replica pods: the hash of their pod template (the service's ``status.revision``)."""
LABEL_CANARY = f"{GROUP}/canary"
"""On the replica pods of an InferenceService's canary (``"true"``): what the canary's Deployment and headless
Service select, apart from the stable revision's replicas."""
"""How many times the gang was (re)started; pods of an older attempt are never mistaken for the current gang."""

# --- annotations on pods (read by the extender) ---
ANN_GANG_SIZE = f"{GROUP}/gang-size"
ANN_TP_SIZE = f"{GROUP}/tensor-parallel-size"
ANN_GPU_TYPES = f"{GROUP}/gpu-types"
"""Comma-separated GPU types the job accepts (``H100,MI300X``); absent or ``any`` accepts every type."""
ANN_CAPACITY_TYPES = f"{GROUP}/capacity-types"
"""Comma-separated capacity types allowed by the job and its pool (``spot,on-demand,reserved``)."""
ANN_CAPACITY_PREFERENCE = f"{GROUP}/capacity-preference"
ANN_PLANNED_CAPACITY_TYPES = f"{GROUP}/planned-capacity-types"
"""Comma-separated capacity types admission counted the gang's workers on (``status.placement.plannedCapacityTypes``):
the extender scores the nodes of those types above the others, so that the jobs one admission pass admits land
where the pass counted them, whatever order kube-scheduler binds their pods in. Absent: no plan (every node in
cost order)."""
ANN_PLANNED_NODE = f"{GROUP}/planned-node"
"""``<node>=<GPUs>``: the node admission emptied for the gang by moving smaller jobs off it (rule 10,
``status.placement.plannedNode``) and the GPUs it counted for the gang there. Until the gang's pods are bound there
the extender keeps those GPUs from every other pod: the moved jobs' pods take a while to go, and another pod bound
to the GPUs they free would leave the gang waiting again."""
ANN_CHECKPOINT_INTERVAL = f"{GROUP}/checkpoint-interval-seconds"
ANN_EXPECTED_RUNTIME = f"{GROUP}/expected-runtime-seconds"
ANN_PRECISION = f"{GROUP}/precision"
ANN_THROUGHPUT = f"{GROUP}/relative-throughput"
"""Per-job override of the throughput catalog: ``H100=1.0,MI300X=1.3``."""
ANN_DEFERRABLE = f"{GROUP}/deferrable"
ANN_PROGRESS = f"{GROUP}/progress"
"""Progress a worker reports about itself, as JSON:
``{"step": 120, "checkpointStep": 100, "checkpointTime": "2026-01-01T00:00:00Z"}``.

Written on the worker pod (by the workload, or by whatever watches its logs); the operator copies the highest
values into the TrainingJob's status and counts the steps past the last checkpoint as lost when the gang restarts.
"""

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


@dataclass(frozen=True)
class PlannedNode:
    """A node admission emptied for a gang (rule 10) and the GPUs it counted for the gang there."""

    name: str
    gpus: int

    def annotation(self) -> str:
        return f"{self.name}={self.gpus}"

    @classmethod
    def parse(cls, value: str | None) -> PlannedNode | None:
        """Read ``ANN_PLANNED_NODE``; anything but ``<node>=<positive GPUs>`` is no plan."""
        name, _, gpus = (value or "").rpartition("=")
        count = _int(gpus, 0)
        return cls(name, count) if name and count > 0 else None

    @classmethod
    def from_status(cls, value: Any) -> PlannedNode | None:
        """Read ``status.placement.plannedNode`` (``{name, gpus}``)."""
        if not isinstance(value, Mapping) or not value.get("name"):
            return None
        return cls(str(value["name"]), int(value.get("gpus") or 0))

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "gpus": self.gpus}


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
    planned_capacity_types: frozenset[str] = frozenset()
    """The capacity types admission counted the gang on (``ANN_PLANNED_CAPACITY_TYPES``); empty: no plan."""
    planned_node: PlannedNode | None = None
    """The node admission emptied for the gang (``ANN_PLANNED_NODE``)."""

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
            planned_capacity_types=parse_list(annotations.get(ANN_PLANNED_CAPACITY_TYPES)),
            planned_node=PlannedNode.parse(annotations.get(ANN_PLANNED_NODE)),
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


# --- typed views of the CRDs (crds/*.yaml is the source of truth; defaults come from the API server) ---


class Phase(enum.StrEnum):
    QUEUED = "Queued"
    ADMITTED = "Admitted"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"

    @property
    def holds_gpus(self) -> bool:
        """Admitted and Running jobs hold their gang's GPUs (and their pool's quota)."""
        return self in (Phase.ADMITTED, Phase.RUNNING)

    @property
    def finished(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.FAILED)


ANY_GPU = "Any"
"""``spec.resources.gpuType`` value meaning: let admission pick one GPU type for the whole gang."""

CPU = "CPU"
"""``spec.resources.gpuType`` value meaning: no GPUs; ``resources.workers`` pods of one training process each, on
nodes without a GPU product label. Not a :class:`GPUType`: nothing that iterates GPU types ever meets it."""

DEFAULT_GPUS_PER_WORKER = 8
"""``spec.resources.gpusPerWorker`` of a GPU job that leaves it unset. The schema cannot default it (a CPU job must
leave it unset, and a schema default would set it there too), so this view applies it; the CRD's description and
its CEL rules say the same 8, and tests/unit/api checks that they do."""


MAX_RUNTIME_SECONDS = 315_360_000
"""The largest ``maxRuntimeSeconds`` of a TrainingJob or a ResourcePool (ten years of 365 days): the CRDs' maximum,
and the clamp the operator applies to a limit stored before the CRDs had one (a deadline past year 9999 raised
OverflowError in every reconcile). tests/unit/api checks that the CRDs say the same."""


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 timestamp, with ``T`` and ``Z`` in either case (RFC 3339 allows both, and the API server's
    ``format: date-time`` accepts ``2027-01-06t10:00:00z``); None when absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError:
        return None


def format_time(value: datetime) -> str:
    """A moment as the API server writes timestamps, in UTC (``2027-01-06T04:30:00Z`` for
    ``2027-01-06T10:00:00+05:30``); a naive datetime is taken to be UTC already."""
    return (value.astimezone(UTC) if value.tzinfo is not None else value).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Workload:
    image: str
    preset: str
    image_pull_policy: str
    model_dir: str = ""  # a Hugging Face directory on the checkpoint volume; empty: the preset
    tokenizer: str = ""  # a tokenizer.json there; empty: model_dir's, else bytes
    data_dir: str = ""  # a dataset there (prepared folder, .jsonl/.parquet file or folder); empty: the default text


@dataclass(frozen=True)
class Parallelism:
    data: int
    tensor: int
    pipeline: int
    expert: int
    micro_batches: int
    pipeline_schedule: str


@dataclass(frozen=True)
class Training:
    global_batch_size: int
    micro_batch_size: int
    steps: int
    precision: str
    activation_checkpointing: str
    gradient_clipping: float
    learning_rate: float


@dataclass(frozen=True)
class Checkpointing:
    interval_seconds: int
    interval_steps: int | None
    keep: int
    path: str
    persistent_volume_claim: str | None


@dataclass(frozen=True)
class Resources:
    gpus: int
    """GPUs of the gang; 0 for a CPU job."""
    gpus_per_worker: int
    """GPUs (and training processes) per worker; 0 for a CPU job."""
    gpu_type: str
    capacity_types: tuple[str, ...]
    capacity_preference: str
    cpu_per_worker: str | None
    memory_per_worker: str | None
    workers: int | None = None
    """``resources.workers`` of a CPU job; None for a GPU job."""
    node_selector: tuple[tuple[str, str], ...] = ()
    """``resources.nodeSelector`` as sorted (label, value) pairs."""


MAX_EXPECTED_DURATION_SECONDS = 2_592_000
"""The largest ``spec.scheduling.expectedDurationSeconds`` (30 days), the CRD's maximum: valley scheduling prices
a run over the time-of-use table, and a longer run is no longer a run one would defer for an hour's tariff."""


@dataclass(frozen=True)
class Scheduling:
    """``spec.scheduling``: when the job may start (valley scheduling, :mod:`strata_operator.core.valley`)."""

    deferrable: bool = False
    """The job may wait in the queue for the cheapest time-of-use power window that still meets its deadline."""
    deadline: datetime | None = None
    """``deadline``: when the job should have finished."""
    deadline_seconds: int | None = None
    """``deadlineSeconds``: seconds after the job's creation by which it should have finished."""
    expected_duration_seconds: int | None = None
    """``expectedDurationSeconds``: how long one run takes, by the user's estimate."""

    def deadline_after(self, created: datetime) -> datetime | None:
        """The deadline as a moment: ``deadline``, else ``deadlineSeconds`` after ``created``; None when neither."""
        if self.deadline is not None:
            return self.deadline
        return created + timedelta(seconds=self.deadline_seconds) if self.deadline_seconds is not None else None

    @classmethod
    def from_dict(cls, scheduling: Mapping[str, Any] | None) -> Scheduling:
        s = scheduling or {}
        return cls(
            deferrable=bool(s.get("deferrable", False)),
            deadline=parse_time(s.get("deadline")),
            deadline_seconds=s.get("deadlineSeconds"),
            expected_duration_seconds=s.get("expectedDurationSeconds"),
        )


@dataclass(frozen=True)
class TrainingJobSpec:
    workload: Workload
    parallelism: Parallelism
    training: Training
    checkpoint: Checkpointing
    resources: Resources
    pool: str
    max_runtime_seconds: int | None
    backoff_limit: int
    suspend: bool
    scheduling: Scheduling = Scheduling()

    @property
    def on_cpu(self) -> bool:
        """A CPU job (``resources.gpuType: CPU``): no GPUs, one training process per worker pod."""
        return self.resources.gpu_type == CPU

    @property
    def workers(self) -> int:
        """Worker pods of the gang."""
        if self.resources.workers is not None:
            return self.resources.workers
        return self.resources.gpus // self.resources.gpus_per_worker

    @property
    def processes_per_worker(self) -> int:
        """Training processes per worker pod (``LOCAL_WORLD_SIZE``): one per GPU, one on a CPU worker."""
        return 1 if self.on_cpu else self.resources.gpus_per_worker

    @property
    def world_size(self) -> int:
        """Training processes of the whole gang (``WORLD_SIZE``)."""
        return self.workers * self.processes_per_worker

    @property
    def cpu_millis(self) -> int:
        """CPU the whole gang requests, in millicores (what a pool's ``maxCPUs`` counts for a CPU job)."""
        return self.workers * cpu_millis(self.resources.cpu_per_worker or 0)

    @property
    def pods_per_tp_group(self) -> int:
        """Worker pods forming one tensor-parallel group (they must share a node); 1 when a pod holds whole groups."""
        return max(1, self.parallelism.tensor // self.processes_per_worker)

    @property
    def gpu_types(self) -> tuple[GPUType, ...]:
        """GPU types the job accepts, in the order admission tries them; none for a CPU job."""
        if self.on_cpu:
            return ()
        if self.resources.gpu_type == ANY_GPU:
            return tuple(GPUType)
        return (GPUType(self.resources.gpu_type),)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> TrainingJobSpec:
        """Read a spec the API server has defaulted and validated; a missing required field raises KeyError."""
        w, p, t, c, r = (spec[k] for k in ("workload", "parallelism", "training", "checkpoint", "resources"))
        on_cpu = r["gpuType"] == CPU
        return cls(
            workload=Workload(
                image=w["image"],
                preset=w["preset"],
                image_pull_policy=w["imagePullPolicy"],
                model_dir=w.get("modelDir", ""),
                tokenizer=w.get("tokenizer", ""),
                data_dir=w.get("dataDir", ""),
            ),
            parallelism=Parallelism(
                data=p["data"],
                tensor=p["tensor"],
                pipeline=p["pipeline"],
                expert=p["expert"],
                micro_batches=p["microBatches"],
                pipeline_schedule=p["pipelineSchedule"],
            ),
            training=Training(
                global_batch_size=t["globalBatchSize"],
                micro_batch_size=t["microBatchSize"],
                steps=t["steps"],
                precision=t["precision"],
                activation_checkpointing=t["activationCheckpointing"],
                gradient_clipping=float(t["gradientClipping"]),
                learning_rate=float(t["learningRate"]),
            ),
            checkpoint=Checkpointing(
                interval_seconds=c["intervalSeconds"],
                interval_steps=c.get("intervalSteps"),
                keep=c["keep"],
                path=c["path"],
                persistent_volume_claim=c.get("persistentVolumeClaim"),
            ),
            resources=Resources(
                gpus=0 if on_cpu else r["gpus"],
                gpus_per_worker=0 if on_cpu else r.get("gpusPerWorker", DEFAULT_GPUS_PER_WORKER),
                gpu_type=r["gpuType"],
                capacity_types=tuple(r["capacityTypes"]),
                capacity_preference=r["capacityPreference"],
                cpu_per_worker=_quantity(r.get("cpuPerWorker")),
                memory_per_worker=_quantity(r.get("memoryPerWorker")),
                workers=r["workers"] if on_cpu else None,
                node_selector=tuple(sorted(r.get("nodeSelector", {}).items())),
            ),
            pool=spec["pool"],
            max_runtime_seconds=spec.get("maxRuntimeSeconds"),
            backoff_limit=spec["backoffLimit"],
            suspend=bool(spec["suspend"]),
            scheduling=Scheduling.from_dict(spec.get("scheduling")),
        )


@dataclass(frozen=True)
class Condition:
    """One entry of ``status.conditions``, as ``metav1.Condition`` has it."""

    type: str
    status: str
    reason: str
    message: str
    last_transition_time: str

    def to_dict(self) -> dict[str, str]:
        return {
            "type": self.type,
            "status": self.status,
            "reason": self.reason,
            "message": self.message,
            "lastTransitionTime": self.last_transition_time,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Condition:
        return cls(
            type=str(data.get("type", "")),
            status=str(data.get("status", "Unknown")),
            reason=str(data.get("reason", "")),
            message=str(data.get("message", "")),
            last_transition_time=str(data.get("lastTransitionTime", "")),
        )


@dataclass(frozen=True)
class TrainingJobStatus:
    phase: Phase | None = None
    reason: str = ""
    message: str = ""
    conditions: tuple[Condition, ...] = ()
    restarts: int = 0
    attempt: int = 0
    steps_lost: int = 0
    retry_after: datetime | None = None
    progress_step: int | None = None
    checkpoint_step: int | None = None
    checkpoint_time: datetime | None = None
    submitted_at: datetime | None = None
    admitted_at: datetime | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    gpu_type: GPUType | None = None
    planned_capacity_types: tuple[str, ...] = ()
    """The capacity types admission counted the gang's workers on (``placement.plannedCapacityTypes``)."""
    planned_node: PlannedNode | None = None
    """The node admission emptied for the gang (``placement.plannedNode``; rule 10)."""
    nodes: tuple[str, ...] = ()
    gpu_seconds: float = 0.0
    cost: float = 0.0
    accounted_at: datetime | None = None
    queue_position: int | None = None
    workers_ready: int = 0

    @classmethod
    def from_dict(cls, status: Mapping[str, Any] | None) -> TrainingJobStatus:
        s = status or {}
        phase = s.get("phase")
        placement = s.get("placement") or {}
        checkpoint = s.get("lastCheckpoint") or {}
        gpu = placement.get("gpuType")
        return cls(
            phase=Phase(phase) if isinstance(phase, str) and phase in set(Phase) else None,
            reason=str(s.get("reason", "")),
            message=str(s.get("message", "")),
            conditions=tuple(Condition.from_dict(c) for c in s.get("conditions") or ()),
            restarts=int(s.get("restarts") or 0),
            attempt=int(s.get("attempt") or 0),
            steps_lost=int(s.get("stepsLost") or 0),
            retry_after=parse_time(s.get("retryAfter")),
            progress_step=(s.get("progress") or {}).get("step"),
            checkpoint_step=checkpoint.get("step"),
            checkpoint_time=parse_time(checkpoint.get("time")),
            submitted_at=parse_time(s.get("submittedAt")),
            admitted_at=parse_time(s.get("admittedAt")),
            start_time=parse_time(s.get("startTime")),
            completion_time=parse_time(s.get("completionTime")),
            gpu_type=GPUType(gpu) if isinstance(gpu, str) and gpu in set(GPUType) else None,
            planned_capacity_types=tuple(str(c) for c in placement.get("plannedCapacityTypes") or ()),
            planned_node=PlannedNode.from_status(placement.get("plannedNode")),
            nodes=tuple(placement.get("nodes") or ()),
            gpu_seconds=float(s.get("gpuSeconds") or 0.0),
            cost=float(s.get("cost") or 0.0),
            accounted_at=parse_time(s.get("accountedAt")),
            queue_position=s.get("queuePosition"),
            workers_ready=int((s.get("workers") or {}).get("ready") or 0),
        )


@dataclass(frozen=True)
class TrainingJob:
    namespace: str
    name: str
    uid: str
    generation: int
    created: datetime
    spec: TrainingJobSpec
    status: TrainingJobStatus = field(default_factory=TrainingJobStatus)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def phase(self) -> Phase:
        return self.status.phase or Phase.QUEUED

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> TrainingJob:
        return cls(
            **_object_identity(body, TRAINING_JOB),
            spec=TrainingJobSpec.from_dict(body["spec"]),
            status=TrainingJobStatus.from_dict(body.get("status")),
        )


CONSOLIDATE_MIN_REMAINING_S = 3600
"""``consolidation.minRemainingSeconds`` of a ResourcePool that leaves it unset (the CRD's default too; tests/unit/api
checks that they agree)."""
CONSOLIDATE_AFTER_S = 300
"""``consolidation.afterSeconds`` of a ResourcePool that leaves it unset (the CRD's default too)."""


@dataclass(frozen=True)
class Consolidation:
    """A ResourcePool's ``spec.consolidation`` (admission's rule 11): a running job of the pool that has run
    ``after_s`` since its admission and is expected to run at least ``min_remaining_s`` longer moves off on-demand
    or spot GPUs when cheaper capacity (reserved, or spot for on-demand) can hold its whole gang."""

    min_remaining_s: int = CONSOLIDATE_MIN_REMAINING_S
    after_s: int = CONSOLIDATE_AFTER_S

    @classmethod
    def from_spec(cls, value: Mapping[str, Any] | None) -> Consolidation | None:
        if value is None:
            return None
        return cls(
            int(value.get("minRemainingSeconds", CONSOLIDATE_MIN_REMAINING_S)),
            int(value.get("afterSeconds", CONSOLIDATE_AFTER_S)),
        )


@dataclass(frozen=True)
class ResourcePool:
    name: str
    priority: int
    gpu_types: frozenset[GPUType]
    max_gpus: int
    max_runtime_seconds: int | None
    capacity_types: frozenset[str]
    preemptible: bool
    max_cpu_millis: int | None = None
    """``spec.maxCPUs`` in millicores: the pool's quota for CPU jobs; None admits no CPU job."""
    defragment_after_s: int | None = None
    """``spec.defragmentAfterSeconds``: how long a gang of the pool that no node holds waits before admission moves
    smaller jobs off one node for it; None: never."""
    on_demand_max_duration_s: int | None = None
    """``spec.onDemandMaxDurationSeconds``: a job of the pool expected to run longer than this (its
    ``scheduling.expectedDurationSeconds``) takes reserved or spot capacity only; None: no such line."""
    consolidation: Consolidation | None = None
    """``spec.consolidation``: running jobs of the pool move off on-demand or spot GPUs when cheaper capacity holds
    them (admission's rule 11); None: never."""

    def capacity_types_for(self, expected_duration_s: float | None) -> frozenset[str]:
        """The capacity types the pool lets a job with this run-time estimate take: all of the pool's, less
        on-demand for a job expected to run longer than ``onDemandMaxDurationSeconds`` (a job without an estimate
        is not held to it). Admission counts, and the pods ask for, these."""
        line = self.on_demand_max_duration_s
        if line is None or expected_duration_s is None or expected_duration_s <= line:
            return self.capacity_types
        return self.capacity_types - {CapacityType.ON_DEMAND}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ResourcePool:
        spec = body["spec"]
        return cls(
            name=body["metadata"]["name"],
            priority=int(spec["priority"]),
            gpu_types=frozenset(GPUType(t) for t in spec["gpuTypes"]),
            max_gpus=int(spec["maxGPUs"]),
            max_runtime_seconds=spec.get("maxRuntimeSeconds"),
            capacity_types=frozenset(spec["capacityTypes"]),
            preemptible=bool(spec["preemptible"]),
            max_cpu_millis=None if spec.get("maxCPUs") is None else cpu_millis(spec["maxCPUs"]),
            defragment_after_s=spec.get("defragmentAfterSeconds"),
            on_demand_max_duration_s=spec.get("onDemandMaxDurationSeconds"),
            consolidation=Consolidation.from_spec(spec.get("consolidation")),
        )


def _object_identity(body: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """namespace, name, uid, generation and creation time of a namespaced object, as the views' fields."""
    meta = body["metadata"]
    created = parse_time(meta.get("creationTimestamp"))
    if created is None:
        raise ValueError(f"{kind} {meta.get('name')} has no creationTimestamp")
    return {
        "namespace": meta["namespace"],
        "name": meta["name"],
        "uid": meta["uid"],
        "generation": int(meta.get("generation") or 1),
        "created": created,
    }


def _quantity(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return str(value)


_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
_SUFFIX = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: Decimal(10) ** e for s, e in (("n", -9), ("u", -6), ("m", -3), ("k", 3), ("M", 6), ("G", 9))},
    **{s: Decimal(10) ** e for s, e in (("T", 12), ("P", 15), ("E", 18))},
}


def cpu_millis(value: object) -> int:
    """A CPU quantity (``2``, ``"1.5"``, ``"500m"``) in millicores, rounded up as Kubernetes does; the API server
    has validated it (``isQuantity``), so a malformed one raises ValueError naming it."""
    return math.ceil(_quantity_value(value, "a CPU quantity such as 2 or 500m") * 1000)


def memory_bytes(value: object) -> int:
    """A memory quantity (``"64Gi"``, ``"512M"``, ``1073741824``) in bytes, rounded up; a malformed one raises
    ValueError naming it."""
    return math.ceil(_quantity_value(value, "a memory quantity such as 64Gi"))


def _quantity_value(value: object, what: str) -> Decimal:
    """A Kubernetes quantity's value in base units."""
    text = str(value).strip()
    match = _QUANTITY.match(text)
    try:
        if match is None:
            raise InvalidOperation
        number, suffix = Decimal(match.group(1)), match.group(2) or ""
    except InvalidOperation:
        raise ValueError(f"{value!r} is not {what}") from None
    scale = Decimal(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E") else _SUFFIX.get(suffix, Decimal(1))
    return number * scale


def format_cpu_millis(millis: int) -> str:
    """Millicores as the shortest quantity: ``4`` for 4000, ``1500m`` for 1500."""
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


@dataclass(frozen=True)
class ServedModel:
    """``spec.model`` of an InferenceService: where the weights come from and how the server runs them."""

    training_job: str | None
    path: str | None
    persistent_volume_claim: str | None
    preset: str
    precision: str
    quantization: str
    compile: bool
    max_batch: int
    max_wait_ms: float
    batching_mode: str
    """``batching.mode``: ``continuous`` or ``static`` (``strata_workloads.continuous`` runs both)."""
    warmup_requests: int
    """Requests of full length each replica serves itself before it reports ready."""
    model_dir: str = ""  # a Hugging Face directory: its shape replaces preset; its weights when nothing else is served
    tokenizer: str = ""  # a tokenizer.json or a folder holding one; empty: model_dir's, else bytes


@dataclass(frozen=True)
class ReplicaResources:
    """``spec.resources`` of an InferenceService: what each replica runs on."""

    gpu_type: str
    """``H100``, ``MI300X`` or :data:`CPU`."""
    gpus_per_replica: int
    """0 for CPU replicas."""
    capacity_types: tuple[str, ...]
    cpu_per_replica: str | None
    memory_per_replica: str | None
    node_selector: tuple[tuple[str, str], ...] = ()

    @property
    def on_cpu(self) -> bool:
        return self.gpu_type == CPU


@dataclass(frozen=True)
class Autoscaling:
    metric: str
    target: float
    mode: str
    horizon_seconds: int | None
    scale_down_stabilization_seconds: int


@dataclass(frozen=True)
class Rollout:
    max_surge: int
    max_unavailable: int
    canary_percent: int


DEFAULT_GPUS_PER_REPLICA = 1
"""``spec.resources.gpusPerReplica`` of GPU replicas that leave it unset (the schema cannot default it: CPU replicas
must leave it unset); the CRD's description says the same 1."""


@dataclass(frozen=True)
class InferenceServiceSpec:
    image: str
    image_pull_policy: str
    model: ServedModel
    min_replicas: int
    max_replicas: int
    """``replicas.max``; ``replicas.min`` when unset."""
    resources: ReplicaResources
    pool: str
    autoscaling: Autoscaling | None
    rollout: Rollout

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> InferenceServiceSpec:
        """Read a spec the API server has defaulted and validated; a missing required field raises KeyError."""
        w, m, replicas, r, rollout = (spec[k] for k in ("workload", "model", "replicas", "resources", "rollout"))
        on_cpu = r["gpuType"] == CPU
        scaling = spec.get("autoscaling")
        return cls(
            image=w["image"],
            image_pull_policy=w["imagePullPolicy"],
            model=ServedModel(
                training_job=m.get("trainingJob"),
                path=m.get("path"),
                persistent_volume_claim=m.get("persistentVolumeClaim"),
                preset=m["preset"],
                precision=m["precision"],
                quantization=m["quantization"],
                compile=bool(m["compile"]),
                max_batch=int(m["batching"]["maxBatch"]),
                max_wait_ms=float(m["batching"]["maxWaitMs"]),
                batching_mode=m["batching"]["mode"],
                warmup_requests=int(m["warmupRequests"]),
                model_dir=m.get("modelDir", ""),
                tokenizer=m.get("tokenizer", ""),
            ),
            min_replicas=int(replicas["min"]),
            max_replicas=int(replicas.get("max", replicas["min"])),
            resources=ReplicaResources(
                gpu_type=r["gpuType"],
                gpus_per_replica=0 if on_cpu else int(r.get("gpusPerReplica", DEFAULT_GPUS_PER_REPLICA)),
                capacity_types=tuple(r["capacityTypes"]),
                cpu_per_replica=_quantity(r.get("cpuPerReplica")),
                memory_per_replica=_quantity(r.get("memoryPerReplica")),
                node_selector=tuple(sorted(r.get("nodeSelector", {}).items())),
            ),
            pool=spec["pool"],
            autoscaling=None
            if scaling is None
            else Autoscaling(
                metric=scaling["metric"],
                target=float(scaling["target"]),
                mode=scaling["mode"],
                horizon_seconds=scaling.get("horizonSeconds"),
                scale_down_stabilization_seconds=int(scaling["scaleDownStabilizationSeconds"]),
            ),
            rollout=Rollout(
                max_surge=int(rollout["maxSurge"]),
                max_unavailable=int(rollout["maxUnavailable"]),
                canary_percent=int(rollout["canaryPercent"]),
            ),
        )


@dataclass(frozen=True)
class InferenceService:
    """An InferenceService as the operator reads it; its status stays raw (the operator only writes it)."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: datetime
    spec: InferenceServiceSpec

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> InferenceService:
        return cls(**_object_identity(body, INFERENCE_SERVICE), spec=InferenceServiceSpec.from_dict(body["spec"]))
