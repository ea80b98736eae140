"""The trace replay: its accounting on step loads worked out by hand, and the trace loader's errors."""

from __future__ import annotations

import gzip
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from strata_serving.autoscale import Forecast, Metric, Mode, ScalingPolicy
from strata_serving.replay import (
    INITIAL,
    ReplayConfig,
    Share,
    TraceError,
    attribute,
    compare,
    demand_rate,
    exact_forecasts,
    fixed_fleet,
    hindsight_floor,
    load_trace,
    per_second_busy,
    per_second_counts,
    rate_series,
    simulate,
)

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

STEP_CONFIG = ReplayConfig(interval_s=15, bin_s=15, demand_window_s=1, initial_replicas=1, duration_s=300)


def ten_per_second(start_s: int, end_s: int) -> np.ndarray:
    """Ten arrivals in each second of [start_s, end_s)."""
    return np.array([s + i / 10 for s in range(start_s, end_s) for i in range(10)])


def step_policy(mode: Mode, **overrides: float) -> ScalingPolicy:
    settings: dict[str, float] = {"startup_s": 60, "metric_window_s": 15, "margin_s": 0}
    settings.update(overrides)
    return ScalingPolicy(target=1.0, mode=mode, **settings)  # type: ignore[arg-type]


def perfect_from_bin_2(n: int) -> Forecast | None:
    return Forecast(mean=10, lower=10, upper=10, horizon_s=60, method="oracle") if n >= 2 else None


def test_a_step_load_costs_the_reactive_policy_its_start_up_time_in_misses() -> None:
    # 10 req/s from second 90. The tick at 105 sees it ([90, 105) observed) and orders 9 replicas, ready at 165:
    # seconds 90..164 miss (75); 1 replica for 300 s plus 9 from second 105 on cost 300 + 9 * 195.
    result = simulate(ten_per_second(90, 300), step_policy(Mode.REACTIVE), STEP_CONFIG)
    assert (result.slo_miss_s, result.replica_seconds) == (75, 2055.0)
    assert result.ready[164] == 1
    assert result.ready[165] == 10
    assert result.provisioned[104] == 1
    assert result.provisioned[105] == 10


def test_a_forecast_one_start_up_ahead_covers_the_step() -> None:
    # The forecast of 10 req/s is read at the tick at 30 (bin 2): 9 replicas ready at 90, when the load comes.
    arrivals = ten_per_second(90, 300)
    result = simulate(arrivals, step_policy(Mode.PREDICTIVE), STEP_CONFIG, perfect_from_bin_2)
    assert (result.slo_miss_s, result.replica_seconds) == (0, 300 + 9 * 270)
    assert result.decisions[1].reason == "forecast upper band 10 req/s at +60s needs 10 (oracle)"
    fixed = fixed_fleet(arrivals, step_policy(Mode.REACTIVE), STEP_CONFIG)
    assert (fixed.slo_miss_s, fixed.replica_seconds) == (0, 3000.0)
    all_three = compare(arrivals, step_policy(Mode.REACTIVE), STEP_CONFIG, perfect_from_bin_2)
    assert {name: r.slo_miss_s for name, r in all_three.items()} == {"predictive": 0, "reactive": 75, "fixed": 0}


def test_an_exact_forecast_is_the_demands_true_peak_over_its_window() -> None:
    arrivals = ten_per_second(90, 300)
    demand = demand_rate(per_second_counts(arrivals, 300), 1)
    now = exact_forecasts(demand, 15, 0, 60)
    assert [(f.upper, f.mean, f.lower) for f in (now(1), now(2)) if f] == [(0.0, 0.0, 0.0), (10.0, 10.0, 10.0)]
    assert now(20) is None  # the origin at 300 s is past the trace
    lead = exact_forecasts(demand, 15, 75, 75)
    assert [lead(n).upper for n in (0, 1) if lead(n)] == [0.0, 10.0]  # second 75, then second 90
    # through the rule it is the hand-made forecast of the step above: 9 replicas ordered at 30, ready at 90
    result = simulate(arrivals, step_policy(Mode.PREDICTIVE), STEP_CONFIG, now)
    assert (result.slo_miss_s, result.replica_seconds) == (0, 300 + 9 * 270)


def test_the_hindsight_floor_orders_each_replica_one_start_up_before_it_is_needed() -> None:
    # 10 req/s from second 90: 10 replicas needed from 90, so paid from 30 (start-up 60), 1 before: what the
    # rule costs with a forecast right one start-up ahead, and no less
    floor = hindsight_floor(ten_per_second(90, 300), step_policy(Mode.REACTIVE), STEP_CONFIG)
    assert (floor.slo_miss_s, floor.replica_seconds) == (0, 30 + 10 * 270)
    assert (floor.provisioned[29], floor.provisioned[30], floor.ready[89], floor.ready[90]) == (1, 10, 1, 10)
    perfect = simulate(ten_per_second(90, 300), step_policy(Mode.PREDICTIVE), STEP_CONFIG, perfect_from_bin_2)
    assert perfect.replica_seconds == floor.replica_seconds


@pytest.mark.parametrize(
    ("second_burst", "replica_seconds"),
    [
        # a gap of 30 s, shorter than the start-up: the 9 extra replicas are kept through it, 0..210 at 10
        ((150, 210), 210 * 10 + 90 * 1),
        # a gap of 80 s: they go at 120 and are ordered again at 140, 60 s before 200
        ((200, 260), (120 + 120) * 10 + 60 * 1),
    ],
)
def test_the_hindsight_floor_keeps_replicas_through_gaps_shorter_than_the_start_up(
    second_burst: tuple[int, int], replica_seconds: int
) -> None:
    arrivals = np.concatenate([ten_per_second(60, 120), ten_per_second(*second_burst)])
    floor = hindsight_floor(arrivals, step_policy(Mode.REACTIVE), STEP_CONFIG)
    assert (floor.slo_miss_s, floor.replica_seconds) == (0, replica_seconds)


def test_the_hindsight_floor_keeps_the_policys_minimum_and_counts_from_the_warm_up() -> None:
    config = replace(STEP_CONFIG, warmup_s=100)
    floor = hindsight_floor(ten_per_second(90, 300), step_policy(Mode.REACTIVE, min_replicas=3), config)
    assert (floor.slo_miss_s, floor.replica_seconds) == (0, 200 * 10)
    assert floor.provisioned[0] == 3


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    # 10 req/s until second 150, then nothing. The last recommendation of 10 is at 150; with a 60 s window the
    # first tick free of it is 210: 10 replicas for 210 s, then 1 for 90 s.
    config = ReplayConfig(interval_s=15, bin_s=15, demand_window_s=1, initial_replicas=10, duration_s=300)
    result = simulate(ten_per_second(0, 150), step_policy(Mode.REACTIVE, stabilisation_s=60), config)
    assert (result.slo_miss_s, result.replica_seconds) == (0, 10 * 210 + 90)
    assert result.provisioned[209] == 10
    assert result.provisioned[210] == 1


def test_a_replica_removed_while_starting_is_paid_for_and_never_serves() -> None:
    only_at_bin_2 = lambda n: perfect_from_bin_2(n) if n == 2 else None  # noqa: E731
    policy = step_policy(Mode.PREDICTIVE, stabilisation_s=0)
    result = simulate(ten_per_second(290, 300), policy, STEP_CONFIG, only_at_bin_2)
    # 9 ordered at 30, removed at 45 (the floor is 0 again): 15 s each, and the ready count never moved
    assert result.replica_seconds == 300 + 9 * 15
    assert result.ready.max() == 1


def test_a_band_sized_order_that_the_next_forecasts_no_longer_back_is_cancelled_while_starting() -> None:
    only_at_bin_2 = lambda n: perfect_from_bin_2(n) if n == 2 else None  # noqa: E731
    arrivals = ten_per_second(290, 300)
    held = simulate(arrivals, step_policy(Mode.PREDICTIVE, starting_hold_s=300), STEP_CONFIG, only_at_bin_2)
    # HPA's way: the 9 ordered at 30 are held by the 300 s window, start until 90 and stay to the end
    assert held.replica_seconds == 300 + 9 * 270
    assert held.ready[90] == 10
    cancelled = simulate(arrivals, step_policy(Mode.PREDICTIVE, starting_hold_s=30), STEP_CONFIG, only_at_bin_2)
    # the recommendation of 10 at 30 is still within 30 s at 45, not at 60: cancelled there, never ready
    assert cancelled.replica_seconds == 300 + 9 * 30
    assert cancelled.ready.max() == 1
    assert "9 starting replica(s) cancelled" in cancelled.decisions[3].reason


def test_the_warm_up_is_left_out_of_every_policys_figures() -> None:
    config = ReplayConfig(interval_s=15, bin_s=15, demand_window_s=1, initial_replicas=1, duration_s=300, warmup_s=100)
    result = simulate(ten_per_second(90, 300), step_policy(Mode.REACTIVE), config)
    assert (result.slo_miss_s, result.replica_seconds) == (65, 200 + 9 * 195)


def test_demand_is_the_trailing_window_rate_and_the_forecasters_read_it_per_bin() -> None:
    counts = np.array([0.0, 4, 8, 0, 0, 4])
    assert demand_rate(counts, 2).tolist() == [2, 2, 6, 4, 0, 2]  # the first second: the first window's rate
    assert demand_rate(counts, 3).tolist() == [4, 4, 4, 4, 8 / 3, 4 / 3]
    assert rate_series(counts, 3, 2).tolist() == [6, 2]  # the demand at seconds 2 and 5


def test_the_request_seconds_in_flight_are_each_requests_overlap_with_each_second() -> None:
    arrivals, durations = np.array([0.5, 1.25, 3.0, 3.5]), np.array([2.0, 0.5, 0.0, 10.0])
    # [0.5, 2.5) gives 0.5, 1, 0.5; [1.25, 1.75) 0.5 to second 1; [3.5, 13.5) is cut at the 6 seconds replayed
    assert per_second_busy(arrivals, durations, 6).tolist() == [0.5, 1.5, 0.5, 0.5, 1.0, 1.0]
    assert per_second_busy(arrivals[:2], durations[:2]).tolist() == [0.5, 1.5, 0.5]  # up to the last end
    with pytest.raises(ValueError, match="durations_s must be >= 0"):
        per_second_busy(arrivals, -durations)


def test_concurrency_sizes_the_same_arrivals_by_how_long_each_request_takes() -> None:
    # one request a second for 300 s; lasting 2 s each they hold 2 in flight, lasting 6 s, 6: the request rate is
    # the same, so an rps target sizes both alike and a concurrency target sizes them by the work
    arrivals = np.arange(0.0, 300.0)
    config = ReplayConfig(interval_s=15, bin_s=15, demand_window_s=15, initial_replicas=1, duration_s=300)
    kpa = replace(step_policy(Mode.REACTIVE, stabilisation_s=0), metric=Metric.CONCURRENCY)
    short, long = (simulate(arrivals, kpa, config, durations_s=np.full(300, d)) for d in (2.0, 6.0))
    assert (short.decisions[-1].replicas, long.decisions[-1].replicas) == (2, 6)
    assert short.decisions[-1].observed == pytest.approx(2.0)
    by_rate = simulate(arrivals, step_policy(Mode.REACTIVE, stabilisation_s=0), config)
    assert by_rate.decisions[-1].replicas == 1
    fixed = fixed_fleet(arrivals, kpa, config, np.full(300, 6.0))
    assert (fixed.slo_miss_s, fixed.ready[0]) == (0, 6)
    with pytest.raises(ValueError, match="needs durations_s"):
        simulate(arrivals, kpa, config)
    with pytest.raises(ValueError, match="not p99Latency"):
        simulate(arrivals, replace(kpa, metric=Metric.P99_LATENCY), config)


def write(path: Path, text: str) -> Path:
    with gzip.open(path, "wt", newline="") as handle:
        handle.write(text)
    return path


def test_the_azure_format_loads_with_seven_fraction_digits_and_crlf(tmp_path: Path) -> None:
    text = (
        "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
        "2023-11-16 18:17:03.9799600,4808,10\r\n"
        "2023-11-16 18:17:04.4799600,3180,8\r\n"
        "2023-11-16 18:17:06.2299600,100,1\r\n"
    )
    trace = load_trace(write(tmp_path / "azure_code.csv.gz", text))
    assert trace.arrivals_s.tolist() == pytest.approx([0.0, 0.5, 2.25])
    assert trace.exec_s is None


def test_the_alibaba_format_loads_with_its_execution_times(tmp_path: Path) -> None:
    header = "gmt_create,predict_type,predict_status,exec_time_seconds,groupId\n"
    rows = "2024-11-15 16:57:52,TXT_2_IMG,SUCCEED,32.0,G0\n2024-11-15 16:57:50,TXT_2_IMG,SUCCEED,20.0,G1\n"
    trace = load_trace(write(tmp_path / "lora.csv.gz", header + rows))
    assert trace.arrivals_s.tolist() == [0.0, 2.0]  # sorted by arrival
    assert trace.exec_s is not None
    assert trace.exec_s.tolist() == [20.0, 32.0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.1,1\n2023-11-16 18:61:03.1,1\n", r"line 3, column 'TIMESTAMP'"),
        ("TIMESTAMP,ContextTokens\n2023-11-16 18:17:03.1,1\n2023-11-16 18:17:04.1\n", r"line 3: 1 fields, the header"),
        ("when,ContextTokens\n2023-11-16 18:17:03.1,1\n", r"line 1: no time column"),
        ("gmt_create,exec_time_seconds\n2024-11-15 16:57:50,fast\n", r"line 2, column 'exec_time_seconds': 'fast'"),
        ("", r"line 1: the file is empty"),
    ],
)
def test_a_malformed_trace_names_the_file_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "bad.csv.gz", text)
    with pytest.raises(TraceError, match=message) as error:
        load_trace(path)
    assert str(path) in str(error.value)


def test_attribution_says_where_the_predictive_fleet_paid_more_and_which_misses_it_avoided() -> None:
    # The step load of the two tests above: predictive (a perfect forecast from the tick at 30) orders 9 replicas
    # at 30, reactive at 105; both have them ready 60 s later. Predictive pays 9 x 75 more, all under a Forecast
    # decision (tick 15 had no forecast and the load needed none: MinReplicas), and misses nothing; reactive misses
    # 90..164 (75 s), of which 105..164 (60 s) with its 9 replicas already starting, and 90..104 at its minimum.
    arrivals = ten_per_second(90, 300)
    both = compare(arrivals, step_policy(Mode.REACTIVE), STEP_CONFIG, perfect_from_bin_2)
    demand = demand_rate(per_second_counts(arrivals, 300), STEP_CONFIG.demand_window_s)
    found = attribute(both["predictive"], both["reactive"], demand, step_policy(Mode.PREDICTIVE), STEP_CONFIG)
    assert found.by_cause == {
        INITIAL: Share(seconds=15, extra_replica_seconds=0.0, misses=0, baseline_misses=0),
        "MinReplicas": Share(seconds=15, extra_replica_seconds=0.0, misses=0, baseline_misses=0),
        "Forecast": Share(seconds=270, extra_replica_seconds=9 * 75.0, misses=0, baseline_misses=75),
    }
    assert found.baseline_at_min == Share(seconds=105, extra_replica_seconds=9 * 75.0, misses=0, baseline_misses=15)
    assert (found.late_misses, found.baseline_late_misses) == (0, 60)
    hpa = attribute(both["reactive"], both["reactive"], demand, step_policy(Mode.REACTIVE), STEP_CONFIG)
    assert sum(share.extra_replica_seconds for share in hpa.by_cause.values()) == 0.0
    # at its minimum until the tick at 105 orders 10 (ObservedLoad); from 120, 10 replicas ready or starting
    # carry 10 req/s (WithinTolerance) while the 9 start
    assert {cause: share.misses for cause, share in hpa.by_cause.items()} == {
        INITIAL: 0,
        "MinReplicas": 15,
        "ObservedLoad": 15,
        "WithinTolerance": 45,
    }
