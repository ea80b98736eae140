"""Pure builders of what a TrainingJob runs as: worker pods, and per namespace the headless Service for their
rendezvous and the ServiceAccount they report progress with.

No I/O here: the handlers apply what these return, and unit tests assert the exact manifests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import strata_api as api
from strata_api import GPUType, ResourcePool, TrainingJob
from strata_api.workload import DOWNWARD_ENV, PIPELINE_SCHEDULES, WorkerEnv
from strata_operator.settings import OperatorSettings

CONTAINER = "trainer"
TRAIN_COMMAND = ("python", "-m", "strata_workloads.launch")


def worker_name(job_name: str, index: int) -> str:
    return f"{job_name}-worker-{index}"


WORKERS_SERVICE = "strata-workers"
"""The headless Service of a namespace's training workers: every worker pod is ``<job>-worker-<index>`` (unique in
its namespace) with this Service as its subdomain, so ``<job>-worker-0.strata-workers.<namespace>.svc`` is the
rendezvous address. One per namespace, not one per job: a Service per job cost its creation and 5-7
Endpoints/EndpointSlice writes per job."""


def master_addr(job: TrainingJob) -> str:
    return f"{worker_name(job.name, 0)}.{WORKERS_SERVICE}.{job.namespace}.svc"


def controller_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    """The ownerReference of an object a Strata resource controls: deleting the resource deletes it."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ownerReference of ``obj`` that is its controller, if one is."""
    return next((r for r in (obj.get("metadata") or {}).get("ownerReferences") or () if r.get("controller")), None)


def foreign_controller(existing: Mapping[str, Any], uid: str) -> str | None:
    """Who holds ``existing``, an object already there under a name the operator makes for the Strata resource of
    ``uid``: None when that resource controls it, else ``controlled by <Kind> <name>`` or ``with no controller``
    (a user's own object, or one of an earlier resource of the same name not yet collected), which the operator
    leaves as it is."""
    controller = controller_of(existing)
    if controller is None:
        return "with no controller"
    if controller.get("uid") == uid:
        return None
    return f"controlled by {controller.get('kind')} {controller.get('name')}"


def left_by_earlier(existing: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    """Whether ``existing``, an object under a name the operator makes for the resource of ``owner`` (the
    ownerReference it would carry), is on its way out: being deleted, or controlled by an earlier resource of that
    kind and name (deleted and made again, another uid; the garbage collector removes its objects). The operator
    then waits for it rather than call it taken."""
    if (existing.get("metadata") or {}).get("deletionTimestamp"):
        return True
    controller = controller_of(existing)
    if controller is None or controller.get("uid") == owner.get("uid"):
        return False
    return (controller.get("kind"), controller.get("name")) == (owner.get("kind"), owner.get("name"))


def worker_name_held(existing: Mapping[str, Any], job: TrainingJob) -> str | None:
    """Who holds a worker's name for good, where ``existing`` is the pod found under it: None when it is ``job``'s
    or :func:`left_by_earlier` (a later pass creates the worker); else :func:`foreign_controller`'s words."""
    if left_by_earlier(existing, owner_reference(job)):
        return None
    return foreign_controller(existing, job.uid)


def owner_reference(job: TrainingJob) -> dict[str, Any]:
    return controller_reference(api.TRAINING_JOB, job.name, job.uid)


WORKER_SERVICE_ACCOUNT = "strata-worker"
"""The one ServiceAccount every worker pod of a namespace runs as. RBAC lets it get and patch pods in its
namespace; the chart's ValidatingAdmissionPolicy (``charts/strata/templates/worker-policy.yaml``, which names this
account) narrows that to the worker's own pod and its progress annotation, by the pod name its token is bound to."""


def selector(job_name: str) -> dict[str, str]:
    """Labels that select every worker pod of a job (of any attempt)."""
    return {api.LABEL_JOB: job_name, api.LABEL_MANAGED_BY: api.MANAGED_BY}


def gang_gpu_type(job: TrainingJob) -> GPUType:
    """The one GPU type of the whole gang: granted at admission, or the only one the spec accepts. A CPU job has
    none (ValueError)."""
    if job.spec.on_cpu:
        raise ValueError(f"{job.key}: spec.resources.gpuType is CPU: the gang has no GPU type")
    if job.status.gpu_type is not None:
        return job.status.gpu_type
    types = job.spec.gpu_types
    if len(types) == 1:
        return types[0]
    raise ValueError(f"{job.key}: spec.resources.gpuType is Any and no GPU type was granted at admission")


def placement_type(job: TrainingJob) -> str | None:
    """What ``status.placement.gpuType`` says the gang runs on: the GPU type granted at admission, or CPU."""
    if job.spec.on_cpu:
        return api.CPU
    return job.status.gpu_type.value if job.status.gpu_type else None


def allowed_capacity_types(job: TrainingJob, pool: ResourcePool) -> list[str]:
    """Capacity types both the job and its pool accept, in the API's order (spot, on-demand, reserved); the pool's
    for the job's run-time estimate (:meth:`strata_api.ResourcePool.capacity_types_for`)."""
    pooled = pool.capacity_types_for(job.spec.scheduling.expected_duration_seconds)
    return [c.value for c in api.CapacityType if c.value in job.spec.resources.capacity_types and c in pooled]


def expected_runtime_s(job: TrainingJob, pool: ResourcePool | None) -> int | None:
    """The job's wall-time limit: the smaller of its own and its pool's ``maxRuntimeSeconds`` (the job's alone
    without a pool), at most :data:`strata_api.MAX_RUNTIME_SECONDS` (a limit stored before the CRDs bounded it)."""
    pool_limit = pool.max_runtime_seconds if pool else None
    limits = [x for x in (job.spec.max_runtime_seconds, pool_limit) if x is not None]
    return min(*limits, api.MAX_RUNTIME_SECONDS) if limits else None


def build_service(namespace: str, settings: OperatorSettings) -> dict[str, Any]:
    """The namespace's headless Service giving each training worker a stable DNS name; not-ready addresses are
    published because the rendezvous happens before any worker is ready."""
    workers = {api.LABEL_MANAGED_BY: api.MANAGED_BY, api.LABEL_JOB_KIND: api.TRAINING_JOB}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": WORKERS_SERVICE, "namespace": namespace, "labels": {api.LABEL_MANAGED_BY: api.MANAGED_BY}},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": workers,
            "ports": [{"name": "rendezvous", "port": settings.master_port, "targetPort": settings.master_port}],
        },
    }


def build_worker_access(namespace: str) -> list[tuple[str, dict[str, Any]]]:
    """The namespace's worker ServiceAccount, a Role that may get and patch pods, and the binding: ``(collection
    path, manifest)`` in creation order. Workers report progress by annotating their own pod; the chart's
    ValidatingAdmissionPolicy keeps each worker to its own pod and that one annotation (RBAC cannot say "the pod
    this token belongs to"). Created once per namespace, not per job: one account instead of three objects a job."""
    name = WORKER_SERVICE_ACCOUNT
    meta = {"name": name, "namespace": namespace, "labels": {api.LABEL_MANAGED_BY: api.MANAGED_BY}}
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    return [
        (
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        ),
        (
            f"{rbac}/roles",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": meta,
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}],
            },
        ),
        (
            f"{rbac}/rolebindings",
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": meta,
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            },
        ),
    ]


def build_worker_pods(job: TrainingJob, pool: ResourcePool, settings: OperatorSettings) -> list[dict[str, Any]]:
    """One gated pod per worker, in worker order. Names are stable (``<job>-worker-<index>``) so a restarted
    operator that creates them again gets AlreadyExists instead of a duplicate gang."""
    return [_worker_pod(job, pool, settings, index) for index in range(job.spec.workers)]


def _worker_pod(job: TrainingJob, pool: ResourcePool, settings: OperatorSettings, index: int) -> dict[str, Any]:
    spec = job.spec
    gpu = None if spec.on_cpu else gang_gpu_type(job)
    capacity = allowed_capacity_types(job, pool)
    # the extender's work at risk per reclaim: the run's own estimate (spec.scheduling) when shorter than the limit
    estimates = [x for x in (expected_runtime_s(job, pool), spec.scheduling.expected_duration_seconds) if x]
    runtime = min(estimates) if estimates else None
    labels = {
        **selector(job.name),
        api.LABEL_JOB_KIND: api.TRAINING_JOB,
        api.LABEL_WORKER_INDEX: str(index),
        api.LABEL_TP_GROUP: str(index // spec.pods_per_tp_group),
        api.LABEL_POOL: pool.name,
        api.LABEL_PRIORITY: str(pool.priority),
        api.LABEL_ATTEMPT: str(job.status.attempt),
    }
    annotations = {
        api.ANN_GANG_SIZE: str(spec.workers),
        api.ANN_TP_SIZE: str(spec.parallelism.tensor),
        api.ANN_GPU_TYPES: gpu.value if gpu else api.CPU,
        api.ANN_CAPACITY_TYPES: ",".join(capacity),
        api.ANN_CAPACITY_PREFERENCE: spec.resources.capacity_preference,
        api.ANN_CHECKPOINT_INTERVAL: str(spec.checkpoint.interval_seconds),
        api.ANN_PRECISION: spec.training.precision,
    }
    if runtime is not None:
        annotations[api.ANN_EXPECTED_RUNTIME] = str(runtime)
    if job.status.planned_capacity_types:  # where admission counted the gang: the extender scores those nodes first
        annotations[api.ANN_PLANNED_CAPACITY_TYPES] = ",".join(job.status.planned_capacity_types)
    if job.status.planned_node:  # the node rule 10 emptied for the gang: the extender keeps its GPUs for it
        annotations[api.ANN_PLANNED_NODE] = job.status.planned_node.annotation()
    if spec.scheduling.deferrable:  # valley scheduling: the extender treats it as it does low-priority work
        annotations[api.ANN_DEFERRABLE] = "true"
    limits: dict[str, str] = {gpu.resource: str(spec.resources.gpus_per_worker)} if gpu else {}
    if spec.resources.cpu_per_worker is not None:
        limits["cpu"] = spec.resources.cpu_per_worker
    if spec.resources.memory_per_worker is not None:
        limits["memory"] = spec.resources.memory_per_worker
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": worker_name(job.name, index),
            "namespace": job.namespace,
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {
            "schedulerName": settings.scheduler_name,
            "schedulingGates": [{"name": api.SCHEDULING_GATE}],
            "restartPolicy": "Never",
            "hostname": worker_name(job.name, index),
            "subdomain": WORKERS_SERVICE,
            "terminationGracePeriodSeconds": settings.termination_grace_s,
            # the namespace's worker account: each worker may annotate only its own pod with progress
            "serviceAccountName": WORKER_SERVICE_ACCOUNT,
            "automountServiceAccountToken": True,
            "enableServiceLinks": False,
            "securityContext": pod_security_context(settings),
            **({"nodeSelector": dict(spec.resources.node_selector)} if spec.resources.node_selector else {}),
            "tolerations": tolerations(gpu, capacity),
            "affinity": affinity(capacity, spec.resources.capacity_preference, on_cpu=gpu is None),
            "containers": [
                {
                    "name": CONTAINER,
                    "image": spec.workload.image,
                    "imagePullPolicy": spec.workload.image_pull_policy,
                    "command": list(TRAIN_COMMAND),
                    "env": [
                        *({"name": k, "value": v} for k, v in worker_env(job, settings, index).items()),
                        *({"name": k, "valueFrom": {"fieldRef": {"fieldPath": f}}} for k, f in DOWNWARD_ENV),
                    ],
                    "ports": [
                        {"name": "rendezvous", "containerPort": settings.master_port},
                        {"name": "metrics", "containerPort": settings.workload_metrics_port},
                    ],
                    "resources": {"limits": limits, "requests": dict(limits)},
                    "securityContext": CONTAINER_SECURITY_CONTEXT,
                    "volumeMounts": [
                        {"name": "checkpoints", "mountPath": spec.checkpoint.path},
                        {"name": "dshm", "mountPath": "/dev/shm"},
                    ],
                }
            ],
            "volumes": [_checkpoint_volume(job), {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        },
    }


CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""Every container Strata makes for a workload (training workers, serving replicas): restricted Pod Security."""


def pod_security_context(settings: OperatorSettings) -> dict[str, Any]:
    """The pod-level half of restricted Pod Security for a workload pod, as the settings' non-root user."""
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_user,
        "fsGroup": settings.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def worker_env(job: TrainingJob, settings: OperatorSettings, index: int) -> dict[str, str]:
    """The torch.distributed rendezvous plus the layout and training settings of the workload."""
    spec, e = job.spec, WorkerEnv
    env = {
        e.MASTER_ADDR: master_addr(job),
        e.MASTER_PORT: str(settings.master_port),
        e.WORLD_SIZE: str(spec.world_size),
        e.RANK: str(index * spec.processes_per_worker),
        e.LOCAL_WORLD_SIZE: str(spec.processes_per_worker),
        e.NODE_RANK: str(index),
        e.NNODES: str(spec.workers),
        e.DP_REPLICATE: "1",
        e.DP_SHARD: str(spec.parallelism.data),
        e.TENSOR: str(spec.parallelism.tensor),
        e.PIPELINE: str(spec.parallelism.pipeline),
        e.EXPERT: str(spec.parallelism.expert),
        e.PP_MICROBATCHES: str(spec.parallelism.micro_batches),
        e.PIPELINE_SCHEDULE: PIPELINE_SCHEDULES[spec.parallelism.pipeline_schedule],
        e.MODEL: spec.workload.preset,
        e.GLOBAL_BATCH: str(spec.training.global_batch_size),
        e.MICRO_BATCH: str(spec.training.micro_batch_size),
        e.STEPS: str(spec.training.steps),
        e.PRECISION: spec.training.precision,
        e.ACTIVATION_CHECKPOINTING: spec.training.activation_checkpointing,
        e.MAX_GRAD_NORM: repr(spec.training.gradient_clipping),
        e.LEARNING_RATE: repr(spec.training.learning_rate),
        e.CHECKPOINT_DIR: spec.checkpoint.path,
        e.CHECKPOINT_EVERY_SECONDS: str(spec.checkpoint.interval_seconds),
        # without a step interval, time alone decides (the workload's own default is every 50 steps)
        e.CHECKPOINT_EVERY_STEPS: str(spec.checkpoint.interval_steps or 0),
        e.CHECKPOINT_KEEP: str(spec.checkpoint.keep),
        e.METRICS_PORT: str(settings.workload_metrics_port),
        e.LOG_FORMAT: "json",
        e.JOB: job.key,
        e.ATTEMPT: str(job.status.attempt),
        e.PROGRESS_ANNOTATION: api.ANN_PROGRESS,
    }
    if spec.workload.model_dir:
        env[e.MODEL_DIR] = spec.workload.model_dir
    if spec.workload.tokenizer:
        env[e.TOKENIZER] = spec.workload.tokenizer
    if spec.workload.data_dir:
        env[e.DATA_DIR] = spec.workload.data_dir
    if spec.on_cpu:  # PyTorch's thread pool as large as the CPU limit, not the host (see WorkerEnv.OMP_NUM_THREADS)
        env[e.OMP_NUM_THREADS] = str(max(1, api.cpu_millis(spec.resources.cpu_per_worker or 0) // 1000))
    return env


def tolerations(gpu: GPUType | None, capacity: list[str]) -> list[dict[str, str]]:
    """The GPU taint of the gang's type (none for a CPU job) and, where spot is allowed, the spot taint."""
    tolerated = [{"key": gpu.resource, "operator": "Exists", "effect": "NoSchedule"}] if gpu else []
    if api.CapacityType.SPOT.value in capacity:
        tolerated.append(
            {"key": api.TAINT_SPOT, "operator": "Equal", "value": api.CapacityType.SPOT.value, "effect": "NoSchedule"}
        )
    return tolerated


NO_GPU_PRODUCT: list[dict[str, Any]] = [
    {"key": api.NVIDIA_PRODUCT, "operator": "DoesNotExist"},
    {"key": api.AMD_PRODUCT, "operator": "DoesNotExist"},
]
"""A CPU worker's nodes: those without a GPU vendor's product label (the labels GPU nodes carry on real clusters)."""


def affinity(capacity: list[str], preference: str, *, on_cpu: bool = False) -> dict[str, Any]:
    """Nodes of an allowed capacity type; for a CPU job, only nodes without a GPU product label, where a node
    without a capacity-type label (a machine nobody reclaims, as on-premises) counts as on-demand."""
    allowed: dict[str, Any] = {"key": api.NODE_CAPACITY_TYPE, "operator": "In", "values": capacity}
    terms: list[dict[str, Any]] = [{"matchExpressions": [allowed]}]
    if on_cpu:
        terms = [{"matchExpressions": [allowed, *NO_GPU_PRODUCT]}]
        if api.CapacityType.ON_DEMAND.value in capacity:
            unlabelled: dict[str, Any] = {"key": api.NODE_CAPACITY_TYPE, "operator": "DoesNotExist"}
            terms.append({"matchExpressions": [unlabelled, *NO_GPU_PRODUCT]})
    node_affinity: dict[str, Any] = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}
    if preference in capacity:
        node_affinity["preferredDuringSchedulingIgnoredDuringExecution"] = [
            {
                "weight": 100,
                "preference": {
                    "matchExpressions": [{"key": api.NODE_CAPACITY_TYPE, "operator": "In", "values": [preference]}]
                },
            }
        ]
    return {"nodeAffinity": node_affinity}


def _checkpoint_volume(job: TrainingJob) -> dict[str, Any]:
    claim = job.spec.checkpoint.persistent_volume_claim
    if claim:
        return {"name": "checkpoints", "persistentVolumeClaim": {"claimName": claim}}
    return {"name": "checkpoints", "emptyDir": {}}
