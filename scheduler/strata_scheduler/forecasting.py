"""Demand forecasts 15 minutes ahead with a measured band, fitted in a background thread.

Plain Prophet is a poor short-horizon forecaster of GPU demand: it models the level as trend plus seasonality
and so misses where demand actually *is* right now; persistence (the last 15 minutes' mean) beats it at every
horizon up to 8 hours on the Helios traces, and its nominal 80% band covers about 60% of outcomes. So the
forecast is a blend of candidates, each ``c(t)`` a forecast of demand at ``t + h`` made at ``t`` from bins
before ``t`` only::

    persistence(t)    = level(t) = mean of demand over the 15 minutes before t
    seasonal_naive(t) = demand in the same 5-minute bin a day before t + h
    seasonal_median(t)= median of that bin over each of the last 7 days (robust to one odd day; exact zeros
                        where a quiet hour is quiet every day, which a mean of candidates never gives)
    daily_change(t)   = level(t) + how much the 15-minute level changed over the same h a day earlier
    day_mean(t)       = mean over the last 24 hours (demand that wanders returns towards it, hours out)
    anchored(t)       = level(t) + prophet(t + h) - mean of prophet over those 15 minutes
                        (Prophet supplies only the expected change: the daily and weekly shape)
    forecast(t)       = the mix of candidates, weights in steps of 0.1 summing to 1, with the lowest sMAPE
                        over the last ``calibration_days`` (rolling origins, one per bin; each origin's
                        error weighted by recency, half-life a day), fitted per horizon
    band(t)           = forecast(t) + [q(10%), q(90%)] of that mix's errors over the same window, each edge
                        the wider of the week's and the last day's quantile

The band comes from this forecaster's own recent errors (a split-conformal interval), not from Prophet's
parametric uncertainty; it is what the reserved-capacity hold uses (:meth:`ForecastBoard.hold_back
<strata_scheduler.forecast_board.ForecastBoard.hold_back>` takes the upper edge). Without enough history
(``min_history_h``) there is no Prophet: the mix is of the model-free candidates only; without any history
there is no forecast and nothing is held back.

Staying off the request path: fits run in :class:`ForecastWorker`, a daemon thread, on 5-minute means (a
fifth of the points of one-minute data, same shape); the Stan optimiser runs in a child process that
cmdstanpy starts, so it does not hold the GIL; the result is published to the
:class:`~strata_scheduler.forecast_board.ForecastBoard`, which requests read without waiting.

A candidate that fails (Prophet or cmdstanpy raising, a curve of the wrong length, a NaN or infinite value where
the forecast needs one) is dropped for that round and the blend is chosen among the others: the prediction says
which were dropped and why (:class:`DroppedCandidate`), and the worker counts and logs each. One bad candidate
never costs the whole forecast.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

import numpy as np

from strata_api.prophet import fit_prophet_mean
from strata_scheduler.demand import History, HistorySource, SeriesKey
from strata_scheduler.forecast_board import Forecast, ForecastBoard
from strata_scheduler.metrics import ExtenderMetrics

log = logging.getLogger(__name__)

Curve = Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]
"""(bin start times in unix seconds, bin means, bins to extend, bin minutes) -> model values for all bins."""


@dataclass(frozen=True)
class ForecastConfig:
    horizon_min: int = 15
    band: float = 0.8
    bin_min: int = 5
    level_window_min: int = 15
    min_history_h: float = 24.0
    """Below this much history Prophet cannot see a daily cycle; forecast by persistence instead."""
    calibration_days: float = 7.0
    """Origins the weights and the band are measured on: a week, so each weekday counts once and an unusual
    day or two moves neither much (3 days overfitted the mix and under-covered at 8 hours on the traces)."""
    weight_half_life_h: float = 24.0
    """How fast an origin's error fades when the mix is chosen (the band uses the errors unweighted)."""


ANCHORED = "anchored"
"""The candidate built on Prophet's curve (see the module docstring)."""


@dataclass(frozen=True)
class DroppedCandidate:
    """A candidate left out of one round's blend, and why."""

    name: str
    reason: str
    """``raised`` (the curve raised: Prophet, cmdstanpy or the Stan optimiser failed), ``wrongLength`` (the curve
    returned a different number of values than bins asked for) or ``nonFinite`` (NaN or infinity where the
    forecast needs a number)."""
    detail: str
    """One line for the log: the exception's type and message, or what was wrong with the values."""


@dataclass(frozen=True)
class Prediction:
    mean: float
    lower: float
    upper: float
    method: str
    weights: Mapping[str, float] = field(default_factory=lambda: {"persistence": 1.0})
    """The mix of candidate forecasts that did best over the calibration window (see :func:`_best_blend`)."""
    dropped: tuple[DroppedCandidate, ...] = ()
    """Candidates that failed this round and were left out of the blend."""


def bin_means(times_s: np.ndarray, values: np.ndarray, bin_min: int) -> tuple[np.ndarray, np.ndarray]:
    """Means over a regular grid of ``bin_min`` minutes; NaN where no sample fell (the recorder was down).

    Gaps stay gaps: filling them would teach the model a flat line and the band errors that never happened.
    """
    width = bin_min * 60
    starts = (times_s // width) * width
    grid = np.arange(starts.min(), starts.max() + width, width)
    index = ((starts - grid[0]) // width).astype(int)
    sums = np.bincount(index, weights=values, minlength=len(grid))
    counts = np.bincount(index, minlength=len(grid))
    means = np.full(len(grid), np.nan)
    means[counts > 0] = sums[counts > 0] / counts[counts > 0]
    return grid, means


def predict(times_s: np.ndarray, values: np.ndarray, config: ForecastConfig, curve: Curve | None) -> Prediction | None:
    """Forecast ``config.horizon_min`` after the last sample; see the module docstring for the formula.

    Samples that are NaN or infinite count as missing (a gap). A candidate that fails is left out of the blend
    and named in :attr:`Prediction.dropped`; the others still make the forecast.
    """
    times_s, values = np.asarray(times_s, dtype=np.int64), np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    times_s, values = times_s[finite], values[finite]
    if len(values) == 0:
        return None
    grid, y = bin_means(times_s, values, config.bin_min)
    n = len(y)
    h = max(1, round(config.horizon_min / config.bin_min))
    w = max(1, round(config.level_window_min / config.bin_min))
    window = int(config.calibration_days * 86400 / (config.bin_min * 60))
    # First origin of the calibration window; the same for every horizon, so one held-out Prophet fit serves
    # them all (origins whose target is not observed yet are left out of the scoring).
    start = max(0, n - window)
    day = 86400 // (config.bin_min * 60)
    candidates = naive_candidates(y, h, w, day)
    method = "persistence"
    dropped = [_dropped(name, values) for name, values in candidates.items()]
    usable = {name: values for (name, values), problem in zip(candidates.items(), dropped, strict=True) if not problem}
    calibration, live = dict(usable), dict(usable)
    # Prophet joins only when its errors can be measured out of sample: one fit on the history before the
    # calibration window scores it there, a second on all history makes the live forecast. With less history
    # than min_history_h plus a day of calibration, the window shrinks or Prophet sits out.
    fit_bins = int(config.min_history_h * 3600 / (config.bin_min * 60))
    if curve is not None and n - h - max(start, fit_bins) >= day:
        prophet_start = max(start, fit_bins)
        level = candidates["persistence"]
        try:
            held_out = _checked_curve(
                curve, grid[: prophet_start + 1], y[: prophet_start + 1], n - prophet_start - 1 + h, config.bin_min
            )
            current = _checked_curve(curve, grid, y, h, config.bin_min)
        except _CurveFailed as failure:  # the window and the mix stay what they are without Prophet
            dropped.append(DroppedCandidate(ANCHORED, failure.reason, failure.detail))
        else:
            anchored = _anchored(level, current, h, w)
            problem = _dropped(ANCHORED, anchored)
            if problem:
                dropped.append(problem)
            else:
                start, method = prophet_start, "anchored-prophet"
                calibration[ANCHORED], live[ANCHORED] = _anchored(level, held_out, h, w), anchored
    if not live:
        return None
    half_life = int(config.weight_half_life_h * 3600 / (config.bin_min * 60))
    weights, errors = _best_blend(calibration, y, h, start, half_life)
    mean = float(sum(weight * live[name][-1] for name, weight in weights.items()))
    recent = errors[~np.isnan(errors)]
    if len(recent) >= 10:
        tail = (1 - config.band) / 2
        low_q, high_q = np.quantile(recent, [tail, 1 - tail])
        last_day = errors[-day:]
        last_day = last_day[~np.isnan(last_day)]
        if len(last_day) >= 10:  # demand that turned more volatile lately widens the band at once
            low_d, high_d = np.quantile(last_day, [tail, 1 - tail])
            low_q, high_q = min(low_q, low_d), max(high_q, high_d)
    else:  # too little history to measure errors: a band as wide as demand has moved at all
        spread = float(np.nanmax(y) - np.nanmin(y))
        low_q, high_q = -spread, spread
    return Prediction(
        mean=max(mean, 0.0),
        lower=max(mean + float(low_q), 0.0),
        upper=max(mean + float(high_q), 0.0),
        method=method,
        weights=weights,
        dropped=tuple(problem for problem in dropped if problem),
    )


class _CurveFailed(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


DETAIL_CHARS = 300
"""A failure's detail is cut to this many characters: it goes on one log line (cmdstanpy's errors carry the
optimiser's whole console output)."""


def _one_line(text: str) -> str:
    return " ".join(text.split())[:DETAIL_CHARS]


def _checked_curve(curve: Curve, grid: np.ndarray, y: np.ndarray, extra_bins: int, bin_min: int) -> np.ndarray:
    """The curve's values, or :class:`_CurveFailed` if it raised or gave something the forecast cannot use."""
    try:
        values = np.asarray(curve(grid, y, extra_bins, bin_min), dtype=float)
    except Exception as error:  # whatever Prophet, cmdstanpy or Stan raise, the other candidates carry on
        raise _CurveFailed("raised", _one_line(f"{type(error).__name__}: {error}")) from error
    expected = len(grid) + extra_bins
    if values.shape != (expected,):
        raise _CurveFailed("wrongLength", f"{values.shape} values for {expected} bins")
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise _CurveFailed("nonFinite", f"{bad} of {expected} values are NaN or infinite")
    return values


def _dropped(name: str, values: np.ndarray) -> DroppedCandidate | None:
    """Why a candidate cannot join the blend, or None: its live value must be a number and no origin may be
    infinite (NaN at an origin is a gap, which the blend skips)."""
    if not np.isfinite(values[-1]):
        return DroppedCandidate(name, "nonFinite", f"the live forecast is {values[-1]}")
    infinite = int(np.count_nonzero(np.isinf(values)))
    if infinite:
        return DroppedCandidate(name, "nonFinite", f"{infinite} of {len(values)} origins are infinite")
    return None


def naive_candidates(y: np.ndarray, h: int, w: int, day: int) -> dict[str, np.ndarray]:
    """The model-free candidates; ``c[i]`` forecasts bin ``i + h`` from bins up to ``i`` only. In this order:
    ties go to the simplest."""
    level = _trailing_mean(y, w)
    same_bin = np.stack([_lagged(y, days * day - h) for days in range(1, SEASONAL_DAYS + 1)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (no history that far back) stay NaN
        median = np.nanmedian(same_bin, axis=0)
    return {
        "persistence": level,
        "seasonalNaive": _fill(same_bin[0], level),
        "seasonalMedian": _fill(median, level),
        "dailyChange": _fill(level + _lagged(level, day - h) - _lagged(level, day), level),
        "dayMean": _fill(_trailing_mean(y, day), level),
    }


SEASONAL_DAYS = 7
"""``seasonalMedian`` looks at the same bin on each of the last this many days (every weekday once)."""


def _lagged(values: np.ndarray, lag: int) -> np.ndarray:
    """``values[i - lag]`` at each position ``i`` (NaN before the start); ``lag`` must be at least 0."""
    result = np.full(len(values), np.nan)
    if 0 <= lag < len(values):
        result[lag:] = values[: len(values) - lag]
    return result


def _fill(values: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    result: np.ndarray = np.where(np.isnan(values), fallback, values)
    return result


def _anchored(level: np.ndarray, model: np.ndarray, h: int, w: int) -> np.ndarray:
    """level[i] + the model's change from bin i's 15-minute window to bin i + h."""
    n = len(level)
    result: np.ndarray = level + model[h : n + h] - _trailing_mean(model[:n], w)
    return result


BLEND_STEPS = 10


def _best_blend(
    candidates: Mapping[str, np.ndarray], y: np.ndarray, h: int, start: int, half_life_bins: int = 0
) -> tuple[dict[str, float], np.ndarray]:
    """The mix of candidate forecasts (each ``c[i]`` forecasts bin ``i + h``) with the lowest sMAPE over the
    origins from ``start`` on whose target is observed; weights in steps of 0.1 that sum to 1, ties to the
    first mix tried. Returns the weights and that mix's errors (actual - forecast).

    Each origin's error counts ``0.5 ** (age / half_life_bins)`` (0: all alike): a candidate that was right
    most of the week but wrong since demand stepped to a new level loses its weight within a day or so.

    sMAPE rather than absolute error: it weighs a quiet hour's miss as much as a busy hour's, and it is the
    measure the forecaster is judged by; on sparse counts (request rates) it rewards an exact zero.

    Which candidate wins depends on the series and the horizon (persistence at minutes, the daily shape at
    hours, the day's mean when demand reverts), so the forecaster measures instead of assuming. Every origin
    scored here has its target before the last observed bin: the weights never see the future.
    """
    names = list(candidates)
    end = len(y) - h
    targets = y[start + h :]
    origins = np.stack([candidates[name][start:end] for name in names], axis=1)  # origins x candidates
    mixes = _mixes(len(names))  # mixes x candidates
    observed = ~np.isnan(targets) & ~np.isnan(origins).any(axis=1)
    if not observed.any():
        weights = {names[0]: 1.0}
        return weights, targets - origins[:, 0]
    forecasts = _mix_forecasts(origins[observed], mixes)
    actual = targets[observed, None]
    # sMAPE terms |actual - forecast| / (|actual| + |forecast|), 0 where both are 0, computed in place: one
    # origins x mixes buffer besides the forecasts instead of six (a refit scores about a thousand mixes)
    scale = np.abs(forecasts)
    scale += np.abs(actual)
    terms = np.subtract(actual, forecasts, out=forecasts)
    np.abs(terms, out=terms)
    np.divide(terms, scale, out=terms, where=scale > 0)  # where it is 0, so are actual and forecast, and the term
    age = (len(targets) - 1 - np.flatnonzero(observed)).astype(float)  # in bins, 0 for the latest target
    recency = 0.5 ** (age / half_life_bins) if half_life_bins > 0 else np.ones(len(age))
    terms *= recency[:, None]
    scores = terms.sum(axis=0) / recency.sum()
    best = int(np.flatnonzero(scores <= scores.min() + 1e-12)[0])
    weights = {name: float(part) for name, part in zip(names, mixes[best], strict=True) if part}
    return weights, targets - origins @ mixes[best]


@cache
def _mixes(parts: int) -> np.ndarray:
    """Every mix of ``parts`` candidates tried by :func:`_best_blend` (mixes x candidates, rows summing to 1), in
    :func:`_compositions`' order; computed once per number of candidates and read-only, as every refit asks the
    same."""
    mixes = np.array(list(_compositions(BLEND_STEPS, parts)), dtype=float) / BLEND_STEPS
    mixes.setflags(write=False)
    return mixes


SMALL_PRODUCT = 2**16
"""Multiply-adds per block of :func:`_mix_forecasts`: OpenBLAS runs a product this small on the calling thread
(it starts its thread pool above about four times this), and a block's rows stay in cache."""


def _mix_forecasts(origins: np.ndarray, mixes: np.ndarray) -> np.ndarray:
    """``origins @ mixes.T`` (origins x mixes), the same numbers, in blocks of origins small enough that BLAS does
    not hand each to its thread pool. The product is thin (five or six candidates), and a pool of threads woken
    for it, on every refit, cost 10 to 20 times the arithmetic on a machine whose cores were busy (the extender's
    forecaster runs beside its request handlers; the simulator refits hourly per GPU type)."""
    result = np.empty((len(origins), len(mixes)))
    rows = max(2, SMALL_PRODUCT // max(1, mixes.size))
    for start in range(0, len(origins), rows):
        # never a block of one row: BLAS takes it as a matrix-vector product, which rounds differently; a last
        # row left alone is taken again with the one before it (the same numbers for that one)
        first = min(start, max(0, len(origins) - 2))
        np.matmul(origins[first : first + rows], mixes.T, out=result[first : first + rows])
    return result


def _compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every way to write ``total`` as ``parts`` non-negative integers, the first part largest first."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total, -1, -1):
        for rest in _compositions(total - first, parts - 1):
            yield (first, *rest)


def _trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each position, skipping NaN; NaN where all of them are."""
    present = ~np.isnan(values)
    sums = np.cumsum(np.insert(np.where(present, values, 0.0), 0, 0.0))
    counts = np.cumsum(np.insert(present.astype(float), 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    n = counts[ends] - counts[starts]
    with np.errstate(invalid="ignore", divide="ignore"):
        result: np.ndarray = np.where(n > 0, (sums[ends] - sums[starts]) / np.maximum(n, 1), np.nan)
    return result


@dataclass(frozen=True)
class ProphetCurve:
    """Prophet's fitted and extrapolated mean over ``grid`` plus ``extra_bins`` more bins (a :data:`Curve`).

    Its files go under ``tmp_dir`` (None: Python's temp dir), which must be writable: in a pod whose root
    filesystem is read-only, a mounted volume (:mod:`strata_api.prophet` says what is written there and when).
    """

    tmp_dir: Path | None = None
    fit_timeout_s: float | None = 120.0
    """Seconds one fit's Stan optimiser may run before cmdstanpy stops it and the fit raises ``TimeoutError``
    (the Prophet candidate is then dropped for the round); None: no limit. A hung optimiser would otherwise hold
    the forecaster, and every series' next forecast, for good."""

    def __call__(self, grid: np.ndarray, y: np.ndarray, extra_bins: int, bin_min: int) -> np.ndarray:
        import pandas as pd

        days = (grid[-1] - grid[0]) / 86400
        present = ~np.isnan(y)
        history = pd.DataFrame({"ds": pd.to_datetime(grid[present], unit="s"), "y": y[present]})
        future_s = np.concatenate([grid, grid[-1] + bin_min * 60 * np.arange(1, extra_bins + 1)])
        future = pd.DataFrame({"ds": pd.to_datetime(future_s, unit="s")})
        curve: np.ndarray = fit_prophet_mean(
            history, future, daily=days >= 2, weekly=days >= 14, tmp_dir=self.tmp_dir, timeout_s=self.fit_timeout_s
        )
        return curve


prophet_curve = ProphetCurve()
"""Prophet with its files under Python's temp dir (tests, benchmarks, a laptop)."""


class ForecastWorker(threading.Thread):
    """Refits every ``interval_s`` and publishes forecasts; also scores forecasts that came due.

    Each candidate dropped from a series' blend counts once in ``strata_forecast_candidate_failures_total`` and
    gets one warning line naming the series, the candidate and why. ``strata_forecast_age_seconds`` is the time
    since the last round that published (since the worker started, before the first): it grows when fits fail or
    hang, which is what a "forecast stale" alert watches.
    """

    def __init__(
        self,
        source: HistorySource,
        board: ForecastBoard,
        metrics: ExtenderMetrics,
        stop: threading.Event,
        config: ForecastConfig = ForecastConfig(),
        interval_s: float = 300.0,
        history_days: float = 14.0,
        curve: Curve | None = prophet_curve,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(name="forecaster", daemon=True)
        self.source, self.board, self.metrics, self.stop = source, board, metrics, stop
        self.config, self.interval_s, self.history_days, self.curve, self.clock = (
            config,
            interval_s,
            history_days,
            curve,
            clock,
        )
        self._due: list[Forecast] = []
        self._published_at = clock()
        metrics.forecast_age.set_function(lambda: self.clock() - self._published_at)

    def run(self) -> None:
        while not self.stop.is_set():
            self.run_once()
            self.stop.wait(self.interval_s)

    def run_once(self) -> dict[SeriesKey, Forecast]:
        started = time.perf_counter()
        try:
            now = self.clock()
            history = self.source.history(int(now - self.history_days * 86400))
            self._score_due(history)
            forecasts = self.forecast(history, now)
        except Exception as error:  # a failed fit must never stop the extender; keep the last forecasts
            log.exception("forecasting failed; keeping the previous forecasts")
            self.board.last_error = f"{type(error).__name__}: {error}"
            return self.board.latest()
        self.board.publish(forecasts)
        self.board.last_error = None
        self._published_at = self.clock()
        self.metrics.forecast_fit_seconds.set(time.perf_counter() - started)
        for (gpu, priority), forecast in forecasts.items():
            for bound in ("mean", "lower", "upper"):
                self.metrics.forecast.labels(gpu, priority, bound).set(getattr(forecast, bound))
        self._due.extend(forecasts.values())
        return forecasts

    def forecast(self, history: History, now: float) -> dict[SeriesKey, Forecast]:
        made_at = datetime.fromtimestamp(now, UTC)
        result = {}
        for key, points in history.items():
            if not points:
                continue
            times = np.array([at for at, _ in points], dtype=np.int64)
            values = np.array([gpus for _, gpus in points], dtype=float)
            curve = self.curve if np.ptp(values) > 0 else None  # a flat series has no shape to learn
            prediction = predict(times, values, self.config, curve)
            for problem in prediction.dropped if prediction is not None else ():
                self.metrics.forecast_candidate_failures.labels(problem.name, problem.reason).inc()
                log.warning(
                    "forecast of %s %s-priority demand: candidate %s dropped this round (%s: %s)",
                    *key,
                    problem.name,
                    problem.reason,
                    problem.detail,
                )
            if prediction is not None:
                result[key] = Forecast(
                    gpu_type=key[0],
                    priority=key[1],
                    made_at=made_at,
                    horizon_min=self.config.horizon_min,
                    mean=prediction.mean,
                    lower=prediction.lower,
                    upper=prediction.upper,
                    band=self.config.band,
                    method=prediction.method,
                    weights=prediction.weights,
                    dropped={problem.name: problem.reason for problem in prediction.dropped},
                )
        return result

    def _score_due(self, history: History) -> None:
        waiting = []
        for forecast in self._due:
            target = forecast.made_at.timestamp() + forecast.horizon_min * 60
            points = history.get((forecast.gpu_type, forecast.priority), [])
            actual = [gpus for at, gpus in points if target <= at < target + self.config.bin_min * 60]
            if actual:
                error = abs(float(np.mean(actual)) - forecast.mean)
                self.metrics.forecast_error.labels(forecast.gpu_type, forecast.priority).set(error)
            elif points and points[-1][0] < target:
                waiting.append(forecast)
        self._due = waiting[-64:]
