"""Which of a TrainingJob's Events are posted once (before the status write, under a name of their own), so that
an operator killed right after the write loses none: the moments each attempt, or each spec generation, has at
most once."""

from __future__ import annotations

from typing import Any

import pytest
from operator_builders import a_job

from strata_api import Phase
from strata_operator.core.lifecycle import A_GENERATION, AN_ATTEMPT, once_moment_of, once_per
from strata_operator.core.status import once_event_name

Q, A, R, RS, S, F, SU = (
    Phase.QUEUED,
    Phase.ADMITTED,
    Phase.RUNNING,
    Phase.RESTARTING,
    Phase.SUCCEEDED,
    Phase.FAILED,
    Phase.SUSPENDED,
)


@pytest.mark.parametrize(
    ("before", "after", "per"),
    [
        (None, A, AN_ATTEMPT),  # admitted straight from submission
        (Q, A, AN_ATTEMPT),  # admitted (the write that counts the new attempt)
        (A, R, AN_ATTEMPT),  # AllWorkersRunning
        (R, Q, AN_ATTEMPT),  # Preempted, WorkerCheckpointed
        (A, Q, AN_ATTEMPT),  # StartTimeout, WorkerUnschedulable, PoolNotFound
        (R, RS, AN_ATTEMPT),  # WorkerFailed, NodeLost, WorkerEvicted
        (RS, Q, AN_ATTEMPT),  # BackoffElapsed
        (R, S, AN_ATTEMPT),  # AllWorkersSucceeded
        (R, F, AN_ATTEMPT),  # BackoffLimitExceeded, DeadlineExceeded, InvalidSpec
        (Q, F, AN_ATTEMPT),  # DeadlineExceeded while queued again
        (R, SU, A_GENERATION),  # Suspended: only spec.suspend does it
        (Q, SU, A_GENERATION),  # suspended, resumed, suspended again while queued: one attempt, three generations
        (None, SU, A_GENERATION),
        (SU, Q, A_GENERATION),  # Resumed
        (Q, Q, None),  # a new waiting reason: can come back within the attempt
        (None, Q, None),  # a new job waits
        (R, R, None),  # accounting, placement
        (R, None, None),  # no phase in the write
    ],
)
def test_the_moments_that_come_once(before: Phase | None, after: Phase | None, per: str | None) -> None:
    assert once_per(before, after) == per


def job(phase: Phase, **meta: Any) -> Any:
    return a_job(name="llm", status={"phase": phase.value, "attempt": 2}, **meta)


def test_an_event_posted_once_is_named_by_the_attempt_or_generation_and_reason() -> None:
    running = job(Phase.RUNNING)
    assert once_moment_of(running, RS, 2) == "a2"  # NodeLost and the like
    assert once_moment_of(job(Phase.QUEUED), A, 3) == "a3"  # admitted: the new attempt it writes
    assert once_moment_of(running, SU, 2) == f"g{running.generation}"  # suspended
    assert once_moment_of(job(Phase.QUEUED), Q, 2) is None  # a waiting reason: through kopf
    assert once_event_name("llm", "0123456789", "a2", "NodeLost") == "llm.01234567.a2.nodelost"
    # another attempt, another reason or another job of the same name: another Event
    names = {
        once_event_name("llm", "0123456789", "a2", "Admitted"),
        once_event_name("llm", "0123456789", "a3", "Admitted"),
        once_event_name("llm", "fedcba9876", "a2", "Admitted"),
        once_event_name("llm", "0123456789", "a2", "Preempted"),
    }
    assert len(names) == 4
