"""Pure builders and decisions for an InferenceService: its replicas' Deployment, their headless Service and
PodDisruptionBudget (the router in front of them: :mod:`strata_operator.core.router`), how many replicas the
pool's quota holds, and the status it reports. No I/O.

Why a Deployment rather than pods the operator owns itself: replicas are interchangeable (no gang, no index, no
rendezvous), which is what a ReplicaSet manages. The Deployment controller gives, for nothing, what the operator
would otherwise re-implement: a deleted or evicted replica is replaced by the ReplicaSet controller within
seconds, even while the operator is down; a new revision (another model, precision or image) rolls out replica by
replica within ``rollout.maxSurge`` / ``maxUnavailable``, kept ready by the readiness probe on the server's
``/readyz`` (200 only after warm-up), and can be rolled back. The operator decides only the replica count and the
template; the router's autoscaler changes the count the same way (through :func:`allot`'s ``wanted``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson

import strata_api as api
from strata_api import GPUType, InferenceService, ResourcePool, TrainingJob, format_cpu_millis
from strata_api.serving import ScaleReport
from strata_operator.core.admission import GangRequest, ServingShare
from strata_operator.core.observed import SCHEDULER_ERROR, WAITING_FOR_SCHEDULER
from strata_operator.core.pods import (
    CONTAINER_SECURITY_CONTEXT,
    affinity,
    controller_of,
    controller_reference,
    foreign_controller,
    pod_security_context,
    tolerations,
)
from strata_operator.core.status import NORMAL, WARNING, Event, StatusDraft, scaling_moment
from strata_operator.settings import OperatorSettings

CONTAINER = "server"
SERVE_COMMAND = ("python", "-m", "strata_workloads.serve")
SERVE_PORT = 8000
"""The server's port (``ServeSettings.port``, set explicitly) and the Service's: URLs read ``<name>.<ns>.svc:8000``."""
SERVE_ENV_PREFIX = "STRATA_SERVE_"
"""The server reads ``STRATA_SERVE_<FIELD>`` (strata_workloads.settings.ServeSettings); tests/unit/operator checks
that every variable set here names one of its fields."""
DRAIN_SECONDS = 25
"""``ServeSettings.drain_seconds``: in-flight requests a SIGTERM'd replica still finishes."""
TERMINATION_GRACE_S = DRAIN_SECONDS + 5
"""Above the drain, so the kubelet never kills a replica that is still answering its last requests."""
MODEL_VOLUME = "model"
REVISION_HISTORY = 3
ANN_CHECKPOINT_STEP = f"{api.GROUP}/checkpoint-step"
"""On the replicas' pod template of a service of a TrainingJob: the job's newest checkpoint step as its status
reports it (``status.lastCheckpoint.step``). A newer one changes the template, so the replicas roll to it as to any
new revision, and every replica serves the same step (a replica that started later would otherwise load a newer one
than the others), as ``kubectl rollout restart``'s annotation rolls a Deployment."""

READY = "Ready"
QUOTA_LIMITED = "QuotaLimited"
MODEL_AVAILABLE = "ModelAvailable"
CONDITION_ORDER = (READY, QUOTA_LIMITED, MODEL_AVAILABLE)


class Reason:
    REPLICAS_READY = "ReplicasReady"
    REPLICAS_STARTING = "ReplicasStarting"
    NO_REPLICAS = "NoReplicas"
    MIN_REPLICAS = "MinReplicas"
    SCALED_UP = "ScaledUp"
    SCALED_DOWN = "ScaledDown"
    WITHIN_QUOTA = "WithinQuota"
    POOL_NOT_FOUND = "PoolNotFound"
    NO_USABLE_GPUS = "NoUsableGPUs"
    NO_CPU_QUOTA = "NoCPUQuota"
    WAITING_FOR_QUOTA = "WaitingForQuota"
    CHECKPOINT = "Checkpoint"
    RANDOM_WEIGHTS = "RandomWeights"
    TRAINING_JOB_NOT_FOUND = "TrainingJobNotFound"
    CHECKPOINTS_NOT_KEPT = "CheckpointsNotKept"
    NAME_TAKEN = "NameTaken"
    REPLICAS_UNSCHEDULABLE = "ReplicasUnschedulable"
    WAITING_FOR_SCHEDULER = WAITING_FOR_SCHEDULER
    REPLICAS_CANNOT_START = "ReplicasCannotStart"
    SCHEDULER_ERROR = SCHEDULER_ERROR
    ROUTERS_NOT_READY = "RoutersNotReady"


# --- names and labels ---


def selector(service: InferenceService) -> dict[str, str]:
    """Labels that select the service's replica pods (of every revision)."""
    return {api.LABEL_INFERENCE_SERVICE: service.name, api.LABEL_MANAGED_BY: api.MANAGED_BY}


def canary_name(service: InferenceService) -> str:
    """The canary's Deployment (:mod:`strata_operator.core.canary`)."""
    return service.name + "-canary"


def owned_labels(service: InferenceService) -> dict[str, str]:
    """Labels of everything the service owns; the operator's Deployment watch selects on the kind."""
    return {**selector(service), api.LABEL_JOB_KIND: api.INFERENCE_SERVICE}


def owner_reference(service: InferenceService) -> dict[str, Any]:
    return controller_reference(api.INFERENCE_SERVICE, service.name, service.uid)


def held_by_another(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> str | None:
    """Why ``existing``, an object already there under the name of ``desired`` (one the operator writes for a
    service, with the service as its controller), is not the operator's to write: None when its controller is the
    same service (by uid), else a message naming the object and who holds it. A user's own Deployment, Service,
    budget or ConfigMap of that name is left as it is rather than taken over. (One an earlier service of the same
    name left, :func:`~strata_operator.core.pods.left_by_earlier`, is waited for before this is asked.)"""
    wanted = controller_of(desired)
    assert wanted is not None  # every object the operator makes for a service names it as controller
    holder = foreign_controller(existing, wanted["uid"])
    if holder is None:
        return None
    return (
        f"{desired['kind']} {desired['metadata']['name']} exists, {holder}, not this service: rename the service or "
        "delete that object"
    )


def url(service: InferenceService) -> str:
    """The service's URL: its main Service, in front of its routers (:mod:`strata_operator.core.router`)."""
    return f"http://{service.name}.{service.namespace}.svc:{SERVE_PORT}"


def _metadata(service: InferenceService, name: str | None = None) -> dict[str, Any]:
    return {
        "name": name or service.name,
        "namespace": service.namespace,
        "labels": owned_labels(service),
        "ownerReferences": [owner_reference(service)],
    }


def allowed_capacity_types(service: InferenceService, pool: ResourcePool) -> list[str]:
    """Capacity types both the service and its pool accept, in the API's order (spot, on-demand, reserved)."""
    wanted = service.spec.resources.capacity_types
    return [c.value for c in api.CapacityType if c.value in wanted and c in pool.capacity_types]


def _gpu_type(service: InferenceService) -> GPUType | None:
    resources = service.spec.resources
    return None if resources.on_cpu else GPUType(resources.gpu_type)


# --- the model ---


@dataclass(frozen=True)
class ModelSource:
    """Where the replicas read the weights: ``checkpoint`` is the server's ``STRATA_SERVE_CHECKPOINT`` ("" for
    random weights, or ``model_dir``'s); ``claim``, when set, is mounted read-only at ``mount_path``;
    ``model_dir`` and ``tokenizer`` (the server's ``STRATA_SERVE_MODEL_DIR`` / ``STRATA_SERVE_TOKENIZER``) are the
    Hugging Face directory whose shape the checkpoint has and the tokenizer it was trained with ("" for none);
    ``preset`` (``STRATA_SERVE_MODEL``) the preset it was trained with ("": the service's ``spec.model.preset``)."""

    checkpoint: str
    claim: str | None = None
    mount_path: str | None = None
    reason: str = Reason.CHECKPOINT
    message: str = ""
    model_dir: str = ""
    tokenizer: str = ""
    preset: str = ""
    checkpoint_step: int | None = None
    """A TrainingJob's newest checkpoint step by its status (:data:`ANN_CHECKPOINT_STEP`); None: not known."""


@dataclass(frozen=True)
class ModelProblem:
    """Why the model cannot be served; no replica is started (it would only crash-loop)."""

    reason: str
    message: str


@dataclass(frozen=True)
class ServingProblem:
    """Why replicas are not running where something outside the operator holds them up
    (:func:`strata_operator.core.replicas.held_up`): the Ready condition's reason and message."""

    reason: str
    message: str


def resolve_model(service: InferenceService, job: TrainingJob | None) -> ModelSource | ModelProblem:
    """The model source of ``spec.model``: a TrainingJob's checkpoint volume (``job``, looked up by the caller;
    the job passes on its preset, and a job fine-tuned from a ``modelDir`` that directory and its tokenizer, so that
    its checkpoint is served on the shape it was trained with, whatever ``spec.model.preset`` says), a path (on a
    claim, or in the image), a Hugging Face directory (``modelDir``, on a claim mounted there, or in the image), or
    random weights."""
    model = service.spec.model
    if model.training_job is not None:
        name = model.training_job
        if job is None:
            return ModelProblem(
                Reason.TRAINING_JOB_NOT_FOUND,
                f"spec.model.trainingJob: TrainingJob {name} does not exist in namespace {service.namespace}",
            )
        checkpoint = job.spec.checkpoint
        if checkpoint.persistent_volume_claim is None:
            return ModelProblem(
                Reason.CHECKPOINTS_NOT_KEPT,
                f"spec.model.trainingJob: TrainingJob {name} keeps its checkpoints on an emptyDir (its "
                "spec.checkpoint.persistentVolumeClaim is unset), so none outlives its workers to be served",
            )
        workload, step = job.spec.workload, job.status.checkpoint_step
        shape = f"modelDir {workload.model_dir}" if workload.model_dir else f"preset {workload.preset}"
        newest = f", step {step} by its status.lastCheckpoint" if step is not None else ""
        return ModelSource(
            checkpoint=checkpoint.path,
            claim=checkpoint.persistent_volume_claim,
            mount_path=checkpoint.path,
            message=f"the newest complete checkpoint of TrainingJob {name} "
            f"(claim {checkpoint.persistent_volume_claim}, {checkpoint.path}), on the job's {shape}{newest}",
            model_dir=workload.model_dir,
            tokenizer=workload.tokenizer,
            preset=workload.preset,
            checkpoint_step=step,
        )
    claim = model.persistent_volume_claim
    if model.path is not None:
        where = f"claim {claim}, {model.path}" if claim else f"{model.path} in the image"
        return ModelSource(
            checkpoint=model.path,
            claim=claim,
            mount_path=model.path if claim else None,
            message=f"the checkpoint at spec.model.path ({where})",
            model_dir=model.model_dir,
            tokenizer=model.tokenizer,
        )
    if model.model_dir:
        where = f"claim {claim}, {model.model_dir}" if claim else f"{model.model_dir} in the image"
        return ModelSource(
            checkpoint="",
            claim=claim,
            mount_path=model.model_dir if claim else None,
            message=f"the Hugging Face weights at spec.model.modelDir ({where})",
            model_dir=model.model_dir,
            tokenizer=model.tokenizer,
        )
    return ModelSource(
        checkpoint="",
        reason=Reason.RANDOM_WEIGHTS,
        message=f"preset {model.preset} with random weights (neither spec.model.trainingJob, path nor modelDir)",
        tokenizer=model.tokenizer,
    )


def rolling_deployment(
    service: InferenceService, stable: ObservedDeployment | None, canary: ObservedDeployment | None
) -> ObservedDeployment | None:
    """The Deployment that takes the spec's template when it changes: the canary's while one runs at a
    ``canaryPercent`` of 1..99, else the stable one (None: neither is there yet)."""
    return canary if canary is not None and 0 < service.spec.rollout.canary_percent < 100 else stable


def one_roll_at_a_time(source: ModelSource, rolling: ObservedDeployment | None, stuck: bool) -> ModelSource:
    """``source`` with a TrainingJob's newer checkpoint step held back while ``rolling`` (the Deployment that takes
    the spec's template, :func:`rolling_deployment`) still rolls to the step its template names: that roll finishes
    first, then the replicas roll to the step that is newest by then. Without it, a job that checkpoints more often
    than a replica warms up changes the template before any new replica is ready, the Deployment controller
    replaces the starting replicas each time, and the service never leaves the oldest step. A roll that cannot
    finish does not hold the next step back: one whose replicas are ``stuck`` (their model cannot be served, or
    something outside the operator holds them up: no node, no scheduler, a kubelet that cannot start them) or that
    the Deployment controller gave up on (:attr:`ObservedDeployment.stalled`)."""
    newest = source.checkpoint_step
    if newest is None or rolling is None or stuck or rolling.stalled or not rolling.rolling:
        return source
    under_way = rolling.checkpoint_step
    if under_way is None or under_way == newest:
        return source
    return replace(
        source,
        checkpoint_step=under_way,
        message=f"{source.message}; the replicas finish their roll to step {under_way} before they roll to it",
    )


def serve_env(service: InferenceService, source: ModelSource) -> dict[str, str]:
    """The server's settings (``STRATA_SERVE_<FIELD>``) for this service's model."""
    model, resources = service.spec.model, service.spec.resources
    env = {
        "MODEL_NAME": service.name,  # what /v1/models lists and an OpenAI client names as `model`
        "MODEL": source.preset or model.preset,
        "CHECKPOINT": source.checkpoint,
        "PRECISION": model.precision,
        "QUANTIZATION": model.quantization,
        "COMPILE": "true" if model.compile else "false",
        "PORT": str(SERVE_PORT),
        "MAX_BATCH": str(model.max_batch),
        "MAX_WAIT_MS": repr(model.max_wait_ms),
        "BATCHING": model.batching_mode,
        "WARMUP_REQUESTS": str(model.warmup_requests),
        "DRAIN_SECONDS": str(DRAIN_SECONDS),
    }
    if source.checkpoint_step is not None:  # a TrainingJob's: every replica of the revision serves the same step
        env["STEP"] = str(source.checkpoint_step)
    if source.model_dir:
        env["MODEL_DIR"] = source.model_dir
    if source.tokenizer:
        env["TOKENIZER"] = source.tokenizer
    if resources.on_cpu and resources.cpu_per_replica is not None:
        # torch's thread pool as large as the CPU limit, not the host's cores (a cgroup limit torch cannot see)
        env["THREADS"] = str(max(1, api.cpu_millis(resources.cpu_per_replica) // 1000))
    return {SERVE_ENV_PREFIX + k: v for k, v in env.items()}


# --- the quota ---


@dataclass(frozen=True)
class Allotment:
    """How many replicas a service may run now, and, when fewer than it asks, why."""

    replicas: int
    limited: bool
    reason: str
    message: str


def replica_cost(service: InferenceService) -> int:
    """What one replica counts against its pool: GPUs, or for CPU replicas millicores (``maxCPUs``)."""
    resources = service.spec.resources
    if resources.on_cpu:
        return api.cpu_millis(resources.cpu_per_replica or 0)
    return resources.gpus_per_replica


def held(service: InferenceService, replicas: int) -> tuple[int, int]:
    """What ``replicas`` of the service hold of its pool's quota: (GPUs, CPU millicores); the one count that both
    :func:`allot` and TrainingJob admission (:func:`serving_shares`) use."""
    amount = replicas * replica_cost(service)
    return (0, amount) if service.spec.resources.on_cpu else (amount, 0)


def serving_shares(services: Iterable[tuple[InferenceService, Mapping[str, Any]]]) -> dict[str, ServingShare]:
    """What each pool's services hold, for TrainingJob admission: ``status.desiredReplicas`` (with its status)
    times each replica's cost.

    Why ``desiredReplicas``: it is the count :func:`allot` gave the service and the operator wrote to its
    Deployments in the same pass, kept in the cluster (a restarted operator reads it back), and the count the
    replicas converge to: replicas still starting already hold their room at the scheduler, so counting ready
    ones would let a job into quota a replica is about to take. A service not reconciled yet holds nothing; its
    first allotment then comes after the admitted jobs, as :func:`allot` orders them, so both count one thing."""
    gpus: dict[str, dict[str, int]] = {}
    cpus: dict[str, dict[str, int]] = {}
    for service, status in services:
        replicas = status.get("desiredReplicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas <= 0:
            continue
        g, c = held(service, replicas)
        gpus.setdefault(service.spec.pool, {})[service.key] = g
        cpus.setdefault(service.spec.pool, {})[service.key] = c
    return {pool: ServingShare(gpus[pool], cpus[pool]) for pool in gpus}


def allot(
    services: Iterable[InferenceService],
    pools: Mapping[str, ResourcePool],
    jobs: Iterable[TrainingJob],
    wanted: Mapping[str, int] | None = None,
) -> dict[str, Allotment]:
    """Replicas per service (by key) within each pool's quota.

    A pool's quota (``maxGPUs``; ``maxCPUs`` for CPU replicas) is first held by its admitted TrainingJobs, counted
    as admission counts them (:class:`~strata_operator.core.admission.GangRequest`); the rest goes to the pool's
    services in creation order, each up to what it wants (``wanted``, by key: its autoscaler's ask; else
    ``replicas.min``), so an older service is never shrunk by a newer one.
    """
    gpus_used: dict[str, int] = {}
    cpu_used: dict[str, int] = {}
    for job in jobs:
        if not job.phase.holds_gpus:
            continue
        try:
            request = GangRequest.from_job(job)
        except (ValueError, TypeError, ArithmeticError):
            continue  # admission leaves such a job out too
        gpus_used[request.pool] = gpus_used.get(request.pool, 0) + request.gpus
        cpu_used[request.pool] = cpu_used.get(request.pool, 0) + request.cpu_millis
    result: dict[str, Allotment] = {}
    for service in sorted(services, key=lambda s: (s.created, s.key)):
        pool = pools.get(service.spec.pool)
        asked = (wanted or {}).get(service.key, service.spec.min_replicas)
        result[service.key] = _allot_one(service, pool, asked, gpus_used, cpu_used)
        if pool is not None:
            g, c = held(service, result[service.key].replicas)
            gpus_used[pool.name] = gpus_used.get(pool.name, 0) + g
            cpu_used[pool.name] = cpu_used.get(pool.name, 0) + c
    return result


def _allot_one(
    service: InferenceService,
    pool: ResourcePool | None,
    wanted: int,
    gpus_used: Mapping[str, int],
    cpu_used: Mapping[str, int],
) -> Allotment:
    spec = service.spec
    source = "spec.replicas.min" if wanted == spec.min_replicas else "the autoscaler's decision"
    if pool is None:
        return Allotment(0, wanted > 0, Reason.POOL_NOT_FOUND, f"spec.pool: ResourcePool {spec.pool} does not exist")
    if not allowed_capacity_types(service, pool):
        return Allotment(
            0,
            wanted > 0,
            Reason.NO_USABLE_GPUS,
            f"spec.resources.capacityTypes and pool {pool.name}'s capacity types have nothing in common",
        )
    cost = replica_cost(service)
    show: Callable[[int], str]
    if spec.resources.on_cpu:
        if pool.max_cpu_millis is None:
            message = f"pool {pool.name} admits no CPU replicas: its spec.maxCPUs is unset"
            return Allotment(0, wanted > 0, Reason.NO_CPU_QUOTA, message)
        quota, used, unit, show = pool.max_cpu_millis, cpu_used.get(pool.name, 0), "CPUs", format_cpu_millis
    else:
        gpu = GPUType(spec.resources.gpu_type)
        if gpu not in pool.gpu_types:
            message = f"spec.resources.gpuType {gpu.value} is not one of pool {pool.name}'s GPU types"
            return Allotment(0, wanted > 0, Reason.NO_USABLE_GPUS, message)
        quota, used, unit, show = pool.max_gpus, gpus_used.get(pool.name, 0), "GPUs", _count
    left = max(0, quota - used)
    replicas = min(wanted, left // cost) if cost > 0 else wanted
    if replicas < wanted:
        message = (
            f"{replicas} of {wanted} replicas ({source}): each needs {show(cost)} {unit} and pool "
            f"{pool.name} has {show(left)} of {show(quota)} left"
        )
        return Allotment(replicas, True, Reason.WAITING_FOR_QUOTA, message)
    return Allotment(replicas, False, Reason.WITHIN_QUOTA, f"pool {pool.name}'s quota holds {replicas} replicas")


def _count(amount: int) -> str:
    return str(amount)


# --- manifests ---


def revision(template: Mapping[str, Any]) -> str:
    """A short, stable hash of a pod template: the service's revision."""
    return hashlib.sha256(orjson.dumps(template, option=orjson.OPT_SORT_KEYS)).hexdigest()[:10]


def build_deployment(
    service: InferenceService,
    pool: ResourcePool,
    source: ModelSource,
    replicas: int,
    settings: OperatorSettings,
    *,
    canary: bool = False,
) -> dict[str, Any]:
    """The replicas' Deployment; its pod template carries the revision (a hash of the rest of the template) in a
    label, and the Deployment carries it in an annotation. ``canary``: the canary's Deployment ``<name>-canary``
    instead (:mod:`strata_operator.core.canary`), whose pods carry ``strata.dev/canary`` beside the same revision
    hash, so that a promoted canary's template is the stable one's to the letter."""
    template = _pod_template(service, pool, source, settings)
    rev = revision(template)
    template["metadata"]["labels"][api.LABEL_REVISION] = rev
    match = selector(service)
    if canary:
        template["metadata"]["labels"][api.LABEL_CANARY] = "true"
        match = {**match, api.LABEL_CANARY: "true"}
    rollout = service.spec.rollout
    meta = _metadata(service, canary_name(service) if canary else None)
    meta["annotations"] = {api.LABEL_REVISION: rev}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": match},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": rollout.max_surge, "maxUnavailable": rollout.max_unavailable},
            },
            "revisionHistoryLimit": REVISION_HISTORY,
            "template": template,
        },
    }


def _pod_template(
    service: InferenceService, pool: ResourcePool, source: ModelSource, settings: OperatorSettings
) -> dict[str, Any]:
    spec = service.spec
    gpu = _gpu_type(service)
    capacity = allowed_capacity_types(service, pool)
    labels = {
        **owned_labels(service),
        api.LABEL_POOL: pool.name,
        api.LABEL_PRIORITY: str(pool.priority),
    }
    annotations = {
        api.ANN_GPU_TYPES: gpu.value if gpu else api.CPU,
        api.ANN_CAPACITY_TYPES: ",".join(capacity),
        api.ANN_PRECISION: spec.model.precision,
    }
    if source.checkpoint_step is not None:
        annotations[ANN_CHECKPOINT_STEP] = str(source.checkpoint_step)
    limits: dict[str, str] = {gpu.resource: str(spec.resources.gpus_per_replica)} if gpu else {}
    if spec.resources.cpu_per_replica is not None:
        limits["cpu"] = spec.resources.cpu_per_replica
    if spec.resources.memory_per_replica is not None:
        limits["memory"] = spec.resources.memory_per_replica
    mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    if source.claim is not None and source.mount_path is not None:
        mounts.append({"name": MODEL_VOLUME, "mountPath": source.mount_path, "readOnly": True})
        volumes.append({"name": MODEL_VOLUME, "persistentVolumeClaim": {"claimName": source.claim, "readOnly": True}})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": list(SERVE_COMMAND),
        "env": [
            *({"name": k, "value": v} for k, v in serve_env(service, source).items()),
            {"name": "STRATA_LOG_FORMAT", "value": "json"},
        ],
        "ports": [{"name": "http", "containerPort": SERVE_PORT}],
        # ready only once warmed up (and compiled, where asked): the Service sends it nothing before
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        # /healthz answers from the start, warm-up and compilation included
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "resources": {"limits": limits, "requests": dict(limits)},
        "securityContext": CONTAINER_SECURITY_CONTEXT,
    }
    if mounts:
        container["volumeMounts"] = mounts
    pod_spec: dict[str, Any] = {
        "schedulerName": settings.scheduler_name,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "automountServiceAccountToken": False,  # the server calls no Kubernetes API
        "enableServiceLinks": False,
        "securityContext": pod_security_context(settings),
        **({"nodeSelector": dict(spec.resources.node_selector)} if spec.resources.node_selector else {}),
        "tolerations": tolerations(gpu, capacity),
        "affinity": affinity(capacity, "none", on_cpu=gpu is None),
        # replicas apart, so that one node or zone lost takes as few of them as it can
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": key,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector(service)},
            }
            for key in ("kubernetes.io/hostname", api.NODE_ZONE)
        ],
        "containers": [container],
    }
    if volumes:
        pod_spec["volumes"] = volumes
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod_spec}


def build_replicas_service(service: InferenceService) -> dict[str, Any]:
    """The headless Service ``<name>-replicas`` whose DNS name the router resolves to the replicas' addresses;
    replicas not ready yet are published too, so that the router counts them as starting (its probes keep them
    out of the rotation until ``/readyz`` answers 200)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(service, service.name + "-replicas"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector(service),
            "ports": [{"name": "http", "port": SERVE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_disruption_budget(service: InferenceService) -> dict[str, Any]:
    """Node drains evict at most ``rollout.maxUnavailable`` replicas at once, and at least one: a budget of 0
    would block every drain of a node with a replica on it."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(service),
        "spec": {
            "maxUnavailable": max(1, service.spec.rollout.max_unavailable),
            "selector": {"matchLabels": selector(service)},
        },
    }


# --- what the operator observed, and the status ---


KEPT_STABLE = f"{api.GROUP}/stable-deployment"
"""On a canary's Deployment, while the canary runs: the stable revision's Deployment spec as the API server returned
it (JSON ``{"revision": ..., "spec": ...}``, less ``replicas``), so that a stable Deployment edited or deleted by
hand is put back as it ran rather than rebuilt from the InferenceService's spec, which holds the canary's template
by then (:mod:`strata_operator.core.canary`)."""


@dataclass(frozen=True, slots=True)
class KeptStable:
    """The stable revision's Deployment spec (less ``replicas``), as kept on the canary's Deployment."""

    revision: str
    spec: Mapping[str, Any]

    def annotation(self) -> str:
        return orjson.dumps({"revision": self.revision, "spec": self.spec}, option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def parse(cls, text: str | None) -> KeptStable | None:
        """The kept spec from its annotation; None when there is none or it is not one (edited by hand)."""
        try:
            value = orjson.loads(text) if text else None
        except orjson.JSONDecodeError:
            return None
        if not isinstance(value, dict) or not isinstance(value.get("revision"), str):
            return None
        spec = value.get("spec")
        if not isinstance(spec, dict) or not isinstance(spec.get("template"), dict):
            return None
        return cls(value["revision"], spec)


@dataclass(frozen=True, slots=True)
class ObservedDeployment:
    """An InferenceService's Deployment as the operator's watch sees it."""

    replicas: int
    ready: int
    updated: int
    revision: str
    generation: int
    observed_generation: int
    spec: Mapping[str, Any] | None = None
    """Its spec as the API server returned it (defaults filled in): what a canary keeps of the stable one."""
    kept: KeptStable | None = None
    """A canary's Deployment: the stable Deployment it keeps (:data:`KEPT_STABLE`)."""
    available: int = 0
    """Its replicas ready for ``minReadySeconds`` (0: ready ones), of every revision (``status.availableReplicas``)."""
    total: int = 0
    """Its pods of every revision (``status.replicas``), those an older template's included."""
    stalled: bool = False
    """The Deployment controller gave up waiting for its roll (``Progressing`` False, ``ProgressDeadlineExceeded``:
    no new replica turned available within ``progressDeadlineSeconds``, 600 s by default)."""

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ObservedDeployment:
        meta, spec, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
        annotations = meta.get("annotations") or {}
        return cls(
            replicas=int(spec.get("replicas") or 0),
            ready=int(status.get("readyReplicas") or 0),
            updated=int(status.get("updatedReplicas") or 0),
            revision=str(annotations.get(api.LABEL_REVISION, "")),
            generation=int(meta.get("generation") or 0),
            observed_generation=int(status.get("observedGeneration") or 0),
            spec=orjson.loads(orjson.dumps(spec, default=dict)),
            kept=KeptStable.parse(annotations.get(KEPT_STABLE)),
            available=int(status.get("availableReplicas") or 0),
            total=int(status.get("replicas") or 0),
            stalled=any(
                c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded"
                for c in status.get("conditions") or ()
            ),
        )

    @property
    def rolled_out(self) -> bool:
        """The Deployment controller has seen its latest spec and every replica runs the latest template."""
        return self.observed_generation >= self.generation and self.updated >= self.replicas

    @property
    def rolling(self) -> bool:
        """A roll to its latest template is under way, by ``kubectl rollout status``'s rule: the controller has not
        seen the latest spec, or fewer replicas run the latest template than asked, or pods of an older one are
        still there, or some running the latest template are not available yet (a scale-up's new replicas too)."""
        return (
            self.observed_generation < self.generation
            or self.updated < self.replicas
            or self.total > self.updated
            or self.available < self.updated
        )

    @property
    def checkpoint_step(self) -> int | None:
        """The TrainingJob's checkpoint step its pod template names (:data:`ANN_CHECKPOINT_STEP`); None: none."""
        template = (self.spec or {}).get("template") or {}
        step = ((template.get("metadata") or {}).get("annotations") or {}).get(ANN_CHECKPOINT_STEP)
        return int(step) if isinstance(step, str) and step.isdigit() else None


def drifted(desired: Mapping[str, Any], observed_spec: Mapping[str, Any] | None, part: str = "spec") -> bool:
    """Whether an owned Service, budget or ConfigMap must be written: it is missing (None), or a field of
    ``desired``'s ``part`` (``spec``; a ConfigMap's ``data``) differs from ``observed_spec``, that part as the watch
    shows it (fields the API server fills in, such as a Service's clusterIP, are not compared)."""
    if observed_spec is None:
        return True
    return any(observed_spec.get(k) != v for k, v in desired[part].items())


def spec_patch(
    desired: Mapping[str, Any], observed_spec: Mapping[str, Any] | None, part: str = "spec"
) -> dict[str, Any]:
    """The merge patch that makes an owned object's spec (``part``; a ConfigMap's ``data``) ``desired``'s: its
    fields, with each key of a map field (a Service's selector) that ``desired`` no longer has set to null, since a
    merge patch otherwise keeps it."""
    patch: dict[str, Any] = dict(desired[part])
    for key, value in desired[part].items():
        old = (observed_spec or {}).get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            patch[key] = {**{k: None for k in old if k not in value}, **value}
    return patch


def needs_update(desired: Mapping[str, Any], observed: ObservedDeployment | None) -> bool:
    """Whether the Deployment must be written: its template (revision) or its size differ from ``desired``."""
    if observed is None:
        return True
    return observed.revision != desired["metadata"]["annotations"][api.LABEL_REVISION] or observed.replicas != int(
        desired["spec"]["replicas"]
    )


def service_status(
    service: InferenceService,
    stored: Mapping[str, Any],
    model: ModelSource | ModelProblem,
    allotment: Allotment,
    deployment: ObservedDeployment | None,
    rev: str | None,
    now: datetime,
    report: ScaleReport | None = None,
    cost_per_hour: float | None = None,
    startup_seconds: float | None = None,
    *,
    canary_deployment: ObservedDeployment | None = None,
    model_failure: ModelProblem | None = None,
    name_taken: str | None = None,
    held_up: ServingProblem | None = None,
    routers: ObservedDeployment | None = None,
    routers_held_up: ServingProblem | None = None,
) -> StatusDraft:
    """The status to write, and the events for what changed: replicas, URL, revision, the Ready, QuotaLimited and
    ModelAvailable conditions, the last scaling decision (``report``: the router's, when it has one), the running
    replicas' ``cost_per_hour`` (None: not known yet, left as it is) and the measured ``startup_seconds`` (None:
    no replica of the revision is ready yet, so the last measurement stays). ``canary_deployment``: a running
    canary's (:mod:`strata_operator.core.canary`), whose replicas count as the service's too. ``model_failure``:
    the replicas' servers refused the model (:func:`strata_operator.core.replicas.model_failure`): ModelAvailable
    and Ready say so, with a Warning Event, while the replicas keep their count (a fixed volume or a new revision
    mends it). ``name_taken``: an object the service needs has a name another holds (:func:`held_by_another`):
    Ready says which, with a Warning Event, until it is renamed or deleted. ``held_up``: why replicas of the
    revision are not running (:func:`strata_operator.core.replicas.held_up`: no node, a scheduler that fails or
    none, a container the kubelet cannot start): a Ready that is not True says so, with a Warning Event.
    ``routers``: the routers' Deployment as the watch sees it; Ready is True only while one of them is ready, for
    the service's URL answers through them, and says what holds them up (``routers_held_up``) otherwise."""
    draft = StatusDraft(stored, now)
    desired = allotment.replicas if isinstance(model, ModelSource) else 0
    before = stored.get("desiredReplicas")
    if isinstance(before, int) and before != desired:
        why = allotment.message if allotment.limited else (report.message if report is not None else "")
        kind = Reason.SCALED_UP if desired > before else Reason.SCALED_DOWN
        message = f"{before} -> {desired} replicas" + (f": {why}" if why else "")
        # posted once, before the write: the new count in status is all a later pass sees of the change
        draft.events.append(Event(NORMAL, kind, message, once=scaling_moment(stored.get("lastScale") or {})))
    running = [d for d in (deployment, canary_deployment) if d is not None]
    ready = sum(d.ready for d in running)
    rolled_out = deployment is not None and all(d.rolled_out for d in running)
    draft.set("observedGeneration", service.generation)
    draft.set("desiredReplicas", desired)
    draft.set("readyReplicas", ready)
    draft.set("url", url(service))
    if rev is not None:
        draft.set("revision", rev)
    if cost_per_hour is not None:
        draft.set("costPerHour", cost_per_hour)
    if startup_seconds is not None:
        draft.set("startupSeconds", round(startup_seconds, 1))
    if isinstance(model, ModelProblem):
        _condition(draft, MODEL_AVAILABLE, "False", model.reason, model.message, WARNING)
        _condition(draft, READY, "False", model.reason, f"no replica runs: {model.message}", WARNING)
    elif name_taken is not None:
        _condition(draft, MODEL_AVAILABLE, "True", model.reason, f"serving {model.message}")
        _condition(draft, READY, "False", Reason.NAME_TAKEN, name_taken, WARNING)
    elif model_failure is not None:
        _condition(draft, MODEL_AVAILABLE, "False", model_failure.reason, model_failure.message, WARNING)
        message = f"{ready} of {desired} replicas ready: {model_failure.message}"
        _condition(draft, READY, "False", model_failure.reason, message, WARNING)
    else:
        _condition(draft, MODEL_AVAILABLE, "True", model.reason, f"serving {model.message}")
        if desired == 0:
            why = allotment.message if allotment.limited else "spec.replicas.min is 0"
            _condition(draft, READY, "False", Reason.NO_REPLICAS, f"no replica runs: {why}", WARNING)
        elif ready >= desired and rolled_out and routers is not None and routers.ready > 0:
            _condition(draft, READY, "True", Reason.REPLICAS_READY, f"{ready} of {desired} replicas ready")
        elif ready >= desired and rolled_out:
            routing = (
                f"{routers.ready} of {routers.replicas} routers" if routers is not None else "no router Deployment"
            )
            message = f"{ready} of {desired} replicas ready, but {routing} ready to take requests at {url(service)}"
            message += f": {routers_held_up.message}" if routers_held_up is not None else ""
            _condition(draft, READY, "False", Reason.ROUTERS_NOT_READY, message, WARNING)
        elif held_up is not None:
            message = f"{ready} of {desired} replicas ready: {held_up.message}"
            _condition(draft, READY, "False", held_up.reason, message, WARNING)
        else:
            _condition(draft, READY, "False", Reason.REPLICAS_STARTING, f"{ready} of {desired} replicas ready")
    if allotment.limited:
        _condition(draft, QUOTA_LIMITED, "True", allotment.reason, allotment.message, WARNING)
    else:
        _condition(draft, QUOTA_LIMITED, "False", allotment.reason, allotment.message)
    last = stored.get("lastScale") or {}
    if report is not None:
        # a decision is news when the count, the ask or its cause change; the same one every interval is not
        # rewritten (one status write per 15 s per service would be all noise)
        scale = report.last_scale(desired, allotment.reason if allotment.limited else report.reason)
        if any(last.get(k) != scale[k] for k in ("replicas", "requested", "reason")):
            draft.set("lastScale", scale)
    elif last.get("replicas") != desired:
        reason = allotment.reason if allotment.limited else Reason.MIN_REPLICAS
        draft.set("lastScale", {"time": api.format_time(now), "replicas": desired, "reason": reason})
    _sort_conditions(draft)
    return draft


def _condition(draft: StatusDraft, kind: str, status: str, reason: str, message: str, event_type: str = NORMAL) -> None:
    """Set a condition, with an event of ``event_type`` when its status or reason changes (a new service's first,
    untroubled conditions are no news)."""
    old = next((c for c in draft.get("conditions", []) if c.get("type") == kind), None)
    draft.condition(kind, status, reason, message)
    changed = old is None or old.get("status") != status or old.get("reason") != reason
    if changed and not (old is None and event_type == NORMAL):
        draft.events.append(Event(event_type, reason, message))


def _sort_conditions(draft: StatusDraft) -> None:
    conditions = draft.changes.get("conditions")
    if conditions:
        conditions.sort(key=lambda c: CONDITION_ORDER.index(c["type"]) if c["type"] in CONDITION_ORDER else 99)
