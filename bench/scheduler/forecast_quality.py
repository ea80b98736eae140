"""Forecast quality on public demand traces, rolling origin, against the naive baselines.

Series (from ../shared/data/traces; not part of a user's checkout, so this is a benchmark, never a test):
- Helios Earth: GPU demand (running + pending GPUs) summed over the 16 VCs, and the three busiest VCs alone,
  one-minute samples; the cluster-wide logging gap of 2020-05-09/12 is dropped, not filled.
- Alibaba GenAI 2026: requests per minute.

At each origin ``t`` (every ``--every-h`` hours over the last ``--eval-days`` days of the trace, leaving room
for the longest horizon) each method sees only samples before ``t`` and forecasts the 5-minute mean at
``t + h`` for h = 15 min, 1 h, 4 h, 8 h:

- persistence: the mean of the last 15 minutes;
- seasonal naive: the same 5-minute bin a day earlier;
- Prophet: Prophet's own prediction (fitted on 5-minute means of up to 14 days);
- Strata (:func:`strata_scheduler.forecasting.predict`): the per-horizon blend of persistence, seasonal naive,
  a 7-day seasonal median, yesterday's change on today's level, the day's mean and anchored Prophet (the last
  15 minutes' level plus Prophet's predicted change) that did best on the last week, with an 80% band from its
  own recent errors.

Scores: sMAPE (%), MAE, and the share of outcomes inside Strata's 80% band. Two Prophet fits per series and
origin (one before the calibration window, one on all history) serve every horizon. Also reported: Prophet's
fit time on 14 days of one-minute history.

    .venv/bin/python bench/scheduler/forecast_quality.py [--eval-days 2.5] [--every-h 3]
"""

from __future__ import annotations

import argparse
import gzip
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np

from strata_scheduler.forecasting import ForecastConfig, bin_means, predict, prophet_curve

TRACES = Path(__file__).resolve().parents[3] / "shared" / "data" / "traces"
HORIZONS_MIN = (15, 60, 240, 480)
BIN_MIN = 5
HELIOS_GAP = (datetime(2020, 5, 9, 23, 56).timestamp(), datetime(2020, 5, 12, 16, 2).timestamp())


def helios_series() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder = TRACES / "helios_earth_vc_demand"
    per_vc: dict[str, dict[float, float]] = {}
    for path in sorted(folder.glob("*_cluster_sequence_vc.dev.csv.gz")):
        with gzip.open(path, "rt") as lines:
            header = next(lines).strip().split(",")
            at, running, pending = (
                header.index("time"),
                header.index("running_gpu_num"),
                header.index("pending_gpu_num"),
            )
            series = {}
            for line in lines:
                cells = line.strip().split(",")
                when = datetime.fromisoformat(cells[at]).timestamp()
                if not HELIOS_GAP[0] <= when < HELIOS_GAP[1]:
                    series[when] = float(cells[running]) + float(cells[pending])
        per_vc[path.name.split("_")[0]] = series
    times = sorted(set.intersection(*(set(s) for s in per_vc.values())))
    result = {"helios-sum": (np.array(times), np.array([sum(s[t] for s in per_vc.values()) for t in times]))}
    busiest = sorted(per_vc, key=lambda vc: -float(np.mean(list(per_vc[vc].values()))))[:3]
    for vc in busiest:
        result[f"helios-{vc}"] = (np.array(times), np.array([per_vc[vc][t] for t in times]))
    return result


def alibaba_series() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    path = TRACES / "alibaba_genai_2026" / "lora_request_trace.dev.csv.gz"
    with gzip.open(path, "rt") as lines:
        next(lines)
        minutes = [datetime.fromisoformat(line.split(",", 1)[0]).timestamp() // 60 * 60 for line in lines]
    first, last = min(minutes), max(minutes)
    grid = np.arange(first, last + 60, 60)
    counts = np.bincount(((np.array(minutes) - first) // 60).astype(int), minlength=len(grid)).astype(float)
    return {"alibaba-requests": (grid, counts)}


def caching_curve(max_extra: int) -> Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]:
    """Fit Prophet once per history and serve every horizon from that fit."""
    cache: dict[tuple[int, int, int], np.ndarray] = {}

    def curve(grid: np.ndarray, y: np.ndarray, extra: int, bin_min: int) -> np.ndarray:
        key = (int(grid[0]), int(grid[-1]), len(grid))
        if key not in cache or len(cache[key]) < len(grid) + extra:
            if len(cache) > 8:
                cache.clear()
            cache[key] = prophet_curve(grid, y, max(extra, max_extra), bin_min)
        return cache[key][: len(grid) + extra]

    return curve


def smape(actual: np.ndarray, forecast: np.ndarray) -> float:
    denominator = np.abs(actual) + np.abs(forecast)
    terms = np.where(denominator > 0, 2 * np.abs(forecast - actual) / np.where(denominator > 0, denominator, 1), 0.0)
    return float(100 * np.mean(terms))


def evaluate(
    name: str, times: np.ndarray, values: np.ndarray, eval_days: float, every_h: float, prophet: bool = True
) -> list[str]:
    grid, binned = bin_means(times.astype(np.int64), values, BIN_MIN)
    longest = max(HORIZONS_MIN) * 60
    end = times[-1] - longest
    width = BIN_MIN * 60
    # Origins on bin boundaries, so the forecaster's last bin is complete and "h ahead" means bin + h exactly.
    origins = np.arange((end - eval_days * 86400) // width * width, end, every_h * 3600)
    curve = caching_curve(max(HORIZONS_MIN) // BIN_MIN) if prophet else None
    rows: dict[tuple[int, str], list[tuple[float, float]]] = defaultdict(list)
    inside: dict[int, list[bool]] = defaultdict(list)
    fits = 0
    for origin in origins:
        seen = (times < origin) & (times >= origin - 14 * 86400)
        if seen.sum() < 60:
            continue
        fits += 1
        for h in HORIZONS_MIN:
            target_bin = (times[seen][-1] // width) * width + h * 60
            hit = np.searchsorted(grid, target_bin)
            if hit >= len(grid) or grid[hit] != target_bin or np.isnan(binned[hit]):
                continue
            actual = float(binned[hit])
            config = ForecastConfig(horizon_min=h, min_history_h=24.0)
            anchored = predict(times[seen], values[seen], config, curve)
            assert anchored is not None
            recent = values[seen][times[seen] >= origin - 15 * 60]
            persistence = float(np.mean(recent)) if len(recent) else float(values[seen][-1])
            day_ago = np.searchsorted(grid, target_bin - 86400)
            seasonal = float(binned[day_ago]) if day_ago < len(grid) and not np.isnan(binned[day_ago]) else persistence
            forecasts = [("persistence", persistence), ("seasonal-naive", seasonal), ("strata", anchored.mean)]
            if curve is not None:
                model = curve(*bin_means(times[seen].astype(np.int64), values[seen], BIN_MIN), h, BIN_MIN)
                forecasts.append(("prophet", float(model[-1])))
            for method, forecast in forecasts:
                rows[(h, method)].append((actual, forecast))
            inside[h].append(anchored.lower <= actual <= anchored.upper)
    lines = []
    for h in HORIZONS_MIN:
        cells = []
        for method in ("persistence", "seasonal-naive", "prophet", "strata"):
            pairs = np.array(rows[(h, method)])
            if len(pairs) == 0:
                cells.append("n/a")
                continue
            mae = float(np.mean(np.abs(pairs[:, 0] - pairs[:, 1])))
            cells.append(f"{smape(pairs[:, 0], pairs[:, 1]):.1f} / {mae:.1f}")
        coverage = 100 * float(np.mean(inside[h])) if inside[h] else float("nan")
        label = f"{h} min" if h < 60 else f"{h // 60} h"
        lines.append(f"| {name} | {label} | {' | '.join(cells)} | {coverage:.0f}% | {len(inside[h])} |")
    print(f"# {name}: {fits} fits", flush=True)
    return lines


def fit_time_on_14_days_of_minutes(times: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Seconds to fit Prophet on 14 days at one-minute resolution, and on the forecaster's 5-minute means."""
    import pandas as pd
    from prophet import Prophet

    from strata_api.prophet import quiet_prophet_logs

    quiet_prophet_logs()
    window = times >= times[-1] - 14 * 86400
    frame = pd.DataFrame({"ds": pd.to_datetime(times[window], unit="s"), "y": values[window]})
    started = time.perf_counter()
    Prophet(yearly_seasonality=False, uncertainty_samples=0).fit(frame)
    per_minute = time.perf_counter() - started
    grid, binned = bin_means(times[window].astype(np.int64), values[window], BIN_MIN)
    started = time.perf_counter()
    prophet_curve(grid, binned, 3, BIN_MIN)
    per_bin = time.perf_counter() - started
    return per_minute, per_bin


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--eval-days", type=float, default=2.5)
    parser.add_argument("--every-h", type=float, default=3.0)
    parser.add_argument("--series", nargs="*", default=None, help="names to run (default: all)")
    parser.add_argument(
        "--no-prophet", action="store_true", help="the blend without its Prophet candidate (quick; for iterating)"
    )
    args = parser.parse_args()
    series = {**helios_series(), **alibaba_series()}
    table = [
        "| series | horizon | persistence | seasonal naive | Prophet | Strata blend | 80% band covers | origins |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, (times, values) in series.items():
        if args.series and name not in args.series:
            continue
        rows = evaluate(name, times, values, args.eval_days, args.every_h, prophet=not args.no_prophet)
        print("\n".join(rows), flush=True)  # as each series completes: a long run's partial results survive
        table += rows
    print("\nsMAPE % / MAE per cell\n")
    print("\n".join(table))
    if args.no_prophet:
        return
    times, values = series["helios-sum"]
    per_minute, per_bin = fit_time_on_14_days_of_minutes(times, values)
    print(f"\nProphet fit on 14 days: {per_minute:.1f} s at 1-minute resolution, {per_bin:.1f} s on 5-minute means")


if __name__ == "__main__":
    main()
