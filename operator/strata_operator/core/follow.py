"""What one job's daemon does with a plan between its passes: what it holds back, and what it does not redo.

:func:`strata_operator.core.lifecycle.reconcile` says what the job needs; the daemon applies it over a watch that
lags behind its own calls, and at scale every call counts. Three decisions, pure and kept here:

- Throttling (:meth:`DaemonMemory.holds_back`): status changes that only follow the gang wait, per job and across
  all jobs, unless the same pass changes the phase or records an Event; the pass's pod work goes ahead either way.
- Memory (:meth:`DaemonMemory.work`): workers this daemon created, and gates it lifted, that the watch does not
  show yet are not created or lifted again.
- Gate lifting (:meth:`DaemonMemory.to_lift`): which of the plan's gated pods are still this daemon's to ungate.

What a daemon remembers only saves calls: a new daemon (operator restart, standby taking over) starts empty,
safely.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from strata_operator.core.lifecycle import Plan
from strata_operator.core.observed import WorkerPod

REDO_AFTER_S = 60.0
"""A worker this daemon created is not created again until the watch has shown it, or for this long after the API
server answered (a pod deleted again before any pass saw it is recreated after this long at most): on a busy API
server the watch lags seconds behind, and each premature retry is a wasted call (409 AlreadyExists)."""
COALESCE_S = 5.0
"""Status changes that only follow the gang (workers ready, nodes bound, step) are written at most this often per
job: a gang of 8 starting would otherwise write its status a dozen times, and every write is an event that the
operator (and every watcher of TrainingJobs) processes again. Phase changes are written at once."""
FOLLOW_WRITES_PER_S = 20.0
"""...and all jobs together write such follow-ups at most about this often: with many jobs each one's interval
grows (500 jobs: every 25 s), so a burst of starting gangs leaves the API server to the pods themselves."""
FOLLOWING = frozenset({"workers", "placement", "progress", "accountedAt", "gpuSeconds", "cost"})
"""The status fields whose changes :data:`COALESCE_S` throttles (accounting included: a running job is re-priced at
every reconcile, and a pod event is reason enough to reconcile, not to write)."""


def coalesce_s(jobs: int) -> float:
    """Seconds between one job's follow-up status writes when ``jobs`` jobs are followed."""
    return max(COALESCE_S, jobs / FOLLOW_WRITES_PER_S)


@dataclass(frozen=True)
class Work:
    """What one pass does to the pods after the status write: the plan's, less what this daemon already did."""

    delete: Sequence[str] = ()
    force_delete: Sequence[str] = ()
    create: Sequence[int] = ()
    """Worker indices to create."""
    lift: Sequence[WorkerPod] = ()
    """Gated pods to ungate now (empty when the plan lifts only once its creations succeed)."""

    def __bool__(self) -> bool:
        return bool(self.delete or self.force_delete or self.create or self.lift)


@dataclass
class DaemonMemory:
    """What one daemon remembers between its passes (only to save calls)."""

    created: dict[str, float] = field(default_factory=dict)
    """Workers (``attempt/index``) this daemon created that no pass has seen yet: when the server answered."""
    lifted: set[str] = field(default_factory=set)
    """Pods (by uid) whose gate this daemon lifted: a gate never comes back on the same pod, so it is never lifted
    again however long the watch takes to show it (a pod recreated under the same name has a new uid)."""
    status_written_at: float = -COALESCE_S
    """When this daemon last wrote the job's status, or when it started (monotonic seconds): a new daemon's first
    follow-up waits one interval too, as the job's first writes (its submission, the admission pass's) are not its
    own, and an operator that restarts with many jobs would otherwise rewrite every one of them at once."""
    refused: tuple[int, str] | None = None
    """``(attempt, the API server's message)`` once the server refused, for good, to create an object of that
    attempt's gang; the next pass fails the job (:func:`strata_operator.core.lifecycle.reconcile`'s ``refused``).
    A new daemon that does not know it tries once more, and learns it again."""

    def refusal(self, attempt: int) -> str | None:
        """The server's message if it refused an object of ``attempt``'s gang for good."""
        return self.refused[1] if self.refused is not None and self.refused[0] == attempt else None

    def settle(self, workers: Sequence[WorkerPod], now_s: float) -> None:
        """Forget what the view now shows for itself."""
        seen = {f"{p.attempt}/{p.index}" for p in workers}
        self.created = {k: t for k, t in self.created.items() if k not in seen and now_s - t < REDO_AFTER_S}
        self.lifted &= {p.uid for p in workers}

    def work(self, plan: Plan, workers: Sequence[WorkerPod], attempt: int, has_pool: bool) -> Work:
        """The plan's pod work less what this daemon did and the watch does not show yet (after :meth:`settle`).
        Workers are created only while the job's pool exists (their pods carry its name and priority)."""
        create = [i for i in plan.create_workers if f"{attempt}/{i}" not in self.created] if has_pool else []
        lift = [] if plan.lift_when_created else self.to_lift(plan.lift_gates, {p.name: p for p in workers})
        return Work(plan.delete_pods, plan.force_delete_pods, create, lift)

    def to_lift(self, names: Sequence[str], pods: Mapping[str, WorkerPod]) -> list[WorkerPod]:
        """The named pods whose gate is still ours to lift (gated, and not already lifted by this daemon)."""
        return [pods[n] for n in names if n in pods and pods[n].gated and pods[n].uid not in self.lifted]

    def holds_back(self, plan: Plan, now_s: float, jobs: int) -> bool:
        """Whether this pass writes no status: its change only follows the gang (:data:`FOLLOWING`), there is no
        event, and this job wrote less than :func:`coalesce_s` ago. The plan then comes back when the write is due
        (``requeue_after_s``). Its pod work does not wait: a held change names no phase, attempt or gang, so no
        creation, gate or deletion depends on it being stored first (a gang's creations and lifts would otherwise
        each bring a follow-up write with them)."""
        patch = plan.status.patch()
        wait_s = self.status_written_at + coalesce_s(jobs) - now_s
        if not patch or not set(patch) <= FOLLOWING or plan.status.events or wait_s <= 0:
            return False
        plan.requeue_after_s = wait_s if plan.requeue_after_s is None else min(plan.requeue_after_s, wait_s)
        return True

    def creating(self, attempt: int, indices: Sequence[int], now_s: float) -> list[str]:
        """Remember workers as created (call again with the answer's time); their keys, to :meth:`forget`."""
        keys = [f"{attempt}/{i}" for i in indices]
        self.created.update(dict.fromkeys(keys, now_s))
        return keys

    def forget(self, keys: Sequence[str]) -> None:
        """Creations that failed: created again at the next pass (those that did exist answer 409, harmlessly)."""
        for key in keys:
            self.created.pop(key, None)
