"""The scaling decision: reactive floor, lead, stabilisation, clamps and the HPA-like baseline, on hand-made inputs."""

from __future__ import annotations

import orjson
import pytest

from strata_api.serving import ScaleReport
from strata_serving.autoscale import Forecast, Mode, Recommendation, ScalingPolicy, decide

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

TEN_PER_SECOND = [10.0] * 60
"""60 one-second bins of 10 requests: an observed 10 req/s over the default 60 s metric window."""


def a_forecast(upper: float, horizon_s: float = 90.0) -> Forecast:
    return Forecast(mean=upper * 0.8, lower=upper * 0.6, upper=upper, horizon_s=horizon_s, method="persistence")


def policy(**overrides: object) -> ScalingPolicy:
    settings: dict[str, object] = {"target_rps": 3.0, "startup_s": 60.0, "margin_s": 30.0}
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
    hpa = policy(target_rps=1.0, mode=Mode.REACTIVE)
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
    ("field", "value"), [("target_rps", 0.0), ("min_replicas", 7), ("metric_window_s", 0.0), ("startup_s", -1.0)]
)
def test_a_policy_that_cannot_work_is_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field.split("_", maxsplit=1)[0]):
        policy(**{field: value, "max_replicas": 6})
