"""One TrainingJob's life cycle as a pure function: from the job, its pods and the nodes, what to do next.

Admission (Queued -> Admitted, and preemption) is decided in :mod:`strata_operator.core.admission`; everything else a
job goes through is decided here:

- Admitted: create the gang's pods (gated), then lift every gate at once; Running when every worker runs. A
  gang kube-scheduler cannot fully place (a worker Unschedulable for :data:`UNSCHEDULABLE_GRACE_S`) is requeued
  with the scheduler's reason, without counting a restart. Workers no node took that were made for another
  scheduler than the operator's ``--scheduler-name`` (it changed) are made again for it.
- Running: Succeeded when every worker finished with exit code 0; a failed worker, a worker evicted, or a worker
  whose node is gone (a spot reclaim) restarts the whole gang: Restarting, exponential backoff, then Queued again
  (keeping its place), or Failed with BackoffLimitExceeded past ``backoffLimit``.
- Deadlines: the smaller of the job's and the pool's ``maxRuntimeSeconds``, counted from the first start,
  restarts included, fails the job with DeadlineExceeded.
- Suspend: pods get SIGTERM (the workload checkpoints), GPUs are released; resuming requeues.
- Refused: when the API server refused to create one of the gang's objects for good (a 4xx other than 409 and
  429: the spec makes an object Kubernetes does not accept), the job fails with InvalidSpec and the server's
  message, and its GPUs go back; nothing is retried.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from strata_api import Phase, ResourcePool, TrainingJob, format_time
from strata_api.workload import ExitCode, Progress
from strata_operator.core.backoff import doubling_s
from strata_operator.core.observed import SCHEDULER_ERROR, WAITING_FOR_SCHEDULER, Node, WorkerPod, scheduler_silence
from strata_operator.core.pods import expected_runtime_s, placement_type, worker_name
from strata_operator.core.status import NORMAL, WARNING, StatusDraft, attempt_moment, generation_moment
from strata_operator.settings import OperatorSettings


class Reason:
    SUBMITTED = "Submitted"
    ADMITTED = "Admitted"
    GANG_STARTED = "AllWorkersRunning"
    SUCCEEDED = "AllWorkersSucceeded"
    WORKER_FAILED = "WorkerFailed"
    INVALID_CONFIGURATION = "InvalidConfiguration"
    NO_USABLE_CHECKPOINT = "NoUsableCheckpoint"
    DIVERGED = "TrainingDiverged"
    INVALID_SPEC = "InvalidSpec"
    """The API server refused an object built from the job's spec (a pod, its Service, ...): retrying cannot help."""
    WORKER_CHECKPOINTED = "WorkerCheckpointed"
    NODE_LOST = "NodeLost"
    WORKER_EVICTED = "WorkerEvicted"
    WORKER_MISSING = "WorkerMissing"
    BACKOFF_LIMIT = "BackoffLimitExceeded"
    BACKOFF_ELAPSED = "BackoffElapsed"
    DEADLINE = "DeadlineExceeded"
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    START_TIMEOUT = "StartTimeout"
    UNSCHEDULABLE = "WorkerUnschedulable"
    WAITING_FOR_SCHEDULER = WAITING_FOR_SCHEDULER
    SCHEDULER_ERROR = SCHEDULER_ERROR
    WORKER_CANNOT_START = "WorkerCannotStart"
    SCHEDULER_CHANGED = "SchedulerChanged"
    """Unplaced workers made for another scheduler than the operator's ``--scheduler-name`` are made again for it."""
    POOL_NOT_FOUND = "PoolNotFound"
    PREEMPTED = "Preempted"


@dataclass
class Plan:
    """What the handler applies, in this order: status patch (with events), deletions, creations, gate lifts."""

    status: StatusDraft
    delete_pods: list[str] = field(default_factory=list)
    force_delete_pods: list[str] = field(default_factory=list)
    """Pods whose node is gone: no kubelet will ever confirm their end, so they are removed at once."""
    create_workers: list[int] = field(default_factory=list)
    lift_gates: list[str] = field(default_factory=list)
    lift_when_created: bool = False
    """``lift_gates`` names workers that ``create_workers`` is about to create: lift them (and the gated ones already
    there) in the same pass, but only if every one of those creations made a new pod. The gang then starts one watch
    round trip and one reconcile pass sooner, and the rule stays all or nothing: no gate is lifted before every
    worker exists."""
    requeue_after_s: float | None = None
    restarted: bool = False
    gpu_seconds: float = 0.0
    cost: float = 0.0


PERMANENT_FAILURES: dict[int, tuple[str, str]] = {
    ExitCode.INVALID_CONFIGURATION: (Reason.INVALID_CONFIGURATION, "refused its configuration"),
    ExitCode.NO_USABLE_CHECKPOINT: (
        Reason.NO_USABLE_CHECKPOINT,
        "found checkpoints but none that passes its checksums and loads (repair or remove them)",
    ),
    ExitCode.DIVERGED: (
        Reason.DIVERGED,
        "stopped: the loss or gradient norm was not finite for too many steps in a row",
    ),
}
"""The workload's exit codes that no retry mends (:data:`strata_api.workload.ExitCode.PERMANENT`): the job fails with
the kind as its reason."""

UNSCHEDULABLE_GRACE_S = 30.0
"""An admitted gang one of whose ungated workers kube-scheduler has found no node for this long is requeued with
the scheduler's reason, instead of holding its quota until the start timeout: admission saw room the scheduler
does not grant (the extender's reserved hold-back, a taint or affinity admission does not model). Long enough for
kube-scheduler's own retries and a bind race with another gang to settle."""


AN_ATTEMPT = "attempt"
A_GENERATION = "generation"
GANG_STEPS = (Phase.ADMITTED, Phase.RUNNING, Phase.RESTARTING)
"""Phases an attempt enters once each (only an admission, which counts a new attempt, enters Admitted), so it
leaves each once too."""


def once_per(before: Phase | None, after: Phase | None) -> str | None:
    """Of what a status write from phase ``before`` to ``after`` is a moment that comes only once: of the job's
    spec generation (:data:`A_GENERATION`: suspended, resumed), of its attempt (:data:`AN_ATTEMPT`: admitted, a new
    attempt written with it; running; its GPUs taken back; its backoff over; finished, for good), or None (a queued
    job's new waiting reason, which can come again).

    Such a write's Events are posted once, before it, under a name of their own (:func:`once_moment_of`, as
    :attr:`~strata_operator.core.status.Event.once` says): the status records the moment and no later pass tells
    of it again, so an Event only queued behind the write would die with an operator killed after it."""
    if after is None or after == before:
        return None
    if Phase.SUSPENDED in (before, after):
        return A_GENERATION  # only a change of spec.suspend suspends or resumes, once each
    if after in GANG_STEPS or after.finished or before in GANG_STEPS:
        return AN_ATTEMPT
    return None


def once_moment_of(job: TrainingJob, after: Phase | None, attempt: int) -> str | None:
    """The moment (:attr:`~strata_operator.core.status.Event.once`) of the Events of a status write taking ``job``
    to phase ``after`` (at ``attempt``: an admission writes its new one), posted once before the write; None for
    Events posted after it, through kopf (:func:`once_per`)."""
    per = once_per(job.status.phase, after)
    if per == A_GENERATION:
        return generation_moment(job.generation)
    if per == AN_ATTEMPT:
        return attempt_moment(attempt)
    return None


def backoff_s(restarts: int, settings: OperatorSettings) -> float:
    """Delay before the ``restarts``-th restart: base x 2^(restarts - 1), at most backoff_max_s."""
    return doubling_s(settings.backoff_base_s, settings.backoff_max_s, restarts)


def deadline(job: TrainingJob, pool: ResourcePool | None) -> datetime | None:
    """When the job runs out of wall time: first start + min(job limit, pool limit), the limit clamped as
    :func:`expected_runtime_s` says; None without a limit."""
    limit = expected_runtime_s(job, pool)
    if limit is None or job.status.start_time is None:
        return None
    try:
        return job.status.start_time + timedelta(seconds=limit)
    except OverflowError:  # a start time written near year 9999: no deadline this side of it
        return None


ADMITTING_GRACE_PASSES = 60
"""A new job is left this many admission intervals to a running admission pass before its daemon writes it Queued
itself: the pass writes every new job it sees Admitted or Queued with its reason, so the daemon's write is only
for a job the pass cannot read; at 500 new jobs the pass took up to half a minute to reach the last of them, and
the daemon's earlier write then raced it (a status write, an Event and often a conflict per job)."""


def admission_grace_s(settings: OperatorSettings, admitting: bool = False) -> float:
    """How long a new job is left to the admission pass before its daemon writes it Queued: five passes, or
    :data:`ADMITTING_GRACE_PASSES` while passes are running (``admitting``; none runs while no ResourcePool exists).

    A job the fleet can take at once is admitted straight from submission (one status write, not two, and one
    round trip through the watch less before its pods exist); one that must wait is written Queued by the pass."""
    return (ADMITTING_GRACE_PASSES if admitting else 5) * settings.admission_interval_s


def reconcile(
    job: TrainingJob,
    pool: ResourcePool | None,
    pods: Sequence[WorkerPod],
    nodes: Mapping[str, Node],
    now: datetime,
    settings: OperatorSettings,
    stored_status: Mapping[str, object] | None = None,
    pods_settled: bool = True,
    refused: str | None = None,
    admitting: bool = False,
) -> Plan:
    """What to do next. ``pods_settled`` is False while the caller's view of pods and nodes may still be filling
    (just after it started or took over); a missing worker or node is then not taken for a lost one. ``refused``
    is the API server's message when it refused, for good, to create an object of the job's current attempt.
    ``admitting``: admission passes are running (see :func:`admission_grace_s`)."""
    plan = Plan(StatusDraft(stored=stored_status or {}, now=now))
    try:
        draft = plan.status
        phase = job.status.phase
        wait_s = admission_grace_s(settings, admitting) - (now - job.created).total_seconds()
        if phase is None and not job.spec.suspend and wait_s > 0:
            plan.requeue_after_s = wait_s  # the admission pass may admit it meanwhile: write nothing yet
            return plan
        current = [p for p in pods if p.attempt == job.status.attempt and not p.deleting]
        alive = [p for p in pods if not p.deleting]

        if pods_settled:
            plan.force_delete_pods = sorted(p.name for p in pods if p.node and p.node not in nodes)
        _record_progress(draft, job, current)
        draft.set("workers", {"ready": sum(p.ready for p in current), "total": job.spec.workers})
        draft.set("observedGeneration", job.generation)
        if phase == Phase.RUNNING:
            _account(plan, job, current, nodes, now, settings)

        if phase is None:
            draft.set("submittedAt", format_time(job.status.submitted_at or job.created))
            draft.transition(Phase.QUEUED, Reason.SUBMITTED, f"waiting for admission to pool {job.spec.pool}")
            return plan
        if phase.finished:
            plan.delete_pods = [p.name for p in alive if p.phase not in ("Succeeded", "Failed")]
            return plan

        end = deadline(job, pool)
        if end is not None and now >= end and phase != Phase.SUSPENDED:
            _finish(plan, Phase.FAILED, Reason.DEADLINE, f"ran past its wall-time limit at {format_time(end)}", alive)
            return plan
        if job.spec.suspend and phase != Phase.SUSPENDED:
            _release(plan, alive)
            draft.transition(Phase.SUSPENDED, Reason.SUSPENDED, "suspended: workers checkpoint and release their GPUs")
            return plan
        if phase == Phase.SUSPENDED:
            if job.spec.suspend:
                plan.delete_pods = [p.name for p in alive]
            else:
                draft.transition(
                    Phase.QUEUED, Reason.RESUMED, f"resumed: waiting for admission to pool {job.spec.pool}"
                )
            return plan
        if end is not None:
            plan.requeue_after_s = max(0.5, (end - now).total_seconds())

        if phase == Phase.QUEUED:
            plan.delete_pods = [p.name for p in alive]
            return plan
        if phase == Phase.RESTARTING:
            plan.delete_pods = [p.name for p in alive]
            retry = job.status.retry_after or now
            if now >= retry and not pods:
                draft.set("retryAfter", None)
                draft.transition(Phase.QUEUED, Reason.BACKOFF_ELAPSED, "backoff over: requeued in its old place")
            else:
                _sooner(plan, max(0.5, (retry - now).total_seconds()))
            return plan
        if refused is not None and phase in (Phase.ADMITTED, Phase.RUNNING):
            message = f"the API server refused an object of the job's gang, so retrying cannot help: {refused}"
            _finish(plan, Phase.FAILED, Reason.INVALID_SPEC, message, alive)
            return plan
        if pool is None:
            _release(plan, alive)
            draft.transition(Phase.QUEUED, Reason.POOL_NOT_FOUND, f"ResourcePool {job.spec.pool} is gone", WARNING)
            return plan
        _run_gang(plan, job, pods, current, nodes, now, settings, pods_settled)
        return plan
    finally:  # whichever way the pass ends
        _defer_accounting(plan, job, now, settings)


ACCOUNTING = ("gpuSeconds", "cost", "accountedAt")


def _defer_accounting(plan: Plan, job: TrainingJob, now: datetime, settings: OperatorSettings) -> None:
    """A running job is accounted at most once per resync interval, and always when it stops running: a pod event
    is reason to reconcile, not to write the job's cost; the next accounting covers the whole span since
    accountedAt."""
    since = job.status.accounted_at
    still_running = job.status.phase == Phase.RUNNING and plan.status.phase == Phase.RUNNING
    if still_running and since is not None and (now - since).total_seconds() < settings.resync_interval_s:
        for key in ACCOUNTING:
            plan.status.changes.pop(key, None)
        plan.gpu_seconds = plan.cost = 0.0


def _run_gang(
    plan: Plan,
    job: TrainingJob,
    pods: Sequence[WorkerPod],
    current: Sequence[WorkerPod],
    nodes: Mapping[str, Node],
    now: datetime,
    settings: OperatorSettings,
    pods_settled: bool,
) -> None:
    """Admitted or Running: start the gang, follow it, restart it on failure."""
    draft, workers = plan.status, job.spec.workers
    stale = [p for p in pods if p.attempt != job.status.attempt]
    plan.delete_pods = [p.name for p in stale if not p.deleting]

    failure = _failure(job, pods, current, nodes, pods_settled)
    alive = [p for p in pods if not p.deleting]
    if failure is not None:
        reason, message = failure
        if reason == Reason.INVALID_SPEC or reason in (r for r, _ in PERMANENT_FAILURES.values()):
            _finish(plan, Phase.FAILED, reason, f"{message}; retrying cannot help", alive)
        elif reason == Reason.WORKER_CHECKPOINTED:
            _release(plan, alive)
            draft.transition(Phase.QUEUED, reason, f"{message}; requeued to resume from it", WARNING)
        else:
            _restart(plan, job, reason, message, now, settings, alive)
        return
    if len(current) == workers and all(p.phase == "Succeeded" for p in current):
        _finish(plan, Phase.SUCCEEDED, Reason.SUCCEEDED, f"all {workers} workers finished", [])
        return
    placement: dict[str, Any] = {
        "gpuType": placement_type(job),
        "capacityTypes": sorted({c for p in current if p.node and (c := _capacity(nodes, p.node))}),
        "nodes": sorted({p.node for p in current if p.node}),
    }
    if job.status.planned_capacity_types:  # admission's plan stays as written (a placement without it is a change)
        placement["plannedCapacityTypes"] = list(job.status.planned_capacity_types)
    if job.status.planned_node:
        placement["plannedNode"] = job.status.planned_node.status()
    if job.phase == Phase.RUNNING:
        draft.set("placement", placement)
        return
    # while the gang starts its nodes fill in one bind at a time: placement is written once, with Running (a write
    # per bind was the most frequent status write of a starting gang, and every write is an event for every watcher)

    if _remake_for_our_scheduler(plan, current, settings):
        return
    have = {p.index for p in current}
    taken = {p.name for p in pods if p.attempt != job.status.attempt or p.deleting}
    missing = [i for i in range(workers) if i not in have]
    plan.create_workers = [i for i in missing if worker_name(job.name, i) not in taken]
    if missing:
        if plan.create_workers == missing:
            plan.lift_gates = [p.name for p in current if p.gated] + [worker_name(job.name, i) for i in missing]
            plan.lift_when_created = True
        _sooner(plan, 1.0)
    elif any(p.gated for p in current):
        plan.lift_gates = [p.name for p in current if p.gated]
    elif all(p.phase == "Running" for p in current):
        if job.status.start_time is None:
            draft.set("startTime", format_time(now))
        draft.set("accountedAt", format_time(now))
        draft.set("placement", placement)
        draft.transition(Phase.RUNNING, Reason.GANG_STARTED, f"all {workers} workers are running")
        return
    refused = [p for p in current if not p.gated and p.node is None and p.unschedulable is not None]
    if refused and not missing:
        since = min(p.unschedulable_since or now for p in refused)
        left = UNSCHEDULABLE_GRACE_S - (now - since).total_seconds()
        if left <= 0:
            first = min(refused, key=lambda p: p.index)
            _release(plan, [p for p in pods if not p.deleting])
            message = (
                f"worker {first.name} found no node for {UNSCHEDULABLE_GRACE_S:.0f}s after its gates were lifted "
                f"({len(refused)} of {workers} unplaced): {first.unschedulable}; requeued"
            )
            draft.transition(Phase.QUEUED, Reason.UNSCHEDULABLE, message, WARNING)
            return
        _sooner(plan, left)
    admitted = job.status.admitted_at or now
    if not missing:
        held_up = _held_up(plan, current, (now - admitted).total_seconds(), settings)
        if held_up is not None:
            reason, why = held_up
            holds = f"the gang holds its GPUs until the start timeout ({settings.start_timeout_s:.0f}s)"
            draft.transition(Phase.ADMITTED, reason, f"{why}; {holds}", WARNING)
        elif job.status.reason in HELD_UP:  # what held it up gave way: the status no longer says it does
            running = sum(p.phase == "Running" for p in current)
            message = f"workers starting ({running} of {workers} running)"
            draft.transition(Phase.ADMITTED, Reason.ADMITTED, message, event=False)
    if (now - admitted).total_seconds() > settings.start_timeout_s:
        _release(plan, [p for p in pods if not p.deleting])
        draft.transition(
            Phase.QUEUED,
            Reason.START_TIMEOUT,
            f"workers not all running {settings.start_timeout_s:.0f}s after admission; requeued",
            WARNING,
        )


HELD_UP = frozenset(
    {Reason.SCHEDULER_ERROR, Reason.WAITING_FOR_SCHEDULER, Reason.WORKER_CANNOT_START, Reason.SCHEDULER_CHANGED}
)
"""The reasons an admitted job's status gives while something holds its workers up (:func:`_held_up`) or they are
made again (:func:`_remake_for_our_scheduler`): once that is over, the status says the workers are starting."""


def _remake_for_our_scheduler(plan: Plan, current: Sequence[WorkerPod], settings: OperatorSettings) -> bool:
    """Delete the workers that no node took and that name a scheduler other than the operator's ``--scheduler-name``
    (it changed since they were made: say, to the scheduler the status said was missing), so that they are made
    again for it; a pod's ``schedulerName`` cannot be changed. Whether it deleted any."""
    elsewhere = sorted((p for p in current if p.node is None and p.scheduler_name != settings.scheduler_name),
                       key=lambda p: p.index)  # fmt: skip
    if not elsewhere:
        return False
    plan.delete_pods += [p.name for p in elsewhere]
    names = ", ".join(p.name for p in elsewhere)
    message = (
        f"worker{'s' if len(elsewhere) > 1 else ''} {names} of scheduler '{elsewhere[0].scheduler_name}', which no "
        f"node took, made again for the operator's scheduler '{settings.scheduler_name}'"
    )
    plan.status.transition(Phase.ADMITTED, Reason.SCHEDULER_CHANGED, message)
    _sooner(plan, 1.0)
    return True


def _held_up(
    plan: Plan, current: Sequence[WorkerPod], waited_s: float, settings: OperatorSettings
) -> tuple[str, str] | None:
    """Why an admitted gang's workers are not running yet, where something outside the operator holds them up
    and may yet give way (so the start timeout still decides): the scheduler fails on one (kube-scheduler's
    error, say an extender it cannot reach), no scheduler has looked at one ``scheduler_grace_s`` after admission,
    the kubelet cannot start one's container, or one's volumes cannot be mounted (:attr:`WorkerPod.volume_failure`:
    a claim's folder that is not there, a ReadWriteOnce volume attached to another node). (reason, message) for
    the first such worker by index, or None; within the grace a pass is asked for when it ends."""

    def first(found: list[WorkerPod]) -> WorkerPod | None:
        return min(found, key=lambda p: p.index) if found else None

    if (erring := first([p for p in current if p.scheduler_error is not None])) is not None:
        return Reason.SCHEDULER_ERROR, f"the scheduler fails on worker {erring.name}: {erring.scheduler_error}"
    unseen = first([p for p in current if not p.gated and not p.other_gates and p.awaiting_scheduler is not None])
    if unseen is not None and unseen.awaiting_scheduler is not None:
        if waited_s < settings.scheduler_grace_s:
            _sooner(plan, settings.scheduler_grace_s - waited_s)
        else:
            silence = scheduler_silence(f"worker {unseen.name}", unseen.awaiting_scheduler, settings.scheduler_grace_s)
            return Reason.WAITING_FOR_SCHEDULER, silence
    if (stuck := first([p for p in current if p.cannot_start is not None])) is not None:
        return Reason.WORKER_CANNOT_START, f"the kubelet cannot start worker {stuck.name}: {stuck.cannot_start}"
    if (unmounted := first([p for p in current if p.volume_failure is not None])) is not None:
        said = f"the volumes of worker {unmounted.name} cannot be mounted: {unmounted.volume_failure}"
        return Reason.WORKER_CANNOT_START, said
    return None


def _failure(
    job: TrainingJob,
    pods: Sequence[WorkerPod],
    current: Sequence[WorkerPod],
    nodes: Mapping[str, Node],
    pods_settled: bool,
) -> tuple[str, str] | None:
    for p in current:
        if p.image_refused is not None:
            return Reason.INVALID_SPEC, f"the kubelet refused worker {p.name}'s image: {p.image_refused}"
        if p.phase == "Failed" and p.exit_code in PERMANENT_FAILURES:
            reason, what = PERMANENT_FAILURES[p.exit_code]
            return reason, f"worker {p.name} {what} (exit code {p.exit_code})"
        if p.phase == "Failed" and p.exit_code == ExitCode.CHECKPOINTED:
            return Reason.WORKER_CHECKPOINTED, f"worker {p.name} was told to stop and saved a checkpoint (exit 85)"
        if p.phase == "Failed":
            return Reason.WORKER_FAILED, f"worker {p.name} failed (exit code {p.exit_code}, {p.reason or 'no reason'})"
        if p.node and p.node not in nodes and pods_settled:
            return Reason.NODE_LOST, f"node {p.node} of worker {p.name} is gone"
    evicted = [p for p in pods if p.attempt == job.status.attempt and p.deleting and p.phase != "Succeeded"]
    if evicted and not any(p.gated for p in current):
        return Reason.WORKER_EVICTED, f"worker {evicted[0].name} was deleted or evicted"
    if job.phase == Phase.RUNNING and len(current) < job.spec.workers and not evicted and pods_settled:
        indices = {p.index for p in current}
        lost = next(i for i in range(job.spec.workers) if i not in indices)
        return Reason.WORKER_MISSING, f"worker {worker_name(job.name, lost)} disappeared"
    return None


def _restart(
    plan: Plan,
    job: TrainingJob,
    reason: str,
    message: str,
    now: datetime,
    settings: OperatorSettings,
    alive: Sequence[WorkerPod],
) -> None:
    draft = plan.status
    restarts = job.status.restarts + 1
    if restarts > job.spec.backoff_limit:
        _finish(
            plan, Phase.FAILED, Reason.BACKOFF_LIMIT, f"{message}; backoffLimit {job.spec.backoff_limit} reached", alive
        )
        return
    step = draft.get("progress", {}).get("step")
    checkpoint = draft.get("lastCheckpoint", {}).get("step") or 0
    lost = max(0, step - checkpoint) if step is not None else 0
    delay = backoff_s(restarts, settings)
    _release(plan, alive)
    draft.set("restarts", restarts)
    draft.set("stepsLost", job.status.steps_lost + lost)
    if step is not None:
        draft.set("progress", {"step": checkpoint})  # the next attempt resumes from the checkpoint
    draft.set("retryAfter", format_time(now + timedelta(seconds=delay)))
    draft.transition(
        Phase.RESTARTING,
        reason,
        f"{message}; restart {restarts}/{job.spec.backoff_limit} from checkpoint step {checkpoint} "
        f"in {delay:.0f}s ({lost} steps lost)",
        WARNING,
    )
    plan.restarted = True
    _sooner(plan, delay)


def _finish(plan: Plan, phase: Phase, reason: str, message: str, alive: Sequence[WorkerPod]) -> None:
    plan.delete_pods = sorted({*plan.delete_pods, *(p.name for p in alive if p.phase not in ("Succeeded", "Failed"))})
    plan.status.set("completionTime", format_time(plan.status.now))
    plan.status.set("accountedAt", None)
    plan.status.transition(phase, reason, message, NORMAL if phase == Phase.SUCCEEDED else WARNING)


def _release(plan: Plan, alive: Sequence[WorkerPod]) -> None:
    """Give the gang's GPUs back: delete its pods (graceful: SIGTERM, the workload checkpoints)."""
    plan.delete_pods = sorted({*plan.delete_pods, *(p.name for p in alive)})
    plan.status.set("placement", None)
    plan.status.set("accountedAt", None)


def _record_progress(draft: StatusDraft, job: TrainingJob, current: Sequence[WorkerPod]) -> None:
    reached = [p.progress for p in current if p.progress.step is not None]
    if reached:
        draft.set("progress", progress_summary(reached))
    reports = [p.progress for p in current if p.progress.checkpoint_step is not None]
    if reports:
        best = max(reports, key=lambda r: r.checkpoint_step or 0)
        if job.status.checkpoint_step is None or (best.checkpoint_step or 0) > job.status.checkpoint_step:
            checkpoint: dict[str, object] = {"step": best.checkpoint_step}
            if best.checkpoint_time is not None:
                checkpoint["time"] = format_time(best.checkpoint_time)
            draft.set("lastCheckpoint", checkpoint)


def progress_summary(reports: Sequence[Progress]) -> dict[str, object]:
    """``status.progress`` from the current workers' reports (each already bounded by :meth:`Progress.parse`): the
    furthest step with its loss, throughput, MFU and validation loss, and the largest peak memory of any worker
    (the one nearest to running out)."""
    latest = max(reports, key=lambda r: r.step or 0)
    summary: dict[str, object] = {"step": latest.step}
    figures = {
        "loss": latest.loss,
        "tokensPerSecond": latest.tokens_per_second,
        "mfu": latest.mfu,
        "validationLoss": latest.validation_loss,
        "peakMemoryBytes": max((r.peak_memory_bytes for r in reports if r.peak_memory_bytes is not None), default=None),
    }
    summary.update({key: value for key, value in figures.items() if value is not None})
    return summary


def _account(
    plan: Plan,
    job: TrainingJob,
    current: Sequence[WorkerPod],
    nodes: Mapping[str, Node],
    now: datetime,
    settings: OperatorSettings,
) -> None:
    """GPU-seconds and dollars since the last accounting, for the workers running on known nodes.

    A worker costs ``gpusPerWorker`` times its node's price per GPU-hour (:meth:`strata_api.catalog.Catalog.gpu_price`:
    the node's own price annotation, else the price catalog's row for its instance and capacity type, shared by its
    allocatable GPUs). A node priced by neither costs nothing rather than a guess."""
    since = job.status.accounted_at
    if since is None or now <= since:
        return
    seconds = (now - since).total_seconds()
    per_worker = job.spec.resources.gpus_per_worker
    dollars_per_hour = 0.0
    for p in current:
        node = nodes.get(p.node or "")
        if node is None or node.gpu_type is None:
            continue
        gpu_hour = settings.prices.gpu_price(
            node.price_per_hour, node.instance_type, node.capacity_type, node.allocatable_gpus
        )
        if gpu_hour is not None:
            dollars_per_hour += gpu_hour * per_worker
    plan.gpu_seconds = job.spec.resources.gpus * seconds
    plan.cost = dollars_per_hour * seconds / 3600.0
    plan.status.set("gpuSeconds", round(job.status.gpu_seconds + plan.gpu_seconds, 3))
    plan.status.set("cost", round(job.status.cost + plan.cost, 6))
    plan.status.set("accountedAt", format_time(now))


def _capacity(nodes: Mapping[str, Node], name: str) -> str | None:
    node = nodes.get(name)
    return node.capacity_type if node else None


def _sooner(plan: Plan, seconds: float) -> None:
    plan.requeue_after_s = seconds if plan.requeue_after_s is None else min(plan.requeue_after_s, seconds)
