"""Valley scheduling in the replay (issue 21, item 4): ``strata-valley`` makes low-priority jobs deferrable, and
admission's own rule 8 (:func:`strata_operator.core.valley.plan_for`) starts each in the cheapest time-of-use
window that meets its deadline; the costs below are derived by hand from a two-price tariff."""

from __future__ import annotations

import pytest

from strata_api import GPUType
from strata_api.catalog import parse_catalog
from strata_sim.engine import simulate
from strata_sim.model import HIGH_POOL, HOUR_S, LOW_POOL, Fleet, Job, SimNode
from strata_sim.policies import StrataPolicy, all_policies
from strata_sim.report import figures

CATALOG = parse_catalog(
    {
        "prices": {"p5.48xlarge": {"on-demand": 120.0}},
        "throughput": {"bf16": {"H100": 1.0}},
        "power": {"default": [1.0] * 12 + [2.0] * 12},  # half price from midnight to noon
    }
)
FLEET = Fleet(tuple(SimNode(f"{n}-on-demand", GPUType.H100, "on-demand", "p5.48xlarge", 8) for n in "ab"))


def a_job(key: str, at_h: float, hours: float, pool: str = LOW_POOL) -> Job:
    return Job(key, at_h * HOUR_S, 1, 8, hours, pool, gpu_types=(GPUType.H100,))


def starts_h(policy: StrataPolicy, jobs: list[Job]) -> tuple[dict[str, float], float]:
    outcome = simulate(jobs, FLEET, CATALOG, policy)
    started = {r.job.key: r.first_start_s / HOUR_S for r in outcome.records if r.first_start_s is not None}
    return started, figures(outcome, CATALOG).total_cost


def test_a_low_priority_job_waits_for_the_cheap_hours_its_deadline_allows_and_pays_half() -> None:
    """``batch`` (8 GPUs, 2 h) arrives at noon, when the tariff doubles: with a deadline 12 h past its run (26 h)
    its cheapest start is midnight (24 h), both hours at 1.0: $120 x 2 h x 1.0 = $240 against $480 at once.
    ``urgent`` (high priority) and ``night`` (arriving at 1 h, in the cheap hours) start at once."""
    jobs = [a_job("batch", 12, 2), a_job("urgent", 12, 2, HIGH_POOL), a_job("night", 1, 2)]
    strata = all_policies(FLEET, CATALOG)["strata"]()
    started, cost = starts_h(strata, jobs)
    assert started == {"night": 1.0, "batch": 12.0, "urgent": 12.0}
    assert cost == pytest.approx(240 + 480 + 480)

    valley = all_policies(FLEET, CATALOG, valley_slack_s=round(12 * HOUR_S))["strata-valley"]()
    assert isinstance(valley, StrataPolicy)
    started, cost = starts_h(valley, jobs)
    assert started == {"night": 1.0, "batch": 24.0, "urgent": 12.0}
    assert cost == pytest.approx(240 + 240 + 480)
    assert (valley.deferred, valley.deferred_h, len(valley.plans)) == (1, pytest.approx(12.0), 2)


def test_a_deadline_with_no_slack_or_a_long_slack_moves_the_start_only_as_far_as_the_cheap_hours() -> None:
    """No slack past the run: ``batch`` starts on arrival. Slack of 4 h (deadline 18 h): every start up to 16 h
    pays 2.0 an hour, so it starts at once too (the earliest of equal cost). Slack of 30 h: midnight, as with 12 h."""
    jobs = [a_job("batch", 12, 2)]
    for slack_h, start_h in ((0, 12.0), (4, 12.0), (30, 24.0)):
        policy = all_policies(FLEET, CATALOG, valley_slack_s=round(slack_h * HOUR_S))["strata-valley"]()
        assert isinstance(policy, StrataPolicy)
        assert starts_h(policy, jobs)[0] == {"batch": start_h}, slack_h


def test_only_low_priority_jobs_of_at_most_a_day_are_deferrable() -> None:
    """A run longer than a day spans every hour of the daily tariff, so ``strata-valley`` leaves it undeferred:
    ``long`` (30 h) starts at noon. ``day`` (23 h) leaves out one hour of the cycle whenever it starts: from 13 h on
    that hour is a dear one (11 h at 2.0 and 12 at 1.0, against 12 and 11 from noon), so it starts at 13 h."""
    policy = all_policies(FLEET, CATALOG)["strata-valley"]()
    assert isinstance(policy, StrataPolicy)
    assert starts_h(policy, [a_job("long", 12, 30), a_job("day", 12, 23)])[0] == {"long": 12.0, "day": 13.0}
