"""InferenceServices on the real control plane: the operator (a real process) makes each one a Deployment, a
Service and a PodDisruptionBudget; the real controller manager runs the ReplicaSets, kube-scheduler places the
replicas on the kwok fleet's CPU nodes, and the status follows the Deployment. The pool's quota clamps the
replicas, a deleted replica is replaced, and the API server refuses bad specs naming the field.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_support import ClusterHandle, eventually
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_harness import OperatorProcess, Strata, replaced_by
from operator_manifests import a_job
from serving_builders import IMAGE, service_body

import strata_api as api
from strata_api import InferenceService
from strata_api.catalog import DEFAULT_CATALOG, load_catalog
from strata_api.serving import LABEL_ROUTER
from strata_dev.volumes import host_path_claim
from strata_operator.core import router

ROOT = Path(__file__).resolve().parents[3]
CRD = "inferenceservices.strata.dev"
SERVE_PORT = 8000
CHECKPOINT_STEP = "strata.dev/checkpoint-step"  # the annotation as a user's kubectl shows it


class Services:
    """A test's InferenceServices and what the operator made of them."""

    def __init__(self, cluster: ClusterHandle, namespace: str) -> None:
        self.namespace = namespace
        self.kubectl = cluster.kubectl
        api_client = cluster.api_client()
        self.custom = client.CustomObjectsApi(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.policy = client.PolicyV1Api(api_client)
        self.core = client.CoreV1Api(api_client)

    def apply(self, body: dict[str, Any]) -> str:
        self.custom.create_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.INFERENCE_SERVICES, body
        )
        return str(body["metadata"]["name"])

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.INFERENCE_SERVICES, name
        )
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.INFERENCE_SERVICES, name, {"spec": spec}
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.INFERENCE_SERVICES, name
        )

    def condition(self, name: str, kind: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions", ()) if c["type"] == kind), {})

    def wait_status(self, name: str, what: str, **expected: Any) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            status = self.status(name)
            return status if all(status.get(k) == v for k, v in expected.items()) else None

        try:
            return eventually(probe, 60, f"InferenceService {name}: {what}")
        except AssertionError as error:
            raise AssertionError(f"{error}; status now: {self.status(name)}") from None

    def wait_ready(self, name: str, replicas: int) -> dict[str, Any]:
        status = self.wait_status(name, f"{replicas} replicas ready", readyReplicas=replicas, desiredReplicas=replicas)
        eventually(lambda: self.condition(name, "Ready").get("status") == "True", 30, f"{name} Ready")
        return status

    def pods(self, name: str) -> list[Any]:
        selector = f"{api.LABEL_INFERENCE_SERVICE}={name}"
        items = self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        return [p for p in items if p.metadata.deletion_timestamp is None]

    def events(self, name: str) -> list[str]:
        items = self.core.list_namespaced_event(self.namespace, field_selector=f"involvedObject.name={name}").items
        return [e.reason for e in items]

    def cleanup(self) -> None:
        """Delete every service while the operator still runs (it removes kopf's finalizer), then what they owned."""
        items = self.custom.list_namespaced_custom_object(
            api.GROUP, api.VERSION, self.namespace, api.INFERENCE_SERVICES
        )["items"]
        for item in items:
            self.delete(item["metadata"]["name"])
        selector = f"{api.LABEL_JOB_KIND}={api.INFERENCE_SERVICE}"
        for deployment in self.apps.list_namespaced_deployment(self.namespace, label_selector=selector).items:
            try:
                self.apps.delete_namespaced_deployment(deployment.metadata.name, self.namespace)
            except ApiException as error:
                if error.status != 404:
                    raise
        replicas = f"{api.LABEL_INFERENCE_SERVICE}"
        for pod in self.core.list_namespaced_pod(self.namespace, label_selector=replicas).items:
            try:
                self.core.delete_namespaced_pod(pod.metadata.name, self.namespace, grace_period_seconds=0)
            except ApiException as error:
                if error.status != 404:
                    raise
        eventually(
            lambda: not self.core.list_namespaced_pod(self.namespace, label_selector=replicas).items or None,
            60,
            "the services' replica pods to be gone",
        )


@pytest.fixture(scope="module")
def serving_crd(crds: ClusterHandle) -> ClusterHandle:
    crds.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD}")
    return crds


@pytest.fixture
def services(
    serving_crd: ClusterHandle, namespace: str, operator: OperatorProcess, strata: Strata
) -> Iterator[Services]:
    helper = Services(serving_crd, namespace)
    yield helper
    helper.cleanup()


RETRY_S = 15
"""The operator's ``--model-retry-s`` where a test waits for a refused revision's next try."""


def cpu_pool(strata: Strata, cpus: int) -> str:
    return strata.pool("serve", maxGPUs=0, maxCPUs=cpus, capacityTypes=["on-demand", "reserved"])


def test_a_service_runs_its_min_replicas_behind_a_service_and_a_budget(services: Services, strata: Strata) -> None:
    pool = cpu_pool(strata, 8)
    name = services.apply(service_body("chat", pool, min_replicas=2, max_replicas=4))
    status = services.wait_ready(name, 2)

    ns = services.namespace
    assert status["url"] == f"http://chat.{ns}.svc:{SERVE_PORT}"
    deployment = services.apps.read_namespaced_deployment("chat", ns)
    assert deployment.spec.replicas == 2
    assert deployment.metadata.owner_references[0].kind == api.INFERENCE_SERVICE
    pod = deployment.spec.template.spec
    assert pod.scheduler_name == "default-scheduler"  # the operator's --scheduler-name in these tests
    assert pod.containers[0].command == ["python", "-m", "strata_workloads.serve"]
    assert pod.containers[0].readiness_probe.http_get.path == "/readyz"
    assert deployment.spec.template.metadata.labels[api.LABEL_REVISION] == status["revision"]

    service = services.core.read_namespaced_service("chat", ns)
    assert service.spec.type == "ClusterIP"
    assert [(p.port, p.target_port) for p in service.spec.ports] == [(SERVE_PORT, "http")]
    assert service.spec.selector == {LABEL_ROUTER: "chat", api.LABEL_MANAGED_BY: api.MANAGED_BY}  # the routers
    routers = services.apps.read_namespaced_deployment("chat-router", ns)
    assert routers.spec.replicas == 2
    assert routers.spec.template.spec.containers[0].command == ["python", "-m", "strata_serving.router"]
    headless = services.core.read_namespaced_service("chat-replicas", ns)  # what the routers resolve
    assert (headless.spec.cluster_ip, headless.spec.publish_not_ready_addresses) == ("None", True)
    assert headless.spec.selector == {api.LABEL_INFERENCE_SERVICE: "chat", api.LABEL_MANAGED_BY: api.MANAGED_BY}
    budget = services.policy.read_namespaced_pod_disruption_budget("chat", ns)
    assert budget.spec.max_unavailable == 1
    assert services.policy.read_namespaced_pod_disruption_budget("chat-router", ns).spec.max_unavailable == 1

    replicas = services.pods("chat")
    assert len(replicas) == 2
    assert all(p.spec.node_name for p in replicas)
    assert services.condition("chat", "QuotaLimited")["status"] == "False"

    # the pool's status counts what the replicas hold of its quota, as admission does
    def held() -> dict[str, Any] | None:
        body = strata.custom.get_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, pool)
        status = body.get("status") or {}
        return status if (status.get("cpusInUse"), status.get("inferenceServices")) == ("2", 1) else None

    eventually(held, 20, "the pool's cpusInUse 2 held by one service")


def test_a_running_service_reports_its_cost_per_hour_and_measured_startup(services: Services, strata: Strata) -> None:
    pool = cpu_pool(strata, 8)
    name = services.apply(service_body("priced", pool, min_replicas=2))
    services.wait_ready(name, 2)

    # two replicas of 1 CPU on the fleet's m7i.8xlarge nodes (32 CPUs): 2/32 of a node-hour at the catalog price
    prices = load_catalog(DEFAULT_CATALOG).prices["m7i.8xlarge"]
    expected = {round(2 * prices[c] / 32, 4) for c in ("on-demand", "reserved")}

    def figures() -> dict[str, Any] | None:
        status = services.status(name)
        return status if status.get("costPerHour") in expected and "startupSeconds" in status else None

    try:
        status = eventually(figures, 30, f"costPerHour one of {expected} and startupSeconds in status")
    except AssertionError as error:
        raise AssertionError(f"{error}; status now: {services.status(name)}") from None
    assert 0 <= status["startupSeconds"] < 60, status
    wide = services.kubectl("get", "sisvc", name, "-n", services.namespace, "-o", "wide").splitlines()
    assert {"COST/H", "STARTUP"} <= set(wide[0].split()), wide
    assert wide[1].split()[wide[0].split().index("REASON")] == "ReplicasReady", wide  # the Ready condition's


def test_replicas_no_node_takes_make_ready_say_why_in_the_schedulers_words(services: Services, strata: Strata) -> None:
    pool = cpu_pool(strata, 8)
    resources = {"gpuType": "CPU", "cpuPerReplica": "1", "memoryPerReplica": "2Gi", "nodeSelector": {"team": "none"}}
    name = services.apply(service_body("nowhere", pool, min_replicas=1, resources=resources))

    def unplaced() -> dict[str, Any] | None:
        ready = services.condition(name, "Ready")
        return ready if ready.get("reason") == "ReplicasUnschedulable" else None

    ready = eventually(unplaced, 60, "Ready False with ReplicasUnschedulable")
    assert ready["status"] == "False"
    assert ready["message"].startswith("0 of 1 replicas ready: replica nowhere-")
    assert "cannot be placed: 0/" in ready["message"]  # kube-scheduler's own count of the nodes and why
    assert "node affinity/selector" in ready["message"]
    eventually(lambda: "ReplicasUnschedulable" in services.events(name) or None, 30, "a ReplicasUnschedulable Event")


def test_replicas_no_scheduler_looks_at_make_ready_name_the_missing_scheduler_until_one_that_runs_is_named(
    services: Services, strata: Strata, operator: OperatorProcess
) -> None:
    # the operator run as on a cluster without Strata's scheduler: before, Ready said "0 of 1 replicas ready"
    flags = ("--standalone", "--scheduler-name", "absent-scheduler", "--scheduler-grace-s", "3")
    with replaced_by(operator, *flags):
        name = services.apply(service_body("unseen", cpu_pool(strata, 8), min_replicas=1))

        def waiting() -> dict[str, Any] | None:
            ready = services.condition(name, "Ready")
            return ready if ready.get("reason") == "WaitingForScheduler" else None

        ready = eventually(waiting, 60, "Ready False with WaitingForScheduler")
        assert ready["status"] == "False"
        assert ready["message"].startswith("0 of 1 replicas ready: replica unseen-")
        assert "has not been looked at by scheduler 'absent-scheduler' in 3s" in ready["message"]
        eventually(lambda: "WaitingForScheduler" in services.events(name) or None, 30, "a WaitingForScheduler Event")
        row = services.kubectl("get", "sisvc", name, "-n", services.namespace).splitlines()
        assert row[1].split()[row[0].split().index("REASON")] == "WaitingForScheduler", row
    # the fixture's operator, on --scheduler-name default-scheduler (the cluster's), as the message suggests: the
    # Deployment's template names it, so its replicas are made again for it
    eventually(lambda: services.condition(name, "Ready").get("status") == "True" or None, 60, "Ready on the scheduler")


def test_a_service_whose_routers_no_node_takes_is_not_ready_though_its_replicas_are(
    services: Services, strata: Strata, operator: OperatorProcess
) -> None:
    # the URL answers through the routers: ready replicas behind no ready router serve nobody
    with replaced_by(operator, "--standalone", "--router-node-selector", "strata.dev/no-such-label=x"):
        name = services.apply(service_body("unrouted", cpu_pool(strata, 8), min_replicas=1))

        def unrouted() -> dict[str, Any] | None:
            ready = services.condition(name, "Ready")
            return ready if ready.get("reason") == "RoutersNotReady" else None

        ready = eventually(unrouted, 60, "Ready False with RoutersNotReady")
        assert ready["message"].startswith("1 of 1 replicas ready, but 0 of 2 routers ready to take requests at http")

        def said_why() -> str | None:
            message = str(services.condition(name, "Ready").get("message"))
            return message if "cannot be placed" in message else None

        message = eventually(said_why, 30, "the scheduler's words on the routers")  # the pods' conditions follow
        assert ": router unrouted-router-" in message, message
        assert "didn't match Pod's node affinity/selector" in message, message
        assert services.status(name)["readyReplicas"] == 1
    # the fixture's operator, without the selector, moves the routers where they fit: the service becomes ready
    services.wait_ready(name, 1)
    assert services.condition(name, "Ready")["reason"] == "ReplicasReady"


def test_an_object_of_the_services_name_that_is_not_its_own_is_left_alone_and_the_status_says_so(
    services: Services, strata: Strata
) -> None:
    # a user's own Service where the service's front Service would go: the operator does not take it over
    pool = cpu_pool(strata, 8)
    ns = services.namespace
    theirs = {
        "metadata": {"name": "shop", "labels": {"app": "shop"}},
        "spec": {"selector": {"app": "shop"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    services.core.create_namespaced_service(ns, theirs)
    name = services.apply(service_body("shop", pool, min_replicas=1))
    ready = eventually(
        lambda: services.condition(name, "Ready") if services.condition(name, "Ready").get("reason") == "NameTaken"
        else None,
        30,
        "Ready False with NameTaken",
    )  # fmt: skip
    assert ready["status"] == "False"
    assert ready["message"].startswith("Service shop exists, with no controller, not this service")
    eventually(lambda: "NameTaken" in services.events(name) or None, 30, "a NameTaken Event")
    time.sleep(3)  # passes go on (resync 2 s) and still leave it alone
    kept = services.core.read_namespaced_service(name, ns)
    assert (kept.spec.selector, kept.metadata.owner_references) == ({"app": "shop"}, None)
    # once the user's Service is gone the service makes its own and is ready
    services.core.delete_namespaced_service(name, ns)
    services.wait_ready(name, 1)
    made = services.core.read_namespaced_service(name, ns)
    assert made.metadata.owner_references[0].kind == api.INFERENCE_SERVICE


def test_an_object_an_earlier_service_of_the_same_name_left_is_waited_for_not_called_taken(
    services: Services, strata: Strata
) -> None:
    # a service deleted and applied again: its old objects go with the garbage collector, here held by a finalizer
    pool = cpu_pool(strata, 8)
    ns = services.namespace
    earlier = {"apiVersion": api.API_VERSION, "kind": api.INFERENCE_SERVICE, "name": "again", "controller": True,
               "uid": "00000000-0000-4000-8000-000000000000"}  # fmt: skip
    left = {
        "metadata": {"name": "again", "ownerReferences": [earlier], "finalizers": ["strata.dev/test-hold"]},
        "spec": {"selector": {"app": "again"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    services.core.create_namespaced_service(ns, left)
    services.core.delete_namespaced_service("again", ns)  # on its way out, held by the finalizer meanwhile
    name = services.apply(service_body("again", pool, min_replicas=1))
    eventually(lambda: services.status(name).get("desiredReplicas") == 1 or None, 30, "the service reconciled")
    time.sleep(4)  # passes go on (resync 2 s)
    assert services.condition(name, "Ready").get("reason") != "NameTaken"
    assert "NameTaken" not in services.events(name)
    services.core.patch_namespaced_service("again", ns, {"metadata": {"finalizers": None}})
    services.wait_ready(name, 1)

    def front_owners() -> list[Any] | None:
        try:
            return list(services.core.read_namespaced_service(name, ns).metadata.owner_references or ()) or None
        except ApiException as error:
            if error.status == 404:
                return None  # the earlier one gone, the service's own made at its next pass
            raise

    made = eventually(front_owners, 30, "the service's own front Service")
    assert made[0].uid == services.get(name)["metadata"]["uid"]
    assert "NameTaken" not in services.events(name)


def test_the_lead_reaches_the_routers_by_their_configmap_and_a_new_one_rolls_none_of_them(
    services: Services, strata: Strata
) -> None:
    pool = cpu_pool(strata, 8)
    scaling = {"metric": "rps", "target": 5, "mode": "reactive"}  # no horizonSeconds: the lead is the measured one
    name = services.apply(service_body("lead", pool, min_replicas=1, max_replicas=3, autoscaling=scaling))
    ns = services.namespace
    services.wait_ready(name, 1)
    status = eventually(
        lambda: services.status(name) if "startupSeconds" in services.status(name) else None, 30, "startupSeconds"
    )
    measured = status["startupSeconds"]  # 0.0 on kwok's instant nodes
    lead = str(router.startup_lead(InferenceService.from_body(services.get(name)), measured))

    def published() -> dict[str, str] | None:
        data = read_config_map(services, f"{name}-router")
        return data if data == {router.LEAD_KEY: lead} else None

    try:
        eventually(published, 30, f"the router ConfigMap to hold the lead {lead}")
    except AssertionError as error:
        raise AssertionError(f"{error}; it holds {read_config_map(services, f'{name}-router')}") from None
    config = services.core.read_namespaced_config_map(f"{name}-router", ns)
    assert config.metadata.owner_references[0].kind == api.INFERENCE_SERVICE  # goes with the service
    routers = services.apps.read_namespaced_deployment(f"{name}-router", ns)
    assert routers.metadata.generation == 1  # its template never changed since it was made: no router replaced
    pod = routers.spec.template.spec
    assert [v.config_map.name for v in pod.volumes if v.config_map] == [f"{name}-router"]
    mount = next(m for m in pod.containers[0].volume_mounts if m.mount_path == router.LEAD_MOUNT)
    assert mount.sub_path is None  # a subPath mount is a copy the kubelet never refreshes
    env = router_env(services, name)
    assert env["STRATA_ROUTER_AUTOSCALE_STARTUP_FILE"] == router.LEAD_FILE
    assert "STRATA_ROUTER_AUTOSCALE_STARTUP_S" not in env  # the file is the lead's one source

    services.core.delete_namespaced_config_map(f"{name}-router", ns)  # deleted by hand: put back, still no roll
    eventually(published, 30, "the router ConfigMap made again")
    assert services.apps.read_namespaced_deployment(f"{name}-router", ns).metadata.generation == 1

    services.patch_spec(name, {"autoscaling": {**scaling, "horizonSeconds": 105}})  # the spec's horizon wins
    lead = "105"
    eventually(published, 30, "the router ConfigMap to hold the spec's horizon")
    assert services.apps.read_namespaced_deployment(f"{name}-router", ns).metadata.generation == 1


def read_config_map(services: Services, name: str) -> dict[str, str] | None:
    try:
        data = services.core.read_namespaced_config_map(name, services.namespace).data
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return dict(data or {})


def test_the_replicas_follow_replicas_min(services: Services, strata: Strata) -> None:
    pool = cpu_pool(strata, 8)
    name = services.apply(service_body("scaled", pool, min_replicas=1, max_replicas=5))
    services.wait_ready(name, 1)
    services.patch_spec(name, {"replicas": {"min": 3}})
    services.wait_ready(name, 3)
    assert services.apps.read_namespaced_deployment(name, services.namespace).spec.replicas == 3
    assert services.status(name)["lastScale"]["replicas"] == 3


def test_the_pools_quota_clamps_the_replicas_oldest_service_first(services: Services, strata: Strata) -> None:
    pool = cpu_pool(strata, 3)  # CPU replicas of 1 CPU each
    services.apply(service_body("first", pool, min_replicas=2))
    services.wait_ready("first", 2)
    services.apply(service_body("second", pool, min_replicas=2))
    services.wait_ready("second", 1)

    limited = services.condition("second", "QuotaLimited")
    assert limited["status"] == "True"
    assert limited["reason"] == "WaitingForQuota"
    assert f"pool {pool} has 1 of 3 left" in limited["message"]
    assert services.status("second")["lastScale"]["reason"] == "WaitingForQuota"
    assert "WaitingForQuota" in services.events("second")
    assert services.condition("first", "QuotaLimited")["status"] == "False"

    services.delete("first")  # its CPUs go back to the pool: the second service grows to its min
    services.wait_ready("second", 2)
    assert services.condition("second", "QuotaLimited")["status"] == "False"


def test_a_trainingjob_waits_for_quota_a_services_replicas_hold_and_is_admitted_when_it_goes(
    services: Services, strata: Strata
) -> None:
    pool = cpu_pool(strata, 3)  # the service's 2 replicas of 1 CPU leave 1; the job asks 2
    services.apply(service_body("holder", pool, min_replicas=2))
    services.wait_ready("holder", 2)
    job = a_job("trainer", pool, data=2, tensor=1)
    job["spec"]["resources"] = {"gpuType": "CPU", "workers": 2, "cpuPerWorker": "1", "memoryPerWorker": "1Gi"}
    strata.submit(job)

    queued = strata.wait_phase("trainer", "Queued")
    eventually(lambda: strata.status("trainer").get("reason") == "WaitingForQuota" or None, 30, "WaitingForQuota")
    message = strata.status("trainer")["message"]
    ns = services.namespace
    assert f"pool {pool} has 1 of 3 left; the pool's InferenceServices' replicas hold 2 of them ({ns}/holder 2)" in (
        message
    ), queued
    assert strata.live_pods("trainer") == []

    services.delete("holder")  # its replicas' CPUs go back to the pool
    strata.wait_phase("trainer", "Admitted", "Running")


def router_env(services: Services, name: str) -> dict[str, str]:
    routers = services.apps.read_namespaced_deployment(f"{name}-router", services.namespace)
    return {e.name: e.value for e in routers.spec.template.spec.containers[0].env}


def deployment_revision(services: Services, name: str) -> str | None:
    try:
        deployment = services.apps.read_namespaced_deployment(name, services.namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return str(deployment.metadata.annotations[api.LABEL_REVISION])


def test_a_canary_runs_the_new_revision_beside_the_stable_one_then_is_promoted(
    services: Services, strata: Strata
) -> None:
    pool = cpu_pool(strata, 8)
    name = services.apply(service_body("llm", pool, min_replicas=4, rollout={"canaryPercent": 20}))
    old = services.wait_ready(name, 4)["revision"]
    ns = services.namespace

    services.patch_spec(name, {"model": {"preset": "small"}})  # a new revision, with 20% of the requests
    status = services.wait_status(name, "a canary of 1 beside 4", desiredReplicas=5, readyReplicas=5)
    new = status["revision"]
    assert new != old
    assert (status["stableRevision"], status["canaryRevision"], status["canaryReplicas"]) == (old, new, 1)
    stable = services.apps.read_namespaced_deployment(name, ns)
    assert (stable.spec.replicas, deployment_revision(services, name)) == (4, old)  # its template untouched
    env = {e.name: e.value for e in stable.spec.template.spec.containers[0].env}
    assert env["STRATA_SERVE_MODEL"] == "debug"
    trial = services.apps.read_namespaced_deployment(f"{name}-canary", ns)
    assert (trial.spec.replicas, deployment_revision(services, f"{name}-canary")) == (1, new)
    env = {e.name: e.value for e in trial.spec.template.spec.containers[0].env}
    assert env["STRATA_SERVE_MODEL"] == "small"
    headless = services.core.read_namespaced_service(f"{name}-canary-replicas", ns)
    assert headless.spec.selector[api.LABEL_CANARY] == "true"
    routers = router_env(services, name)
    assert routers["STRATA_ROUTER_CANARY_PERCENT"] == "20"
    assert routers["STRATA_ROUTER_CANARY_DNS"] == f"{name}-canary-replicas.{ns}.svc:{SERVE_PORT}"
    assert sorted(p.metadata.labels[api.LABEL_REVISION] for p in services.pods(name)) == sorted([new] + [old] * 4)
    eventually(lambda: "CanaryStarted" in services.events(name) or None, 30, "a CanaryStarted Event")

    services.patch_spec(name, {"rollout": {"canaryPercent": 100}})  # promote
    eventually(lambda: deployment_revision(services, f"{name}-canary") is None or None, 60, "the canary gone")
    status = services.wait_status(name, "promoted", desiredReplicas=4, readyReplicas=4, stableRevision=new)
    assert "canaryRevision" not in status
    assert deployment_revision(services, name) == new
    eventually(
        lambda: sorted(p.metadata.labels[api.LABEL_REVISION] for p in services.pods(name)) == [new] * 4 or None,
        60,
        "4 replicas of the new revision only",
    )
    assert "STRATA_ROUTER_CANARY_DNS" not in router_env(services, name)
    with pytest.raises(ApiException) as gone:
        services.core.read_namespaced_service(f"{name}-canary-replicas", ns)
    assert gone.value.status == 404
    eventually(lambda: "CanaryPromoted" in services.events(name) or None, 30, "a CanaryPromoted Event")


def test_a_canary_is_rolled_back_when_the_template_returns_to_the_stable_one(
    services: Services, strata: Strata
) -> None:
    pool = cpu_pool(strata, 8)
    name = services.apply(service_body("back", pool, min_replicas=2, rollout={"canaryPercent": 50}))
    old = services.wait_ready(name, 2)["revision"]
    services.patch_spec(name, {"model": {"preset": "small"}})
    services.wait_status(name, "a canary of 1 beside 2", desiredReplicas=3, canaryReplicas=1)

    services.patch_spec(name, {"model": {"preset": "debug"}})  # back to the stable revision's template
    eventually(lambda: deployment_revision(services, f"{name}-canary") is None or None, 60, "the canary gone")
    status = services.wait_status(name, "rolled back", desiredReplicas=2, readyReplicas=2, revision=old)
    assert (status["stableRevision"], "canaryRevision" in status) == (old, False)
    eventually(lambda: "CanaryRolledBack" in services.events(name) or None, 30, "a CanaryRolledBack Event")


def test_a_canary_keeps_the_stable_revision_when_its_deployment_is_edited_or_deleted_by_hand(
    services: Services, strata: Strata
) -> None:
    pool = cpu_pool(strata, 8)
    name = services.apply(service_body("keep", pool, min_replicas=2, rollout={"canaryPercent": 50}))
    old = services.wait_ready(name, 2)["revision"]
    ns = services.namespace
    services.patch_spec(name, {"model": {"preset": "small"}})  # the spec now holds the canary's template
    new = services.wait_status(name, "a canary of 1 beside 2", desiredReplicas=3, canaryReplicas=1)["revision"]

    def stable_model() -> tuple[str, str | None, str] | None:
        try:
            stable = services.apps.read_namespaced_deployment(name, ns)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        env = {e.name: e.value for e in stable.spec.template.spec.containers[0].env}
        return stable.metadata.uid, env.get("STRATA_SERVE_MODEL"), stable.metadata.annotations[api.LABEL_REVISION]

    first = stable_model()
    assert first is not None
    assert first[1:] == ("debug", old)
    container = services.apps.read_namespaced_deployment(name, ns).spec.template.spec.containers[0].name
    edit = {"name": container, "env": [{"name": "STRATA_SERVE_MODEL", "value": "small"}]}
    services.apps.patch_namespaced_deployment(name, ns, {"spec": {"template": {"spec": {"containers": [edit]}}}})
    eventually(lambda: (stable_model() or ("", "", ""))[1] == "debug" or None, 60, "the hand edit undone")
    eventually(lambda: "StableRestored" in services.events(name) or None, 30, "a StableRestored Event")

    services.apps.delete_namespaced_deployment(name, ns)

    def recreated() -> bool | None:
        seen = stable_model()
        return (seen is not None and seen[0] != first[0] and seen[1:] == ("debug", old)) or None

    eventually(recreated, 60, "the stable Deployment recreated from the stable revision, not from the spec's")
    status = services.wait_status(name, "the canary still beside the stable revision", readyReplicas=3)
    assert (status["stableRevision"], status["canaryRevision"]) == (old, new)
    assert deployment_revision(services, f"{name}-canary") == new
    eventually(
        lambda: (
            sorted(p.metadata.labels[api.LABEL_REVISION] for p in services.pods(name)) == sorted([old, old, new])
            or None
        ),
        60,
        "2 stable replicas and the canary's",
    )


def test_a_deleted_replica_is_replaced(services: Services, strata: Strata) -> None:
    pool = cpu_pool(strata, 8)
    name = services.apply(service_body("resilient", pool, min_replicas=2))
    services.wait_ready(name, 2)
    victim = services.pods(name)[0].metadata.name
    services.core.delete_namespaced_pod(victim, services.namespace, grace_period_seconds=0)

    def replaced() -> list[str] | None:
        names = [p.metadata.name for p in services.pods(name)]
        return names if len(names) == 2 and victim not in names else None

    eventually(replaced, 60, "a new replica in place of the deleted one")
    services.wait_ready(name, 2)


def test_a_deleted_service_or_budget_comes_back(services: Services, strata: Strata) -> None:
    pool = cpu_pool(strata, 8)
    name = services.apply(service_body("kept", pool))
    services.wait_ready(name, 1)
    ns = services.namespace
    services.core.delete_namespaced_service(name, ns)
    services.policy.delete_namespaced_pod_disruption_budget(name, ns)

    def service_again() -> str | None:
        try:
            service = services.core.read_namespaced_service(name, ns)
            services.policy.read_namespaced_pod_disruption_budget(name, ns)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return str(service.metadata.uid)

    eventually(service_again, 30, "the Service and the budget to be made again")


def test_a_service_of_a_missing_trainingjob_starts_nothing_and_says_why(services: Services, strata: Strata) -> None:
    pool = cpu_pool(strata, 8)
    name = services.apply(service_body("orphan", pool, model={"trainingJob": "no-such-job"}))
    services.wait_status(name, "no replica", desiredReplicas=0)
    model = eventually(lambda: services.condition(name, "ModelAvailable") or None, 30, "ModelAvailable")
    assert model["status"] == "False"
    assert model["reason"] == "TrainingJobNotFound"
    assert "spec.model.trainingJob: TrainingJob no-such-job does not exist" in model["message"]
    assert services.condition(name, "Ready")["status"] == "False"
    assert services.pods(name) == []
    eventually(lambda: "TrainingJobNotFound" in services.events(name) or None, 30, "an Event naming the reason")


def crash_looping(exit_code: int, now: str) -> dict[str, Any]:
    """A replica's status as the kubelet reports it when its server exits ``exit_code`` at every start (restart
    policy Always: the pod stays Running, not ready, its container waiting in CrashLoopBackOff after the last
    termination). kwok plays no restarts, so the test writes it, as the kubelet would."""
    return {
        "conditions": [
            {"type": "Ready", "status": "False", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "False", "lastTransitionTime": now},
        ],
        "containerStatuses": [
            {
                "name": "server",
                "image": IMAGE,
                "imageID": "",
                "ready": False,
                "started": False,
                "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": exit_code, "reason": "Error", "finishedAt": now}},
            }
        ],
    }


def test_a_model_the_replicas_refuse_stops_them_instead_of_a_crash_loop_and_they_try_again_later(
    services: Services, strata: Strata, operator: OperatorProcess
) -> None:
    operator.stop()  # the same operator with a short stop before the next try
    operator.flags = (*operator.flags, "--model-retry-s", str(RETRY_S))
    operator.start()
    pool = cpu_pool(strata, 8)
    name = services.apply(service_body("refused", pool, min_replicas=2, model={"path": "/models/missing"}))
    services.wait_ready(name, 2)  # kwok's pods start whatever the path: the servers' exits are written below
    ns = services.namespace
    now = api.format_time(datetime.now(UTC))
    for pod in services.pods(name):  # what spec.model.path missing makes of every replica: exit 3, over and over
        services.core.patch_namespaced_pod_status(pod.metadata.name, ns, {"status": crash_looping(3, now)})

    eventually(
        lambda: services.condition(name, "ModelAvailable").get("reason") == "NoUsableCheckpoint" or None,
        30,
        "ModelAvailable NoUsableCheckpoint",
    )
    model = services.condition(name, "ModelAvailable")
    assert model["status"] == "False"
    assert "exited with code 3, restarted 3 times: no usable checkpoint" in model["message"]
    assert "spec.model.path" in model["message"]
    assert "refused once, so its replicas are stopped rather than left to crash-loop" in model["message"]
    assert services.condition(name, "Ready")["reason"] == "NoUsableCheckpoint"
    backoff = services.status(name)["modelBackoff"]
    assert (backoff["tries"], backoff["reason"], backoff["revision"]) == (
        1,
        "NoUsableCheckpoint",
        revision(services, name),
    )
    # no crash loop: the Deployment keeps no replica of the refused revision until the next try
    assert services.apps.read_namespaced_deployment(name, ns).spec.replicas == 0
    eventually(lambda: not services.pods(name) or None, 30, "the refused replicas gone")
    assert services.status(name)["desiredReplicas"] == 2  # what it asks for once the model loads
    eventually(lambda: "NoUsableCheckpoint" in services.events(name) or None, 30, "a Warning Event")

    # the volume fixed meanwhile: at retryAt the replicas start again, load the model (kwok's pods turn ready) and
    # the refusal is over
    eventually(lambda: services.apps.read_namespaced_deployment(name, ns).spec.replicas == 2 or None, 30, "a try")
    eventually(lambda: services.condition(name, "ModelAvailable").get("status") == "True" or None, 60, "recovery")
    services.wait_ready(name, 2)
    assert "modelBackoff" not in services.status(name)


def revision(services: Services, name: str) -> str:
    return str(services.status(name)["revision"])


def test_a_service_of_a_trainingjob_serves_its_checkpoint_volume(services: Services, strata: Strata) -> None:
    pool = cpu_pool(strata, 8)
    checkpoint = {"path": "/ckpt", "persistentVolumeClaim": "train-ckpt"}
    workload = {"image": "registry.invalid/strata/workloads:test", "preset": "debug-dense"}
    # never runs: only its volume and its preset count
    strata.submit(a_job("train", pool, suspend=True, checkpoint=checkpoint, workload=workload))
    name = services.apply(service_body("served", pool, model={"trainingJob": "train"}))
    canaried = services.apply(
        service_body("canaried", pool, model={"trainingJob": "train"}, rollout={"canaryPercent": 50})
    )
    model = eventually(lambda: services.condition(name, "ModelAvailable") or None, 60, "ModelAvailable")
    assert (model["status"], model["reason"]) == ("True", "Checkpoint")
    assert "TrainingJob train (claim train-ckpt, /ckpt), on the job's preset debug-dense" in model["message"]
    pod = services.apps.read_namespaced_deployment(name, services.namespace).spec.template.spec
    volume = pod.volumes[0].persistent_volume_claim
    assert (volume.claim_name, volume.read_only) == ("train-ckpt", True)
    mount = pod.containers[0].volume_mounts[0]
    assert (mount.mount_path, mount.read_only) == ("/ckpt", True)
    env = {e.name: e.value for e in pod.containers[0].env}
    assert env["STRATA_SERVE_CHECKPOINT"] == "/ckpt"
    assert env["STRATA_SERVE_MODEL"] == "debug-dense"  # the job's preset, not the service's default (debug)
    template = services.apps.read_namespaced_deployment(name, services.namespace).spec.template
    before = template.metadata.labels[api.LABEL_REVISION]
    assert CHECKPOINT_STEP not in (template.metadata.annotations or {})  # no step reported yet

    # the job reports a checkpoint (as its workers' progress does), then a newer one: each time the replicas roll to
    # a revision naming its step, with a Rolling Event of its own (both under the service's one spec generation); a
    # service with canaryPercent runs each newer step as its canary, each with a CanaryStarted Event of its own
    def roll_to(step: int, rolls: int, before: str) -> str:
        strata.custom.patch_namespaced_custom_object_status(
            api.GROUP,
            api.VERSION,
            strata.namespace,
            api.TRAINING_JOBS,
            "train",
            {"status": {"lastCheckpoint": {"step": step}}},
        )

        def template_at_step() -> Any:
            template = services.apps.read_namespaced_deployment(name, services.namespace).spec.template
            return template if (template.metadata.annotations or {}).get(CHECKPOINT_STEP) == str(step) else None

        def messages(service: str, reason: str) -> list[str] | None:
            selector = f"involvedObject.name={service},reason={reason}"
            items = services.core.list_namespaced_event(services.namespace, field_selector=selector).items
            return [e.message for e in items] if len(items) == rolls else None

        template = eventually(template_at_step, 60, f"the replicas' template to name checkpoint step {step}")
        revision: str = template.metadata.labels[api.LABEL_REVISION]
        assert revision != before
        said = f"step {step} by its status.lastCheckpoint"  # the status is written after the Deployment, in one pass
        eventually(lambda: services.condition(name, "ModelAvailable")["message"].endswith(said) or None, 30, said)
        rolling = eventually(lambda: messages(name, "Rolling"), 30, f"{rolls} Rolling Events")
        assert any(m.startswith(f"revision {before} -> {revision}: ") and m.endswith(said) for m in rolling), rolling
        started = eventually(lambda: messages(canaried, "CanaryStarted"), 30, f"{rolls} CanaryStarted Events")
        assert sum(m.endswith(said) for m in started) == 1, started
        return revision

    roll_to(20, 2, roll_to(10, 1, before))


def test_a_newer_checkpoint_waits_until_the_replicas_finish_their_roll_to_the_one_before(
    services: Services, strata: Strata
) -> None:
    # a job that checkpoints more often than a replica warms up: without the wait, each step would replace the
    # starting replicas of the one before, and the service would never leave its first step
    pool = cpu_pool(strata, 8)
    volume = bound_claim(services, "train-ckpt")
    try:
        checkpoint = {"path": "/ckpt", "persistentVolumeClaim": "train-ckpt"}
        workload = {"image": "registry.invalid/strata/workloads:test", "preset": "debug-dense"}
        strata.submit(a_job("train", pool, suspend=True, checkpoint=checkpoint, workload=workload))
        name = services.apply(service_body("followed", pool, model={"trainingJob": "train"}))
        services.wait_ready(name, 1)
        roll_twice_while_the_first_roll_is_held(services, strata, name)
    finally:
        services.core.delete_persistent_volume(volume)  # gone with the claim (pv-protection), with the namespace


def bound_claim(services: Services, claim: str) -> str:
    """A claim in the test's namespace bound to a volume made for it (a host path no pod of the kwok fleet
    mounts), so that replicas mounting it are placed; the volume's name, to delete."""
    ns = services.namespace
    volume, body = host_path_claim(ns, claim, f"/tmp/strata-tests/{ns}-{claim}")
    services.core.create_persistent_volume(volume)
    services.core.create_namespaced_persistent_volume_claim(ns, body)
    eventually(
        lambda: services.core.read_namespaced_persistent_volume_claim(claim, ns).status.phase == "Bound" or None,
        60,
        f"claim {claim} to be bound",
    )
    return str(volume["metadata"]["name"])


def roll_twice_while_the_first_roll_is_held(services: Services, strata: Strata, name: str) -> None:
    ns = services.namespace

    def report_checkpoint(step: int) -> None:
        strata.custom.patch_namespaced_custom_object_status(
            api.GROUP, api.VERSION, ns, api.TRAINING_JOBS, "train", {"status": {"lastCheckpoint": {"step": step}}}
        )

    def template_step() -> str | None:
        template = services.apps.read_namespaced_deployment(name, ns).spec.template
        return (template.metadata.annotations or {}).get(CHECKPOINT_STEP)

    # the roll to step 10 cannot finish while a ResourceQuota admits no pod beyond those running (the surge's new
    # replica is refused), as a replica warming up for minutes would keep it going
    running = [
        p
        for p in services.core.list_namespaced_pod(ns).items
        if p.status.phase not in ("Succeeded", "Failed") and p.metadata.deletion_timestamp is None
    ]
    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="no-more-pods"),
        spec=client.V1ResourceQuotaSpec(hard={"pods": str(len(running))}),
    )
    services.core.create_namespaced_resource_quota(ns, quota)
    try:
        eventually(
            lambda: (services.core.read_namespaced_resource_quota("no-more-pods", ns).status.used or {}).get("pods"),
            30,
            "the quota controller to count the namespace's pods",
        )
        report_checkpoint(10)
        eventually(lambda: template_step() == "10" or None, 60, "the replicas' template to name step 10")
        report_checkpoint(20)
        waiting = "; the replicas finish their roll to step 10 before they roll to it"
        message = eventually(
            lambda: (m := services.condition(name, "ModelAvailable").get("message", "")).endswith(waiting) and m,
            60,
            "ModelAvailable to say that step 20 waits for the roll to step 10",
        )
        assert "step 20 by its status.lastCheckpoint" in message, message
        deployment = services.apps.read_namespaced_deployment(name, ns)
        assert (deployment.status.updated_replicas or 0) < 1, deployment.status  # the roll to 10 is under way
        assert template_step() == "10"
        time.sleep(3)  # a few passes of the operator later, still
        assert template_step() == "10"
    finally:
        services.core.delete_namespaced_resource_quota("no-more-pods", ns)
    # the roll to step 10 finishes, then the replicas roll to 20
    eventually(lambda: template_step() == "20" or None, 120, "the replicas' template to name step 20")
    said = "step 20 by its status.lastCheckpoint"
    eventually(lambda: services.condition(name, "ModelAvailable")["message"].endswith(said) or None, 30, said)
    services.wait_ready(name, 1)


# --- what the API server refuses ---


def setter(path: str, value: Any) -> Any:
    def edit(body: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = body["spec"]
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    return edit


INVALID_SERVICES: list[tuple[str, Any, str]] = [
    ("min-above-max", setter("replicas", {"min": 3, "max": 2}), "spec.replicas.min must be at most spec.replicas.max"),
    ("negative-min", setter("replicas.min", -1), "spec.replicas.min"),
    ("canary-above-100", setter("rollout.canaryPercent", 101), "spec.rollout.canaryPercent"),
    ("canary-negative", setter("rollout.canaryPercent", -1), "spec.rollout.canaryPercent"),
    ("no-surge-no-unavailable", setter("rollout.maxSurge", 0), "spec.rollout.maxSurge and spec.rollout.maxUnavailable"),
    (
        "int8-weight-in-fp32",
        setter("model.quantization", "int8-weight"),
        "spec.model.quantization int8-weight needs spec.model.precision bf16",
    ),
    ("unknown-quantization", setter("model.quantization", "int4"), "spec.model.quantization"),
    ("unknown-precision", setter("model.precision", "fp16"), "spec.model.precision"),
    (
        "job-and-path",
        setter("model", {"trainingJob": "train", "path": "/models/debug"}),
        "spec.model.trainingJob and spec.model.path are exclusive",
    ),
    (
        "claim-without-path",
        setter("model", {"persistentVolumeClaim": "models"}),
        "spec.model.persistentVolumeClaim needs spec.model.path",
    ),
    ("relative-path", setter("model.path", "models/debug"), "spec.model.path must be a clean absolute path"),
    (
        "job-and-model-dir",
        setter("model", {"trainingJob": "train", "modelDir": "/models/llama"}),
        "spec.model.modelDir and spec.model.tokenizer come from the TrainingJob",
    ),
    (
        "model-dir-off-the-claim",
        setter("model", {"path": "/models/tuned", "persistentVolumeClaim": "models", "modelDir": "/base/llama"}),
        "spec.model.modelDir and spec.model.tokenizer must lie on the claim",
    ),
    ("relative-model-dir", setter("model.modelDir", "models/llama"), "spec.model.modelDir must be a clean absolute"),
    ("path-in-proc", setter("model.path", "/proc/model"), "spec.model.path must not be a system directory"),
    ("cpu-without-cpus", lambda b: b["spec"]["resources"].pop("cpuPerReplica"), "spec.resources.cpuPerReplica is"),
    ("cpu-with-gpus", setter("resources.gpusPerReplica", 1), "spec.resources.gpusPerReplica must not be set"),
    ("unknown-gpu-type", setter("resources.gpuType", "A100"), "spec.resources.gpuType"),
    ("zero-cpu", setter("resources.cpuPerReplica", "0"), "spec.resources.cpuPerReplica must be a positive quantity"),
    ("unknown-metric", setter("autoscaling", {"metric": "qps", "target": 5}), "spec.autoscaling.metric"),
    ("zero-target", setter("autoscaling", {"target": 0}), "spec.autoscaling.target"),
    ("unknown-mode", setter("autoscaling", {"target": 5, "mode": "magic"}), "spec.autoscaling.mode"),
    ("bad-image", setter("workload.image", "ghcr.io/Strata/x"), "spec.workload.image must be an image reference"),
    ("missing-pool", lambda b: b["spec"].pop("pool"), "spec.pool"),
    ("batch-of-zero", setter("model.batching", {"maxBatch": 0}), "spec.model.batching.maxBatch"),
    ("unknown-batching", setter("model.batching", {"mode": "dynamic"}), "spec.model.batching.mode"),
    ("negative-warm-up", setter("model.warmupRequests", -1), "spec.model.warmupRequests"),
    # what the API server then refused in the replicas' Deployment, the operator retrying it without end
    ("node-selector-bad-key", setter("resources.nodeSelector", {"my team": "ml"}), "spec.resources.nodeSelector keys"),
    ("node-selector-bad-value", setter("resources.nodeSelector", {"team": "m l"}), "nodeSelector values must be"),
    ("memory-int-past-1pi", setter("resources.memoryPerReplica", 2**62), "spec.resources.memoryPerReplica must be"),
    # what the operator then ignored: without replicas.max the count stays at min
    ("autoscaling-without-max", setter("autoscaling", {"target": 5}), "spec.autoscaling needs spec.replicas.max"),
]


def field_message(error: ApiException) -> str:
    """The API server's message, once each cause of the refusal is known to name a field."""
    status = json.loads(error.body)
    causes = [c for c in status["details"]["causes"] if "some validation rules were not checked" not in c["message"]]
    assert causes, status["message"]
    assert all(c.get("field") not in (None, "", "<nil>") for c in causes), status["message"]
    return str(status["message"])


@pytest.fixture
def refusals(serving_crd: ClusterHandle, namespace: str) -> Services:
    return Services(serving_crd, namespace)


def test_the_valid_baseline_is_accepted_and_defaulted(refusals: Services) -> None:
    refusals.apply(service_body("valid", "pool"))
    spec = refusals.get("valid")["spec"]
    assert spec["model"] == {
        "preset": "debug",
        "precision": "fp32",
        "quantization": "none",
        "compile": False,
        "warmupRequests": 0,
        "batching": {"maxBatch": 8, "maxWaitMs": 5, "mode": "continuous"},
    }
    assert spec["rollout"] == {"maxSurge": 1, "maxUnavailable": 0, "canaryPercent": 0}
    assert spec["replicas"] == {"min": 1}
    refusals.delete("valid")


@pytest.mark.parametrize(("case", "edit", "names"), INVALID_SERVICES, ids=[c[0] for c in INVALID_SERVICES])
def test_an_invalid_service_is_refused_naming_the_field(refusals: Services, case: str, edit: Any, names: str) -> None:
    body = copy.deepcopy(service_body(case, "pool"))
    edit(body)
    with pytest.raises(ApiException) as caught:
        refusals.apply(body)
    assert caught.value.status == 422, caught.value.body
    assert names in field_message(caught.value)


def test_a_name_too_long_for_the_canary_service_is_refused(refusals: Services) -> None:
    # the canary's headless Service <name>-canary-replicas must fit in a 63-character DNS label
    refusals.apply(service_body("s" * 47, "pool"))
    with pytest.raises(ApiException) as caught:
        refusals.apply(service_body("s" * 48, "pool"))
    assert caught.value.status == 422
    assert "metadata.name must be at most 47 characters" in str(caught.value.body)
    refusals.delete("s" * 47)


@pytest.mark.parametrize("name", ["chat-router", "chat-replicas", "chat-canary", "strata-workers"])
def test_a_name_that_would_take_another_services_objects_is_refused(refusals: Services, name: str) -> None:
    # service chat's router Deployment is chat-router, its headless Service chat-replicas, its canary chat-canary;
    # strata-workers is the TrainingJobs' headless Service in the namespace
    with pytest.raises(ApiException) as caught:
        refusals.apply(service_body(name, "pool"))
    assert caught.value.status == 422
    assert "metadata.name must not end in -router, -replicas or -canary, nor be strata-workers" in str(
        caught.value.body
    )


EXAMPLES = sorted(
    [*(ROOT / "examples" / "inferenceservices").glob("*.yaml"), *(ROOT / "examples" / "finetune").glob("*.yaml")]
)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_shipped_example_is_accepted(serving_crd: ClusterHandle, namespace: str, path: Path) -> None:
    assert {d["kind"] for d in yaml.safe_load_all(path.read_text())} <= {
        api.INFERENCE_SERVICE,
        api.TRAINING_JOB,
        api.RESOURCE_POOL,
    }
    serving_crd.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path))


def test_kubectl_explain_and_get_read_well(refusals: Services) -> None:
    cluster = refusals
    text = cluster.kubectl("explain", "inferenceservices.spec.model.quantization")
    assert "needs precision bf16" in text
    assert "sisvc" in cluster.kubectl("api-resources", "--api-group=strata.dev")
    refusals.apply(service_body("listed", "pool"))
    header = cluster.kubectl("get", "sisvc", "-n", refusals.namespace).splitlines()[0]
    assert header.split() == ["NAME", "READY", "DESIRED", "REASON", "URL", "REVISION", "AGE"]
