"""Worker pods and the rendezvous Service, asserted as exact manifests."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from operator_builders import a_job, a_pool

import strata_api as api
from strata_api import GPUType
from strata_operator.core.pods import (
    build_service,
    build_worker_access,
    build_worker_pods,
    controller_reference,
    gang_gpu_type,
    left_by_earlier,
    worker_env,
    worker_name_held,
)
from strata_operator.settings import OperatorSettings
from strata_workloads.settings import TrainSettings

SETTINGS = OperatorSettings()


def admitted(**kwargs: Any) -> api.TrainingJob:
    status = {"phase": "Admitted", "attempt": 2, "placement": {"gpuType": kwargs.pop("granted", "H100")}}
    return a_job(status=status, **kwargs)


def test_worker_pod_is_exactly_the_manifest_of_the_contract() -> None:
    job = admitted(name="llm", data=2, tensor=4, pipeline=2, gpu_type="Any")
    pool = a_pool("gold", priority=100, max_runtime_seconds=3600, capacityTypes=["on-demand", "reserved"])

    pods = build_worker_pods(job, pool, SETTINGS)

    assert [p["metadata"]["name"] for p in pods] == ["llm-worker-0", "llm-worker-1"]
    assert pods[1] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "llm-worker-1",
            "namespace": "team",
            "labels": {
                "strata.dev/job": "llm",
                "app.kubernetes.io/managed-by": "strata-operator",
                "strata.dev/job-kind": "TrainingJob",
                "strata.dev/worker-index": "1",
                "strata.dev/tensor-parallel-group": "1",
                "strata.dev/pool": "gold",
                "strata.dev/priority": "100",
                "strata.dev/attempt": "2",
            },
            "annotations": {
                "strata.dev/gang-size": "2",
                "strata.dev/tensor-parallel-size": "4",
                "strata.dev/gpu-types": "H100",
                "strata.dev/capacity-types": "on-demand,reserved",
                "strata.dev/capacity-preference": "none",
                "strata.dev/checkpoint-interval-seconds": "600",
                "strata.dev/precision": "bf16",
                "strata.dev/expected-runtime-seconds": "3600",
            },
            "ownerReferences": [
                {
                    "apiVersion": "strata.dev/v1alpha1",
                    "kind": "TrainingJob",
                    "name": "llm",
                    "uid": "uid-llm",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "schedulerName": "strata-scheduler",
            "schedulingGates": [{"name": "strata.dev/gang-admission"}],
            "restartPolicy": "Never",
            "hostname": "llm-worker-1",
            "subdomain": "strata-workers",
            "terminationGracePeriodSeconds": 120,
            "serviceAccountName": "strata-worker",
            "automountServiceAccountToken": True,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "runAsGroup": 1000,
                "fsGroup": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "karpenter.sh/capacity-type",
                                        "operator": "In",
                                        "values": ["on-demand", "reserved"],
                                    }
                                ]
                            }
                        ]
                    }
                }
            },
            "containers": [
                {
                    "name": "trainer",
                    "image": "registry.example/strata/workloads:1",
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-m", "strata_workloads.launch"],
                    "env": [
                        {"name": "MASTER_ADDR", "value": "llm-worker-0.strata-workers.team.svc"},
                        {"name": "MASTER_PORT", "value": "29500"},
                        {"name": "WORLD_SIZE", "value": "16"},
                        {"name": "RANK", "value": "8"},
                        {"name": "LOCAL_WORLD_SIZE", "value": "8"},
                        {"name": "NODE_RANK", "value": "1"},
                        {"name": "NNODES", "value": "2"},
                        {"name": "STRATA_DP_REPLICATE", "value": "1"},
                        {"name": "STRATA_DP_SHARD", "value": "2"},
                        {"name": "STRATA_TP", "value": "4"},
                        {"name": "STRATA_PP", "value": "2"},
                        {"name": "STRATA_EP", "value": "1"},
                        {"name": "STRATA_PP_MICROBATCHES", "value": "1"},
                        {"name": "STRATA_PP_SCHEDULE", "value": "1f1b"},
                        {"name": "STRATA_MODEL", "value": "debug"},
                        {"name": "STRATA_GLOBAL_BATCH", "value": "128"},
                        {"name": "STRATA_MICRO_BATCH", "value": "1"},
                        {"name": "STRATA_STEPS", "value": "100"},
                        {"name": "STRATA_PRECISION", "value": "bf16"},
                        {"name": "STRATA_AC", "value": "none"},
                        {"name": "STRATA_MAX_GRAD_NORM", "value": "1.0"},
                        {"name": "STRATA_LR", "value": "0.0003"},
                        {"name": "STRATA_CHECKPOINT_DIR", "value": "/checkpoints"},
                        {"name": "STRATA_CHECKPOINT_EVERY_SECONDS", "value": "600"},
                        {"name": "STRATA_CHECKPOINT_EVERY_STEPS", "value": "0"},
                        {"name": "STRATA_CHECKPOINT_KEEP", "value": "3"},
                        {"name": "STRATA_METRICS_PORT", "value": "9400"},
                        {"name": "STRATA_LOG_FORMAT", "value": "json"},
                        {"name": "STRATA_JOB", "value": "team/llm"},
                        {"name": "STRATA_ATTEMPT", "value": "2"},
                        {"name": "STRATA_PROGRESS_ANNOTATION", "value": "strata.dev/progress"},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    ],
                    "ports": [
                        {"name": "rendezvous", "containerPort": 29500},
                        {"name": "metrics", "containerPort": 9400},
                    ],
                    "resources": {"limits": {"nvidia.com/gpu": "8"}, "requests": {"nvidia.com/gpu": "8"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "volumeMounts": [
                        {"name": "checkpoints", "mountPath": "/checkpoints"},
                        {"name": "dshm", "mountPath": "/dev/shm"},
                    ],
                }
            ],
            "volumes": [
                {"name": "checkpoints", "emptyDir": {}},
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            ],
        },
    }


def test_mi300x_gang_asks_for_amd_gpus_and_tolerates_their_taint_and_spot() -> None:
    job = admitted(data=2, gpus_per_worker=1, granted="MI300X", gpu_type="Any")
    [pod, _] = build_worker_pods(job, a_pool(), SETTINGS)
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"amd.com/gpu": "1"}
    assert pod["spec"]["tolerations"] == [
        {"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "karpenter.sh/capacity-type", "operator": "Equal", "value": "spot", "effect": "NoSchedule"},
    ]
    assert pod["metadata"]["annotations"]["strata.dev/capacity-types"] == "spot,on-demand,reserved"


def test_no_spot_toleration_when_the_pool_forbids_spot() -> None:
    job = admitted(data=1)
    [pod] = build_worker_pods(job, a_pool(capacityTypes=["reserved"]), SETTINGS)
    assert [t["key"] for t in pod["spec"]["tolerations"]] == ["nvidia.com/gpu"]
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["reserved"]


def test_a_job_expected_past_its_pools_on_demand_line_asks_for_spot_and_reserved_only() -> None:
    """The pool's onDemandMaxDurationSeconds is 8 hours: a 9-hour job's workers require spot or reserved nodes and
    tell the extender so; a 2-hour job's ask for every capacity type."""
    pool = a_pool(onDemandMaxDurationSeconds=8 * 3600)

    def capacity(hours: int) -> tuple[list[str], str]:
        [pod] = build_worker_pods(admitted(scheduling={"expectedDurationSeconds": hours * 3600}), pool, SETTINGS)
        terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        required = terms["nodeSelectorTerms"][0]["matchExpressions"][0]
        assert required["key"] == "karpenter.sh/capacity-type"
        return required["values"], pod["metadata"]["annotations"][api.ANN_CAPACITY_TYPES]

    assert capacity(9) == (["spot", "reserved"], "spot,reserved")
    assert capacity(2) == (["spot", "on-demand", "reserved"], "spot,on-demand,reserved")


def test_capacity_preference_becomes_a_preferred_node_affinity() -> None:
    job = admitted(resources={"gpus": 8, "gpuType": "H100", "capacityPreference": "spot"})
    [pod] = build_worker_pods(job, a_pool(), SETTINGS)
    preferred = pod["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred == [
        {
            "weight": 100,
            "preference": {
                "matchExpressions": [{"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]}]
            },
        }
    ]
    assert pod["metadata"]["annotations"][api.ANN_CAPACITY_PREFERENCE] == "spot"


def test_the_capacity_types_admission_counted_the_gang_on_reach_the_extender_on_every_worker() -> None:
    """``status.placement.plannedCapacityTypes`` (written with Admitted) becomes the workers' annotation, which the
    extender scores first; a job admitted without a plan (no quote) carries none."""
    placement = {"gpuType": "MI300X", "plannedCapacityTypes": ["spot"]}
    planned = a_job(gpu_type="Any", status={"phase": "Admitted", "attempt": 1, "placement": placement})
    pods = build_worker_pods(planned, a_pool(), SETTINGS)
    assert {p["metadata"]["annotations"][api.ANN_PLANNED_CAPACITY_TYPES] for p in pods} == {"spot"}
    assert (
        api.ANN_PLANNED_CAPACITY_TYPES
        not in build_worker_pods(admitted(), a_pool(), SETTINGS)[0]["metadata"]["annotations"]
    )


def test_tensor_group_spanning_two_pods_labels_both_with_one_group() -> None:
    job = admitted(data=2, tensor=8, gpus_per_worker=4)
    pods = build_worker_pods(job, a_pool(), SETTINGS)
    assert [p["metadata"]["labels"][api.LABEL_TP_GROUP] for p in pods] == ["0", "0", "1", "1"]
    assert [worker_env(job, SETTINGS, i)["RANK"] for i in range(4)] == ["0", "4", "8", "12"]


@pytest.mark.parametrize(
    ("schedule", "workload"),
    [("GPipe", "gpipe"), ("1F1B", "1f1b"), ("Interleaved1F1B", "interleaved_1f1b"),
     ("InterleavedZeroBubble", "interleaved_zb"), ("ZeroBubbleV", "zbv")],
)  # fmt: skip
def test_pipeline_schedules_use_the_workloads_names(schedule: str, workload: str) -> None:
    job = admitted(
        data=1,
        tensor=8,
        pipeline=2,
        parallelism={"pipeline": 2, "tensor": 8, "microBatches": 2, "pipelineSchedule": schedule},
    )
    assert worker_env(job, SETTINGS, 0)["STRATA_PP_SCHEDULE"] == workload


def test_settings_choose_the_scheduler_and_rendezvous_port() -> None:
    settings = OperatorSettings(scheduler_name="default-scheduler", master_port=23456)
    job = admitted()
    [pod] = build_worker_pods(job, a_pool(), settings)
    assert pod["spec"]["schedulerName"] == "default-scheduler"
    assert build_service("team", settings)["spec"]["ports"] == [
        {"name": "rendezvous", "port": 23456, "targetPort": 23456}
    ]


def test_checkpoint_claim_and_resource_requests_come_from_the_spec() -> None:
    job = admitted(
        checkpoint={"persistentVolumeClaim": "ckpt", "path": "/ckpt", "intervalSteps": 50},
        resources={"gpus": 8, "gpuType": "H100", "cpuPerWorker": 16, "memoryPerWorker": "64Gi"},
    )
    [pod] = build_worker_pods(job, a_pool(), SETTINGS)
    assert pod["spec"]["volumes"][0] == {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "ckpt"}}
    container = pod["spec"]["containers"][0]
    assert container["volumeMounts"][0] == {"name": "checkpoints", "mountPath": "/ckpt"}
    assert container["resources"]["requests"] == {"nvidia.com/gpu": "8", "cpu": "16", "memory": "64Gi"}
    assert {"name": "STRATA_CHECKPOINT_EVERY_STEPS", "value": "50"} in container["env"]


def test_node_selector_of_the_spec_is_the_worker_pods_node_selector() -> None:
    plain, chosen = (
        build_worker_pods(admitted(resources=resources), a_pool(), SETTINGS)[0]
        for resources in (
            {"gpus": 8, "gpuType": "H100"},
            {"gpus": 8, "gpuType": "H100", "nodeSelector": {"team": "vision", "strata.dev/real-node": "true"}},
        )
    )
    assert "nodeSelector" not in plain["spec"]
    assert chosen["spec"]["nodeSelector"] == {"strata.dev/real-node": "true", "team": "vision"}
    assert chosen["spec"]["affinity"] == plain["spec"]["affinity"]  # added to the placement rules, not instead


def test_one_headless_service_per_namespace_publishes_every_training_worker_for_rendezvous() -> None:
    assert build_service("team", SETTINGS) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "strata-workers",
            "namespace": "team",
            "labels": {"app.kubernetes.io/managed-by": "strata-operator"},
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # the rendezvous happens before any worker is ready
            "selector": {"app.kubernetes.io/managed-by": "strata-operator", "strata.dev/job-kind": "TrainingJob"},
            "ports": [{"name": "rendezvous", "port": 29500, "targetPort": 29500}],
        },
    }
    # every worker pod is selected (its labels) and named under it (hostname.subdomain), uniquely in the namespace
    job = a_job(name="llm", data=2, tensor=8, status={"phase": "Admitted", "attempt": 1})
    [pod, _] = build_worker_pods(job, a_pool(), SETTINGS)
    assert build_service("team", SETTINGS)["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == ("llm-worker-0", "strata-workers")


def test_gpu_type_any_needs_a_grant_before_pods_can_be_built() -> None:
    job = a_job(gpu_type="Any")
    with pytest.raises(ValueError, match="gpuType is Any"):
        gang_gpu_type(job)
    assert gang_gpu_type(a_job(gpu_type="MI300X")) is GPUType.MI300X


def test_workers_run_as_one_account_per_namespace_whose_role_may_only_read_and_patch_pods() -> None:
    job = a_job(name="llm", data=2, tensor=8, status={"phase": "Admitted", "attempt": 1})
    pods = build_worker_pods(job, a_pool(), SETTINGS)
    assert {p["spec"]["serviceAccountName"] for p in pods} == {"strata-worker"}
    [(sa_path, account), (role_path, role), (binding_path, binding)] = build_worker_access("team")
    assert sa_path == "/api/v1/namespaces/team/serviceaccounts"
    assert role_path == "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles"
    assert binding_path == "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings"
    assert account["metadata"]["name"] == role["metadata"]["name"] == binding["metadata"]["name"] == "strata-worker"
    for manifest in (account, role, binding):
        assert "ownerReferences" not in manifest["metadata"]  # the namespace's: serves every job, outlives each
    # which pod and which field: the chart's ValidatingAdmissionPolicy (tests/cluster/operator/test_progress.py)
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]}]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "strata-worker"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "strata-worker", "namespace": "team"}]


def test_a_fine_tune_passes_its_directory_tokenizer_and_dataset_to_the_workers_as_the_trainer_reads_them() -> None:
    workload = {
        "image": "registry.example/strata/workloads:1",
        "modelDir": "/checkpoints/base",
        "tokenizer": "/checkpoints/base/tokenizer.json",
        "dataDir": "/checkpoints/data/chat.jsonl",
    }
    env = worker_env(a_job(workload=workload), SETTINGS, 0)
    named = {"STRATA_MODEL_DIR": "/checkpoints/base", "STRATA_TOKENIZER": "/checkpoints/base/tokenizer.json"}
    named["STRATA_DATA_DIR"] = "/checkpoints/data/chat.jsonl"
    assert {k: env[k] for k in named} == named
    assert {k.removeprefix("STRATA_").lower() for k in named} <= {f.name for f in dataclasses.fields(TrainSettings)}
    # a job from a preset on the default text sets none of them
    assert not set(named) & set(worker_env(a_job(), SETTINGS, 0))


def test_the_node_admission_emptied_for_the_gang_reaches_the_extender_on_every_worker() -> None:
    """``status.placement.plannedNode`` (rule 10, written with Admitted) becomes the workers' annotation, which
    the extender reads back as the same node and GPUs; a job admitted without one carries none."""
    placement = {"gpuType": "H100", "plannedNode": {"name": "gpu-node-3", "gpus": 8}}
    moved_for = a_job(status={"phase": "Admitted", "attempt": 1, "placement": placement})
    pods = build_worker_pods(moved_for, a_pool(), SETTINGS)
    assert {p["metadata"]["annotations"][api.ANN_PLANNED_NODE] for p in pods} == {"gpu-node-3=8"}
    contract = api.PodContract.from_metadata(pods[0]["metadata"]["labels"], pods[0]["metadata"]["annotations"])
    assert contract.planned_node == api.PlannedNode("gpu-node-3", 8)
    assert api.ANN_PLANNED_NODE not in build_worker_pods(admitted(), a_pool(), SETTINGS)[0]["metadata"]["annotations"]


@pytest.mark.parametrize("value", ["", "n1", "n1=0", "n1=-2", "n1=x", "=8"])
def test_a_malformed_planned_node_annotation_is_no_plan(value: str) -> None:
    assert api.PlannedNode.parse(value) is None


def test_a_workers_name_is_held_for_good_only_by_a_pod_that_is_not_this_jobs_nor_leaving() -> None:
    job = a_job(name="clash")

    def pod(*owners: dict[str, Any], deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": "clash-worker-0", "ownerReferences": list(owners)}
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T12:00:00Z"
        return {"metadata": meta}

    assert worker_name_held(pod(controller_reference(api.TRAINING_JOB, "clash", "uid-clash")), job) is None
    # an earlier job of the same name, deleted and submitted again: its pods go with it, the next pass makes ours
    assert worker_name_held(pod(controller_reference(api.TRAINING_JOB, "clash", "uid-before")), job) is None
    assert worker_name_held(pod(deleting=True), job) is None
    assert worker_name_held(pod(), job) == "with no controller"
    other = controller_reference(api.INFERENCE_SERVICE, "clash-worker", "uid-x")
    assert worker_name_held(pod(other), job) == "controlled by InferenceService clash-worker"


def test_an_object_is_left_by_an_earlier_resource_when_deleted_or_held_by_one_of_the_same_kind_and_name() -> None:
    mine = controller_reference(api.INFERENCE_SERVICE, "chat", "uid-now")

    def held_by(*owners: dict[str, Any], deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": "chat", "ownerReferences": list(owners)}
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T12:00:00Z"
        return {"metadata": meta}

    assert left_by_earlier(held_by(controller_reference(api.INFERENCE_SERVICE, "chat", "uid-before")), mine)
    assert left_by_earlier(held_by(deleting=True), mine)  # anyone's, on its way out
    assert not left_by_earlier(held_by(mine), mine)  # ours: written, not waited for
    assert not left_by_earlier(held_by(), mine)  # a user's own
    assert not left_by_earlier(held_by(controller_reference(api.INFERENCE_SERVICE, "shop", "uid-x")), mine)
    assert not left_by_earlier(held_by(controller_reference(api.TRAINING_JOB, "chat", "uid-y")), mine)
