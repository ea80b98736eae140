"""Valley scheduling: a deferrable job starts at the cheapest time-of-use power window that meets its deadline.

Tariffs here are hand-made so that every expected start and saving can be checked by hand: multiplier 1 every hour
except a cheap (or dear) hour or two, runs of whole or half hours.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from operator_builders import ROOT, a_job, a_node, a_pool

import strata_api as api
from strata_api import GPUType
from strata_api.catalog import DEFAULT_CATALOG, load_catalog, parse_catalog
from strata_api.holdback import ReservedHoldBack, TypeHold
from strata_operator.core.admission import GangRequest, Reason, admit
from strata_operator.core.observed import Node
from strata_operator.core.pods import build_worker_pods
from strata_operator.core.valley import Tariff, ValleyPlan, fleet_zones, job_tariff, plan_job, plan_start
from strata_operator.settings import OperatorSettings

H = timedelta(hours=1)
DAY0 = datetime(2026, 1, 1, tzinfo=UTC)


def hours(value: float) -> datetime:
    return DAY0 + value * H


def tariff(**cheap: float) -> Tariff:
    """Multiplier 1 every UTC hour except ``h<hour>=<multiplier>``."""
    table = [1.0] * 24
    for name, multiplier in cheap.items():
        table[int(name[1:])] = multiplier
    return Tariff(tuple(table))


def test_the_run_moves_to_the_cheap_hours_and_saves_what_they_save() -> None:
    # 00:30 now, 2 h run, hours 03 and 04 at half price, deadline 08:00: 03:00-05:00 costs 1.0 against 2.0 now
    plan = plan_start(hours(0.5), hours(0.5), hours(8), 2 * H, tariff(h3=0.5, h4=0.5))
    assert plan.start == hours(3)
    assert plan.cost == pytest.approx(1.0)
    assert plan.saving == pytest.approx(0.5)
    assert plan.defers(hours(0.5))
    assert not plan.defers(hours(3))
    assert not plan.deadline_missed
    assert plan.message == (
        "deferred to the cheapest time-of-use power window that meets its deadline: 2026-01-01T03:00:00Z to "
        "2026-01-01T05:00:00Z at a mean multiplier of 0.5 (against 1 from submission), 50.0% cheaper, ending by "
        "its deadline 2026-01-01T08:00:00Z"
    )


def test_a_tight_deadline_takes_what_cheap_power_it_can() -> None:
    # deadline 04:00: the latest start is 02:00, which runs one cheap hour: 1.5 against 2.0
    plan = plan_start(hours(0.5), hours(0.5), hours(4), 2 * H, tariff(h3=0.5, h4=0.5))
    assert plan.start == hours(2)
    assert plan.saving == pytest.approx(0.25)


def test_a_start_that_ends_inside_a_cheap_hour_is_found_between_hour_boundaries() -> None:
    # 90 min run, hour 03 cheap, deadline 03:45: the latest start 02:15 overlaps the cheap hour by 45 min
    plan = plan_start(hours(0.5), hours(0.5), hours(3.75), 1.5 * H, tariff(h3=0.5))
    assert plan.start == hours(2.25)
    assert plan.cost == pytest.approx(1.5 - 0.75 * 0.5)


def test_no_slack_starts_now_and_an_impossible_deadline_starts_now_and_says_so() -> None:
    cheap = tariff(h3=0.5, h4=0.5)
    exact = plan_start(hours(0.5), hours(0.5), hours(2.5), 2 * H, cheap)
    assert exact.start == hours(0.5)
    assert not exact.deadline_missed
    missed = plan_start(hours(0.5), hours(0.5), hours(2), 2 * H, cheap)
    assert missed.start == hours(0.5)
    assert missed.deadline_missed
    assert missed.missed_message == (
        "started at once: its expected 2h00m run cannot end by its deadline 2026-01-01T02:00:00Z (spec.scheduling)"
    )


def test_now_is_kept_when_it_is_as_cheap_as_anything_later() -> None:
    flat = plan_start(hours(0.5), hours(0.5), hours(20), 2 * H, Tariff((1.0,) * 24))
    assert flat.start == hours(0.5)
    assert flat.saving == 0
    # hour 03 is dear: finishing before it (now) and starting after it cost the same; the earliest wins
    dear = plan_start(hours(1), hours(1), hours(6), 1.5 * H, tariff(h3=2.0))
    assert dear.start == hours(1)


def test_without_a_deadline_the_job_waits_at_most_a_day_across_midnight() -> None:
    plan = plan_start(hours(22 + 1 / 6), hours(22 + 1 / 6), None, H, tariff(h23=0.8, h1=0.5))
    assert plan.start == hours(25)  # 01:00 the next day, cheaper than 23:00 tonight
    assert plan_start(hours(2), hours(2), None, H, tariff(h1=0.5)).start == hours(25)  # tomorrow's, within a day


def test_a_far_deadline_still_picks_the_first_cheapest_window() -> None:
    plan = plan_start(hours(0.5), hours(0.5), hours(24 * 365), 2 * H, tariff(h3=0.5, h4=0.5))
    assert plan.start == hours(3)


def test_the_tariff_offset_shifts_the_hours() -> None:
    shifted = Tariff(tariff(h3=0.5).hourly, offset_s=1800)  # tariff hour 03 is 03:30-04:30 UTC
    assert plan_start(hours(0.5), hours(0.5), hours(8), H, shifted).start == hours(3.5)


def test_a_job_pays_the_mean_tariff_of_the_zones_it_may_run_in() -> None:
    flat, cheap3 = [1.0] * 24, [1.0] * 3 + [0.2] + [1.0] * 20
    catalog = parse_catalog({"power": {"default": flat, "zones": {"a": cheap3, "b": flat}}})
    assert job_tariff(catalog, ["a", "a", "b"]).hourly[3] == pytest.approx(0.6)
    assert job_tariff(catalog, []).hourly == tuple(flat)


def deferrable_job(**scheduling: object) -> dict[str, object]:
    return {"deferrable": True, "expectedDurationSeconds": 7200, **scheduling}


def test_plan_job_reads_the_spec_and_prices_the_zones_of_the_nodes_the_job_may_use() -> None:
    cheap_a = [1.0] * 3 + [0.5, 0.5] + [1.0] * 19
    catalog = parse_catalog({"power": {"default": [1.0] * 24, "zones": {"a": cheap_a}}})
    in_a, mi300x_in_b = a_node("a1"), a_node("b1", GPUType.MI300X)
    nodes = [_in_zone(in_a, "a"), _in_zone(mi300x_in_b, "b")]
    job = a_job(created=hours(0.5), scheduling=deferrable_job(deadlineSeconds=27000))
    plan = plan_job(job, a_pool(), fleet_zones(nodes), catalog, hours(0.5))
    assert plan is not None
    assert plan.start == hours(3)
    assert plan.deadline == hours(8)
    assert (
        plan_job(a_job(created=hours(0.5)), a_pool(), fleet_zones(nodes), catalog, hours(0.5)) is None
    )  # not deferrable
    requeued = a_job(created=hours(0.5), scheduling=deferrable_job(), status={"phase": "Queued", "attempt": 1})
    assert plan_job(requeued, a_pool(), fleet_zones(nodes), catalog, hours(0.5)) is None  # its run has begun


@pytest.mark.parametrize("deadline", ["2026-01-01T08:00:00Z", "2026-01-01t08:00:00z", "2026-01-01T13:30:00+05:30"])
def test_a_deadline_in_any_rfc_3339_form_the_api_server_takes_is_kept_and_shown_in_utc(deadline: str) -> None:
    cheap_a = [1.0] * 3 + [0.5, 0.5] + [1.0] * 19
    catalog = parse_catalog({"power": {"default": [1.0] * 24, "zones": {"a": cheap_a}}})
    job = a_job(created=hours(0.5), scheduling=deferrable_job(deadline=deadline))
    plan = plan_job(job, a_pool(), fleet_zones([_in_zone(a_node("a1"), "a")]), catalog, hours(0.5))
    assert plan is not None
    assert plan.deadline == hours(8)
    assert plan.message.endswith("ending by its deadline 2026-01-01T08:00:00Z")


def test_the_shipped_catalog_defers_an_evening_job_to_the_night() -> None:
    # default table: 1.10-1.12 from 17:00 to 20:59, 1.00 from 22:00 to 06:59
    plan = plan_start(hours(17), hours(17), hours(24 + 8), 2 * H, job_tariff(load_catalog(DEFAULT_CATALOG), []))
    assert plan.start == hours(22)
    assert plan.saving == pytest.approx(1 - 2.0 / (1.10 + 1.12))


def test_the_example_submitted_in_the_evening_peak_starts_at_night() -> None:
    body = yaml.safe_load((ROOT / "examples" / "valley" / "nightly-finetune.yaml").read_text())
    job = a_job(created=hours(17), scheduling=body["spec"]["scheduling"], gpu_type=body["spec"]["resources"]["gpuType"])
    plan = plan_job(job, a_pool(), fleet_zones([a_node("n1")]), load_catalog(DEFAULT_CATALOG), hours(17))
    assert plan is not None
    assert plan.start == hours(22)
    assert f"{plan.saving:.1%}" == "9.1%"


def _in_zone(node: Node, zone: str) -> Node:
    return replace(node, zone=zone)


def request(key: str, submitted: datetime, valley: ValleyPlan | None = None) -> GangRequest:
    return GangRequest(
        key=key,
        pool="pool",
        workers=1,
        gpus_per_worker=8,
        pods_per_group=1,
        gpu_types=(GPUType.H100,),
        capacity_types=frozenset({"reserved"}),
        submitted=submitted,
        valley=valley,
    )


def test_a_deferred_job_waits_in_its_place_blocks_nobody_and_is_admitted_at_its_start() -> None:
    plan = plan_start(hours(0.5), hours(0.5), hours(8), 2 * H, tariff(h3=0.5, h4=0.5))
    deferred = request("team/nightly", hours(0.5), valley=plan)
    later = request("team/now", hours(0.6))
    pools, fleet = {"pool": a_pool()}, [a_node("n1")]

    before = admit([deferred, later], [], pools, fleet, {"n1": 8}, now=hours(1))
    assert before.admit == {"team/now": GPUType.H100}  # the only node goes to the job behind it
    waiting = before.waiting["team/nightly"]
    assert (waiting.position, waiting.reason, waiting.expected_start) == (1, Reason.WAITING_FOR_CHEAPER_POWER, hours(3))
    assert waiting.message == plan.message

    at_start = admit([deferred, later], [], pools, fleet, {"n1": 8}, now=hours(3))
    assert at_start.admit == {"team/nightly": GPUType.H100}  # first in the order again: it kept its place
    assert at_start.waiting["team/now"].position == 2
    # without a moment (the simulator's choice, or an older caller) nobody is deferred
    assert admit([deferred], [], pools, fleet, {"n1": 8}).admit == {"team/nightly": GPUType.H100}


def test_a_deferrable_gang_is_held_back_from_reserved_gpus_as_the_extender_will_hold_its_workers() -> None:
    # a high-priority pool's gang of 2 workers; one spot node is full, so its second worker needs a reserved node,
    # all of whose GPUs the extender holds for forecast high-priority demand
    prod = a_pool("prod", priority=100, gpuTypes=["H100"], capacityTypes=["spot", "reserved"])
    nodes = [a_node("res-0"), a_node("spot-0", capacity="spot"), a_node("spot-1", capacity="spot")]
    free = {"res-0": 8, "spot-0": 8, "spot-1": 0}
    keep = ReservedHoldBack(high_priority=100, by_gpu_type={"H100": TypeHold(keep_free=8, reserved=8, used=0, upper=8)})
    plain = replace(
        request("team/plain", hours(0)), pool="prod", workers=2, capacity_types=frozenset({"spot", "reserved"})
    )
    deferrable = replace(plain, key="team/deferrable", deferrable=True)

    assert admit([plain], [], {"prod": prod}, nodes, free, keep).admit == {"team/plain": GPUType.H100}
    decision = admit([deferrable], [], {"prod": prod}, nodes, free, keep)
    assert decision.admit == {}
    assert decision.waiting["team/deferrable"].reason == Reason.HELD_BACK
    assert decision.waiting["team/deferrable"].message.endswith(
        "fit only on those (the job is deferrable, below the extender's high-priority line)"
    )


def test_a_deferrable_jobs_workers_say_so_to_the_extender() -> None:
    settings = OperatorSettings()
    scheduling = deferrable_job(deadlineSeconds=27000)
    deferred = build_worker_pods(
        a_job(scheduling=scheduling, status={"placement": {"gpuType": "H100"}}), a_pool(), settings
    )
    plain = build_worker_pods(a_job(status={"placement": {"gpuType": "H100"}}), a_pool(), settings)
    assert {pod["metadata"]["annotations"].get(api.ANN_DEFERRABLE) for pod in deferred} == {"true"}
    assert all(api.ANN_DEFERRABLE not in pod["metadata"]["annotations"] for pod in plain)
    contract = api.PodContract.from_metadata(deferred[0]["metadata"]["labels"], deferred[0]["metadata"]["annotations"])
    assert contract.deferrable


def test_the_expected_duration_is_the_runtime_the_extender_prices_reclaims_by_when_shorter_than_the_limit() -> None:
    def runtime(pool_limit: int, duration: int) -> str:
        job = a_job(
            scheduling=deferrable_job(expectedDurationSeconds=duration), status={"placement": {"gpuType": "H100"}}
        )
        pods = build_worker_pods(job, a_pool(max_runtime_seconds=pool_limit), OperatorSettings())
        return str(pods[0]["metadata"]["annotations"][api.ANN_EXPECTED_RUNTIME])

    assert runtime(pool_limit=3600, duration=1800) == "1800"
    assert runtime(pool_limit=3600, duration=7200) == "3600"
