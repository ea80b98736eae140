"""What any linear forecaster of the usual features could reach, with hindsight (an analysis, not a forecaster).

    .venv/bin/python bench/scheduler/forecast_bound.py [--eval-days 2.5] [--every-min 5]

For each demand series of ``forecast_quality.py`` and each horizon, origins every ``--every-min`` minutes over the
last ``--eval-days`` days. At each origin the features are what a forecaster knows then: persistence (the last
15 minutes' mean, the baseline), the 5-minute means 1, 4 and 8 hours ago and one day before the target (seasonal
naive, the other baseline), and the last day's mean. One linear model per series and horizon is fitted by least
absolute deviations (MAE-optimal, the closest convex fit to sMAPE) **on the evaluation origins themselves**: it
sees the answers it is scored on, so no forecaster that is linear in these features can do better on these
origins. Prints sMAPE of persistence, seasonal naive and that fit, and the fit's gain over the better baseline.

Where the gain is under 10%, the issue's aim (beat the best naive baseline by at least 10%) is out of reach for
every blend of these features, the Strata forecaster's included (it is a weighted mix of such candidates, chosen
without hindsight). Needs ``../shared/data/traces``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forecast_quality as fq  # the same series and sMAPE as the forecast benchmark

from strata_scheduler.forecasting import bin_means


def least_absolute_deviations(features: np.ndarray, target: np.ndarray, rounds: int = 50) -> np.ndarray:
    """Coefficients minimising the sum of absolute errors, by iteratively reweighted least squares."""
    coef, *_ = np.linalg.lstsq(features, target, rcond=None)
    for _ in range(rounds):
        weights = np.sqrt(1 / np.maximum(np.abs(target - features @ coef), 1e-6 * (1 + np.abs(target))))
        coef, *_ = np.linalg.lstsq(features * weights[:, None], target * weights, rcond=None)
    return np.asarray(coef)


def bound(
    times: np.ndarray, values: np.ndarray, eval_days: float, every_min: int
) -> list[tuple[int, int, float, float, float]]:
    """One row per horizon."""
    grid, binned = bin_means(times.astype(np.int64), values, fq.BIN_MIN)
    width = fq.BIN_MIN * 60

    def at(when: float) -> float:
        hit = np.searchsorted(grid, when)
        ok = hit < len(grid) and grid[hit] == when and not np.isnan(binned[hit])
        return float(binned[hit]) if ok else float("nan")

    end = times[-1] - max(fq.HORIZONS_MIN) * 60
    origins = np.arange((end - eval_days * 86400) // width * width, end, every_min * 60)
    rows = []
    for h in fq.HORIZONS_MIN:
        features, target, persistence, seasonal = [], [], [], []
        for origin in origins:
            last = origin - width  # the last complete bin before the origin
            recent = values[(times < origin) & (times >= origin - 15 * 60)]
            now = float(np.mean(recent)) if len(recent) else float("nan")
            day = binned[(grid > last - 86400) & (grid <= last)]
            row = [now, *(at(last - lag * 60) for lag in (60, 240, 480)), at(last + (h - 1440) * 60)]
            row.append(float(np.nanmean(day)) if len(day) else float("nan"))
            actual = at(last + h * 60)
            if np.isnan(actual) or np.isnan(row).any():
                continue
            features.append([*row, 1.0])
            target.append(actual)
            persistence.append(now)
            seasonal.append(row[4])
        x, y = np.array(features), np.array(target)
        fit = x @ least_absolute_deviations(x, y)
        rows.append((h, len(y), fq.smape(y, np.array(persistence)), fq.smape(y, np.array(seasonal)), fq.smape(y, fit)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--eval-days", type=float, default=2.5)
    parser.add_argument("--every-min", type=int, default=5)
    args = parser.parse_args()
    print("| series | horizon | origins | persistence | seasonal naive | hindsight linear | gain over best naive |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, (times, values) in {**fq.helios_series(), **fq.alibaba_series()}.items():
        for h, n, persistence, seasonal, fit in bound(times, values, args.eval_days, args.every_min):
            gain = 100 * (1 - fit / min(persistence, seasonal))
            label = f"{h} min" if h < 60 else f"{h // 60} h"
            print(f"| {name} | {label} | {n} | {persistence:.1f} | {seasonal:.1f} | {fit:.1f} | {gain:+.0f}% |")


if __name__ == "__main__":
    main()
