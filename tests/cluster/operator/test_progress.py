"""A worker's progress report, end to end: the workload's reporter, with exactly the rights of the job's own
ServiceAccount (a token from the TokenRequest API), annotates its pod, and the operator turns that into the
job's status.lastCheckpoint. The same account cannot touch any other pod."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import yaml
from cluster_support import eventually, service_account_kubeconfig
from operator_harness import OperatorProcess, Strata
from operator_manifests import a_job

import strata_api as api
from strata_workloads.progress import ProgressReporter


def reporter_as(kubeconfig: Path, namespace: str, pod: str) -> ProgressReporter:
    """The workload's reporter, as a worker in ``pod`` would run it, with the kubeconfig's credentials."""
    config = yaml.safe_load(kubeconfig.read_text())
    cluster: dict[str, Any] = config["clusters"][0]["cluster"]
    if "certificate-authority-data" in cluster:
        context = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    else:
        context = ssl.create_default_context(cafile=cluster["certificate-authority"])
    token = config["users"][0]["user"]["token"]
    return ProgressReporter(cluster["server"], namespace, pod, api.ANN_PROGRESS, context, token=token)


def test_a_worker_reports_its_checkpoint_with_its_jobs_account_and_nothing_else(
    operator: OperatorProcess, strata: Strata, tmp_path: Path
) -> None:
    pool = strata.pool("team", maxGPUs=64)
    strata.submit(a_job("reporting", pool, data=2, tensor=8))
    strata.wait_phase("reporting", "Running")
    account = strata.core.read_namespaced_service_account("reporting-worker", strata.namespace)
    assert account.metadata.owner_references[0].name == "reporting"
    assert {p.spec.service_account_name for p in strata.pods("reporting")} == {"reporting-worker"}

    kubeconfig = service_account_kubeconfig(strata.cluster, strata.namespace, "reporting-worker", tmp_path / "kc")
    assert reporter_as(kubeconfig, strata.namespace, "reporting-worker-0").report(step=130, checkpoint_step=120)

    def reported() -> dict[str, Any] | None:
        status = strata.status("reporting")
        return status if status.get("lastCheckpoint", {}).get("step") == 120 else None

    status = eventually(reported, 30, "status.lastCheckpoint from the worker's report")
    assert status["lastCheckpoint"]["time"]
    eventually(lambda: strata.status("reporting").get("progress") == {"step": 130}, 30, "status.progress")

    bystander = {"metadata": {"name": "bystander"}, "spec": {"containers": [{"name": "c", "image": "x.invalid/c"}]}}
    strata.core.create_namespaced_pod(strata.namespace, bystander)
    try:
        elsewhere = reporter_as(kubeconfig, strata.namespace, "bystander")
        assert elsewhere.patch(ProgressReporter.value(1, 1, status_time(status))) == 403
        assert not elsewhere.report(step=1, checkpoint_step=1)  # and training would go on
    finally:
        strata.core.delete_namespaced_pod("bystander", strata.namespace, grace_period_seconds=0)


def status_time(status: dict[str, Any]) -> Any:
    parsed = api.parse_time(status["lastCheckpoint"]["time"])
    assert parsed is not None
    return parsed
