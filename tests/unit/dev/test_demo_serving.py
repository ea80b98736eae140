"""``make demo``'s serving chapter: the example InferenceService, applied on the real node, reads the claim
``cpu-tiny`` wrote its checkpoints to, fits the node with ``replicas.max`` replicas, and the host's operator reads
its router's decisions through the demo's port-forward. The chapter itself runs in ``make demo`` (the real node)."""

from __future__ import annotations

import yaml

import strata_api as api
from strata_dev import demo_serving
from strata_dev.demo import REAL_JOB, REAL_NAMESPACE, real_job_manifest
from strata_dev.node_config import REAL_NODE_LABEL
from strata_dev.paths import CRDS
from strata_operator.settings import OperatorSettings

IMAGE = "localhost/strata-workloads:98d3703ff5f7"


def checkpoint_path_default() -> str:
    """``spec.checkpoint.path``'s default, as the API server fills it in from the CRD."""
    crd = yaml.safe_load((CRDS / "trainingjob.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return str(spec["properties"]["checkpoint"]["properties"]["path"]["default"])


def test_the_service_serves_the_claim_and_the_folder_cpu_tiny_writes_its_checkpoints_to() -> None:
    service = demo_serving.service_manifest(IMAGE)
    claim = demo_serving.example_service()["spec"]["model"]["persistentVolumeClaim"]
    job = real_job_manifest(REAL_JOB, IMAGE, claim)

    assert job["spec"]["checkpoint"]["persistentVolumeClaim"] == service["spec"]["model"]["persistentVolumeClaim"]
    assert job["spec"]["checkpoint"].get("path", checkpoint_path_default()) == service["spec"]["model"]["path"]
    assert service["spec"]["model"]["preset"] == job["spec"]["workload"]["preset"]  # the checkpoint loads


def test_the_service_is_the_example_on_the_real_node_from_the_image_it_holds() -> None:
    example = yaml.safe_load(demo_serving.SERVICE.read_text())
    service = demo_serving.service_manifest(IMAGE)

    assert service["spec"]["workload"] == {"image": IMAGE, "imagePullPolicy": "Never"}
    assert service["spec"]["resources"]["nodeSelector"] == {REAL_NODE_LABEL: "true"}
    example["spec"]["workload"] = service["spec"]["workload"]
    example["spec"]["resources"] |= {"nodeSelector": {REAL_NODE_LABEL: "true"}, "cpuPerReplica": "400m"}
    assert service == example  # everything else is the example's


def test_every_replica_the_service_may_ask_for_and_its_router_fit_the_real_nodes_two_cpus() -> None:
    service = demo_serving.service_manifest(IMAGE)
    replica = api.cpu_millis(service["spec"]["resources"]["cpuPerReplica"])
    router = 100  # the router pod's request in millicores (strata_operator.core.router)

    assert service["spec"]["replicas"]["max"] * replica + router <= 2000


def test_the_load_is_above_what_the_fewest_replicas_take_by_more_than_the_autoscalers_tolerance() -> None:
    service = demo_serving.service_manifest(IMAGE)
    least, target = service["spec"]["replicas"]["min"], service["spec"]["autoscaling"]["target"]

    assert service["spec"]["autoscaling"]["metric"] == "rps"
    assert demo_serving.LOAD_RPS / (least * target) > 1.1  # HPA's tolerance: the router asks for one more
    assert demo_serving.LOAD_RPS / (least * target) <= (least + 1) / least  # and one more is enough


def test_the_host_operator_reads_the_example_services_router_at_the_forwarded_port() -> None:
    router_image = "localhost/strata-serving:ae2950b3d704"
    settings = OperatorSettings.from_args(demo_serving.operator_args(REAL_NAMESPACE, 18123, router_image), env={})
    name = demo_serving.example_service()["metadata"]["name"]

    assert settings.router_url(f"{REAL_NAMESPACE}/{name}", "in-cluster") == "http://127.0.0.1:18123"
    assert settings.router_url(f"{REAL_NAMESPACE}/another", "in-cluster") == "in-cluster"
    assert settings.router_replicas == 1  # a port-forward reaches one router, which counts every request
    assert settings.router_nodes == {REAL_NODE_LABEL: "true"}
    assert settings.router_image == router_image  # the serving image the node holds


def test_a_scaling_decision_reads_as_a_line_with_the_routers_ask_when_it_made_one() -> None:
    by_operator = {"replicas": 2, "reason": "MinReplicas", "message": "2 replicas: replicas.min"}
    by_router = {
        "replicas": 3,
        "requested": 3,
        "reason": "ObservedLoad",
        "mode": "predictive",
        "observedRate": 10.96,
        "message": "scale up to 3",
    }

    assert (
        demo_serving.scaling_decision(by_operator)
        == "scaling decision: 2 replicas, MinReplicas: 2 replicas: replicas.min"
    )
    assert demo_serving.scaling_decision(by_router) == (
        "scaling decision: 3 replicas, ObservedLoad (3 asked by the router, predictive, 11.0 req/s observed): "
        "scale up to 3"
    )


def test_the_checkpoints_a_replica_loaded_are_read_from_its_json_log() -> None:
    log = "\n".join(
        [
            '{"ts": 1796417400.1, "msg": "loading", "root": "/checkpoints"}',
            '{"ts": 1796417401.2, "msg": "weights loaded", "checkpoint": "/checkpoints/step-00000200"}',
            "Defaulted container replica out of: replica",
            '["weights loaded"]',
        ]
    )
    assert demo_serving.loaded_checkpoints(log) == ["/checkpoints/step-00000200"]
