"""The forecasters: persistence, the choice by rolling-origin accuracy, the peak band, and failures, by hand."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from strata_serving.forecasters import (
    Candidate,
    FittedCandidate,
    ForecastSettings,
    LSTMCandidate,
    Persistence,
    ProphetCandidate,
    Seasonal,
    _Fit,
    all_paths,
    choose,
    forecast_now,
    rolling_choices,
    rolling_paths,
)
from strata_serving.lstm import RateLSTM, predict_lstm, train_lstm
from strata_serving.refit_worker import RefitWorker

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

LINEAR = np.arange(100, dtype=float)
"""A rate that climbs one request per second every bin."""
SETTINGS = ForecastSettings(bin_s=15, level_bins=4, eval_origins=20, min_eval_origins=5)


@dataclass
class Oracle:
    """Forecasts the future it is given: the most accurate candidate there can be."""

    truth: np.ndarray
    name: str = "oracle"

    def paths(self, y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        index = origins[:, None] + np.arange(horizon)
        return np.where(index < len(self.truth), self.truth[np.minimum(index, len(self.truth) - 1)], np.nan)


@dataclass
class Offset:
    """Persistence plus a constant (below it: worse than persistence on a rising series)."""

    offset: float
    name: str = "offset"

    def paths(self, y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        return Persistence(4).paths(y, origins, horizon) + self.offset


@dataclass
class Broken:
    name: str = "broken"

    def paths(self, y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        raise RuntimeError("boom")


class LastValueAtFit(FittedCandidate):
    """Forecasts the last value it was fitted on; fails its fit when told to."""

    fail: bool = False

    def _fit(self, y: np.ndarray, horizon: int) -> Any:
        if self.fail:
            raise ValueError("the optimiser gave up")
        return float(y[-1])

    def _predict(self, fit: _Fit, y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        return np.full((len(origins), horizon), fit.model)


def test_persistence_is_the_mean_of_the_last_bins_and_of_what_there_is_at_the_start() -> None:
    paths = Persistence(4).paths(LINEAR, np.array([0, 2, 50]), 3)
    assert np.isnan(paths[0]).all()
    assert paths[1].tolist() == [0.5, 0.5, 0.5]
    assert paths[2].tolist() == [47.5, 47.5, 47.5]  # mean of bins 46..49


def test_the_band_is_persistences_measured_error_on_the_window_peak() -> None:
    paths, _ = all_paths([Persistence(4)], LINEAR, np.arange(101), 3)
    choice = choose(paths, LINEAR, 50, 3, SETTINGS)
    assert choice.forecast is not None
    # at every scored origin j the peak that came, j + 2, is 4.5 above the forecast j - 2.5
    assert (choice.forecast.mean, choice.forecast.upper) == (47.5, 52.0)
    assert choice.forecast.horizon_s == 45.0
    assert choice.errors == {"persistence": pytest.approx(3.5)}  # mean of 2.5, 3.5, 4.5


def test_the_band_is_calibrated_on_the_latest_origins_only_and_the_choice_on_all_of_them() -> None:
    # 0, 10, 0, 10, ... for 40 bins, then 5 from bin 40. Persistence (the mean of 4 bins) says 5 at every origin;
    # at origin 60 (horizon 3) the scored origins are 38..57: the peak that came was 5 above it at 38 and 39 (a 10
    # among the targets), 1.25 below at 41 and 43 (a 10 among the 4 bins averaged), and on the level elsewhere.
    noisy_then_calm = np.array([0.0 if b % 2 == 0 else 10.0 for b in range(40)] + [5.0] * 30)
    paths, _ = all_paths([Persistence(4)], noisy_then_calm, np.arange(71), 3)
    two_windows = ForecastSettings(bin_s=15, level_bins=4, eval_origins=20, min_eval_origins=5, band_window_s=600)
    wide = choose(paths, noisy_then_calm, 60, 3, two_windows).forecast
    assert wide is not None
    assert wide.upper == pytest.approx(5.5)  # the 0.9 quantile of the 20 errors: 0 + 0.1 x (5 - 0)
    recent = replace(two_windows, band_window_s=150)  # 10 bins of 15 s: origins 48..57, all on the level
    assert recent.band_origins == 10
    narrow = choose(paths, noisy_then_calm, 60, 3, recent)
    assert narrow.forecast is not None
    assert (narrow.forecast.mean, narrow.forecast.upper) == (5.0, 5.0)
    assert narrow.errors == choose(paths, noisy_then_calm, 60, 3, two_windows).errors  # chosen on all 20
    assert replace(recent, band_window_s=15).band_origins == 5  # never fewer than min_eval_origins
    with pytest.raises(ValueError, match="band_window_s must be > 0"):
        ForecastSettings(bin_s=15, band_window_s=0)


def _noon_burst(days: int) -> np.ndarray:
    """Hourly bins (a day is 24 of them), 0 except 8 at hour 12 of every day."""
    return np.array([8.0 if b % 24 == 12 else 0.0 for b in range(days * 24)])


HOURLY = ForecastSettings(bin_s=3600, level_bins=1, eval_origins=6, min_eval_origins=4, band_window_s=3 * 3600)


def test_a_band_by_time_of_day_reads_the_same_hour_on_earlier_days() -> None:
    # Persistence over 1 bin says the last bin; horizon 1, so its peak error at origin o is y[o] - y[o - 1]: +8 at
    # hour 12, -8 at hour 13, 0 elsewhere. At origin 60 (day 2, hour 12; the last bin, hour 11, was 0) the last
    # hour's window (origins 56..59, hours 8..11) holds four zeros; the same time of day, hour 12 +- 1, on the two
    # days before holds origins 11..13 and 35..37: 0, +8, -8 twice. Their 0.9 quantile is 8, their 0.1 quantile -8.
    y = _noon_burst(3)
    paths, _ = all_paths([Persistence(1)], y, np.arange(len(y) + 1), 1)
    by_hour = replace(HOURLY, band_days=2)
    assert by_hour.band_history_bins == 2 * 24 + 1
    recent = choose(paths, y, 60, 1, HOURLY).forecast
    noon = choose(paths, y, 60, 1, by_hour).forecast
    assert recent is not None
    assert noon is not None
    assert (recent.mean, recent.lower, recent.upper) == (0.0, 0.0, 0.0)
    assert (noon.mean, noon.lower, noon.upper) == (0.0, 0.0, 8.0)  # the lower edge is clamped at 0
    # the live forecast reads the origins a day and two back as well, and gives the replay's band
    live = forecast_now([Persistence(1)], y[:60], horizon_s=3600, settings=by_hour).forecast
    assert live == noon
    # at hour 15 (origin 63) the last hour's window, origins 59..62, still holds the burst (0, +8, -8, 0: a 0.9
    # quantile of 5.6); hours 14..16 on the days before were quiet, so the band is the forecast, 0
    after = choose(paths, y, 63, 1, HOURLY).forecast
    quiet = choose(paths, y, 63, 1, by_hour).forecast
    assert after is not None
    assert after.upper == pytest.approx(5.6)
    assert quiet is not None
    assert (quiet.mean, quiet.upper) == (0.0, 0.0)


def test_a_band_by_time_of_day_falls_back_to_the_last_hour_with_too_few_origins_there() -> None:
    # At origin 36 (day 1, hour 12) one day back holds origins 11..13: 3 errors, under min_eval_origins (4), so the
    # band is the last hour's (origins 32..35: zeros), as with band_days 0; under a day of history likewise.
    y = _noon_burst(3)
    paths, _ = all_paths([Persistence(1)], y, np.arange(len(y) + 1), 1)
    by_hour = replace(HOURLY, band_days=2)
    assert choose(paths, y, 36, 1, by_hour) == choose(paths, y, 36, 1, HOURLY)
    assert choose(paths, y, 12, 1, by_hour) == choose(paths, y, 12, 1, HOURLY)
    assert choose(paths, y, 60, 1, replace(HOURLY, band_days=1)).forecast == choose(paths, y, 60, 1, HOURLY).forecast
    with pytest.raises(ValueError, match="band_days must be >= 0"):
        ForecastSettings(bin_s=15, band_days=-1)


def test_a_fitted_forecaster_keeps_its_fits_as_far_back_as_the_band_by_time_of_day_reads() -> None:
    # refitted every 4 hourly bins, the band reading 2 days back and an hour before: (48 + 1) // 4 + 2 = 14 fits,
    # so live, as in the replay, the origins of the days before have paths; without it the usual 8
    y = _noon_burst(3)
    by_hour = LastValueAtFit("last", replace(HOURLY, band_days=2, refit_every_bins=4), 1)
    recent_only = LastValueAtFit("last", replace(HOURLY, refit_every_bins=4), 1)
    for end in range(4, len(y) + 1, 4):
        by_hour.refit(y[:end], 1)
        recent_only.refit(y[:end], 1)
    assert [fit.origin for fit in by_hour.fits] == list(range(20, 73, 4))
    assert len(recent_only.fits) == 8


def test_a_band_from_the_start_up_on_leaves_out_the_load_before_a_new_replica_could_serve() -> None:
    falling = 100 - LINEAR
    whole = forecast_now([Persistence(4)], falling[:50], horizon_s=45, settings=SETTINGS).forecast
    from_lead = forecast_now([Persistence(4)], falling[:50], horizon_s=45, settings=SETTINGS, from_s=30).forecast
    # persistence says 52.5; the peak that came was 2.5 below it over all 3 steps, 4.5 below over the third alone
    assert whole is not None
    assert (whole.mean, whole.upper) == (52.5, 50.0)
    assert from_lead is not None
    assert (from_lead.mean, from_lead.upper) == (52.5, 48.0)


def test_the_most_accurate_candidate_is_chosen_and_a_worse_one_never() -> None:
    candidates: list[Candidate] = [Persistence(4), Offset(-5.0), Oracle(LINEAR)]
    paths, _ = all_paths(candidates, LINEAR, np.arange(101), 3)
    choice = choose(paths, LINEAR, 50, 3, SETTINGS)
    assert choice.forecast is not None
    assert choice.forecast.method == "oracle"
    assert choice.forecast.upper == 52.0  # no error, no widening
    without_oracle = choose({k: v for k, v in paths.items() if k != "oracle"}, LINEAR, 50, 3, SETTINGS)
    assert without_oracle.forecast is not None
    assert without_oracle.forecast.method == "persistence"
    assert without_oracle.errors["offset"] > without_oracle.errors["persistence"]


def test_no_forecast_until_enough_origins_are_scored() -> None:
    paths, _ = all_paths([Persistence(4)], LINEAR, np.arange(101), 3)
    assert choose(paths, LINEAR, 7, 3, SETTINGS).forecast is None  # origins 0..4 scored, 5 needed with 0 unusable
    assert choose(paths, LINEAR, 8, 3, SETTINGS).forecast is not None


def test_a_candidate_that_raises_is_dropped_and_the_others_forecast() -> None:
    choice = forecast_now([Persistence(4), Broken()], LINEAR[:60], horizon_s=45, settings=SETTINGS)
    assert choice.forecast is not None
    assert choice.forecast.method == "persistence"
    assert "broken: RuntimeError: boom" in choice.forecast.dropped


def test_a_fit_that_raises_leaves_the_candidate_out_until_its_next_fit() -> None:
    candidate = LastValueAtFit("last", SETTINGS, min_history_bins=10)
    candidate.refit(LINEAR[:20], 3)
    candidate.fail = True
    candidate.refit(LINEAR[:40], 3)
    paths = candidate.paths(LINEAR, np.array([5, 25, 45]), 2)
    assert np.isnan(paths[0]).all()  # before any fit
    assert paths[1].tolist() == [19.0, 19.0]  # from the fit at origin 20
    assert np.isnan(paths[2]).all()  # the fit at 40 failed
    assert candidate.failure_at(45) == "last: ValueError: the optimiser gave up"
    choice = forecast_now([Persistence(4), candidate], LINEAR[:45], horizon_s=45, settings=SETTINGS)
    assert choice.forecast is not None
    assert choice.forecast.method == "persistence"
    assert "last: ValueError: the optimiser gave up" in choice.forecast.dropped


def test_the_replay_refits_on_the_past_only() -> None:
    settings = ForecastSettings(bin_s=15, level_bins=4, eval_origins=20, min_eval_origins=5, refit_every_bins=10)
    candidate = LastValueAtFit("last", settings, min_history_bins=10)
    paths, notes = rolling_paths([Persistence(4), candidate], LINEAR, 3, settings)
    assert notes[5] == ["last: not fitted yet (needs 10 bins of history)"]
    choices = rolling_choices(paths, notes, LINEAR, 3, settings)
    assert choices[50] == choose(paths, LINEAR, 50, 3, settings, dropped=notes[50])
    assert [fit.origin for fit in candidate.fits] == list(range(10, 101, 10))
    assert candidate.paths(LINEAR, np.array([25]), 1).tolist() == [[19.0]]  # fitted at 20 on bins 0..19


def daily(days: int, bin_s: int, noise: float = 0.0) -> np.ndarray:
    bins = np.arange(days * 86400 // bin_s)
    rng = np.random.default_rng(0)
    return 10 + 5 * np.sin(2 * np.pi * bins * bin_s / 86400) + noise * rng.standard_normal(len(bins))


def test_the_seasonal_forecaster_is_chosen_where_there_is_a_daily_cycle_and_not_on_noise() -> None:
    settings = ForecastSettings(bin_s=3600, level_bins=4, eval_origins=40, min_eval_origins=10)
    candidates: list[Candidate] = [Persistence(4), Seasonal(4, settings.day_bins)]
    on_cycle = forecast_now(candidates, daily(4, 3600)[:90], 3 * 3600, settings).forecast
    on_noise = forecast_now(candidates, 10 + np.random.default_rng(1).standard_normal(90), 3 * 3600, settings).forecast
    assert on_cycle is not None
    assert on_cycle.method == "seasonal"
    assert on_noise is not None
    assert on_noise.method == "persistence"


def test_the_lstm_is_small_seeded_and_forecasts() -> None:
    # The epochs bound the fits here, never the time budget: on a loaded machine one of two fits could otherwise
    # stop an epoch earlier than the other (the budget has its own test below).
    settings = ForecastSettings(bin_s=60, lstm_input_bins=12, lstm_epochs=30, lstm_train_s=600.0)
    series = 10 + 5 * np.sin(2 * np.pi * np.arange(300) / 12)
    first, second = LSTMCandidate(settings), LSTMCandidate(settings)
    first.refit(series[:200], 4)
    second.refit(series[:200], 4)
    origins = np.array([199, 200, 250, 300])
    paths = first.paths(series, origins, 4)
    assert np.isnan(paths[0]).all()  # before its fit: no path (its errors are out of sample)
    assert np.isfinite(paths[1:]).all()
    # same seed, same model (up to the order of CPU threads' float sums)
    np.testing.assert_allclose(paths, second.paths(series, origins, 4), rtol=1e-4, equal_nan=True)
    assert sum(p.numel() for p in RateLSTM(horizon=24).parameters()) < 5000


def test_an_lstm_fit_stops_at_its_time_budget() -> None:
    series = 1 + 0.5 * np.sin(2 * np.pi * np.arange(120) / 12)
    windows = np.stack([series[i : i + 12] / series[i : i + 12].mean() for i in (0, 40, 80)])

    def fit(epochs: int, budget_s: float) -> np.ndarray:
        model = train_lstm(series, 12, 4, epochs, budget_s, torch.Generator().manual_seed(7))
        return predict_lstm(model, windows)

    # A budget already spent stops after the first epoch: the same model as one epoch with time to spare, and not
    # the model of the 30 epochs asked for.
    np.testing.assert_array_equal(fit(30, 0.0), fit(1, 600.0))
    assert not np.array_equal(fit(30, 0.0), fit(30, 600.0))


def test_prophet_anchors_its_daily_shape_on_the_current_level(tmp_path: Path) -> None:
    settings = ForecastSettings(bin_s=3600, level_bins=4, prophet_tmp_dir=tmp_path / "stan")
    candidate = ProphetCandidate(settings)
    cycle = daily(4, 3600)
    candidate.refit(cycle[:72], 6)
    assert candidate.failure_at(72) == ""
    paths = candidate.paths(cycle, np.array([72]), 6)
    # Prophet's curve follows the cycle closely, so the anchored path lands within a request of the truth
    assert np.abs(paths[0] - cycle[72:78]).max() < 1.0
    assert (tmp_path / "stan").is_dir()


def test_the_live_refits_run_in_the_background_and_a_forecast_reads_the_latest() -> None:
    settings = ForecastSettings(bin_s=15, level_bins=4, eval_origins=20, min_eval_origins=5)
    candidate = LastValueAtFit("last", settings, min_history_bins=10)
    recorded = {"y": LINEAR[:30]}
    worker = RefitWorker([candidate], lambda: recorded["y"], horizon_bins=3, interval_s=0.05)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while worker.rounds < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        recorded["y"] = LINEAR[:60]
        while (not candidate.fits or candidate.fits[-1].origin < 60) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert not worker.is_alive()
    assert candidate.paths(LINEAR, np.array([30, 60]), 1).tolist() == [[29.0], [59.0]]
