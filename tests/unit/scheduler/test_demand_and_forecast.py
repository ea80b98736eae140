"""Demand recording survives restarts; forecasts are anchored to the observed level and their band is honest."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from scheduler_builders import a_node, a_pod, an_extender

from strata_scheduler.demand import DemandRecorder, DemandStore, PrometheusSource, demand_sample
from strata_scheduler.forecast_board import HIGH, LOW
from strata_scheduler.forecasting import ForecastConfig, ForecastWorker, naive_candidates, predict, prophet_curve

pytestmark = pytest.mark.unit

DAY = 86400
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def test_demand_sample_counts_pending_and_running_gpus_by_type_and_priority() -> None:
    extender = an_extender(
        a_node("h").h100().reserved(),
        a_node("m").mi300x().spot(),
        a_pod("running-vip").gpus(8).priority(500).on("h"),
        a_pod("pending-vip").amd(8).priority(500),
        a_pod("deferrable-vip").gpus(4).priority(500).annotate("strata.dev/deferrable", "true"),
        a_pod("batch").amd(2).on("m"),
        a_pod("done").gpus(8).priority(500).on("h", phase="Succeeded"),
        a_pod("cpu-only"),
    )
    assert demand_sample(extender.state) == {
        ("H100", HIGH): 8.0,
        ("H100", LOW): 4.0,
        ("MI300X", HIGH): 8.0,
        ("MI300X", LOW): 2.0,
    }


def test_demand_history_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "demand.sqlite"
    store = DemandStore(path)
    store.record(T0 + 5, {("H100", HIGH): 8.0})
    store.record(T0 + 30, {("H100", HIGH): 16.0})  # same minute: the later sample wins
    store.record(T0 + 60, {("H100", HIGH): 24.0, ("MI300X", LOW): 1.0})
    store.close()
    reopened = DemandStore(path)
    assert reopened.history(T0) == {("H100", HIGH): [(T0, 16.0), (T0 + 60, 24.0)], ("MI300X", LOW): [(T0 + 60, 1.0)]}
    reopened.prune(T0 + 60)
    assert reopened.history(0) == {("H100", HIGH): [(T0 + 60, 24.0)], ("MI300X", LOW): [(T0 + 60, 1.0)]}
    reopened.close()


def test_recorder_writes_the_store_and_the_gauge(tmp_path: Path) -> None:
    extender = an_extender(a_node("h").h100().reserved(), a_pod().gpus(8).priority(500).on("h"))
    store = DemandStore(tmp_path / "d.sqlite")
    recorder = DemandRecorder(
        extender.state, store, extender.metrics.registry, threading.Event(), clock=lambda: T0 + 42
    )
    recorder.record_once()
    assert store.history(0)[("H100", HIGH)] == [(T0, 8.0)]
    value = extender.metrics.registry.get_sample_value("strata_demand_gpus", {"gpu_type": "H100", "priority": HIGH})
    assert value == 8.0
    store.close()


@pytest.fixture
def fake_prometheus() -> Iterator[tuple[str, list[str]]]:
    queries: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            queries.append(self.path)
            body = {
                "status": "success",
                "data": {
                    "resultType": "matrix",
                    "result": [
                        {"metric": {"gpu_type": "H100", "priority": "high"}, "values": [[T0, "8"], [T0 + 60, "16"]]}
                    ],
                },
            }
            payload = orjson.dumps(body)
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", queries
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_history_from_prometheus_range_queries(fake_prometheus: tuple[str, list[str]]) -> None:
    url, queries = fake_prometheus
    source = PrometheusSource(url, clock=lambda: T0 + 120)
    assert source.history(T0) == {("H100", HIGH): [(T0, 8.0), (T0 + 60, 16.0)]}
    assert len(queries) == 1
    assert "strata_demand_gpus" in queries[0]
    assert "step=60" in queries[0]


# --- the forecaster ---


def daily_wave(times: np.ndarray) -> np.ndarray:
    return 100 + 50 * np.sin(2 * np.pi * (times - T0) / DAY)


def minutes(days: float, end_offset_s: int = 0) -> np.ndarray:
    return np.arange(T0, T0 + int(days * DAY) + end_offset_s, 60, dtype=np.int64)


def test_flat_demand_is_forecast_exactly_with_a_zero_width_band() -> None:
    times = minutes(1)
    prediction = predict(times, np.full(len(times), 16.0), ForecastConfig(), curve=None)
    assert prediction is not None
    assert (prediction.mean, prediction.lower, prediction.upper, prediction.method) == (16.0, 16.0, 16.0, "persistence")


def test_no_history_means_no_forecast() -> None:
    assert predict(np.array([], dtype=np.int64), np.array([]), ForecastConfig(), curve=None) is None


def test_blend_prefers_seasonal_naive_where_each_day_repeats_the_last() -> None:
    times = minutes(3, end_offset_s=12 * 3600)
    demand = daily_wave(times)
    prediction = predict(times, demand, ForecastConfig(horizon_min=60), curve=None)
    assert prediction is not None
    assert prediction.weights == {"seasonalNaive": 1.0}
    target = np.mean(daily_wave(np.arange(times[-1] + 60 * 56, times[-1] + 60 * 61)))
    assert abs(prediction.mean - target) < 0.5


def test_anchoring_adds_the_model_change_to_the_observed_level() -> None:
    """With a model that knows the true shape but not the level, the anchored forecast is exact."""
    times = minutes(2, end_offset_s=12 * 3600)  # end on the steep part of the wave
    shifted = daily_wave(times) + 37.0  # demand sits 37 GPUs above what the model thinks

    def true_shape(grid: np.ndarray, y: np.ndarray, extra: int, bin_min: int) -> np.ndarray:
        full = np.concatenate([grid, grid[-1] + bin_min * 60 * np.arange(1, extra + 1)])
        return daily_wave(full + bin_min * 30)  # value at the middle of each bin

    config = ForecastConfig(horizon_min=60, min_history_h=1)
    anchored = predict(times, shifted, config, curve=true_shape)
    assert anchored is not None
    persistence = shifted[-15:].mean()
    target = np.mean(daily_wave(np.arange(times[-1] + 60 * 56, times[-1] + 60 * 61)) + 37.0)
    assert anchored.method == "anchored-prophet"
    assert abs(anchored.mean - target) < 0.5
    assert abs(persistence - target) > 5


def test_band_covers_close_to_its_nominal_share_out_of_sample() -> None:
    rng = np.random.default_rng(7)
    times = minutes(6)
    drift = np.zeros(len(times))  # a slowly wandering level (AR(1)) under minute-to-minute noise
    for i in range(1, len(times)):
        drift[i] = 0.99 * drift[i - 1] + rng.normal(0, 1.0)
    demand = 200 + drift + rng.normal(0, 3, len(times))
    config = ForecastConfig(horizon_min=15, calibration_days=2)
    hits = trials = 0
    for end in range(3 * DAY // 60, len(times) - 20, 37):
        prediction = predict(times[:end], demand[:end], config, curve=None)
        assert prediction is not None
        actual = demand[end + 14 : end + 19].mean()  # the 5-minute bin 15 minutes after the last sample
        hits += prediction.lower <= actual <= prediction.upper
        trials += 1
    assert 0.72 <= hits / trials <= 0.88, f"coverage {hits / trials:.2f} over {trials} origins"


def test_prophet_learns_the_daily_shape_and_beats_persistence_on_a_swing() -> None:
    rng = np.random.default_rng(3)
    times = minutes(3, end_offset_s=-6 * 3600 + 3600)  # ends where the wave falls fastest
    demand = daily_wave(times) + rng.normal(0, 2, len(times))
    config = ForecastConfig(horizon_min=120)
    started = time.perf_counter()
    anchored = predict(times, demand, config, curve=prophet_curve)
    fit_s = time.perf_counter() - started
    assert anchored is not None
    persistence = demand[-15:].mean()
    target = np.mean(daily_wave(np.arange(times[-1] + 60 * 116, times[-1] + 60 * 121)))
    assert anchored.method == "anchored-prophet"
    assert abs(anchored.mean - target) < abs(persistence - target) / 2
    assert anchored.lower <= anchored.mean <= anchored.upper
    assert fit_s < 60


class ListSource:
    def __init__(self, history: Any) -> None:
        self.data = history
        self.fail = False

    def history(self, since_s: int) -> Any:
        if self.fail:
            raise ConnectionError("prometheus is down")
        return self.data


def test_worker_publishes_forecasts_that_drive_the_reserved_hold() -> None:
    extender = an_extender()
    times = minutes(1)
    source = ListSource({("H100", HIGH): [(int(t), 40.0) for t in times], ("H100", LOW): [(int(times[-1]), 3.0)]})
    worker = ForecastWorker(
        source, extender.board, extender.metrics, threading.Event(), curve=None, clock=lambda: float(times[-1] + 60)
    )
    forecasts = worker.run_once()
    assert forecasts[("H100", HIGH)].upper == 40.0
    assert forecasts[("H100", LOW)].mean == 3.0
    hold = extender.board.hold_back()
    assert hold.upper_by_gpu_type == {"H100": 40.0}
    assert (hold.minutes, hold.band) == (15, "80%")
    labels = {"gpu_type": "H100", "priority": HIGH, "bound": "upper"}
    assert extender.metrics.registry.get_sample_value("strata_forecast_gpus", labels) == 40.0
    source.fail = True
    assert worker.run_once() == forecasts
    assert extender.board.last_error == "ConnectionError: prometheus is down"
    assert extender.board.hold_back().upper_by_gpu_type == {"H100": 40.0}


def test_worker_scores_forecasts_that_came_due() -> None:
    extender = an_extender()
    times = list(minutes(1))
    source = ListSource({("H100", LOW): [(int(t), 10.0) for t in times]})
    now = [float(times[-1] + 60)]
    worker = ForecastWorker(
        source, extender.board, extender.metrics, threading.Event(), curve=None, clock=lambda: now[0]
    )
    worker.run_once()
    due = int(now[0] + 15 * 60)
    source.data = {("H100", LOW): [(int(t), 10.0) for t in times] + [(due, 13.0), (due + 60, 13.0)]}
    now[0] = due + 120
    worker.run_once()
    labels = {"gpu_type": "H100", "priority": LOW}
    assert extender.metrics.registry.get_sample_value("strata_forecast_abs_error_gpus", labels) == 3.0


def test_gaps_in_the_history_are_not_filled_in() -> None:
    # Demand sat at 10 for a day; the recorder was down for two hours; its first sample back says 30.
    times = np.append(minutes(1), T0 + DAY + 2 * 3600)
    demand = np.append(np.full(len(times) - 1, 10.0), 30.0)
    prediction = predict(times, demand, ForecastConfig(), curve=None)
    assert prediction is not None
    # Filling the gap with the last value before it would put two stale bins of 10 into the 15-minute level.
    assert prediction.mean == 30.0


def rolling_origins(
    times: np.ndarray, demand: np.ndarray, horizon_min: int, first_s: int, every_s: int
) -> list[tuple[float, float, float, float]]:
    """(actual, forecast, lower, upper) at origins every ``every_s`` from ``first_s``; each forecast sees only
    the samples before its origin, and is scored on the 5-minute bin ``horizon_min`` after its last sample."""
    results = []
    for end in range(first_s // 60, len(times) - horizon_min - 5, every_s // 60):
        prediction = predict(times[:end], demand[:end], ForecastConfig(horizon_min=horizon_min), curve=None)
        assert prediction is not None
        actual = demand[end + horizon_min - 1 : end + horizon_min + 4].mean()
        results.append((float(actual), prediction.mean, prediction.lower, prediction.upper))
    return results


def smape(pairs: np.ndarray) -> float:
    return float(np.mean(2 * np.abs(pairs[:, 0] - pairs[:, 1]) / (np.abs(pairs[:, 0]) + np.abs(pairs[:, 1]))))


def test_blend_beats_persistence_hours_ahead_on_a_daily_pattern() -> None:
    rng = np.random.default_rng(11)
    times = minutes(10)
    demand = daily_wave(times) + rng.normal(0, 4, len(times))
    every_s = 2 * 3600 + 600
    results = np.array(rolling_origins(times, demand, 240, first_s=8 * DAY, every_s=every_s))
    ends = range(8 * DAY // 60, len(times) - 245, every_s // 60)
    persistence = np.array(
        [(result[0], demand[end - 15 : end].mean()) for result, end in zip(results, ends, strict=True)]
    )
    assert smape(results[:, :2]) < 0.5 * smape(persistence)


def test_band_covers_close_to_80_percent_on_a_noisy_daily_pattern() -> None:
    rng = np.random.default_rng(5)
    times = minutes(10)
    drift = np.zeros(len(times))  # a slowly wandering offset on top of the daily shape
    for i in range(1, len(times)):
        drift[i] = 0.995 * drift[i - 1] + rng.normal(0, 0.5)
    demand = daily_wave(times) + drift + rng.normal(0, 5, len(times))
    results = np.array(rolling_origins(times, demand, 60, first_s=8 * DAY, every_s=41 * 60))
    inside = (results[:, 2] <= results[:, 0]) & (results[:, 0] <= results[:, 3])
    assert 0.72 <= inside.mean() <= 0.88, f"coverage {inside.mean():.2f} over {len(results)} origins"


@pytest.mark.parametrize("horizon_bins", [3, 12, 48, 96])
def test_candidates_at_an_origin_use_no_later_bin(horizon_bins: int) -> None:
    """Changing the demand after bin ``i`` leaves every candidate forecast made at bins up to ``i`` unchanged."""
    rng = np.random.default_rng(horizon_bins)
    y = 100 + rng.normal(0, 10, 9 * 288)
    y[rng.random(len(y)) < 0.05] = np.nan  # gaps too
    before = naive_candidates(y, horizon_bins, 3, 288)
    for cut in (300, 2000, len(y) - 1):
        changed = y.copy()
        changed[cut + 1 :] += 1000.0
        after = naive_candidates(changed, horizon_bins, 3, 288)
        for name, values in before.items():
            np.testing.assert_array_equal(values[: cut + 1], after[name][: cut + 1], err_msg=name)
