"""A job's life cycle decided from its pods: start, run, finish, restart, deadlines, suspend."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from operator_builders import a_job, a_node, a_pool, a_worker, at

from strata_api import Phase, format_time
from strata_api.workload import ExitCode
from strata_operator.core import lifecycle
from strata_operator.core.lifecycle import Plan, Reason, backoff_s, reconcile
from strata_operator.core.observed import WorkerPod
from strata_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(backoff_base_s=10, backoff_max_s=60, start_timeout_s=300)
NODES = {f"n{i}": a_node(f"n{i}") for i in range(4)}


def run(
    phase: Phase | None,
    pods: list[WorkerPod],
    now: float = 60,
    pool_limit: int | None = None,
    spec: dict[str, Any] | None = None,
    **status: Any,
) -> Plan:
    raw: dict[str, Any] = {"attempt": 1, "placement": {"gpuType": "H100"}, "admittedAt": format_time(at(0))}
    if phase is not None:
        raw["phase"] = phase.value
    raw.update(status)
    job = a_job(name="j", data=2, tensor=8, status=raw, **(spec or {}))
    return reconcile(job, a_pool(max_runtime_seconds=pool_limit), pods, NODES, at(now), SETTINGS, raw)


def workers(phase: str = "Running", **kwargs: Any) -> list[WorkerPod]:
    return [a_worker("j", i, phase=phase, node=f"n{i}", **kwargs) for i in range(2)]


def test_a_new_job_enters_the_queue_with_an_event() -> None:
    plan = run(None, [])
    patch = plan.status.patch()
    assert patch["phase"] == "Queued"
    assert patch["submittedAt"] == format_time(at(0))
    assert [(e.reason, e.type) for e in plan.status.events] == [(Reason.SUBMITTED, "Normal")]
    assert patch["conditions"][0]["type"] == "Queued"
    assert patch["conditions"][0]["status"] == "True"


def test_a_new_job_is_left_to_admission_for_a_few_passes_before_it_is_written_queued() -> None:
    fresh = run(None, [], now=2)  # SETTINGS: one admission pass a second, so five seconds of grace
    assert fresh.status.patch() == {}
    assert fresh.status.events == []
    assert fresh.requeue_after_s == pytest.approx(3.0)
    assert run(None, [], now=5).status.patch()["phase"] == "Queued"


def test_while_admission_passes_run_a_new_job_is_left_to_them_far_longer() -> None:
    # a running pass writes every new job it sees Admitted or Queued itself; the daemon's write is for a job no pass
    # reaches (no ResourcePool, or a spec the pass cannot read), and written earlier it would race the pass
    job = a_job(name="j", data=2, tensor=8, status={})
    plan = reconcile(job, a_pool(), [], NODES, at(30), SETTINGS, {}, admitting=True)
    assert plan.status.patch() == {}
    assert plan.requeue_after_s == pytest.approx(30.0)
    later = reconcile(job, a_pool(), [], NODES, at(60), SETTINGS, {}, admitting=True)
    assert later.status.patch()["phase"] == "Queued"


def test_an_admitted_gang_gets_all_its_pods_created_then_all_gates_lifted_together() -> None:
    first = run(Phase.ADMITTED, [])
    assert first.create_workers == [0, 1]
    assert first.lift_gates == ["j-worker-0", "j-worker-1"]  # in the same pass, only if both creates make new pods
    assert first.lift_when_created

    one_missing = run(Phase.ADMITTED, [a_worker("j", 0, gated=True)])
    assert one_missing.create_workers == [1]
    assert one_missing.lift_gates == ["j-worker-0", "j-worker-1"]
    assert one_missing.lift_when_created

    all_there = run(Phase.ADMITTED, workers("Pending", gated=True))
    assert all_there.create_workers == []
    assert all_there.lift_gates == ["j-worker-0", "j-worker-1"]
    assert not all_there.lift_when_created


def test_no_gate_is_lifted_while_a_worker_waits_for_its_old_pod_to_go() -> None:
    # worker 1's name is still held by the previous attempt's pod: it cannot be created in this pass, so nothing
    # of the gang may be lifted now (worker 0 would hold its GPU alone)
    pods = [a_worker("j", 0, gated=True), a_worker("j", 1, attempt=0, deleting=True)]
    plan = run(Phase.ADMITTED, pods)
    assert plan.create_workers == []
    assert plan.lift_gates == []
    assert not plan.lift_when_created


def test_running_when_every_worker_runs_and_deadline_clock_starts() -> None:
    plan = run(Phase.ADMITTED, workers())
    patch = plan.status.patch()
    assert patch["phase"] == "Running"
    assert patch["startTime"] == format_time(at(60))
    assert patch["workers"] == {"ready": 2, "total": 2}
    assert patch["placement"]["nodes"] == ["n0", "n1"]


def test_a_starting_gang_writes_its_placement_once_with_running_not_per_bind() -> None:
    one_bound = [a_worker("j", 0, phase="Running", node="n0"), a_worker("j", 1, phase="Pending")]
    assert "placement" not in run(Phase.ADMITTED, one_bound).status.patch()
    moved = run(Phase.RUNNING, workers(), placement={"gpuType": "H100", "capacityTypes": [], "nodes": ["n0"]})
    assert moved.status.patch()["placement"]["nodes"] == ["n0", "n1"]  # a running gang's placement stays true


def test_admissions_planned_capacity_types_stay_in_the_placement_and_cause_no_write_of_their_own() -> None:
    """The plan is written with Admitted; each later placement carries it as stored, so a running gang whose nodes
    did not change writes no placement (a placement without it differed from the stored one at every pass, and every
    running quoted job wrote its status again and again)."""
    planned = {"gpuType": "H100", "plannedCapacityTypes": ["spot"]}
    started = run(Phase.ADMITTED, workers(), placement=planned).status.patch()
    assert started["placement"]["plannedCapacityTypes"] == ["spot"]
    unchanged = run(Phase.RUNNING, workers(), placement=started["placement"]).status.patch()
    assert "placement" not in unchanged


def test_pods_of_an_earlier_attempt_are_deleted_and_their_names_not_reused_until_gone() -> None:
    old = [a_worker("j", 0, attempt=0, deleting=True), a_worker("j", 1, attempt=0)]
    plan = run(Phase.ADMITTED, old)
    assert plan.delete_pods == ["j-worker-1"]
    assert plan.create_workers == []


def test_all_workers_succeeded_means_the_job_succeeded() -> None:
    plan = run(Phase.RUNNING, workers("Succeeded", exit_code=0), startTime=format_time(at(10)))
    patch = plan.status.patch()
    assert patch["phase"] == "Succeeded"
    assert patch["completionTime"] == format_time(at(60))


def test_a_failed_worker_restarts_the_whole_gang_with_backoff_and_counts_lost_steps() -> None:
    pods = [a_worker("j", 0, step=130), a_worker("j", 1, phase="Failed", exit_code=137, node="n1")]
    plan = run(Phase.RUNNING, pods, startTime=format_time(at(10)), lastCheckpoint={"step": 100}, restarts=1)
    patch = plan.status.patch()
    assert patch["phase"] == "Restarting"
    assert patch["reason"] == Reason.WORKER_FAILED
    assert patch["restarts"] == 2
    assert patch["stepsLost"] == 30
    assert patch["progress"] == {"step": 100}  # the next attempt starts again from the checkpoint
    assert patch["retryAfter"] == format_time(at(60 + 20))
    assert sorted(plan.delete_pods) == ["j-worker-0", "j-worker-1"]
    assert plan.restarted
    assert "exit code 137" in patch["message"]
    assert plan.status.events[-1].type == "Warning"


@pytest.mark.parametrize(
    ("exit_code", "reason", "said"),
    [
        (2, Reason.INVALID_CONFIGURATION, "refused its configuration (exit code 2)"),
        (3, Reason.NO_USABLE_CHECKPOINT, "none that passes its checksums and loads"),
        (4, Reason.DIVERGED, "not finite for too many steps in a row (exit code 4)"),
    ],
)
def test_a_failure_no_retry_mends_fails_the_job_at_once_with_its_kind_as_the_reason(
    exit_code: int, reason: str, said: str
) -> None:
    pods = [a_worker("j", 0), a_worker("j", 1, phase="Failed", exit_code=exit_code, node="n1")]
    plan = run(Phase.RUNNING, pods, startTime=format_time(at(10)))
    patch = plan.status.patch()
    assert patch["phase"] == "Failed"
    assert patch["reason"] == reason
    assert said in patch["message"]
    assert "restarts" not in patch


def test_every_permanent_exit_code_of_the_workload_contract_has_its_reason() -> None:
    assert set(lifecycle.PERMANENT_FAILURES) == ExitCode.PERMANENT


def test_exit_code_85_means_checkpointed_on_sigterm_and_requeues_without_a_restart() -> None:
    pods = [a_worker("j", 0, phase="Failed", exit_code=85), a_worker("j", 1, phase="Failed", exit_code=85, node="n1")]
    plan = run(Phase.RUNNING, pods, startTime=format_time(at(10)))
    patch = plan.status.patch()
    assert patch["phase"] == "Queued"
    assert patch["reason"] == Reason.WORKER_CHECKPOINTED
    assert "restarts" not in patch
    assert sorted(plan.delete_pods) == ["j-worker-0", "j-worker-1"]


def test_a_worker_on_a_vanished_node_is_a_spot_reclaim_and_restarts_the_gang() -> None:
    pods = [a_worker("j", 0, node="n0"), a_worker("j", 1, node="reclaimed")]
    patch = run(Phase.RUNNING, pods, startTime=format_time(at(10))).status.patch()
    assert patch["phase"] == "Restarting"
    assert patch["reason"] == Reason.NODE_LOST
    assert "reclaimed" in patch["message"]
    assert run(Phase.RUNNING, pods, startTime=format_time(at(10))).force_delete_pods == ["j-worker-1"]


def test_a_fresh_view_does_not_take_unseen_workers_or_nodes_for_lost_ones() -> None:
    raw = {"attempt": 1, "phase": "Running", "placement": {"gpuType": "H100"}, "startTime": format_time(at(10))}
    job = a_job(name="j", data=2, tensor=8, status=raw)
    one_seen = [a_worker("j", 0, node="not-indexed-yet")]
    plan = reconcile(job, a_pool(), one_seen, NODES, at(60), SETTINGS, raw, pods_settled=False)
    assert plan.status.patch().get("phase") is None
    assert plan.delete_pods == []
    assert plan.force_delete_pods == []
    settled = reconcile(job, a_pool(), one_seen, NODES, at(60), SETTINGS, raw, pods_settled=True)
    assert settled.status.patch()["phase"] == "Restarting"


def test_an_evicted_worker_restarts_the_gang() -> None:
    pods = [a_worker("j", 0), a_worker("j", 1, deleting=True, node="n1")]
    assert run(Phase.RUNNING, pods, startTime=format_time(at(10))).status.patch()["reason"] == Reason.WORKER_EVICTED


def test_past_the_backoff_limit_the_job_fails() -> None:
    pods = [a_worker("j", 0), a_worker("j", 1, phase="Failed", exit_code=1, node="n1")]
    plan = run(Phase.RUNNING, pods, startTime=format_time(at(10)), restarts=3, spec={"backoffLimit": 3})
    patch = plan.status.patch()
    assert patch["phase"] == "Failed"
    assert patch["reason"] == Reason.BACKOFF_LIMIT
    assert plan.delete_pods == ["j-worker-0"]


def test_restarting_requeues_once_the_backoff_is_over_and_the_pods_are_gone() -> None:
    waiting = run(Phase.RESTARTING, [], now=30, retryAfter=format_time(at(40)))
    assert waiting.status.patch().get("phase") is None
    assert waiting.requeue_after_s == 10
    still_there = run(Phase.RESTARTING, [a_worker("j", 0, deleting=True)], now=50, retryAfter=format_time(at(40)))
    assert still_there.status.patch().get("phase") is None
    done = run(Phase.RESTARTING, [], now=50, retryAfter=format_time(at(40)))
    assert done.status.patch()["phase"] == "Queued"
    assert done.status.patch()["reason"] == Reason.BACKOFF_ELAPSED


@pytest.mark.parametrize(("restarts", "delay"), [(1, 10), (2, 20), (3, 40), (4, 60), (10, 60)])
def test_backoff_doubles_up_to_the_limit(restarts: int, delay: float) -> None:
    assert backoff_s(restarts, SETTINGS) == delay


def test_the_smaller_of_job_and_pool_runtime_limits_fails_the_job_with_deadline_exceeded() -> None:
    started = format_time(at(0))
    job_limit = run(
        Phase.RUNNING, workers(), now=100, spec={"maxRuntimeSeconds": 100}, pool_limit=3600, startTime=started
    )
    assert job_limit.status.patch()["reason"] == Reason.DEADLINE
    assert sorted(job_limit.delete_pods) == ["j-worker-0", "j-worker-1"]
    pool_limit = run(
        Phase.RUNNING, workers(), now=100, spec={"maxRuntimeSeconds": 500}, pool_limit=90, startTime=started
    )
    assert pool_limit.status.patch()["phase"] == "Failed"
    within = run(Phase.RUNNING, workers(), now=80, pool_limit=90, startTime=started)
    assert within.status.patch().get("phase") is None
    assert within.requeue_after_s == 10


def test_suspend_releases_the_gpus_and_resume_requeues() -> None:
    plan = run(Phase.RUNNING, workers(), startTime=format_time(at(0)), spec={"suspend": True})
    assert plan.status.patch()["phase"] == "Suspended"
    assert sorted(plan.delete_pods) == ["j-worker-0", "j-worker-1"]
    resumed = run(Phase.SUSPENDED, [], spec={"suspend": False})
    assert resumed.status.patch()["phase"] == "Queued"
    assert resumed.status.patch()["reason"] == Reason.RESUMED


def test_running_gangs_accrue_gpu_seconds_and_cost_from_node_prices() -> None:
    plan = run(
        Phase.RUNNING, workers(), now=70, startTime=format_time(at(0)), accountedAt=format_time(at(10)), gpuSeconds=5.0
    )
    patch = plan.status.patch()
    assert plan.gpu_seconds == 16 * 60
    assert patch["gpuSeconds"] == 5.0 + 16 * 60
    # the shared price catalog: a reserved p5.48xlarge (8 H100) is $38.53 per node-hour, a worker holds all 8 GPUs
    assert plan.cost == pytest.approx(2 * 38.53 * 60 / 3600)
    assert patch["accountedAt"] == format_time(at(70))


def test_a_running_gang_is_accounted_once_per_resync_interval_and_always_when_it_ends() -> None:
    recent = {"startTime": format_time(at(0)), "accountedAt": format_time(at(55)), "gpuSeconds": 5.0}
    quiet = run(Phase.RUNNING, workers(), now=60, **recent)  # 5 s since the last accounting: nothing to write
    assert not {"gpuSeconds", "cost", "accountedAt"} & set(quiet.status.patch())
    assert quiet.gpu_seconds == 0
    done = run(Phase.RUNNING, workers("Succeeded", exit_code=0), now=60, **recent)
    assert done.status.patch()["phase"] == "Succeeded"
    assert done.status.patch()["gpuSeconds"] == 5.0 + 16 * 5  # the last seconds are not lost


def test_a_node_price_annotation_wins_over_the_catalog_and_an_unpriced_node_costs_nothing() -> None:
    job = a_job(
        name="j", data=2, tensor=8, status={"phase": "Running", "attempt": 1, "accountedAt": format_time(at(0))}
    )
    annotated = replace(NODES["n0"], price_per_hour=80.0)
    unknown = replace(NODES["n1"], instance_type="x9.unlisted")
    nodes = {**NODES, "n0": annotated, "n1": unknown}
    plan = reconcile(job, a_pool(), workers(), nodes, at(3600), SETTINGS, {})
    assert plan.cost == pytest.approx(80.0)
    assert plan.gpu_seconds == 16 * 3600


def test_worker_progress_reports_become_status_and_checkpoints_never_go_back() -> None:
    pods = [
        a_worker("j", 0, step=250, checkpoint_step=200, loss=2.5),
        a_worker("j", 1, step=249, checkpoint_step=200, loss=2.75),
    ]
    patch = run(Phase.RUNNING, pods, startTime=format_time(at(0)), lastCheckpoint={"step": 100}).status.patch()
    assert patch["progress"] == {"step": 250, "loss": 2.5}  # the loss of the furthest step
    assert patch["lastCheckpoint"] == {"step": 200}
    older = run(Phase.RUNNING, pods, startTime=format_time(at(0)), lastCheckpoint={"step": 300}).status.patch()
    assert "lastCheckpoint" not in older


def test_a_gang_that_cannot_start_in_time_is_requeued_without_counting_a_restart() -> None:
    plan = run(Phase.ADMITTED, workers("Pending"), now=301)
    patch = plan.status.patch()
    assert patch["phase"] == "Queued"
    assert patch["reason"] == Reason.START_TIMEOUT
    assert "restarts" not in patch


def test_queued_jobs_own_no_pods() -> None:
    plan = run(Phase.QUEUED, [a_worker("j", 0)])
    assert plan.delete_pods == ["j-worker-0"]
    assert plan.status.patch().get("phase") is None


def test_conditions_follow_the_phase_and_keep_transition_times_when_unchanged() -> None:
    queued = run(None, []).status.patch()["conditions"]
    plan = run(
        Phase.ADMITTED,
        workers(),
        conditions=[
            *queued,
            {
                "type": "Admitted",
                "status": "True",
                "reason": "Admitted",
                "message": "m",
                "lastTransitionTime": format_time(at(1)),
            },
        ],
    )
    conditions = {c["type"]: c for c in plan.status.patch()["conditions"]}
    assert conditions["Running"]["status"] == "True"
    assert conditions["Admitted"]["status"] == "False"
    assert conditions["Queued"]["status"] == "False"
    assert conditions["Running"]["lastTransitionTime"] == format_time(at(60))
