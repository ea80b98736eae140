"""Every number the operator reads from a spec or a worker is clamped or refused, never a crash (issue 18: a
maxRuntimeSeconds of 2^63-1 raised OverflowError in every reconcile, a worker's step of 2^70 made the status
encoder raise; the daemon then failed forever and the job stayed Running after its workers finished)."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from operator_builders import a_job, a_node, a_pool, a_worker, at

import strata_api as api
from strata_api import Phase, TrainingJob, format_time
from strata_operator.core.backoff import failure_backoff_s
from strata_operator.core.lifecycle import Reason, backoff_s, deadline, reconcile
from strata_operator.core.observed import WorkerPod
from strata_operator.core.pods import build_worker_pods
from strata_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(backoff_base_s=10, backoff_max_s=60, start_timeout_s=300)
NODES = {f"n{i}": a_node(f"n{i}") for i in range(2)}
INT64_MAX = 2**63 - 1


def running(status: dict[str, Any] | None = None, **spec: Any) -> tuple[TrainingJob, dict[str, Any]]:
    raw: dict[str, Any] = {
        "phase": "Running",
        "attempt": 1,
        "placement": {"gpuType": "H100"},
        "admittedAt": format_time(at(0)),
        "startTime": format_time(at(0)),
        **(status or {}),
    }
    return a_job(name="j", data=2, tensor=8, status=raw, **spec), raw


@pytest.mark.parametrize(("job_limit", "pool_limit"), [(INT64_MAX, None), (None, INT64_MAX), (3 * 10**11, INT64_MAX)])
def test_a_limit_stored_before_the_crd_bounded_it_is_clamped_not_an_overflow(
    job_limit: int | None, pool_limit: int | None
) -> None:
    spec = {} if job_limit is None else {"maxRuntimeSeconds": job_limit}
    job, raw = running(**spec)
    pool = a_pool(max_runtime_seconds=pool_limit)
    assert deadline(job, pool) == at(api.MAX_RUNTIME_SECONDS)
    assert deadline(job, None) == (at(api.MAX_RUNTIME_SECONDS) if job_limit else None)
    plan = reconcile(job, pool, [a_worker("j", i, node=f"n{i}") for i in range(2)], NODES, at(60), SETTINGS, raw)
    assert plan.status.phase == Phase.RUNNING
    pods = build_worker_pods(job, pool, SETTINGS)
    assert pods[0]["metadata"]["annotations"][api.ANN_EXPECTED_RUNTIME] == str(api.MAX_RUNTIME_SECONDS)


def test_a_start_time_near_year_9999_has_no_deadline_rather_than_an_overflow() -> None:
    job, _ = running({"startTime": "9999-12-31T00:00:00Z"}, maxRuntimeSeconds=86400)
    assert deadline(job, a_pool()) is None


def test_the_backoff_of_a_huge_restart_count_is_the_maximum_not_an_overflow() -> None:
    assert backoff_s(10_000, SETTINGS) == 60.0
    assert backoff_s(2**40, SETTINGS) == 60.0


def worker_reporting(index: int, annotation: str, phase: str = "Running") -> WorkerPod:
    body = {
        "metadata": {
            "name": f"j-worker-{index}",
            "labels": {api.LABEL_WORKER_INDEX: str(index), api.LABEL_ATTEMPT: "1"},
            "annotations": {api.ANN_PROGRESS: annotation},
        },
        "spec": {"nodeName": f"n{index}"},
        "status": {"phase": phase},
    }
    return WorkerPod.from_body(body)


def test_a_step_past_int64_from_a_worker_is_ignored_and_the_status_stays_writable() -> None:
    job, raw = running({"progress": {"step": 40}})
    pods = [worker_reporting(0, json.dumps({"step": 2**70})), worker_reporting(1, json.dumps({"step": 50}))]
    plan = reconcile(job, a_pool(), pods, NODES, at(60), SETTINGS, raw)
    patch = plan.status.patch()
    assert patch["progress"] == {"step": 50}
    orjson.dumps(patch)  # what the status write encodes


def test_the_gang_still_finishes_when_every_worker_reported_nonsense() -> None:
    job, raw = running()
    pods = [worker_reporting(i, json.dumps({"step": 2**70, "checkpointStep": -3}), "Succeeded") for i in range(2)]
    plan = reconcile(job, a_pool(), pods, NODES, at(60), SETTINGS, raw)
    assert plan.status.phase == Phase.SUCCEEDED
    assert plan.status.get("reason") == Reason.SUCCEEDED
    orjson.dumps(plan.status.patch())


def test_a_gang_the_api_server_refused_fails_with_invalid_spec_and_gives_its_gpus_back() -> None:
    job, raw = running({"phase": "Admitted"})
    raw.pop("startTime")
    job = a_job(name="j", data=2, tensor=8, status=raw)
    pods = [a_worker("j", 0, phase="Pending", gated=True)]
    refused = 'POST /api/v1/namespaces/team/pods: HTTP 403: pods "j-worker-1" is forbidden: maximum memory usage'
    plan = reconcile(job, a_pool(), pods, NODES, at(60), SETTINGS, raw, refused=refused)
    patch = plan.status.patch()
    assert (patch["phase"], patch["reason"]) == ("Failed", Reason.INVALID_SPEC)
    assert refused in patch["message"]
    failed = next(c for c in patch["conditions"] if c["type"] == "Failed")
    assert (failed["status"], failed["reason"]) == ("True", Reason.INVALID_SPEC)
    assert [(e.type, e.reason) for e in plan.status.events] == [("Warning", Reason.INVALID_SPEC)]
    assert plan.delete_pods == ["j-worker-0"]
    assert plan.create_workers == []
    assert not Phase(patch["phase"]).holds_gpus  # the admission pass counts its GPUs free again


def test_a_failing_pass_is_retried_with_backoff_not_hot() -> None:
    waits = [failure_backoff_s(n, 15.0) for n in range(1, 8)]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert failure_backoff_s(10**6, 15.0) == 15.0
