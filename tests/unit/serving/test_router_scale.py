"""The router's autoscaler as a user of ``GET /scale`` (the operator) sees it: a real router process in front of a
stand-in replica, loaded, deciding each interval; and the live scaler's bookkeeping on hand-made inputs."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from router_support import Process, Processes, metrics, post, total, wait_ready, wait_routable

from strata_api.serving import SCALE_APPLIED_PARAM, SCALE_PATH, ScaleReport
from strata_serving.autoscale import Metric, Mode, ScalingPolicy
from strata_serving.forecasters import ForecastSettings
from strata_serving.router_settings import RouterSettings, load_router_settings
from strata_serving.scaler import LiveScaler, starting_replicas, usable_candidates

pytestmark = pytest.mark.timeout(90)


async def scale(session: aiohttp.ClientSession, router: Process) -> tuple[int, dict[str, object]]:
    async with session.get(router.url + SCALE_PATH) as response:
        return response.status, orjson.loads(await response.read())


async def report_after(session: aiohttp.ClientSession, router: Process, since: float) -> ScaleReport:
    """The first decision made after ``since`` (unix seconds, whole)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, body = await scale(session, router)
        if status == 200:
            report = ScaleReport.from_json(body)
            if report.time > time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)):
                return report
        await asyncio.sleep(0.1)
    raise AssertionError(f"no decision after {since}:\n{router.log_tail()}")


AUTOSCALE = (
    "--autoscale-target", "5", "--autoscale-min-replicas", "1", "--autoscale-max-replicas", "10",
    "--autoscale-interval-s", "0.5", "--autoscale-window-s", "2", "--autoscale-stabilisation-s", "0",
)  # fmt: skip


async def test_the_router_scales_with_the_load_it_sees_and_answers_it_at_scale(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    replica = processes.fake_replica("replica", "--delay", "0.005", "--slots", "8")
    router = processes.router([replica.address], "--autoscale-mode", "reactive", *AUTOSCALE)
    await wait_ready(replica)
    await wait_ready(router)
    await wait_routable(router, 1)

    quiet = await report_after(session, router, time.time())
    assert (quiet.replicas, quiet.mode, quiet.ready, quiet.starting) == (1, "reactive", 1, 0)

    # about 30 requests per second for 3 s: the 2 s window sees ~30 req/s, 5 req/s per replica wants ~6
    started = time.time()
    while time.time() - started < 3:
        answers = await asyncio.gather(*(post(session, router.url + "/v1/generate", {"prompt": "x"}) for _ in range(3)))
        assert all(answer.status == 200 for answer in answers)
        await asyncio.sleep(0.1)
    busy = await report_after(session, router, time.time() - 1)
    assert 4 <= busy.replicas <= 10, busy
    assert busy.reason == "ObservedLoad"
    assert busy.observed_rps > 15
    assert f"needs {busy.replicas}" in busy.message
    assert total(await metrics(router), "strata_router_scale_replicas") >= 4

    await asyncio.sleep(2.5)  # the window empties; no stabilisation: back to the minimum
    idle = await report_after(session, router, time.time())
    assert (idle.replicas, idle.reason) == (1, "MinReplicas")


async def test_replicas_the_operator_set_that_have_no_address_yet_count_as_starting(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    replica = processes.fake_replica("replica")
    router = processes.router([replica.address], "--autoscale-mode", "reactive", *AUTOSCALE)
    await wait_ready(replica)
    await wait_ready(router)
    await wait_routable(router, 1)
    seen = await report_after(session, router, time.time())
    assert (seen.ready, seen.starting) == (1, 0)

    async with session.get(f"{router.url}{SCALE_PATH}?{SCALE_APPLIED_PARAM}=4") as response:
        assert response.status == 200  # the operator has set 4: 3 of them still wait for a node, no address yet
    told = await report_after(session, router, time.time())
    assert (told.ready, told.starting) == (1, 3)
    for bad in ("-1", "lots", "2.5", "1000000", "9" * 5000):  # 5,000 digits: more than int() reads from text
        async with session.get(f"{router.url}{SCALE_PATH}?{SCALE_APPLIED_PARAM}={bad}") as response:
            assert response.status == 400
            body = orjson.loads(await response.read())
            assert body["error"] == f"applied must be a whole number of replicas from 0 to 999999, got {bad[:40]!r}"
    kept = await report_after(session, router, time.time())
    assert kept.starting == 3  # a refused value changes nothing


def test_starting_replicas_are_the_not_ready_ones_seen_or_the_applied_ones_past_the_ready() -> None:
    assert starting_replicas(ready=2, not_ready=1, applied=None) == 1  # not told: what the router sees
    assert starting_replicas(ready=2, not_ready=1, applied=6) == 4  # 3 of them have no address yet
    assert starting_replicas(ready=5, not_ready=2, applied=3) == 2  # a scale-down under way: still seen


async def test_a_running_router_takes_a_new_lead_from_its_file_and_reports_it(
    processes: Processes, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """The operator's ConfigMap, as the kubelet swaps it: the file is replaced, the process keeps running, and
    its next decision looks ahead by the new lead (the metric says which)."""
    lead = tmp_path / "autoscale-startup-s"
    lead.write_text("45")
    replica = processes.fake_replica("replica")
    router = processes.router(
        [replica.address], "--autoscale-mode", "reactive", "--autoscale-startup-file", str(lead), *AUTOSCALE
    )
    await wait_ready(replica)
    await wait_ready(router)

    async def lead_reported(seconds: float) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if total(await metrics(router), "strata_router_scale_lead_seconds") == seconds:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the router does not report a {seconds} s lead:\n{router.log_tail()}")

    await lead_reported(45.0)
    swapped = tmp_path / "new"
    swapped.write_text("75")
    swapped.replace(lead)  # a rename, as the kubelet's symlink swap: the file's inode changes
    await lead_reported(75.0)
    assert router.popen.poll() is None
    assert "the lead is now 75 s (was 45 s)" in router.log_tail()


async def test_scale_is_404_with_a_reason_without_an_autoscaler_or_before_the_first_decision(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    replica = processes.fake_replica("replica")
    plain = processes.router([replica.address], name="plain")
    slow = processes.router(
        [replica.address], "--autoscale-mode", "predictive", "--autoscale-interval-s", "3600", name="slow"
    )
    await asyncio.gather(wait_ready(replica), wait_ready(plain), wait_ready(slow))
    assert await scale(session, plain) == (404, {"error": "this router runs no autoscaler (autoscale_mode is empty)",
                                                  "reason": "not autoscaling"})  # fmt: skip
    status, body = await scale(session, slow)
    assert (status, body["reason"]) == (404, "first interval not over")


def test_each_router_scales_its_share_of_the_requests_by_the_number_of_routers() -> None:
    policy = ScalingPolicy(target=2.0, startup_s=0, min_replicas=1, max_replicas=50, metric_window_s=10)
    alone, one_of_three = (LiveScaler(policy, interval_s=5, peers=peers) for peers in (1, 3))
    for second in range(100, 110):
        for scaler in (alone, one_of_three):
            scaler.observe(second + 0.5, requests=4)
    assert alone.tick(110.0, ready=1, starting=0).observed_rps == pytest.approx(4.0)
    decision = one_of_three.tick(110.0, ready=1, starting=0)
    assert decision.observed_rps == pytest.approx(12.0)
    assert decision.replicas == 6
    assert one_of_three.series().tolist() == [pytest.approx(12.0)]


def test_a_fresh_router_counts_the_seconds_it_did_not_see_as_quiet_and_predicts_nothing_yet() -> None:
    policy = ScalingPolicy(target=1.0, startup_s=30, min_replicas=1, max_replicas=50, metric_window_s=60)
    settings = ForecastSettings(bin_s=15)
    scaler = LiveScaler(
        policy, interval_s=15, candidates=usable_candidates(settings).usable, forecast_settings=settings
    )
    for second in range(1000, 1015):
        scaler.observe(second, requests=8)
    decision = scaler.tick(1015.0, ready=1, starting=1)
    assert decision.observed_rps == pytest.approx(2.0)  # 120 requests over the 60 s window, not over 15 s
    assert decision.reason.startswith("no forecast")  # restarted: no history, the reactive floor until it has some
    assert (decision.mode, decision.replicas) == (Mode.PREDICTIVE, 2)


def test_the_lstm_is_left_out_where_torch_is_not_installed() -> None:
    settings = ForecastSettings(bin_s=15)
    without_torch = usable_candidates(settings, importable=frozenset({"prophet"}))
    assert [c.name for c in without_torch.usable] == ["persistence", "seasonal", "prophet"]
    assert without_torch.dropped == ["lstm: torch is not installed"]
    assert [c.name for c in usable_candidates(settings).usable] == ["persistence", "seasonal", "prophet", "lstm"]


def test_with_enough_history_a_predictive_router_scales_ahead_of_a_rising_load() -> None:
    policy = ScalingPolicy(target=1.0, startup_s=60, min_replicas=1, max_replicas=100, stabilisation_s=0)
    settings = ForecastSettings(bin_s=15, eval_origins=40)
    candidates = usable_candidates(settings, importable=frozenset()).usable  # persistence and seasonal: no fits
    scaler = LiveScaler(policy, interval_s=15, candidates=candidates, forecast_settings=settings)
    decisions = []
    for tick in range(1, 61):  # 15 minutes of a load that grows by 1 request per 15 s bin
        start = 1_000_000 + (tick - 1) * 15
        for second in range(start, start + 15):
            scaler.observe(second, requests=tick)
        decisions.append(scaler.tick(start + 15.0, ready=decisions[-1].replicas if decisions else 1, starting=0))
    first, last = decisions[0], decisions[-1]
    assert first.forecast is None
    assert first.reason.startswith("no forecast")
    assert last.forecast is not None
    assert last.forecast.method == "persistence"
    # the band learnt that the load keeps rising: it orders for the load one lead ahead, above what it sees now
    assert last.forecast.upper > last.observed_rps
    assert (last.cause, last.replicas) == ("Forecast", math.ceil(last.forecast.upper - 1e-9))
    assert last.replicas > last.reactive_floor
    assert scaler.refit_worker(60.0) is None  # nothing to refit without Prophet or the LSTM


# --- the concurrency and p99 metrics, in the live router


async def load(session: aiohttp.ClientSession, router: Process, clients: int, seconds: float) -> None:
    """``clients`` clients, each sending its next request as soon as the last is answered, for ``seconds``."""

    async def client() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            answer = await post(session, router.url + "/v1/generate", {"prompt": "x"})
            assert answer.status == 200, answer

    await asyncio.gather(*(client() for _ in range(clients)))


async def three_replicas(processes: Processes, *flags: str) -> list[str]:
    replicas = [processes.fake_replica(f"replica-{index}", *flags) for index in range(3)]
    await asyncio.gather(*(wait_ready(replica) for replica in replicas))
    return [replica.address for replica in replicas]


async def test_the_router_scales_on_the_requests_in_flight_it_sees(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    # slow replicas that serve many at once: 8 clients keep about 8 requests in flight; 2 per replica wants 4
    replicas = await three_replicas(processes, "--delay", "0.2", "--slots", "64")
    router = processes.router(
        replicas, "--autoscale-mode", "reactive", "--autoscale-metric", "concurrency",
        *AUTOSCALE[:-2], "--autoscale-target", "2", "--autoscale-stabilisation-s", "4",
    )  # fmt: skip
    await wait_ready(router)
    await wait_routable(router, 3)

    await load(session, router, clients=8, seconds=3)
    busy = await report_after(session, router, time.time() - 1)
    assert busy.metric == "concurrency"
    assert busy.observed is not None
    assert 6 <= busy.observed <= 8.5, busy  # about 8: the clients' own gaps aside
    assert (busy.replicas, busy.reason) == (4, "ObservedLoad"), busy  # ceil(observed / 2)
    assert "in flight" in busy.message

    await asyncio.sleep(2.2)  # the 2 s window is empty, but the last 4 s of decisions remember the load: held at 3
    held = await report_after(session, router, time.time())
    assert held.observed is not None
    assert held.observed < 0.5
    assert (held.replicas, held.reason) == (3, "Stabilizing"), held
    await asyncio.sleep(4.2)  # every decision that saw the load has left the stabilisation window
    idle = await report_after(session, router, time.time())
    assert (idle.replicas, idle.reason) == (1, "MinReplicas"), idle


async def test_the_router_scales_up_while_the_p99_is_over_its_target_and_down_when_idle(
    processes: Processes, session: aiohttp.ClientSession
) -> None:
    # one request at a time, 50 ms each: 12 clients on 3 replicas queue about 4 deep, a request takes about 0.2 s
    replicas = await three_replicas(processes, "--delay", "0.05", "--slots", "1", "--max-queue", "64")
    router = processes.router(
        replicas, "--autoscale-mode", "predictive", "--autoscale-metric", "p99Latency",
        *AUTOSCALE[:-2], "--autoscale-target", "0.1", "--autoscale-stabilisation-s", "4",
    )  # fmt: skip
    await wait_ready(router)
    await wait_routable(router, 3)

    await load(session, router, clients=12, seconds=3)
    slow = await report_after(session, router, time.time() - 1)
    assert slow.metric == "p99Latency"
    assert slow.observed is not None
    assert slow.observed > 0.15, slow
    assert slow.reason == "LatencyAboveTarget", slow
    assert slow.replicas == min(math.ceil(3 * slow.observed / 0.1), 3 + 4), slow  # the excess, bounded
    assert slow.forecast is None
    assert "not forecast" in slow.message

    await asyncio.sleep(2.2)  # no request in the 2 s window: idle, held at the 3 running by the last 4 s of decisions
    held = await report_after(session, router, time.time())
    assert (held.replicas, held.observed, held.reason) == (3, None, "Stabilizing"), held
    await asyncio.sleep(4.2)  # every decision that saw the load has left the stabilisation window
    idle = await report_after(session, router, time.time())
    assert (idle.replicas, idle.reason) == (1, "MinReplicas"), idle


def test_requests_in_flight_are_booked_by_the_second_they_were_in_flight() -> None:
    kpa = ScalingPolicy(target=1.0, startup_s=0, metric=Metric.CONCURRENCY, metric_window_s=10, max_replicas=50)
    alone, one_of_two = (LiveScaler(kpa, interval_s=5, peers=peers) for peers in (1, 2))
    for scaler in (alone, one_of_two):
        scaler.observe(100.0)
        scaler.finish(102.5, latency_s=2.5)  # 2.5 request-seconds
        scaler.observe(108.25)  # still in flight at the tick: 1.75 request-seconds so far
    decision = alone.tick(110.0, ready=1, starting=0)
    assert decision.observed == pytest.approx((2.5 + 1.75) / 10)
    assert decision.metric is Metric.CONCURRENCY
    assert decision.observed_rps == pytest.approx(0.2)
    assert one_of_two.tick(110.0, ready=1, starting=0).observed == pytest.approx(2 * (2.5 + 1.75) / 10)
    assert alone.series().tolist() == [pytest.approx(0.425)]  # the forecasters read the concurrency


def test_the_p99_is_over_the_requests_replicas_answered_in_the_window() -> None:
    slo = ScalingPolicy(target=0.5, startup_s=0, metric=Metric.P99_LATENCY, metric_window_s=10, max_replicas=50)
    scaler = LiveScaler(slo, interval_s=5)
    for index in range(100):  # 99 fast answers and one slow one, spread over the window
        second = 100 + index / 10
        scaler.observe(second)
        scaler.finish(second, latency_s=3.0 if index == 50 else 0.1)
    scaler.observe(109.0)
    scaler.finish(109.0, latency_s=None)  # the router's own 503: not a replica's latency
    decision = scaler.tick(110.0, ready=2, starting=0)
    assert decision.observed == pytest.approx(0.1 + 0.01 * 2.9, rel=1e-6)  # numpy's p99 of the 100 latencies
    assert (decision.cause, decision.replicas) == ("LatencyBelowTarget", 1)
    assert scaler.series().size == 0  # a latency target is not forecast
    assert (
        LiveScaler(slo, interval_s=5, candidates=usable_candidates(ForecastSettings(bin_s=5)).usable).candidates == []
    )


def test_the_metric_and_target_settings() -> None:
    env = {"STRATA_ROUTER_AUTOSCALE_MODE": "reactive", "STRATA_ROUTER_AUTOSCALE_METRIC": "p99Latency",
           "STRATA_ROUTER_AUTOSCALE_TARGET": "0.25"}  # fmt: skip
    policy = load_router_settings([], env=env).scaling_policy()
    assert (policy.metric, policy.target) == (Metric.P99_LATENCY, 0.25)
    earlier = {"STRATA_ROUTER_AUTOSCALE_MODE": "reactive", "STRATA_ROUTER_AUTOSCALE_TARGET_RPS": "4"}
    policy = load_router_settings([], env=earlier).scaling_policy()  # what an operator that predates the metric sets
    assert (policy.metric, policy.target, policy.target_rps) == (Metric.RPS, 4.0, 4.0)
    with pytest.raises(ValueError, match="autoscale_metric must be one of rps, concurrency, p99Latency, got 'qps'"):
        RouterSettings(autoscale_mode="reactive", autoscale_metric="qps")
    with pytest.raises(ValueError, match="autoscale_target_rps is a request-rate target"):
        RouterSettings(autoscale_metric="concurrency", autoscale_target_rps=3.0)
    with pytest.raises(ValueError, match="not both"):
        RouterSettings(autoscale_target=2.0, autoscale_target_rps=3.0)
    with pytest.raises(ValueError, match="target must be > 0"):
        RouterSettings(autoscale_mode="reactive", autoscale_metric="concurrency", autoscale_target=0.0)
