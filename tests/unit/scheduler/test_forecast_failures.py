"""A failing forecast candidate costs that candidate for one round, never the forecast; the real Prophet runs.

The worker tests use the real :class:`ProphetCurve` (cmdstanpy and the Stan optimiser included) on two and a half
days of minute data, the least history with which Prophet joins the blend; the failure is the one a pod with a
read-only root filesystem and no temp volume would meet: a temp dir that cannot be created.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scheduler_builders import an_extender

from strata_scheduler.forecast_board import HIGH, LOW
from strata_scheduler.forecasting import (
    ANCHORED,
    DroppedCandidate,
    ForecastConfig,
    ForecastWorker,
    ProphetCurve,
    predict,
)

pytestmark = pytest.mark.unit

DAY = 86400
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
FAILURES = "strata_forecast_candidate_failures_total"


def wave_history(days: float) -> tuple[np.ndarray, np.ndarray]:
    """Minute samples of a daily wave with noise, ending where it falls fastest."""
    times = np.arange(T0, T0 + int(days * DAY), 60, dtype=np.int64)
    rng = np.random.default_rng(3)
    return times, 100 + 50 * np.sin(2 * np.pi * (times - T0) / DAY) + rng.normal(0, 2, len(times))


def raising_curve(grid: np.ndarray, y: np.ndarray, extra: int, bin_min: int) -> np.ndarray:
    raise RuntimeError("Error during optimization!\nCommand and output files:\n...")


def nan_curve(grid: np.ndarray, y: np.ndarray, extra: int, bin_min: int) -> np.ndarray:
    values = np.full(len(grid) + extra, 100.0)
    values[-1] = np.nan
    return values


def infinite_curve(grid: np.ndarray, y: np.ndarray, extra: int, bin_min: int) -> np.ndarray:
    values = np.full(len(grid) + extra, 100.0)
    values[3] = np.inf
    return values


def short_curve(grid: np.ndarray, y: np.ndarray, extra: int, bin_min: int) -> np.ndarray:
    return np.full(len(grid), 100.0)  # forgot the bins ahead


@pytest.mark.parametrize(
    ("curve", "reason", "detail"),
    [
        (raising_curve, "raised", "RuntimeError: Error during optimization! Command and output files: ..."),
        (nan_curve, "nonFinite", "1 of 867 values are NaN or infinite"),
        (infinite_curve, "nonFinite", "1 of 867 values are NaN or infinite"),
        (short_curve, "wrongLength", "(289,) values for 867 bins"),
    ],
    ids=["raises", "nan", "inf", "short"],
)
def test_a_failing_curve_is_dropped_and_the_other_candidates_make_the_forecast(
    curve: Any, reason: str, detail: str
) -> None:
    times, demand = wave_history(3)
    without = predict(times, demand, ForecastConfig(), curve=None)
    failed = predict(times, demand, ForecastConfig(), curve=curve)
    assert failed is not None
    assert without is not None
    assert failed.dropped == (DroppedCandidate(ANCHORED, reason, detail),)
    # exactly the forecast the model-free candidates make: same window, same mix, same band
    assert (failed.mean, failed.lower, failed.upper, failed.weights) == (
        without.mean,
        without.lower,
        without.upper,
        without.weights,
    )
    assert failed.method == "persistence"
    assert np.isfinite([failed.mean, failed.lower, failed.upper]).all()


def test_samples_that_are_not_numbers_are_gaps() -> None:
    times, demand = wave_history(1)
    spoiled = demand.copy()
    spoiled[[100, 700, len(demand) - 1]] = [np.nan, np.inf, -np.inf]
    kept = np.isfinite(spoiled)
    assert predict(times, spoiled, ForecastConfig(), curve=None) == predict(
        times[kept], demand[kept], ForecastConfig(), curve=None
    )
    assert predict(times[:2], np.array([np.nan, np.inf]), ForecastConfig(), curve=None) is None


class FixedSource:
    def __init__(self, history: dict[tuple[str, str], list[tuple[int, float]]]) -> None:
        self.data = history
        self.fail = False

    def history(self, since_s: int) -> dict[tuple[str, str], list[tuple[int, float]]]:
        if self.fail:
            raise ConnectionError("prometheus is down")
        return self.data


def two_series(days: float) -> tuple[FixedSource, float]:
    """H100 high priority follows a daily wave (Prophet joins); MI300X low priority is flat (no Prophet)."""
    times, demand = wave_history(days)
    history = {
        ("H100", HIGH): [(int(t), float(v)) for t, v in zip(times, demand, strict=True)],
        ("MI300X", LOW): [(int(t), 4.0) for t in times],
    }
    return FixedSource(history), float(times[-1] + 60)


def test_worker_publishes_a_forecast_from_the_real_prophet(tmp_path: Path) -> None:
    extender = an_extender()
    source, now = two_series(2.5)
    fit_dir = tmp_path / "forecast-tmp"
    worker = ForecastWorker(
        source,
        extender.board,
        extender.metrics,
        threading.Event(),
        curve=ProphetCurve(tmp_dir=fit_dir),
        clock=lambda: now,
    )
    forecasts = worker.run_once()
    assert extender.board.latest() == forecasts
    assert extender.board.last_error is None
    wave = forecasts[("H100", HIGH)]
    assert wave.method == "anchored-prophet"
    assert 0 < wave.lower <= wave.mean <= wave.upper < 200
    assert forecasts[("MI300X", LOW)].mean == 4.0
    assert extender.board.hold_back().upper_by_gpu_type == {"H100": wave.upper}
    assert extender.metrics.registry.get_sample_value(FAILURES, {"candidate": ANCHORED, "reason": "raised"}) is None
    assert not list(fit_dir.glob("prophet-fit-*")), "each fit removes its own output directory"


def test_worker_still_publishes_when_prophet_cannot_write_its_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    extender = an_extender()
    source, now = two_series(2.5)
    (tmp_path / "a-file").write_text("")
    unwritable = tmp_path / "a-file" / "forecast-tmp"  # a read-only root filesystem without a temp volume, in effect
    worker = ForecastWorker(
        source,
        extender.board,
        extender.metrics,
        threading.Event(),
        curve=ProphetCurve(tmp_dir=unwritable),
        clock=lambda: now,
    )
    with caplog.at_level(logging.WARNING, logger="strata_scheduler.forecasting"):
        forecasts = worker.run_once()
    assert extender.board.latest() == forecasts
    assert extender.board.last_error is None
    without_prophet = ForecastWorker(
        source, an_extender().board, an_extender().metrics, threading.Event(), curve=None, clock=lambda: now
    ).run_once()
    # the model-free candidates' forecast, both series; /forecast says what was left out
    assert {key: dataclasses.replace(forecast, dropped={}) for key, forecast in forecasts.items()} == without_prophet
    assert forecasts[("H100", HIGH)].to_json()["dropped"] == {ANCHORED: "raised"}
    assert forecasts[("H100", HIGH)].method == "persistence"
    assert forecasts[("MI300X", LOW)].dropped == {}
    assert extender.board.hold_back().upper_by_gpu_type == {"H100": forecasts[("H100", HIGH)].upper}
    labels = {"candidate": ANCHORED, "reason": "raised"}
    assert extender.metrics.registry.get_sample_value(FAILURES, labels) == 1.0
    [record] = caplog.records
    message = record.getMessage()
    assert "\n" not in message
    assert message.startswith("forecast of H100 high-priority demand: candidate anchored dropped this round (raised: ")
    assert "NotADirectoryError" in message
    worker.run_once()
    assert extender.metrics.registry.get_sample_value(FAILURES, labels) == 2.0


def test_forecast_age_grows_until_a_round_publishes() -> None:
    extender = an_extender()
    source, start = two_series(0.5)
    now = [start]
    worker = ForecastWorker(
        source, extender.board, extender.metrics, threading.Event(), curve=None, clock=lambda: now[0]
    )

    def age() -> float | None:
        return extender.metrics.registry.get_sample_value("strata_forecast_age_seconds")

    now[0] += 120  # not published yet: counted from the worker's start
    assert age() == 120
    worker.run_once()
    assert age() == 0
    source.fail = True
    now[0] += 900
    worker.run_once()  # a failed round keeps the old forecasts, and they grow older
    assert age() == 900
    source.fail = False
    worker.run_once()
    assert age() == 0


def test_cmdstanpy_writes_its_files_under_the_configured_dir(tmp_path: Path) -> None:
    """In a fresh interpreter, as in the extender (cmdstanpy picks its scratch dir once, when first imported): the
    first fit through ``ProphetCurve(tmp_dir)`` puts cmdstanpy's scratch dir there, and no file outlives a fit."""
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path

        import numpy as np
        from strata_scheduler.forecasting import ProphetCurve

        fit_dir = Path(sys.argv[1])
        grid = np.arange(0, 3 * 86400, 300, dtype=np.int64)
        curve = ProphetCurve(tmp_dir=fit_dir)(grid, 10 + np.sin(grid / 86400 * 6.283), 3, 5)
        assert len(curve) == len(grid) + 3, len(curve)
        import cmdstanpy

        print(cmdstanpy._TMPDIR)
        print(sorted(str(path) for path in fit_dir.rglob("*") if not path.is_dir()))
        """
    )
    fit_dir = tmp_path / "forecast-tmp"
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script, str(fit_dir)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "cmdstanpy's per-fit chatter stays quiet without any logging set up"
    scratch, files = done.stdout.splitlines()
    assert Path(scratch).parent == fit_dir
    assert files == "[]", "Stan's inputs and outputs are removed after each fit"


def test_a_prophet_fit_past_its_timeout_is_stopped_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """The real Stan optimiser, stopped by cmdstanpy at the timeout: the forecast is the model-free one, and
    nothing but the worker's own line (not run here) is logged about it."""
    times, demand = wave_history(3)
    with caplog.at_level(logging.INFO):
        hurried = predict(times, demand, ForecastConfig(), curve=ProphetCurve(fit_timeout_s=0.001))
    assert caplog.records == []
    without = predict(times, demand, ForecastConfig(), curve=None)
    assert hurried is not None
    assert without is not None
    assert hurried.dropped == (DroppedCandidate(ANCHORED, "raised", "TimeoutError: 1 of 1 processes timed out"),)
    assert hurried == dataclasses.replace(without, dropped=hurried.dropped)
