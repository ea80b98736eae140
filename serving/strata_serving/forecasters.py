"""Request-rate forecasters on a fixed bin grid, chosen per series by measured accuracy, with a conformal band.

A series is the request rate (req/s) sampled once per bin of ``bin_s`` seconds, measured over the same window as
the demand it is to cover (a Prometheus ``rate(...[1m])`` every 15 s, say). A *path* made at origin ``o`` (after
bins ``0 .. o-1`` were observed) forecasts bins ``o .. o+H-1``, using nothing from bin ``o`` on. Candidates::

    persistence  path[o, k] = level(o) = mean of the ``level_bins`` bins before o
    seasonal     path[o, k] = level(o) + level(o - day + k + 1) - level(o - day)
                 (today's level plus how the level moved over the same span a day earlier; needs a day of history)
    prophet      path[o, k] = level(o) + curve(o + k) - mean(curve over the level window before o)
                 (Prophet supplies only the shape: the daily cycle and trend; refitted every so many bins)
    lstm         a small torch LSTM (one layer, a few thousand parameters) reading the last ``lstm_input_bins``
                 bins, scaled by their mean, and writing all H steps at once; trained on the recent history,
                 seeded, on CPU, for at most ``lstm_train_s`` seconds; refitted like Prophet

Choice (:func:`choose`): at origin ``o``, each candidate's rolling-origin error over the last ``eval_origins``
origins whose targets are all observed (``j + H <= o``), mean absolute error over all H steps. A candidate is used
only if it beats persistence there; the lowest error wins. Until persistence has ``min_eval_origins`` scored
origins there is no forecast (the decision then says so and keeps the reactive floor). The band is split-conformal
and is for the window's peak, the quantity a scale-up must cover::

    peak(o)    = max over k of path[o, k]
    upper(o)   = peak(o) + quantile(band_quantile, {max_k y[j + k] - max_k path[j, k] : j scored, of the
                                                    last band_window_s})
    lower(o)   = peak(o) + quantile(1 - band_quantile, same errors)

The band is calibrated on the last hour's scored origins (``band_window_s``) even where the choice reads more: a
service's load changes regime within hours, and errors from an earlier regime size the band for a load that has
gone (docs/autoscaling.md, "Where the predictive mode pays and where it misses"). With ``band_days`` it is calibrated
instead on the same time of day of the days before (:func:`band_errors`; off by default: on the Alibaba trace it
lands on the same cost-miss curve, docs/autoscaling.md, "What was tried").

A fitted candidate keeps its recent fits, each tagged with the origin it was fitted at; a path at origin ``o`` comes
from the newest fit made at or before ``o``, so its errors are out of sample both live and in the replay. A fit
that raises is recorded as a failed fit: the candidate has no path until its next fit, and is named in the
forecast's ``dropped``; the other candidates make the forecast.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from strata_serving.autoscale import Forecast

PERSISTENCE = "persistence"


@dataclass(frozen=True)
class ForecastSettings:
    """One series' forecasting settings; bins are of ``bin_s`` seconds."""

    bin_s: float
    level_bins: int = 4
    """Persistence's window, in bins."""
    eval_origins: int = 120
    """Rolling origins the choice and the band are measured on."""
    min_eval_origins: int = 20
    """Fewer measured origins than this: the candidate is not considered (its error is unknown)."""
    band_quantile: float = 0.9
    """The band's upper edge is this quantile of the measured peak errors (the lower edge its complement)."""
    band_window_s: float = 3600.0
    """The band is calibrated on the scored origins of the last this many seconds only (at least
    ``min_eval_origins`` of them, at most ``eval_origins``): the peak errors of the load's present regime, not of one
    hours ago (see the module docstring)."""
    band_days: int = 0
    """0: the band reads the last ``band_window_s`` only. n > 0: it reads the scored origins within
    ``band_window_s / 2`` of the same time of day on the n days before (where the load's daily cycle puts it in the
    same regime as now), falling back to the last ``band_window_s`` while those hold fewer than
    ``min_eval_origins`` (a series shorter than a day, a fitted forecaster with no path there)."""
    refit_every_bins: int = 240
    """Prophet and the LSTM are refitted this often; a fit's paths reach this far (plus the horizon), so a live
    refit interval must not be longer."""
    prophet_min_history_bins: int = 0
    """Prophet needs this much history (0: a day), to see a daily cycle."""
    prophet_tmp_dir: Path | None = None
    """Where cmdstanpy writes each fit's files (None: Python's temp dir); must be writable."""
    prophet_fit_timeout_s: float = 60.0
    """A Stan optimiser that runs longer is stopped and the fit counts as failed."""
    lstm_input_bins: int = 16
    """Bins the LSTM reads before each origin."""
    lstm_train_bins: int = 2000
    """The recent history one LSTM fit trains on."""
    lstm_train_s: float = 5.0
    """One LSTM fit stops after this many seconds even before ``lstm_epochs`` (a bound, so the figures of a
    time-bounded fit move a little with the machine's load)."""
    lstm_epochs: int = 150
    seed: int = 0
    """The LSTM's initial weights."""

    def __post_init__(self) -> None:
        if self.band_window_s <= 0:
            raise ValueError(f"band_window_s must be > 0, got {self.band_window_s}")
        if self.band_days < 0:
            raise ValueError(f"band_days must be >= 0, got {self.band_days}")

    @property
    def day_bins(self) -> int:
        return round(86400 / self.bin_s)

    @property
    def band_origins(self) -> int:
        """How many of the latest scored origins the band is calibrated on (``band_window_s`` in bins, within
        ``min_eval_origins`` .. ``eval_origins``)."""
        return max(self.min_eval_origins, min(self.eval_origins, self.band_window_bins))

    @property
    def band_history_bins(self) -> int:
        """How far before an origin the band's origins may lie (the same time of day ``band_days`` ago, and half
        the window before it; 0 when ``band_days`` is 0)."""
        return self.band_days * self.day_bins + self.band_window_bins // 2 if self.band_days else 0

    @property
    def band_window_bins(self) -> int:
        """``band_window_s`` in whole bins (at least one)."""
        return max(1, math.floor(self.band_window_s / self.bin_s))


class Candidate(Protocol):
    name: str

    def paths(self, y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        """(len(origins), horizon) forecasts of the rate in each bin; NaN where the candidate has none."""
        ...


def _levels(y: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """Mean of ``y[e - width : e]`` for each end ``e`` (NaN where that reaches before the series)."""
    cumulative = np.concatenate([[0.0], np.cumsum(y)])
    ends = np.asarray(ends)
    ok = (ends - width >= 0) & (ends <= len(y))
    out = np.full(len(ends), np.nan)
    good = ends[ok]
    out[ok] = (cumulative[good] - cumulative[good - width]) / width
    return out


@dataclass
class Persistence:
    level_bins: int
    name: str = PERSISTENCE

    def paths(self, y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        cumulative = np.concatenate([[0.0], np.cumsum(y)])
        width = np.minimum(self.level_bins, origins)  # the first bins: the mean of what there is
        with np.errstate(invalid="ignore", divide="ignore"):
            level = np.where(width > 0, (cumulative[origins] - cumulative[origins - width]) / width, np.nan)
        return np.repeat(level[:, None], horizon, axis=1)


@dataclass
class Seasonal:
    level_bins: int
    day_bins: int
    name: str = "seasonal"

    def paths(self, y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        level = _levels(y, origins, self.level_bins)
        before = _levels(y, origins - self.day_bins, self.level_bins)
        steps = np.arange(horizon)
        then = _levels(y, (origins[:, None] - self.day_bins + steps + 1).ravel(), self.level_bins)
        then = then.reshape(len(origins), horizon)
        result: np.ndarray = level[:, None] + then - before[:, None]
        return result


@dataclass
class _Fit:
    origin: int
    model: Any
    """None: the fit at this origin raised."""
    error: str = ""


@dataclass
class FittedCandidate:
    """A candidate that must be fitted (Prophet, the LSTM): its fits by origin, newest last."""

    name: str
    settings: ForecastSettings
    min_history_bins: int
    max_fits: int | None = 8
    """Fits kept (enough for the scored origins; more where ``band_days`` reaches further back, so that the band's
    origins of earlier days have paths live as in the replay); None keeps every one (the replay refits first, then
    reads)."""
    fits: list[_Fit] = field(default_factory=list)

    def refit(self, y: np.ndarray, horizon: int) -> None:
        """Fit on all of ``y`` (a fit that raises is kept as a failure: no paths until the next fit).

        The list of fits is replaced, never changed in place, so a forecast read in another thread while a
        background refit finishes sees either the old fits or the new ones.
        """
        if len(y) < self.min_history_bins:
            return
        try:
            fit = _Fit(len(y), self._fit(y, horizon))
        except Exception as error:  # whatever the model raises, the other candidates carry on
            fit = _Fit(len(y), None, f"{type(error).__name__}: {error}"[:200])
        fits = [*self.fits, fit]
        if self.max_fits is not None:
            reach = self.settings.band_history_bins // self.settings.refit_every_bins + 2
            fits = fits[-max(self.max_fits, reach) :]
        self.fits = fits

    def failure_at(self, origin: int) -> str:
        """Why there is no path at ``origin`` (empty when there is one)."""
        fit = self._fit_at(origin)
        if fit is None:
            return f"{self.name}: not fitted yet (needs {self.min_history_bins} bins of history)"
        return f"{self.name}: {fit.error}" if fit.model is None else ""

    def _fit_at(self, origin: int) -> _Fit | None:
        older = [fit for fit in self.fits if fit.origin <= origin]
        return older[-1] if older else None

    def paths(self, y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        out = np.full((len(origins), horizon), np.nan)
        chosen = [self._fit_at(int(o)) for o in origins]
        for fit in {id(f): f for f in chosen if f is not None and f.model is not None}.values():
            rows = np.array([i for i, f in enumerate(chosen) if f is fit])
            out[rows] = self._predict(fit, y, origins[rows], horizon)
        return out

    def _fit(self, y: np.ndarray, horizon: int) -> Any:
        raise NotImplementedError

    def _predict(self, fit: _Fit, y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        raise NotImplementedError


class ProphetCandidate(FittedCandidate):
    """Prophet's curve (trend, and a daily cycle once it has two days) anchored on the current level."""

    def __init__(self, settings: ForecastSettings) -> None:
        super().__init__("prophet", settings, settings.prophet_min_history_bins or settings.day_bins)

    def _fit(self, y: np.ndarray, horizon: int) -> Any:
        import pandas as pd

        from strata_api.prophet import fit_prophet_mean

        # Prophet gets at most ~4000 points (mean bins of several grid bins): the same shape, a faster fit.
        group = max(1, math.ceil(len(y) / 4000))
        whole = len(y) // group * group
        coarse = y[len(y) - whole :].reshape(-1, group).mean(axis=1)
        ahead = math.ceil((self.settings.refit_every_bins + horizon) / group) + 1
        step_s = self.settings.bin_s * group
        stamps = pd.to_datetime(np.arange(len(coarse) + ahead) * step_s, unit="s")
        history = pd.DataFrame({"ds": stamps[: len(coarse)], "y": coarse})
        days = (stamps[len(coarse) - 1] - stamps[0]).total_seconds() / 86400
        curve = fit_prophet_mean(
            history,
            pd.DataFrame({"ds": stamps}),
            daily=days >= 2,  # the slices are too short for weekly terms
            weekly=False,
            tmp_dir=self.settings.prophet_tmp_dir,
            timeout_s=self.settings.prophet_fit_timeout_s,
        )
        fine = np.repeat(curve, group)  # back onto the grid; index 0 is bin len(y) - whole
        return (len(y) - whole, fine)

    def _predict(self, fit: _Fit, y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        offset, fine = fit.model
        w = self.settings.level_bins
        level = _levels(y, origins, w)
        index = origins[:, None] - offset + np.arange(horizon)
        ahead = np.where(index < len(fine), fine[np.minimum(index, len(fine) - 1)], np.nan)
        base = np.array([fine[max(0, o - offset - w) : o - offset].mean() for o in origins])
        result: np.ndarray = level[:, None] + ahead - base[:, None]
        return result


class LSTMCandidate(FittedCandidate):
    """A one-layer LSTM with 16 hidden units and a linear head that writes every step at once."""

    def __init__(self, settings: ForecastSettings) -> None:
        super().__init__("lstm", settings, settings.lstm_input_bins + 64)

    def _fit(self, y: np.ndarray, horizon: int) -> Any:
        import torch

        from strata_serving.lstm import train_lstm

        history = y[-self.settings.lstm_train_bins :]
        scale = float(history.mean()) or 1.0
        generator = torch.Generator().manual_seed(self.settings.seed)
        model = train_lstm(
            history / scale,
            self.settings.lstm_input_bins,
            horizon,
            epochs=self.settings.lstm_epochs,
            budget_s=self.settings.lstm_train_s,
            generator=generator,
        )
        return (model, horizon)

    def _predict(self, fit: _Fit, y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
        from strata_serving.lstm import predict_lstm

        model, trained_horizon = fit.model
        out = np.full((len(origins), horizon), np.nan)
        width = self.settings.lstm_input_bins
        ok = origins >= width
        if ok.any() and horizon <= trained_horizon:
            windows = np.stack([y[o - width : o] for o in origins[ok]])
            scale = np.maximum(windows.mean(axis=1, keepdims=True), 1e-9)
            out[ok] = predict_lstm(model, windows / scale)[:, :horizon] * scale
        return out


def default_candidates(settings: ForecastSettings, fitted: bool = True) -> list[Candidate]:
    """Persistence and seasonal always; Prophet and the LSTM when ``fitted``."""
    candidates: list[Candidate] = [
        Persistence(settings.level_bins),
        Seasonal(settings.level_bins, settings.day_bins),
    ]
    if fitted:
        candidates += [ProphetCandidate(settings), LSTMCandidate(settings)]
    return candidates


@dataclass(frozen=True)
class Choice:
    """The forecast at one origin with the measured errors it was chosen by (mean absolute, req/s)."""

    forecast: Forecast | None
    errors: dict[str, float]


@dataclass(frozen=True)
class Scores:
    """One candidate's measured errors at each origin for one horizon (NaN: not measurable there)."""

    absolute: np.ndarray
    """Mean absolute error over the path's steps."""
    peak: np.ndarray
    """The peak that came minus the peak forecast, over the path's window."""

    @classmethod
    def of(cls, table: np.ndarray, y: np.ndarray, horizon: int, first_origin: int = 0, from_step: int = 0) -> Scores:
        """``table[i]`` is the path made at origin ``first_origin + i``; origins whose targets are not all
        observed yet get NaN. The peak is over steps ``from_step .. horizon - 1``."""
        origins = first_origin + np.arange(len(table))
        index = origins[:, None] + np.arange(horizon)
        observed = index[:, -1] < len(y)
        targets = np.where(observed[:, None], y[np.minimum(index, len(y) - 1)], np.nan)
        past = table[:, :horizon]
        with np.errstate(invalid="ignore"):
            absolute = np.abs(targets - past).mean(axis=1)
            peak = targets[:, from_step:].max(axis=1) - past[:, from_step:].max(axis=1)
        return cls(absolute, peak)


def choose(
    paths: dict[str, np.ndarray],
    y: np.ndarray,
    origin: int,
    horizon: int,
    settings: ForecastSettings,
    first_origin: int = 0,
    dropped: Sequence[str] = (),
    scores: dict[str, Scores] | None = None,
    from_step: int = 0,
) -> Choice:
    """Pick the forecaster by rolling-origin accuracy at ``origin`` and build its conformal band.

    ``paths[name][i]`` is the path made at origin ``first_origin + i`` (at least ``horizon`` steps); the
    origins scored are ``origin - horizon - eval_origins + 1 .. origin - horizon``. ``scores`` (from
    :meth:`Scores.of` on the same tables) saves recomputing them when many origins are chosen in turn. The band
    is for the peak over steps ``from_step .. horizon - 1`` (the start-up time on: see the module docstring), from
    the latest ``settings.band_origins`` of those origins.
    """
    if scores is None:
        scores = {name: Scores.of(table, y, horizon, first_origin, from_step) for name, table in paths.items()}
    last_scored = origin - horizon - first_origin
    window = slice(max(0, last_scored - settings.eval_origins + 1), max(0, last_scored + 1))
    errors: dict[str, float] = {}
    notes = list(dropped)
    for name, table in paths.items():
        now = table[origin - first_origin, :horizon]
        measured = scores[name].absolute[window]
        measured = measured[np.isfinite(measured)]
        if not np.isfinite(now).all() or len(measured) < settings.min_eval_origins:
            if not any(note.startswith(f"{name}:") for note in notes):
                why = f"{len(measured)} scored origins" if np.isfinite(now).all() else "no path now"
                notes.append(f"{name}: {why}")
            continue
        errors[name] = float(measured.mean())
    reference = errors.get(PERSISTENCE, math.inf)
    better = [name for name in errors if name == PERSISTENCE or errors[name] < reference]
    if not better:  # nothing measured yet (too little history): no forecast rather than a guessed band
        return Choice(None, errors)
    best = min(better, key=lambda name: errors[name])
    # The band is for the window's peak, the quantity a scale-up must cover: the chosen forecaster's errors on
    # the peak at the latest scored origins (the peak that came minus the peak it forecast), split-conformal.
    peak_errors = band_errors(scores[best].peak, origin - first_origin, window.stop, settings)
    low, high = np.quantile(peak_errors, [1 - settings.band_quantile, settings.band_quantile])
    peak = float(paths[best][origin - first_origin, from_step:horizon].max())
    forecast = Forecast(
        mean=max(0.0, peak),
        lower=max(0.0, peak + float(low)),
        upper=max(0.0, peak + float(high)),
        horizon_s=horizon * settings.bin_s,
        method=best,
        dropped=tuple(notes),
    )
    return Choice(forecast, errors)


def band_errors(peak: np.ndarray, at: int, scored_end: int, settings: ForecastSettings) -> np.ndarray:
    """The peak errors the band is calibrated on, for the origin at index ``at`` of ``peak`` (origins from index
    ``scored_end`` on are not scored yet).

    With ``band_days`` n > 0: the errors at origins within ``band_window_s / 2`` of ``at - d * day_bins`` for d = 1
    .. n (the same time of day on the n days before), if at least ``min_eval_origins`` of them are measured.
    Otherwise (``band_days`` 0, under a day of history, too few measured there): the latest ``band_origins``
    scored origins, as without it.
    """
    if settings.band_days:
        spans = _same_time_spans(at, scored_end, settings)
        same = np.concatenate([peak[lo:hi] for lo, hi in spans] or [np.empty(0)])
        measured: np.ndarray = same[np.isfinite(same)]
        if len(measured) >= settings.min_eval_origins:
            return measured
    recent = peak[max(0, scored_end - settings.band_origins) : scored_end]
    latest: np.ndarray = recent[np.isfinite(recent)]
    return latest


def _same_time_spans(at: int, scored_end: int, settings: ForecastSettings) -> list[tuple[int, int]]:
    """``[lo, hi)`` origin ranges within ``band_window_s / 2`` of ``at - d * day_bins``, d = 1 .. ``band_days``,
    cut to ``[0, scored_end)``; empty ones left out."""
    half = settings.band_window_bins // 2
    days = [at - d * settings.day_bins for d in range(1, settings.band_days + 1)]
    spans = [(max(0, c - half), min(scored_end, c + half + 1)) for c in days]
    return [(lo, hi) for lo, hi in spans if hi > lo]


def horizon_bins(horizon_s: float, bin_s: float) -> int:
    """Bins that cover [t, t + horizon_s]."""
    return max(1, math.ceil(horizon_s / bin_s - 1e-9))


def all_paths(
    candidates: Sequence[Candidate], y: np.ndarray, origins: np.ndarray, horizon: int
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Every candidate's paths at ``origins``; a candidate whose ``paths`` raises is left out and named."""
    paths: dict[str, np.ndarray] = {}
    dropped: list[str] = []
    for candidate in candidates:
        try:
            table = np.asarray(candidate.paths(y, origins, horizon), dtype=float)
            if table.shape != (len(origins), horizon):
                raise ValueError(f"paths of shape {table.shape}, expected {(len(origins), horizon)}")
        except Exception as error:  # one candidate failing never costs the forecast
            dropped.append(f"{candidate.name}: {type(error).__name__}: {error}"[:200])
            continue
        paths[candidate.name] = table
    if origins.size:
        last = int(origins[-1])
        fitted = [c for c in candidates if isinstance(c, FittedCandidate) and c.name in paths]
        dropped += [note for c in fitted if (note := c.failure_at(last))]
    return paths, dropped


def forecast_now(
    candidates: Sequence[Candidate], y: np.ndarray, horizon_s: float, settings: ForecastSettings, from_s: float = 0.0
) -> Choice:
    """The live forecast after the last bin of ``y``: the recent origins' paths, then :func:`choose`.

    The band is for the peak over [t + from_s, t + horizon_s]. Fitted candidates are refitted elsewhere (in the
    background); this reads their fits only. With ``band_days`` the paths are made at the same time of day on the
    days before as well (the origins between are left without: nothing reads them).
    """
    horizon = horizon_bins(horizon_s, settings.bin_s)
    from_step = min(horizon - 1, int(from_s // settings.bin_s))
    origin = len(y)
    recent = max(0, origin - horizon - settings.eval_origins + 1)
    first = max(0, min(recent, origin - settings.band_history_bins))
    wanted = np.arange(first, origin + 1)
    used = wanted >= recent
    for lo, hi in _same_time_spans(origin, origin - horizon + 1, settings) if settings.band_days else []:
        used[lo - first : hi - first] = True
    made, dropped = all_paths(candidates, y, wanted[used], horizon)
    paths = {}
    for name, table in made.items():
        paths[name] = np.full((len(wanted), horizon), np.nan)
        paths[name][used] = table
    return choose(paths, y, origin, horizon, settings, first_origin=first, dropped=dropped, from_step=from_step)


def refit_all(candidates: Sequence[Candidate], y: np.ndarray, horizon: int) -> float:
    """Refit every fitted candidate on ``y`` (what the live controller's background thread and the replay call);
    returns the seconds it took."""
    started = time.monotonic()
    for candidate in candidates:
        if isinstance(candidate, FittedCandidate):
            candidate.refit(y, horizon)
    return time.monotonic() - started


def rolling_paths(
    candidates: Sequence[Candidate], y: np.ndarray, horizon: int, settings: ForecastSettings
) -> tuple[dict[str, np.ndarray], list[list[str]]]:
    """The replay's paths at every origin ``0 .. len(y)``, and at each origin the candidates that had none, why.

    Fitted candidates are refitted every ``refit_every_bins`` on the bins before that origin only, so every path
    is out of sample, as live.
    """
    for candidate in candidates:
        if isinstance(candidate, FittedCandidate):
            candidate.max_fits = None
    for origin in range(settings.refit_every_bins, len(y) + 1, settings.refit_every_bins):
        refit_all(candidates, y[:origin], horizon)
    paths, dropped = all_paths(candidates, y, np.arange(len(y) + 1), horizon)
    fitted = [c for c in candidates if isinstance(c, FittedCandidate) and c.name in paths]
    failed = [note for note in dropped if note.split(":")[0] not in paths]
    notes = [failed + [note for c in fitted if (note := c.failure_at(at))] for at in range(len(y) + 1)]
    return paths, notes


def rolling_choices(
    paths: dict[str, np.ndarray],
    notes: list[list[str]],
    y: np.ndarray,
    horizon: int,
    settings: ForecastSettings,
    from_step: int = 0,
) -> list[Choice]:
    """:func:`choose` at every origin of :func:`rolling_paths`' tables (any horizon up to theirs)."""
    scores = {name: Scores.of(table, y, horizon, 0, from_step) for name, table in paths.items()}
    return [
        choose(paths, y, at, horizon, settings, dropped=notes[at], scores=scores, from_step=from_step)
        for at in range(len(y) + 1)
    ]
