"""InferenceService builders and decisions (strata_operator.core.serving): the exact manifests of a service's
Deployment, Service and PodDisruptionBudget, where the model comes from, how the pool's quota clamps the replicas,
and the status written from the Deployment."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest
import yaml
from operator_builders import ROOT, T0, a_job, a_pool, apply_defaults, schema
from serving_builders import IMAGE, a_service

import strata_api as api
from strata_operator.core import serving
from strata_operator.core.pods import left_by_earlier
from strata_operator.core.serving import Allotment, ModelProblem, ModelSource, ObservedDeployment
from strata_operator.settings import OperatorSettings
from strata_workloads.settings import SERVE_ENV_PREFIX, ServeSettings

SETTINGS = OperatorSettings()
CPU_POOL = a_pool("pool", max_gpus=0, maxCPUs=8, capacityTypes=["on-demand", "reserved"])
GPU_POOL = a_pool("pool", max_gpus=16, gpuTypes=["H100"], capacityTypes=["spot", "on-demand"])
ON_CLAIM = {"preset": "debug", "path": "/models/debug", "persistentVolumeClaim": "debug-checkpoints"}


def test_a_cpu_service_is_a_deployment_of_the_server_ready_after_warm_up() -> None:
    service = a_service("chat", min_replicas=2, max_replicas=4, model=ON_CLAIM)
    source = serving.resolve_model(service, None)
    assert isinstance(source, ModelSource)
    deployment = serving.build_deployment(service, CPU_POOL, source, 2, SETTINGS)
    rev = deployment["metadata"]["annotations"][api.LABEL_REVISION]
    owned = {api.LABEL_INFERENCE_SERVICE: "chat", api.LABEL_MANAGED_BY: api.MANAGED_BY}
    assert deployment == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "chat",
            "namespace": "team",
            "labels": {**owned, api.LABEL_JOB_KIND: api.INFERENCE_SERVICE},
            "annotations": {api.LABEL_REVISION: rev},
            "ownerReferences": [
                {
                    "apiVersion": api.API_VERSION,
                    "kind": api.INFERENCE_SERVICE,
                    "name": "chat",
                    "uid": "uid-chat",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": owned},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {
                    "labels": {
                        **owned,
                        api.LABEL_JOB_KIND: api.INFERENCE_SERVICE,
                        api.LABEL_POOL: "pool",
                        api.LABEL_PRIORITY: "0",
                        api.LABEL_REVISION: rev,
                    },
                    "annotations": {
                        api.ANN_GPU_TYPES: "CPU",
                        api.ANN_CAPACITY_TYPES: "on-demand,reserved",
                        api.ANN_PRECISION: "fp32",
                    },
                },
                "spec": {
                    "schedulerName": api.SCHEDULER_NAME,
                    "terminationGracePeriodSeconds": 30,
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 1000,
                        "runAsGroup": 1000,
                        "fsGroup": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "tolerations": [],
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {
                                                "key": api.NODE_CAPACITY_TYPE,
                                                "operator": "In",
                                                "values": ["on-demand", "reserved"],
                                            },
                                            {"key": api.NVIDIA_PRODUCT, "operator": "DoesNotExist"},
                                            {"key": api.AMD_PRODUCT, "operator": "DoesNotExist"},
                                        ]
                                    },
                                    {
                                        "matchExpressions": [
                                            {"key": api.NODE_CAPACITY_TYPE, "operator": "DoesNotExist"},
                                            {"key": api.NVIDIA_PRODUCT, "operator": "DoesNotExist"},
                                            {"key": api.AMD_PRODUCT, "operator": "DoesNotExist"},
                                        ]
                                    },
                                ]
                            }
                        }
                    },
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": owned},
                        },
                        {
                            "maxSkew": 1,
                            "topologyKey": api.NODE_ZONE,
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": owned},
                        },
                    ],
                    "containers": [
                        {
                            "name": "server",
                            "image": IMAGE,
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["python", "-m", "strata_workloads.serve"],
                            "env": [
                                {"name": "STRATA_SERVE_MODEL_NAME", "value": "chat"},
                                {"name": "STRATA_SERVE_MODEL", "value": "debug"},
                                {"name": "STRATA_SERVE_CHECKPOINT", "value": "/models/debug"},
                                {"name": "STRATA_SERVE_PRECISION", "value": "fp32"},
                                {"name": "STRATA_SERVE_QUANTIZATION", "value": "none"},
                                {"name": "STRATA_SERVE_COMPILE", "value": "false"},
                                {"name": "STRATA_SERVE_PORT", "value": "8000"},
                                {"name": "STRATA_SERVE_MAX_BATCH", "value": "8"},
                                {"name": "STRATA_SERVE_MAX_WAIT_MS", "value": "5.0"},
                                {"name": "STRATA_SERVE_BATCHING", "value": "continuous"},
                                {"name": "STRATA_SERVE_WARMUP_REQUESTS", "value": "0"},
                                {"name": "STRATA_SERVE_DRAIN_SECONDS", "value": "25"},
                                {"name": "STRATA_SERVE_THREADS", "value": "1"},
                                {"name": "STRATA_LOG_FORMAT", "value": "json"},
                            ],
                            "ports": [{"name": "http", "containerPort": 8000}],
                            "readinessProbe": {
                                "httpGet": {"path": "/readyz", "port": "http"},
                                "periodSeconds": 2,
                                "timeoutSeconds": 2,
                                "failureThreshold": 2,
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": "http"},
                                "periodSeconds": 10,
                                "timeoutSeconds": 5,
                                "failureThreshold": 6,
                            },
                            "resources": {
                                "limits": {"cpu": "1", "memory": "2Gi"},
                                "requests": {"cpu": "1", "memory": "2Gi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                                "runAsNonRoot": True,
                                "seccompProfile": {"type": "RuntimeDefault"},
                            },
                            "volumeMounts": [{"name": "model", "mountPath": "/models/debug", "readOnly": True}],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "model",
                            "persistentVolumeClaim": {"claimName": "debug-checkpoints", "readOnly": True},
                        }
                    ],
                },
            },
        },
    }


def test_gpu_replicas_ask_for_their_gpus_and_tolerate_their_taints() -> None:
    resources = {"gpuType": "H100", "gpusPerReplica": 2, "capacityTypes": ["spot", "reserved"]}
    service = a_service("big", resources=resources)
    source = serving.resolve_model(service, None)
    assert isinstance(source, ModelSource)
    pod = serving.build_deployment(service, GPU_POOL, source, 1, SETTINGS)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"] == {"limits": {api.NVIDIA_GPU: "2"}, "requests": {api.NVIDIA_GPU: "2"}}
    assert "STRATA_SERVE_THREADS" not in {e["name"] for e in container["env"]}
    assert pod["tolerations"] == [
        {"key": api.NVIDIA_GPU, "operator": "Exists", "effect": "NoSchedule"},
        {"key": api.TAINT_SPOT, "operator": "Equal", "value": "spot", "effect": "NoSchedule"},
    ]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": api.NODE_CAPACITY_TYPE, "operator": "In", "values": ["spot"]}]}]
    assert "volumes" not in pod


def test_the_service_and_the_budget() -> None:
    service = a_service("chat", rollout={"maxSurge": 2, "maxUnavailable": 3})
    meta = serving.build_replicas_service(service)["metadata"]
    assert serving.build_replicas_service(service)["spec"] == {  # headless: the router resolves its name
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": {api.LABEL_INFERENCE_SERVICE: "chat", api.LABEL_MANAGED_BY: api.MANAGED_BY},
        "ports": [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}],
    }
    assert meta["name"] == "chat-replicas"
    assert meta["ownerReferences"][0]["uid"] == "uid-chat"
    assert serving.url(service) == "http://chat.team.svc:8000"
    budget = serving.build_disruption_budget(service)
    assert budget["spec"]["maxUnavailable"] == 3
    # a budget of 0 would block every node drain: at least one replica may always be evicted
    assert serving.build_disruption_budget(a_service("chat"))["spec"]["maxUnavailable"] == 1


def test_every_server_setting_the_operator_sets_is_one_the_server_reads() -> None:
    service = a_service(model={"preset": "debug", "precision": "bf16", "quantization": "int8-weight", "compile": True})
    env = serving.serve_env(service, ModelSource(checkpoint="/c"))
    fields = {f.name.upper() for f in dataclasses.fields(ServeSettings)}
    assert serving.SERVE_ENV_PREFIX == SERVE_ENV_PREFIX
    assert {name.removeprefix(SERVE_ENV_PREFIX) for name in env} <= fields
    assert ServeSettings.port == serving.SERVE_PORT
    assert ServeSettings.drain_seconds == serving.DRAIN_SECONDS
    assert env[f"{SERVE_ENV_PREFIX}QUANTIZATION"] == "int8-weight"
    assert env[f"{SERVE_ENV_PREFIX}COMPILE"] == "true"
    static = a_service(model={"preset": "debug", "batching": {"mode": "static", "maxWaitMs": 20}})
    static_env = serving.serve_env(static, ModelSource(checkpoint="/c"))
    assert (static_env[f"{SERVE_ENV_PREFIX}BATCHING"], static_env[f"{SERVE_ENV_PREFIX}MAX_WAIT_MS"]) == (
        "static",
        "20.0",
    )
    # OpenAI-compatible clients name the model by the service's name
    assert env[f"{SERVE_ENV_PREFIX}MODEL_NAME"] == service.name


def test_the_revision_changes_with_the_model_not_with_the_replica_count() -> None:
    service = a_service()
    source = ModelSource(checkpoint="")

    def rev(svc: api.InferenceService, replicas: int = 1) -> str:
        d = serving.build_deployment(svc, CPU_POOL, source, replicas, SETTINGS)
        return str(d["metadata"]["annotations"][api.LABEL_REVISION])

    assert rev(service, 1) == rev(service, 5)
    assert rev(service) != rev(a_service(model={"preset": "debug", "precision": "bf16"}))
    desired = serving.build_deployment(service, CPU_POOL, source, 2, SETTINGS)
    same = ObservedDeployment(2, 2, 2, rev(service), 1, 1)
    assert not serving.needs_update(desired, same)
    assert serving.needs_update(desired, dataclasses.replace(same, replicas=1))
    assert serving.needs_update(desired, dataclasses.replace(same, revision="old"))
    assert serving.needs_update(desired, None)


# --- the model ---


def test_a_trainingjobs_checkpoint_volume_is_mounted_read_only_where_it_wrote() -> None:
    job = a_job(name="train", checkpoint={"path": "/ckpt", "persistentVolumeClaim": "train-ckpt"})
    source = serving.resolve_model(a_service(model={"trainingJob": "train"}), job)
    assert source == ModelSource(
        checkpoint="/ckpt",
        claim="train-ckpt",
        mount_path="/ckpt",
        message="the newest complete checkpoint of TrainingJob train (claim train-ckpt, /ckpt), on the job's preset "
        "debug",
        preset="debug",
    )


def test_a_trainingjobs_checkpoint_is_served_on_the_jobs_preset_whatever_the_services_says() -> None:
    # spec.model.preset defaults to debug: a job trained on another preset would otherwise be built as debug and
    # its checkpoint refused (NoUsableCheckpoint) until the user repeated the job's preset in the service
    workload = {"image": IMAGE, "preset": "debug-dense"}
    job = a_job(name="train", checkpoint={"path": "/ckpt", "persistentVolumeClaim": "c"}, workload=workload)
    service = a_service(model={"trainingJob": "train"})
    assert service.spec.model.preset == "debug"
    source = serving.resolve_model(service, job)
    assert isinstance(source, ModelSource)
    assert serving.serve_env(service, source)[f"{SERVE_ENV_PREFIX}MODEL"] == "debug-dense"
    assert source.message.endswith("on the job's preset debug-dense")
    # the other sources keep the service's own preset
    mine = a_service(model={"preset": "small", "path": "/models/step-00000010"})
    own = serving.resolve_model(mine, None)
    assert isinstance(own, ModelSource)
    assert serving.serve_env(mine, own)[f"{SERVE_ENV_PREFIX}MODEL"] == "small"


def test_a_newer_checkpoint_of_the_job_rolls_every_replica_to_it() -> None:
    # each replica loads the step its template names (STRATA_SERVE_STEP): a replica started later (a scale-up, a
    # replaced pod) serves the same step as the others behind the same router, not the newest on the volume
    checkpoint = {"path": "/ckpt", "persistentVolumeClaim": "c"}
    service = a_service(model={"trainingJob": "train"})

    def deployment(status: dict[str, Any] | None) -> dict[str, Any]:
        source = serving.resolve_model(service, a_job(name="train", checkpoint=checkpoint, status=status))
        assert isinstance(source, ModelSource)
        return serving.build_deployment(service, CPU_POOL, source, 2, SETTINGS)

    def step_of(d: dict[str, Any]) -> str | None:
        annotations: dict[str, str] = d["spec"]["template"]["metadata"]["annotations"]
        return annotations.get(serving.ANN_CHECKPOINT_STEP)

    unknown, at_10, at_20 = (
        deployment(None),
        deployment({"lastCheckpoint": {"step": 10}}),
        deployment({"lastCheckpoint": {"step": 20}}),
    )
    assert (step_of(unknown), step_of(at_10), step_of(at_20)) == (None, "10", "20")

    def served_step(d: dict[str, Any]) -> str | None:
        env = {e["name"]: e["value"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        return env.get(f"{SERVE_ENV_PREFIX}STEP")

    assert (served_step(unknown), served_step(at_10), served_step(at_20)) == (None, "10", "20")
    revisions = {d["metadata"]["annotations"][api.LABEL_REVISION] for d in (unknown, at_10, at_20)}
    assert len(revisions) == 3  # each step is a revision of its own: the Deployment rolls (or canaries) to it
    assert deployment({"lastCheckpoint": {"step": 20}}) == at_20  # the same step: nothing to roll
    source = serving.resolve_model(
        service, a_job(name="train", checkpoint=checkpoint, status={"lastCheckpoint": {"step": 20}})
    )
    assert isinstance(source, ModelSource)
    assert source.message.endswith("on the job's preset debug, step 20 by its status.lastCheckpoint")


def a_deployment_at_step(
    step: int | None, replicas: int = 2, updated: int = 2, total: int = 2, available: int = 2, **status: Any
) -> ObservedDeployment:
    """A Deployment as the watch shows it, whose pod template names checkpoint ``step``."""
    annotations = {serving.ANN_CHECKPOINT_STEP: str(step)} if step is not None else {}
    body = {
        "metadata": {"generation": 3, "annotations": {api.LABEL_REVISION: f"rev-{step}"}},
        "spec": {"replicas": replicas, "template": {"metadata": {"annotations": annotations}}},
        "status": {
            "observedGeneration": 3,
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": available,
            "availableReplicas": available,
            **status,
        },
    }
    return ObservedDeployment.from_body(body)


def test_a_deployment_rolls_until_every_replica_runs_its_latest_template_and_is_available() -> None:
    # kubectl rollout status's rule
    assert not a_deployment_at_step(10).rolling
    assert a_deployment_at_step(10, updated=1, total=3, available=1).rolling  # the surge's new replica warming up
    assert a_deployment_at_step(10, updated=2, total=3, available=2).rolling  # an old replica not yet gone
    assert a_deployment_at_step(10, updated=2, total=2, available=1).rolling  # a new replica not yet available
    assert a_deployment_at_step(10, observedGeneration=2).rolling  # the controller has not seen the latest spec
    assert not a_deployment_at_step(10, replicas=0, updated=0, total=0, available=0).rolling
    assert a_deployment_at_step(10).checkpoint_step == 10
    assert a_deployment_at_step(None).checkpoint_step is None
    stalled = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    assert a_deployment_at_step(10, available=1, conditions=[stalled]).stalled
    progressing = {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}
    assert not a_deployment_at_step(10, available=1, conditions=[progressing]).stalled


def test_a_newer_checkpoint_waits_for_the_roll_to_the_one_before_to_finish() -> None:
    # a job that checkpoints more often than a replica warms up would otherwise change the template before any new
    # replica is ready, and the Deployment controller would replace the starting replicas at every checkpoint
    checkpoint = {"path": "/ckpt", "persistentVolumeClaim": "c"}
    service = a_service(model={"trainingJob": "train"})
    at_20 = serving.resolve_model(
        service, a_job(name="train", checkpoint=checkpoint, status={"lastCheckpoint": {"step": 20}})
    )
    assert isinstance(at_20, ModelSource)
    warming = a_deployment_at_step(10, updated=1, total=3, available=1)
    held = serving.one_roll_at_a_time(at_20, warming, stuck=False)
    assert held == dataclasses.replace(
        at_20,
        checkpoint_step=10,
        message=f"{at_20.message}; the replicas finish their roll to step 10 before they roll to it",
    )
    deployment = serving.build_deployment(service, CPU_POOL, held, 2, SETTINGS)
    assert deployment["spec"]["template"]["metadata"]["annotations"][serving.ANN_CHECKPOINT_STEP] == "10"
    # the roll done, the newest step rolls
    assert serving.one_roll_at_a_time(at_20, a_deployment_at_step(10), stuck=False) == at_20
    # a roll that cannot finish holds nothing back: its replicas fail or are held up, or the controller gave up on it
    assert serving.one_roll_at_a_time(at_20, warming, stuck=True) == at_20
    stalled = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    gave_up = a_deployment_at_step(10, updated=1, total=3, available=1, conditions=[stalled])
    assert serving.one_roll_at_a_time(at_20, gave_up, stuck=False) == at_20
    # nothing to hold: the roll under way is to the newest step, or names none, or there is no Deployment yet
    assert serving.one_roll_at_a_time(at_20, a_deployment_at_step(20, available=1), stuck=False) == at_20
    assert serving.one_roll_at_a_time(at_20, a_deployment_at_step(None, available=1), stuck=False) == at_20
    assert serving.one_roll_at_a_time(at_20, None, stuck=False) == at_20
    # a model that names no step (a path, random weights) is never held
    assert serving.one_roll_at_a_time(SOURCE, warming, stuck=False) == SOURCE


def test_the_canary_takes_the_new_template_while_one_runs_else_the_stable_deployment() -> None:
    stable, trial = a_deployment_at_step(10), a_deployment_at_step(20)
    canaried = a_service(rollout={"canaryPercent": 20})
    assert serving.rolling_deployment(canaried, stable, trial) is trial
    assert serving.rolling_deployment(canaried, stable, None) is stable
    assert serving.rolling_deployment(a_service(rollout={"canaryPercent": 100}), stable, trial) is stable
    assert serving.rolling_deployment(a_service(), None, None) is None


def test_a_model_that_cannot_be_served_says_why_naming_the_field() -> None:
    service = a_service(model={"trainingJob": "train"})
    missing = serving.resolve_model(service, None)
    assert missing == ModelProblem(
        "TrainingJobNotFound", "spec.model.trainingJob: TrainingJob train does not exist in namespace team"
    )
    ephemeral = serving.resolve_model(service, a_job(name="train"))
    assert isinstance(ephemeral, ModelProblem)
    assert ephemeral.reason == "CheckpointsNotKept"
    assert "spec.checkpoint.persistentVolumeClaim is unset" in ephemeral.message


def test_a_job_fine_tuned_from_a_model_dir_is_served_on_its_shape_and_tokenizer() -> None:
    # without the job's directory the replicas would build the preset and fail to load its checkpoint
    workload = {"image": IMAGE, "modelDir": "/ckpt/base/llama", "tokenizer": "/ckpt/base/tokenizer.json"}
    job = a_job(name="tune", checkpoint={"path": "/ckpt", "persistentVolumeClaim": "tune-ckpt"}, workload=workload)
    service = a_service(model={"trainingJob": "tune"})
    source = serving.resolve_model(service, job)
    assert isinstance(source, ModelSource)
    env = serving.serve_env(service, source)
    assert env[f"{SERVE_ENV_PREFIX}CHECKPOINT"] == "/ckpt"
    assert env[f"{SERVE_ENV_PREFIX}MODEL_DIR"] == "/ckpt/base/llama"
    assert env[f"{SERVE_ENV_PREFIX}TOKENIZER"] == "/ckpt/base/tokenizer.json"
    # a job trained from a preset passes on nothing: the server reads the preset and byte tokenizer
    plain = serving.resolve_model(
        service, a_job(name="tune", checkpoint={"path": "/ckpt", "persistentVolumeClaim": "c"})
    )
    assert isinstance(plain, ModelSource)
    assert not {f"{SERVE_ENV_PREFIX}MODEL_DIR", f"{SERVE_ENV_PREFIX}TOKENIZER"} & set(serving.serve_env(service, plain))


def test_the_fine_tune_example_serves_its_checkpoint_on_the_base_directorys_shape() -> None:
    def stored(name: str) -> dict[str, Any]:
        body = yaml.safe_load((ROOT / "examples" / "finetune" / name).read_text())
        body["metadata"].update(namespace="team", uid="u", generation=1, creationTimestamp="2026-01-01T00:00:00Z")
        return apply_defaults(schema(name), body)

    job = api.TrainingJob.from_body(stored("trainingjob.yaml"))
    service = api.InferenceService.from_body(stored("inferenceservice.yaml"))
    source = serving.resolve_model(service, job)
    assert isinstance(source, ModelSource)
    env = serving.serve_env(service, source)
    assert (source.claim, source.mount_path) == ("finetune-checkpoints", "/checkpoints")
    assert env[f"{SERVE_ENV_PREFIX}MODEL_DIR"] == job.spec.workload.model_dir == "/checkpoints/base"


def test_a_model_dir_on_a_claim_is_served_from_where_the_claim_is_mounted() -> None:
    hf = {"modelDir": "/models/llama", "persistentVolumeClaim": "llama", "tokenizer": "/models/llama/tok"}
    source = serving.resolve_model(a_service(model=hf), None)
    assert source == ModelSource(
        checkpoint="",
        claim="llama",
        mount_path="/models/llama",
        message="the Hugging Face weights at spec.model.modelDir (claim llama, /models/llama)",
        model_dir="/models/llama",
        tokenizer="/models/llama/tok",
    )
    # a fine-tuned checkpoint at path, on the shape of a directory on the same claim
    tuned = serving.resolve_model(a_service(model={**ON_CLAIM, "modelDir": "/models/debug/base"}), None)
    assert isinstance(tuned, ModelSource)
    assert (tuned.checkpoint, tuned.mount_path, tuned.model_dir) == (
        "/models/debug",
        "/models/debug",
        "/models/debug/base",
    )


def test_a_changed_model_dir_rolls_the_replicas() -> None:
    def rev(model: dict[str, str]) -> str:
        service = a_service(model=model)
        source = serving.resolve_model(service, None)
        assert isinstance(source, ModelSource)
        d = serving.build_deployment(service, CPU_POOL, source, 1, SETTINGS)
        return str(d["metadata"]["annotations"][api.LABEL_REVISION])

    assert rev({"modelDir": "/models/a"}) != rev({"modelDir": "/models/b"})


def test_a_path_in_the_image_and_random_weights() -> None:
    in_image = serving.resolve_model(a_service(model={"path": "/opt/model"}), None)
    assert in_image == ModelSource(
        checkpoint="/opt/model", message="the checkpoint at spec.model.path (/opt/model in the image)"
    )
    random = serving.resolve_model(a_service(), None)
    assert isinstance(random, ModelSource)
    assert (random.checkpoint, random.claim, random.reason) == ("", None, "RandomWeights")


# --- the quota ---


def cpu_service(name: str, minutes: int, replicas: int, cpus: str = "1") -> api.InferenceService:
    resources = {"gpuType": "CPU", "cpuPerReplica": cpus, "memoryPerReplica": "1Gi"}
    return a_service(name, created=T0 + timedelta(minutes=minutes), min_replicas=replicas, resources=resources)


def test_admitted_trainingjobs_hold_the_pool_first_then_services_oldest_first() -> None:
    pools = {"pool": a_pool("pool", max_gpus=0, maxCPUs=10)}
    running = a_job(name="t", gpu_type="CPU", data=2, status={"phase": "Running"})  # 2 workers x 2 CPUs
    queued = a_job(name="q", gpu_type="CPU", data=4, status={"phase": "Queued"})  # holds nothing
    newer, older = cpu_service("newer", 5, 4), cpu_service("older", 1, 3, cpus="1500m")
    allotted = serving.allot([newer, older], pools, [running, queued])
    assert allotted["team/older"] == Allotment(3, False, "WithinQuota", "pool pool's quota holds 3 replicas")
    # 10 CPUs - 4 (the running job) - 4.5 (older's 3 x 1.5) leaves 1.5: one replica of 1 CPU
    assert allotted["team/newer"] == Allotment(
        1,
        True,
        "WaitingForQuota",
        "1 of 4 replicas (spec.replicas.min): each needs 1 CPUs and pool pool has 1500m of 10 left",
    )


def test_gpu_replicas_count_against_max_gpus() -> None:
    resources = {"gpuType": "H100", "gpusPerReplica": 4}
    service = a_service("big", min_replicas=5, resources=resources)
    job = a_job(name="t", data=8, status={"phase": "Admitted"})  # 8 H100s
    allotted = serving.allot([service], {"pool": GPU_POOL}, [job])["team/big"]
    assert (allotted.replicas, allotted.limited) == (2, True)
    assert allotted.message == "2 of 5 replicas (spec.replicas.min): each needs 4 GPUs and pool pool has 8 of 16 left"


@pytest.mark.parametrize(
    ("service", "pools", "reason", "message"),
    [
        (cpu_service("s", 0, 1), {}, "PoolNotFound", "spec.pool: ResourcePool pool does not exist"),
        (
            cpu_service("s", 0, 1),
            {"pool": a_pool("pool")},
            "NoCPUQuota",
            "pool pool admits no CPU replicas: its spec.maxCPUs is unset",
        ),
        (
            a_service("s", resources={"gpuType": "MI300X"}),
            {"pool": GPU_POOL},
            "NoUsableGPUs",
            "spec.resources.gpuType MI300X is not one of pool pool's GPU types",
        ),
        (
            a_service("s", resources={"gpuType": "H100", "capacityTypes": ["reserved"]}),
            {"pool": GPU_POOL},
            "NoUsableGPUs",
            "spec.resources.capacityTypes and pool pool's capacity types have nothing in common",
        ),
    ],
    ids=["no-pool", "no-cpu-quota", "gpu-type-outside-the-pool", "no-common-capacity-type"],
)
def test_a_service_its_pool_cannot_hold_gets_no_replica_and_the_reason(
    service: api.InferenceService, pools: dict[str, api.ResourcePool], reason: str, message: str
) -> None:
    assert serving.allot([service], pools, []) == {service.key: Allotment(0, True, reason, message)}


def test_min_zero_is_not_limited() -> None:
    allotted = serving.allot([cpu_service("s", 0, 0)], {"pool": CPU_POOL}, [])["team/s"]
    assert (allotted.replicas, allotted.limited) == (0, False)


# --- the status ---


def observed(replicas: int, ready: int, updated: int | None = None) -> ObservedDeployment:
    return ObservedDeployment(replicas, ready, replicas if updated is None else updated, "r1", 2, 2)


WITHIN = Allotment(2, False, "WithinQuota", "pool pool's quota holds 2 replicas")
SOURCE = ModelSource(checkpoint="", reason="RandomWeights", message="preset debug with random weights")


def conditions(patch: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in patch["conditions"]}


def test_status_of_a_starting_then_ready_service() -> None:
    service = a_service("chat", min_replicas=2)
    starting = serving.service_status(service, {}, SOURCE, WITHIN, observed(2, 1), "r1", T0)
    patch = starting.patch()
    assert {k: patch[k] for k in ("desiredReplicas", "readyReplicas", "url", "revision")} == {
        "desiredReplicas": 2,
        "readyReplicas": 1,
        "url": "http://chat.team.svc:8000",
        "revision": "r1",
    }
    assert conditions(patch) == {
        "Ready": ("False", "ReplicasStarting"),
        "QuotaLimited": ("False", "WithinQuota"),
        "ModelAvailable": ("True", "RandomWeights"),
    }
    assert patch["lastScale"] == {"time": "2026-01-01T12:00:00Z", "replicas": 2, "reason": "MinReplicas"}
    assert [e.reason for e in starting.events] == []  # a new service starting is no news

    later = T0 + timedelta(seconds=9)
    ready = serving.service_status(service, patch, SOURCE, WITHIN, observed(2, 2), "r1", later, routers=observed(2, 1))
    assert conditions({**patch, **ready.patch()})["Ready"] == ("True", "ReplicasReady")
    assert [(e.type, e.reason) for e in ready.events] == [("Normal", "ReplicasReady")]
    assert "lastScale" not in ready.patch()  # the same decision is not rewritten


def test_a_service_whose_routers_are_not_ready_is_not_ready_for_its_url_does_not_answer() -> None:
    service = a_service("chat", min_replicas=2)
    for routers, said in ((observed(2, 0), "0 of 2 routers"), (None, "no router Deployment")):
        draft = serving.service_status(service, {}, SOURCE, WITHIN, observed(2, 2), "r1", T0, routers=routers)
        patch = draft.patch()
        assert conditions(patch)["Ready"] == ("False", "RoutersNotReady")
        message = next(c["message"] for c in patch["conditions"] if c["type"] == "Ready")
        assert message == f"2 of 2 replicas ready, but {said} ready to take requests at http://chat.team.svc:8000"
        assert ("Warning", "RoutersNotReady") in [(e.type, e.reason) for e in draft.events]


def test_a_rollout_in_progress_is_not_ready() -> None:
    draft = serving.service_status(a_service(), {}, SOURCE, WITHIN, observed(2, 2, updated=1), "r1", T0)
    assert conditions(draft.patch())["Ready"] == ("False", "ReplicasStarting")


def test_status_of_a_quota_limited_service_and_a_missing_model() -> None:
    limited = Allotment(0, True, "WaitingForQuota", "0 of 2 replicas (spec.replicas.min): ...")
    draft = serving.service_status(a_service(min_replicas=2), {}, SOURCE, limited, None, "r1", T0)
    assert conditions(draft.patch())["QuotaLimited"] == ("True", "WaitingForQuota")
    assert conditions(draft.patch())["Ready"] == ("False", "NoReplicas")
    assert [(e.type, e.reason) for e in draft.events] == [("Warning", "NoReplicas"), ("Warning", "WaitingForQuota")]
    assert draft.patch()["lastScale"]["reason"] == "WaitingForQuota"

    problem = ModelProblem("TrainingJobNotFound", "spec.model.trainingJob: TrainingJob t does not exist")
    draft = serving.service_status(a_service(), {}, problem, WITHIN, None, None, T0)
    patch = draft.patch()
    assert patch["desiredReplicas"] == 0
    assert "revision" not in patch
    assert conditions(patch)["ModelAvailable"] == ("False", "TrainingJobNotFound")
    assert ("Warning", "TrainingJobNotFound") in [(e.type, e.reason) for e in draft.events]


def test_an_object_of_a_services_name_is_the_operators_to_write_only_when_the_service_controls_it() -> None:
    service = a_service("chat")
    desired = serving.build_replicas_service(service)
    ours = {"metadata": {"name": desired["metadata"]["name"], "ownerReferences": [serving.owner_reference(service)]}}
    assert serving.held_by_another(ours, desired) is None
    theirs = {"metadata": {"name": desired["metadata"]["name"]}}
    assert serving.held_by_another(theirs, desired) == (
        "Service chat-replicas exists, with no controller, not this service: rename the service or delete that object"
    )
    # the same name made by an earlier service of the same name (another uid), not yet collected
    earlier = a_service("chat", uid="0ld-uid")
    old = {"metadata": {"name": "chat-replicas", "ownerReferences": [serving.owner_reference(earlier)]}}
    assert serving.held_by_another(old, desired) == (
        "Service chat-replicas exists, controlled by InferenceService chat, not this service: rename the service or "
        "delete that object"
    )
    # which the operator asks only of an object not on its way out: that one it waits for
    assert left_by_earlier(old, serving.owner_reference(a_service("chat")))
    assert not left_by_earlier(theirs, serving.owner_reference(a_service("chat")))


def test_a_name_taken_makes_ready_false_with_a_warning_and_keeps_the_count() -> None:
    why = "Service chat exists, with no controller, not this service: rename the service or delete that object"
    draft = serving.service_status(a_service(), {}, SOURCE, WITHIN, None, "r1", T0, name_taken=why)
    patch = draft.patch()
    assert conditions(patch)["Ready"] == ("False", "NameTaken")
    assert conditions(patch)["ModelAvailable"] == ("True", "RandomWeights")
    assert next(c["message"] for c in patch["conditions"] if c["type"] == "Ready") == why
    assert patch["desiredReplicas"] == 2
    assert ("Warning", "NameTaken") in [(e.type, e.reason) for e in draft.events]


def test_the_view_applies_what_the_crd_documents_but_cannot_default() -> None:
    properties = schema("inferenceservice.yaml")["properties"]["spec"]["properties"]
    described = properties["resources"]["properties"]["gpusPerReplica"]["description"]
    assert f"Default {api.DEFAULT_GPUS_PER_REPLICA};" in described
    assert a_service(resources={"gpuType": "H100"}).spec.resources.gpus_per_replica == api.DEFAULT_GPUS_PER_REPLICA
    assert "unset means min" in properties["replicas"]["properties"]["max"]["description"]
    assert a_service(min_replicas=3).spec.max_replicas == 3


def test_an_owned_object_is_rewritten_only_when_missing_or_changed() -> None:
    desired = serving.build_replicas_service(a_service("chat"))
    stored = {**desired["spec"], "sessionAffinity": "None"}  # what the server adds
    assert not serving.drifted(desired, stored)
    assert serving.drifted(desired, None)
    assert serving.drifted(desired, {**stored, "selector": {"app": "other"}})
