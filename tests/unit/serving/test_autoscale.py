"""The scaling decision: reactive floor, lead, stabilisation, clamps and the HPA-like baseline, on hand-made inputs."""

from __future__ import annotations

import orjson
import pytest

from strata_api.serving import ScaleReport
from strata_serving.autoscale import (
    Forecast,
    Metric,
    Mode,
    Recommendation,
    ScalingDecision,
    ScalingPolicy,
    decide,
    latency_recommendation,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

TEN_PER_SECOND = [10.0] * 60
"""60 one-second bins of 10 requests: an observed 10 req/s over the default 60 s metric window."""


def a_forecast(upper: float, horizon_s: float = 90.0) -> Forecast:
    return Forecast(mean=upper * 0.8, lower=upper * 0.6, upper=upper, horizon_s=horizon_s, method="persistence")


def policy(**overrides: object) -> ScalingPolicy:
    settings: dict[str, object] = {"target": 3.0, "startup_s": 60.0, "margin_s": 30.0}
    settings.update(overrides)
    return ScalingPolicy(**settings)  # type: ignore[arg-type]


def test_the_reactive_floor_wins_when_the_forecast_is_below_the_load_now() -> None:
    decision = decide(1000, TEN_PER_SECOND, 1, ready=2, starting=0, policy=policy(), forecast=a_forecast(5.0))
    assert decision.observed_rps == pytest.approx(10.0)
    assert decision.reactive_floor == 4  # ceil(10 / 3)
    assert decision.replicas == 4
    assert decision.cause == "ObservedLoad"
    assert decision.reason.startswith("observed 10 req/s needs 4")


def test_the_forecast_upper_band_over_the_lead_sizes_a_scale_up() -> None:
    decision = decide(1000, TEN_PER_SECOND, 1, ready=4, starting=0, policy=policy(), forecast=a_forecast(20.0))
    assert decision.replicas == 7  # ceil(20 / 3), above the floor of 4
    assert decision.reason == "forecast upper band 20 req/s at +90s needs 7 (persistence)"
    assert decision.forecast is not None
    assert decision.forecast.upper == 20.0
    assert policy().horizon_s == 90.0
    report = decision.report()  # the router's GET /scale
    assert ScaleReport.from_json(orjson.loads(orjson.dumps(report.to_json()))) == report
    assert report.last_scale(replicas=7, reason=report.reason) == {  # the InferenceService's status.lastScale
        "time": "1970-01-01T00:16:40Z",
        "replicas": 7,
        "requested": 7,
        "reason": "Forecast",
        "message": "forecast upper band 20 req/s at +90s needs 7 (persistence)",
        "mode": "predictive",
        "observedRate": 10.0,
        "metric": "rps",
        "observedValue": 10.0,
        "forecast": 16.0,
        "forecastLower": 12.0,
        "forecastUpper": 20.0,
        "forecastMethod": "persistence",
    }


def test_predictive_without_a_forecast_keeps_the_reactive_floor_and_says_so() -> None:
    decision = decide(1000, TEN_PER_SECOND, 1, ready=1, starting=0, policy=policy(), forecast=None)
    assert decision.replicas == 4
    assert decision.reason.startswith("no forecast")
    assert "forecast" not in decision.report().last_scale(4, "ObservedLoad")


def test_scale_down_goes_only_to_the_highest_recommendation_in_the_stabilisation_window() -> None:
    past = [Recommendation(600, 9), Recommendation(800, 7)]  # 600 is 400 s old: outside the 300 s window
    decision = decide(1000, TEN_PER_SECOND, 1, ready=8, starting=0, policy=policy(), forecast=None, past=past)
    assert decision.recommended == 4
    assert decision.replicas == 7
    assert decision.cause == "Stabilizing"
    assert "held at 7" in decision.reason
    later = decide(1101, TEN_PER_SECOND, 1, ready=7, starting=0, policy=policy(), forecast=None, past=past)
    assert later.replicas == 4  # both recommendations have left the window


def test_predictive_cancels_starting_replicas_only_the_band_asked_for_once_no_recent_recommendation_does() -> None:
    # 10 req/s needs 4; a band 60 s ago asked for 9: 4 ready, 5 still starting
    band_asked = [Recommendation(940, 9, floor=4)]
    decision = decide(1000, TEN_PER_SECOND, 1, ready=4, starting=5, policy=policy(), forecast=a_forecast(5.0),
                      past=band_asked)  # fmt: skip
    assert decision.replicas == 4
    assert decision.reason.endswith(
        "; 5 starting replica(s) cancelled: neither the load in the last 300s nor a recommendation in the last 30s"
        " asks for them"
    )
    asked_lately = [*band_asked, Recommendation(975, 7, floor=4)]
    decision = decide(1000, TEN_PER_SECOND, 1, 4, 5, policy(), a_forecast(5.0), past=asked_lately)
    assert (decision.replicas, decision.cause) == (7, "Stabilizing")  # 25 s ago 7 were asked for: 2 cancelled
    assert "; 2 starting replica(s) cancelled" in decision.reason
    reactive = decide(1000, TEN_PER_SECOND, 1, 4, 5, policy(mode=Mode.REACTIVE), None, past=band_asked)
    assert reactive.replicas == 9  # HPA holds a starting replica like a ready one
    hpa_like = decide(1000, TEN_PER_SECOND, 1, 4, 5, policy(starting_hold_s=300.0), a_forecast(5.0), band_asked)
    assert (hpa_like.replicas, hpa_like.cause) == (9, "Stabilizing")


def test_predictive_holds_starting_replicas_that_the_observed_load_asked_for() -> None:
    load_asked = [Recommendation(800, 8, floor=8)]  # 200 s ago the load itself needed 8
    decision = decide(1000, TEN_PER_SECOND, 1, ready=3, starting=6, policy=policy(), forecast=a_forecast(5.0),
                      past=load_asked)  # fmt: skip
    assert (decision.replicas, decision.cause) == (8, "Stabilizing")  # what HPA holds: the load asked for 8
    ready_only = decide(1000, TEN_PER_SECOND, 1, 9, 0, policy(), a_forecast(5.0), past=[Recommendation(940, 9)])
    assert ready_only.replicas == 9  # ready replicas are held by the whole window, as before


def test_stabilisation_never_scales_up() -> None:
    past = [Recommendation(900, 9)]
    decision = decide(1000, TEN_PER_SECOND, 1, ready=5, starting=0, policy=policy(), forecast=None, past=past)
    assert decision.replicas == 5  # held at the current 5, not raised to 9


def test_replicas_are_clamped_to_min_and_max() -> None:
    bounded = policy(min_replicas=5, max_replicas=6)
    low = decide(1000, TEN_PER_SECOND, 1, ready=5, starting=0, policy=bounded, forecast=a_forecast(1.0))
    high = decide(1000, TEN_PER_SECOND, 1, ready=5, starting=0, policy=bounded, forecast=a_forecast(30.0))
    assert (low.replicas, high.replicas) == (5, 6)
    assert (low.cause, high.cause) == ("MinReplicas", "MaxReplicas")
    assert high.recommended == 10
    assert "clamped to [5, 6]" in high.reason


def test_reactive_keeps_the_count_within_the_tolerance_and_follows_the_ratio_outside_it() -> None:
    hpa = policy(target=1.0, mode=Mode.REACTIVE)
    near = decide(1000, [10.5] * 60, 1, ready=8, starting=2, policy=hpa, forecast=a_forecast(50.0))
    assert near.replicas == 10  # 10.5 / (10 * 1) = 1.05: within 10%
    assert near.cause == "WithinTolerance"
    assert near.forecast is None  # reactive reads no forecast
    far = decide(1000, [12.0] * 60, 1, ready=8, starting=2, policy=hpa, forecast=None)
    assert far.replicas == 12


def test_the_observed_rate_is_the_mean_over_the_metric_window() -> None:
    counts = [100.0] * 60 + [0.0] * 30 + [30.0] * 30  # per 1 s bins; the last 60 s average 15 req/s
    decision = decide(1000, counts, 1, ready=1, starting=0, policy=policy(), forecast=None)
    assert decision.observed_rps == pytest.approx(15.0)
    per_ten_seconds = [500.0, 0.0, 0.0, 300.0, 300.0, 300.0, 300.0]  # 10 s bins: the last 6 are the window
    wide = decide(1000, per_ten_seconds, 10, ready=1, starting=0, policy=policy(), forecast=None)
    assert wide.observed_rps == pytest.approx(1200 / 60)


@pytest.mark.parametrize(
    ("field", "value"), [("target", 0.0), ("min_replicas", 7), ("metric_window_s", 0.0), ("startup_s", -1.0)]
)
def test_a_policy_that_cannot_work_is_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field.split("_", maxsplit=1)[0]):
        policy(**{field: value, "max_replicas": 6})


# --- concurrency: KPA's target, requests in flight per replica


def test_concurrency_sizes_by_the_mean_requests_in_flight_over_the_window() -> None:
    # 60 one-second bins: 10 requests a second, each 1.5 s long, hold 15 requests in flight on average
    busy = [15.0] * 60
    kpa = policy(target=4.0, metric=Metric.CONCURRENCY)
    decision = decide(1000, TEN_PER_SECOND, 1, ready=2, starting=0, policy=kpa, forecast=None, busy=busy)
    assert decision.observed == pytest.approx(15.0)
    assert decision.observed_rps == pytest.approx(10.0)  # the request rate still reported beside it
    assert (decision.reactive_floor, decision.replicas, decision.cause) == (4, 4, "ObservedLoad")  # ceil(15 / 4)
    assert decision.reason == "no forecast; observed 15 in flight needs 4"
    report = decision.report()
    assert (report.metric, report.observed, report.observed_rps) == ("concurrency", 15.0, 10.0)
    assert ScaleReport.from_json(orjson.loads(orjson.dumps(report.to_json()))) == report


def test_concurrency_is_the_time_average_not_the_last_sample() -> None:
    busy = [40.0] * 30 + [0.0] * 30  # 40 in flight for half the window, then none: 20 on average
    kpa = policy(target=5.0, metric=Metric.CONCURRENCY, mode=Mode.REACTIVE)
    decision = decide(1000, TEN_PER_SECOND, 1, ready=1, starting=0, policy=kpa, forecast=None, busy=busy)
    assert decision.observed == pytest.approx(20.0)
    assert decision.replicas == 4


def test_predictive_concurrency_orders_for_the_forecast_concurrency_upper_band() -> None:
    kpa = policy(target=4.0, metric=Metric.CONCURRENCY)
    decision = decide(1000, TEN_PER_SECOND, 1, 2, 0, kpa, forecast=a_forecast(30.0), busy=[15.0] * 60)
    assert (decision.replicas, decision.cause) == (8, "Forecast")  # ceil(30 / 4) above the floor of 4
    assert decision.reason == "forecast upper band 30 in flight at +90s needs 8 (persistence)"


def test_the_concurrency_metric_without_its_request_seconds_is_refused() -> None:
    with pytest.raises(ValueError, match="busy"):
        decide(1000, TEN_PER_SECOND, 1, 1, 0, policy(metric=Metric.CONCURRENCY), forecast=None)


# --- p99Latency: a controller around a target the p99 stays under


LATENCY = {"target": 0.2, "metric": Metric.P99_LATENCY, "mode": Mode.REACTIVE, "min_replicas": 1, "max_replicas": 50}


@pytest.mark.parametrize(
    ("p99_s", "rate", "ready", "starting", "expected", "cause"),
    [
        (0.3, 10.0, 4, 0, 6, "LatencyAboveTarget"),  # ceil(4 x 1.5): proportional to the excess
        (0.21, 10.0, 10, 0, 11, "LatencyAboveTarget"),  # just over: at least one more
        (2.0, 10.0, 2, 0, 6, "LatencyAboveTarget"),  # 10x over: bounded to max(current, 4) more
        (2.0, 10.0, 10, 0, 20, "LatencyAboveTarget"),  # bounded to doubling
        (0.3, 10.0, 3, 2, 5, "AwaitingStartup"),  # replicas already ordered have not helped yet
        (0.15, 10.0, 4, 0, 4, "WithinTolerance"),  # within [0.1, 0.2]: the hysteresis band
        (0.05, 10.0, 4, 0, 3, "LatencyBelowTarget"),  # well under: one fewer
        (None, 10.0, 4, 0, 4, "WithinTolerance"),  # requests, none finished: nothing measured
        (None, 10.0, 0, 0, 1, "ObservedLoad"),  # requests and no replica: one
        (None, 0.0, 4, 0, 0, "Idle"),  # nothing arrived: down to the floor (after stabilisation)
    ],
)
def test_the_latency_controller(
    p99_s: float | None, rate: float, ready: int, starting: int, expected: int, cause: str
) -> None:
    recommended, got_cause, _ = latency_recommendation(p99_s, rate, ready, starting, policy(**LATENCY))
    assert (recommended, got_cause) == (expected, cause)


def test_a_latency_target_scales_up_on_the_p99_and_reports_it() -> None:
    slo = policy(**{**LATENCY, "mode": Mode.PREDICTIVE})
    decision = decide(1000, TEN_PER_SECOND, 1, 2, 0, slo, forecast=a_forecast(99.0), p99_s=0.5)
    assert (decision.replicas, decision.cause) == (5, "LatencyAboveTarget")  # ceil(2 x 0.5 / 0.2)
    assert decision.reason == "p99 0.5 s is above the 0.2 s target: 5 (a latency target is not forecast)"
    assert decision.forecast is None
    report = decision.report()
    assert (report.metric, report.observed, report.forecast) == ("p99Latency", 0.5, None)
    assert report.to_json()["observedValue"] == 0.5


def test_a_latency_target_scales_down_one_replica_per_stabilisation_window_and_never_below_the_floor() -> None:
    slo = policy(**{**LATENCY, "stabilisation_s": 300.0, "min_replicas": 2})
    past = [Recommendation(-15, 4)]  # the load before needed 4
    replicas, times = 4, []
    for now in range(0, 1500, 15):  # 25 minutes of a p99 far under the target
        decision = decide(now, TEN_PER_SECOND, 1, replicas, 0, slo, forecast=None, past=past, p99_s=0.01)
        past.append(Recommendation(now, decision.recommended))
        if decision.replicas < replicas:
            times.append(now)
        replicas = decision.replicas
    assert replicas == 2
    assert times == [285, 585]  # one fewer once a whole window (300 s) has recommended it, then the floor holds


def test_idle_goes_to_the_floor_once_the_stabilisation_window_is_over() -> None:
    slo = policy(**{**LATENCY, "stabilisation_s": 60.0})
    idle = [0.0] * 60
    held = decide(1000, idle, 1, 5, 0, slo, forecast=None, past=[Recommendation(950, 5)])
    assert (held.replicas, held.cause) == (5, "Stabilizing")
    after = decide(1011, idle, 1, 5, 0, slo, forecast=None, past=[Recommendation(950, 5)])
    assert (after.replicas, after.cause, after.observed) == (1, "MinReplicas", None)


def test_a_report_from_a_router_without_a_metric_reads_as_rps() -> None:
    body = {"time": "1970-01-01T00:16:40Z", "mode": "reactive", "replicas": 3, "reason": "ObservedLoad",
            "observedRate": 2.5}  # fmt: skip
    report = ScaleReport.from_json(body)
    assert (report.metric, report.observed, report.observed_rps) == ("rps", None, 2.5)


@pytest.mark.parametrize("mode", [Mode.REACTIVE, Mode.PREDICTIVE])
@pytest.mark.parametrize("metric", [Metric.RPS, Metric.CONCURRENCY, Metric.P99_LATENCY])
def test_requests_held_for_want_of_a_replica_ask_for_one_after_the_window_forgot_them(
    mode: Mode, metric: Metric
) -> None:
    """A service scaled to zero: the router holds a request whose arrival has left the metric's window (the first
    replica takes a while to start), so the metric alone asks for none; the waiting request asks for one."""
    quiet = [0.0] * 60
    scaled_to_zero = policy(mode=mode, metric=metric, min_replicas=0, max_replicas=3, target=0.5)

    def with_waiting(waiting: int, starting: int = 0) -> ScalingDecision:
        return decide(1000, quiet, 1, 0, starting, scaled_to_zero, None, busy=quiet, waiting=waiting)

    assert with_waiting(0).replicas == 0
    held = with_waiting(2)
    assert (held.replicas, held.cause) == (1, "RequestsWaiting")
    assert held.reason == "2 request(s) wait in the router for a replica, and none is ready or starting"
    kept = with_waiting(2, starting=1)  # the one they wait for, which the window no longer asks for
    assert (kept.replicas, kept.cause) == (1, "RequestsWaiting")
    assert kept.reason == "2 request(s) wait in the router for a replica, and the one starting is kept for them"
