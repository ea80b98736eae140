"""A worker's progress report, end to end: the workload's reporter, with a token of the namespace's worker
ServiceAccount bound to the worker's own pod (as the kubelet mounts it), annotates its pod, and the operator turns
that into the job's status.lastCheckpoint. The chart's ValidatingAdmissionPolicy (installed by the fixtures as the
chart ships it) keeps that token to its own pod and to the progress annotation: not the other worker's pod, not
a bystander's, not a label, another annotation or the scheduling gates of its own pod."""

from __future__ import annotations

import base64
import ssl
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_support import eventually
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_harness import OperatorProcess, Strata
from operator_manifests import a_job

import strata_api as api
from strata_operator.core.pods import WORKER_SERVICE_ACCOUNT
from strata_workloads.progress import ProgressReporter


class Server:
    """The test cluster's address and CA, from the admin kubeconfig (the credentials are not used)."""

    def __init__(self, kubeconfig: Path) -> None:
        config = yaml.safe_load(kubeconfig.read_text())
        cluster: dict[str, Any] = config["clusters"][0]["cluster"]
        self.url = str(cluster["server"])
        if "certificate-authority-data" in cluster:
            self.ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        else:
            self.ca = Path(cluster["certificate-authority"]).read_text()

    def reporter(self, token: str, namespace: str, pod: str) -> ProgressReporter:
        """The workload's reporter, as a worker in ``pod`` would run it, with ``token``."""
        context = ssl.create_default_context(cadata=self.ca)
        return ProgressReporter(self.url, namespace, pod, api.ANN_PROGRESS, context, token=token)

    def core(self, token: str, folder: Path) -> client.CoreV1Api:
        """A client that acts with ``token`` alone."""
        ca = folder / "ca.crt"
        ca.write_text(self.ca)
        configuration = client.Configuration()
        configuration.host = self.url
        configuration.ssl_ca_cert = str(ca)
        configuration.api_key = {"authorization": f"Bearer {token}"}
        return client.CoreV1Api(client.ApiClient(configuration))


def worker_token(strata: Strata, pod: Any | None) -> str:
    """A token of the namespace's worker account, bound to ``pod`` as the kubelet's projected token is (or bound
    to nothing, as a token someone requested by hand)."""
    spec: dict[str, Any] = {"expirationSeconds": 3600}
    if pod is not None:
        spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": pod.metadata.name, "uid": pod.metadata.uid}
    answer = strata.core.create_namespaced_service_account_token(
        WORKER_SERVICE_ACCOUNT, strata.namespace, {"spec": spec}
    )
    return str(answer.status.token)


def forbidden(call: Callable[[], Any]) -> str:
    """The API server's message when it refuses ``call`` with 403; fails the test if it does not."""
    with pytest.raises(ApiException) as refused:
        call()
    assert refused.value.status == 403, refused.value
    return str(refused.value.body)


def test_a_worker_reports_its_checkpoint_with_a_token_bound_to_its_own_pod(
    operator: OperatorProcess, strata: Strata
) -> None:
    pool = strata.pool("team", maxGPUs=64)
    strata.submit(a_job("reporting", pool, data=2, tensor=8))
    strata.wait_phase("reporting", "Running")
    pods = strata.pods("reporting")
    assert {p.spec.service_account_name for p in pods} == {WORKER_SERVICE_ACCOUNT}
    account = strata.core.read_namespaced_service_account(WORKER_SERVICE_ACCOUNT, strata.namespace)
    assert not account.metadata.owner_references  # the namespace's, not the job's: outlives it, serves every job

    server = Server(strata.cluster.kubeconfig)
    own = server.reporter(worker_token(strata, pods[0]), strata.namespace, "reporting-worker-0")
    assert own.report(step=130, checkpoint_step=120)

    def reported() -> dict[str, Any] | None:
        status = strata.status("reporting")
        return status if status.get("lastCheckpoint", {}).get("step") == 120 else None

    status = eventually(reported, 30, "status.lastCheckpoint from the worker's report")
    assert status["lastCheckpoint"]["time"]
    eventually(lambda: strata.status("reporting").get("progress") == {"step": 130}, 30, "status.progress")


def test_a_workers_token_can_touch_nothing_but_its_own_pods_progress(operator: OperatorProcess, strata: Strata) -> None:
    pool = strata.pool("team", maxGPUs=64)
    strata.submit(a_job("guarded", pool, data=2, tensor=8))
    strata.wait_phase("guarded", "Running")
    first, second = strata.pods("guarded")
    bystander: dict[str, Any] = {
        "metadata": {"name": "bystander"},
        "spec": {"containers": [{"name": "c", "image": "x.invalid/c"}]},
    }
    strata.core.create_namespaced_pod(strata.namespace, bystander)
    server, namespace = Server(strata.cluster.kubeconfig), strata.namespace
    token = worker_token(strata, first)
    value = ProgressReporter.value(7, 5, datetime(2026, 1, 1, tzinfo=UTC))
    progress = {"metadata": {"annotations": {api.ANN_PROGRESS: value}}}
    try:
        with tempfile.TemporaryDirectory() as folder:
            worker = server.core(token, Path(folder))
            # the other worker's pod and a bystander's: refused by the policy (RBAC alone would allow both)
            message = forbidden(lambda: worker.patch_namespaced_pod(second.metadata.name, namespace, progress))
            assert f'this token belongs to pod \\"{first.metadata.name}\\"' in message
            forbidden(lambda: worker.patch_namespaced_pod("bystander", namespace, progress))
            assert server.reporter(token, namespace, "bystander").patch(value) == 403
            # its own pod: anything but the progress annotation is refused
            for change in (
                {"metadata": {"labels": {api.LABEL_ATTEMPT: "9"}}},
                {"metadata": {"annotations": {api.ANN_GANG_SIZE: "1"}}},
                {"metadata": {"annotations": {"someone.else/note": "x"}}},
                {"metadata": {"finalizers": ["example.com/hold"]}},
                {"spec": {"activeDeadlineSeconds": 5}},
            ):
                message = forbidden(partial(worker.patch_namespaced_pod, first.metadata.name, namespace, change))
                assert "may change only the strata.dev/progress annotation" in message, change
            # no creating or deleting pods, and no pod status (RBAC)
            forbidden(lambda: worker.delete_namespaced_pod(second.metadata.name, namespace))
            mine: dict[str, Any] = {**bystander, "metadata": {"name": "mine"}}
            forbidden(lambda: worker.create_namespaced_pod(namespace, mine))
            forbidden(lambda: worker.patch_namespaced_pod_status(first.metadata.name, namespace, {"status": {}}))
            # a token of the same account that is bound to no pod may patch no pod at all
            unbound = server.core(worker_token(strata, None), Path(folder))
            forbidden(lambda: unbound.patch_namespaced_pod(first.metadata.name, namespace, progress))
            # and its own progress, through the very same client, goes through
            worker.patch_namespaced_pod(first.metadata.name, namespace, progress)
        assert strata.core.read_namespaced_pod(first.metadata.name, namespace).metadata.annotations[api.ANN_PROGRESS]
        for pod in (second, first):
            labels = strata.core.read_namespaced_pod(pod.metadata.name, namespace).metadata.labels
            assert labels[api.LABEL_ATTEMPT] == "1"
        assert api.ANN_PROGRESS not in (
            strata.core.read_namespaced_pod("bystander", namespace).metadata.annotations or {}
        )
    finally:
        strata.core.delete_namespaced_pod("bystander", namespace, grace_period_seconds=0)
