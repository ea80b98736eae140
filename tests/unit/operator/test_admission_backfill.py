"""Rule 3's backfill (issue 21's utilisation aim): a later job with a run-time estimate may take GPUs of the type a
waiting head reserves when it is expected to end before the head could start there, as Slurm's EASY backfill.

The fleet of every test: one 8-GPU H100 node. A 4-GPU job holds half of it and is expected to end 2 hours from
now; the head, a gang of 8 GPUs, waits for the whole node and so could start in 2 hours at the earliest."""

from __future__ import annotations

from operator_builders import a_job, a_node, a_pool, at

from strata_api import GPUType
from strata_operator.core.admission import AdmittedGang, Decision, GangRequest, Reason, admit

H100 = GPUType.H100
HOUR = 3600.0
NOW = 10 * HOUR
"""The pass's moment, seconds after the builders' T0."""


def req(key: str, gpus: int, submitted: float, hours: float | None = None, pool: str = "pool") -> GangRequest:
    """One worker of ``gpus`` H100 GPUs; ``hours``: its expectedDurationSeconds in hours (None: no estimate)."""
    return GangRequest(
        key=key,
        pool=pool,
        workers=1,
        gpus_per_worker=gpus,
        pods_per_group=1,
        gpu_types=(H100,),
        capacity_types=frozenset({"reserved"}),
        submitted=at(submitted),
        expected_duration_s=None if hours is None else hours * HOUR,
    )


def holding_half(admitted_h_ago: float = 1.0, hours: float | None = 3.0, pool: str = "pool") -> AdmittedGang:
    """The running 4-GPU job: admitted ``admitted_h_ago`` hours before the pass, expected to run ``hours``."""
    request = req("running", 4, 0, hours, pool)
    return AdmittedGang(request, H100, at(NOW - admitted_h_ago * HOUR), {"h0": 4})


def a_pass(
    queue: list[GangRequest], running: AdmittedGang, now: float | None = NOW, max_gpus: int = 1000, **pools: int
) -> Decision:
    """One pass on the node h0 with 4 GPUs free; ``pools``: name -> priority (default one pool "pool")."""
    by_name = {
        name: a_pool(name, priority=p, preemptible=p < 50, max_gpus=max_gpus)
        for name, p in (pools or {"pool": 0}).items()
    }
    return admit(queue, [running], by_name, [a_node("h0")], {"h0": 4}, now=None if now is None else at(now))


def test_a_job_expected_to_end_before_the_head_can_start_backfills_onto_its_type() -> None:
    """The head could start in 2 h: a 1-GPU job expected to run 1 h goes first and frees its GPU in time."""
    decision = a_pass([req("head", 8, 1), req("short", 1, 2, hours=1.0)], holding_half())

    assert decision.admit == {"short": H100}
    assert decision.backfilled == {"short": ("head",)}
    assert decision.waiting["head"].reason == Reason.WAITING_FOR_GPUS
    assert "short" not in decision.kept_off


def test_a_job_expected_to_end_after_the_head_could_start_waits_behind_it() -> None:
    decision = a_pass([req("head", 8, 1), req("long", 1, 2, hours=3.0)], holding_half())

    assert decision.admit == {}
    assert decision.waiting["long"].reason == Reason.BEHIND_HIGHER_PRIORITY
    assert decision.waiting["long"].message == (
        "jobs ahead in the queue wait for the H100 GPUs it would take: head (by its expectedDurationSeconds it "
        f"would not end before they could start at {at(NOW + 2 * HOUR).isoformat()})"
    )


def test_a_job_ending_exactly_when_the_head_could_start_backfills() -> None:
    assert a_pass([req("head", 8, 1), req("two-hours", 1, 2, hours=2.0)], holding_half()).admit == {"two-hours": H100}


def test_a_backfill_never_takes_pool_quota_the_head_needs() -> None:
    """The pool allows 12 GPUs: the running job holds 4, the head needs the other 8; a 1-GPU job of 1 h would
    leave it 7 and make it wait for quota (reserving nothing), so it does not go first. With 13 it does."""
    queue = [req("head", 8, 1), req("short", 1, 2, hours=1.0)]

    decision = a_pass(queue, holding_half(), max_gpus=12)

    assert decision.admit == {}
    assert decision.waiting["short"].message.endswith("(it would take pool quota they need)")
    assert a_pass(queue, holding_half(), max_gpus=13).admit == {"short": H100}


def test_a_job_without_an_estimate_never_backfills() -> None:
    decision = a_pass([req("head", 8, 1), req("unknown", 1, 2)], holding_half())

    assert decision.admit == {}
    assert decision.waiting["unknown"].message.endswith(
        "(without spec.scheduling.expectedDurationSeconds it cannot go first on their type)"
    )


def test_nobody_backfills_where_the_head_needs_gpus_of_a_job_without_an_estimate() -> None:
    """Rule 3's promise as before: the head's start is unknown, so no job, however short, goes first."""
    decision = a_pass([req("head", 8, 1), req("short", 1, 2, hours=0.1)], holding_half(hours=None))

    assert decision.admit == {}
    assert "a job holding their GPUs has no expected duration" in decision.waiting["short"].message


def test_a_job_past_its_estimate_may_end_any_moment_so_nothing_backfills_before_it() -> None:
    """Admitted 3 h ago with an estimate of 1 h: expected to end now, and so could the head start."""
    decision = a_pass([req("head", 8, 1), req("short", 1, 2, hours=0.5)], holding_half(admitted_h_ago=3.0, hours=1.0))
    assert decision.admit == {}


def test_backfilled_jobs_together_never_delay_the_head() -> None:
    """Three 1-GPU jobs of 1 h fill 3 of the 4 free GPUs; each frees its GPU before the head's start, so all go.
    A fourth of 2 h fits (ending at the head's start), a fifth finds no GPU left and waits for GPUs."""
    queue = [req("head", 8, 1), *(req(f"s{i}", 1, 2 + i, hours=1.0) for i in range(3)), req("s3", 1, 6, hours=2.0)]
    queue.append(req("s4", 1, 7, hours=1.0))

    decision = a_pass(queue, holding_half())

    assert set(decision.admit) == {"s0", "s1", "s2", "s3"}
    assert decision.waiting["s4"].reason == Reason.WAITING_FOR_GPUS


def test_the_jobs_admitted_earlier_in_the_pass_count_toward_the_heads_start() -> None:
    """A high-priority 2-GPU job of 5 h takes two of the free GPUs first; the low-priority head then could start
    only in 5 h, so a low-priority job of 3 h backfills (it would not with the 2 h start)."""
    queue = [req("hi", 2, 0, hours=5.0, pool="high"), req("head", 8, 1, pool="low"), req("three", 1, 2, 3.0, "low")]

    decision = a_pass(queue, holding_half(pool="low"), high=100, low=10)

    assert decision.admit == {"hi": H100, "three": H100}
    assert decision.backfilled == {"three": ("head",)}


def test_a_pass_without_now_backfills_nothing() -> None:
    decision = a_pass([req("head", 8, 1), req("short", 1, 2, hours=1.0)], holding_half(), now=None)

    assert decision.admit == {}
    assert decision.waiting["short"].message == "jobs ahead in the queue wait for the H100 GPUs it would take: head"


def test_a_head_that_preempts_has_no_start_to_backfill_before() -> None:
    """The high-priority head preempts the low-priority job on h0; a 1-GPU job of 1 minute still waits."""
    queue = [req("head", 8, 1, pool="high"), req("short", 1, 2, hours=1 / 60, pool="high")]

    decision = a_pass(queue, holding_half(pool="low"), high=100, low=10)

    assert [p.victim for p in decision.preempt] == ["running"]
    assert decision.admit == {}
    assert decision.waiting["short"].reason == Reason.BEHIND_HIGHER_PRIORITY


def test_the_operator_reads_the_estimate_from_the_training_job() -> None:
    job = a_job(scheduling={"expectedDurationSeconds": 5400})
    assert GangRequest.from_job(job).expected_duration_s == 5400
    assert GangRequest.from_job(a_job()).expected_duration_s is None


def test_no_lower_priority_job_backfills_where_a_higher_priority_one_waits_behind_the_head() -> None:
    """The high pool allows 12 GPUs: its running job holds 4 and its head needs 8, so its own 1-h job may not go
    first (quota). A low-priority 1-h job would: it then held the GPU a high-priority job could preempt it for,
    and took it back once requeued (issue 21's replay, 34 times for one pair). It waits; without the high-priority
    job behind the head it backfills."""
    queue = [req("head", 8, 1, pool="high"), req("high-short", 1, 2, 1.0, "high"), req("low-short", 1, 3, 1.0, "low")]

    decision = a_pass(queue, holding_half(pool="high"), max_gpus=12, high=100, low=10)

    assert decision.admit == {}
    assert decision.waiting["low-short"].message.endswith("(a job of a higher priority waits for their type too)")
    alone = a_pass([queue[0], queue[2]], holding_half(pool="high"), max_gpus=12, high=100, low=10)
    assert alone.admit == {"low-short": H100}
