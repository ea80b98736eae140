"""Predictive vs reactive (HPA-like) vs a fixed peak-sized fleet, replaying request traces through the autoscaler.

Each trace in ``--traces`` (read in place) is replayed by :mod:`strata_serving.replay` through
:func:`strata_serving.autoscale.decide`, the live controller's own rule, once per replica start-up time. Printed
per trace and start-up time: replica-seconds (cost), SLO-miss seconds (demand above ready capacity), each as a ratio
to the reactive policy, for the predictive policy at several band quantiles, the reactive one and the fixed fleet;
and which forecaster the measured accuracy picked, as shares of the decisions. Two forecast windows: ``now``, the
band's peak over [t, t + start-up + margin] (the default rule), and ``lead``, over [t + start-up, t + start-up +
margin] only (what a replica ordered now can serve; scale-down is still held by the stabilisation window). The
issue's aim: at least 50% fewer SLO-miss seconds than reactive at no more than 10% more replica-seconds.

The per-replica target (``target``, requests per second) is chosen per trace so that the fleet is a realistic size:

- Azure LLM inference (code, conv): a replica serves a tenth of the 95th-percentile minute's rate, so the busy
  minutes need about 10 replicas of one model (the trace gives no service times to size from).
- Alibaba GenAI (diffusion): one image generation at a time per replica, 80% busy: 0.8 / median
  ``exec_time_seconds`` requests per second.

A trace with execution times (Alibaba's) is replayed a second time with the ``concurrency`` metric: the requests
in flight by Little's law (each request in flight for its ``exec_time_seconds``), a replica carrying 0.8 of them
(one generation at a time, 80% busy). For such a trace every policy of either metric is also scored on one
yardstick, ``work-miss s``: seconds with more requests in flight than its ready replicas carry at 0.8 each. The
Azure traces have token counts but no service times, so they are replayed on the rate only.

``--hindsight`` adds two yardsticks that are not policies, since they read the future: the predictive rule fed an
exact forecast (the demand's true peak over the ``now`` or ``lead`` window, no band), with the policy's
stabilisation window and with each of ``--exact-stabilisation-s``, and exact only ``--exact-horizons-s`` ahead;
and the hindsight floor, the least any scaler pays without missing a second. The floor's gap to the exact rows is
the rule's own (its decision interval, metric window and stabilisation); the exact rows' gap to the ``pred`` rows
is the forecast's.

Writes one PNG per trace, metric and start-up time to ``--out``: demand, the forecast's upper band, and the ready
capacity of the predictive and reactive fleets over time (for the 14-day trace, also its busiest day).

    .venv/bin/python bench/serving/autoscale_replay.py [--startups 30 60 120 300] [--out /tmp/strata-autoscale]
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from strata_serving.autoscale import Forecast, Metric, Mode, ScalingPolicy
from strata_serving.forecasters import (
    Choice,
    ForecastSettings,
    default_candidates,
    horizon_bins,
    rolling_choices,
    rolling_paths,
)
from strata_serving.replay import (
    HINDSIGHT_FLOOR,
    Attribution,
    ReplayConfig,
    ReplayResult,
    Trace,
    attribute,
    compare,
    demand_rate,
    exact_forecasts,
    hindsight_floor,
    load_trace,
    per_second_busy,
    per_second_counts,
    rate_series,
    simulate,
)

TRACES = Path(__file__).resolve().parents[3] / "shared" / "data" / "traces"


@dataclass(frozen=True)
class Setup:
    """How one trace is replayed: the forecasters' grid and refits, the demand window, the target rule."""

    file: str
    bin_s: int
    refit_every_bins: int
    prophet_min_history_bins: int
    """0: a day (Prophet sees a daily cycle). The Azure slices are under half an hour, so Prophet there is trend
    only, fitted after 10 minutes, and the measured accuracy decides whether it is used."""
    demand_window_s: int = 60


SETUPS = {
    "azure_code": Setup("azure_llm_inference_2023/AzureLLMInferenceTrace_code.dev.csv.gz", 5, 60, 120),
    "azure_conv": Setup("azure_llm_inference_2023/AzureLLMInferenceTrace_conv.dev.csv.gz", 5, 60, 120),
    "alibaba_genai": Setup("alibaba_genai_2026/lora_request_trace.dev.csv.gz", 60, 1440, 0),
}


MARGIN_S = 30.0
"""The forecast window past the start-up (``ScalingPolicy.margin_s``)."""


def forecasters_warmup_s(settings: ForecastSettings, startups: list[int]) -> int:
    """Seconds left out of every policy's figures: until the forecasters have scored enough origins at the longest
    horizon (before that the predictive mode is the reactive floor)."""
    longest = horizon_bins(max(startups) + MARGIN_S, settings.bin_s)
    return (settings.min_eval_origins + longest + settings.level_bins) * settings.bin_s


def target_for(trace: Trace, demand: np.ndarray) -> tuple[float, str]:
    """The per-replica target and how it was chosen (see the module docstring)."""
    if trace.exec_s is not None:
        median = float(np.median(trace.exec_s))
        return 0.8 / median, f"0.8 / median exec time {median:.0f} s (one generation at a time, 80% busy)"
    p95 = float(np.quantile(demand, 0.95))
    return p95 / 10, f"p95 minute rate {p95:.2f} req/s / 10 (busy minutes need ~10 replicas)"


CONCURRENCY_TARGET = 0.8
"""Requests in flight per replica for a trace with execution times: one generation at a time, 80% busy (the same
replica as the rps target's ``0.8 / median exec time``, sized by each request's own time instead of the median)."""


def run_trace(name: str, setup: Setup, args: argparse.Namespace) -> list[str]:
    started = time.monotonic()
    trace = load_trace(args.traces / setup.file)
    counts = per_second_counts(trace.arrivals_s)
    demand = demand_rate(counts, setup.demand_window_s)
    target, why = target_for(trace, demand)
    days = len(counts) / 86400
    print(f"\n== {name}: {len(trace.arrivals_s):,} requests over {len(counts) / 3600:.1f} h ({days:.1f} days)")
    work: np.ndarray | None = None  # the requests in flight (Little's law), where the trace has execution times
    runs = [(Metric.RPS, counts, target, why)]
    if trace.exec_s is not None:
        busy = per_second_busy(trace.arrivals_s, trace.exec_s, len(counts))
        work = demand_rate(busy, setup.demand_window_s)
        runs.append((Metric.CONCURRENCY, busy, CONCURRENCY_TARGET, "one generation at a time, 80% busy"))
    lines = []
    for metric, sized, metric_target, metric_why in runs:
        lines += replay_metric(name, setup, args, trace, metric, sized, metric_target, metric_why, work, counts)
    print(f"   ({time.monotonic() - started:.0f} s for this trace)")
    return lines


def replay_metric(
    name: str,
    setup: Setup,
    args: argparse.Namespace,
    trace: Trace,
    metric: Metric,
    sized: np.ndarray,
    target: float,
    why: str,
    work: np.ndarray | None,
    counts: np.ndarray,
) -> list[str]:
    """One trace replayed with one metric (``sized``: its per-second values) at every start-up time. With ``work``
    (the requests in flight, for a trace with execution times) each policy's seconds with more work in flight than
    its ready replicas carry (at :data:`CONCURRENCY_TARGET`) are printed too, whatever the metric: one yardstick
    for the rps and the concurrency targets."""
    started = time.monotonic()
    demand = demand_rate(sized, setup.demand_window_s)
    series = rate_series(sized, setup.bin_s, setup.demand_window_s)
    settings = ForecastSettings(
        bin_s=setup.bin_s,
        refit_every_bins=setup.refit_every_bins,
        prophet_min_history_bins=setup.prophet_min_history_bins,
        lstm_train_s=args.lstm_train_s,
        lstm_epochs=args.lstm_epochs,
        prophet_tmp_dir=args.out / "stan",
        band_days=args.band_days,
    )
    margin_s = MARGIN_S
    horizons = {startup: horizon_bins(startup + margin_s, setup.bin_s) for startup in args.startups}
    paths, notes = rolling_paths(
        default_candidates(settings, fitted=not args.no_fitted), series, max(horizons.values()), settings
    )
    rate_paths = None
    if metric is Metric.CONCURRENCY:
        rate_series_ = rate_series(counts, setup.bin_s, setup.demand_window_s)
        candidates = default_candidates(settings, fitted=not args.no_fitted)
        rate_paths = (rate_series_, *rolling_paths(candidates, rate_series_, max(horizons.values()), settings))
    fitted_s = time.monotonic() - started
    warmup_s = forecasters_warmup_s(settings, args.startups)
    config = ReplayConfig(interval_s=15, bin_s=setup.bin_s, demand_window_s=setup.demand_window_s, warmup_s=warmup_s)
    unit = metric.unit
    print(f"\n   metric {metric.value}: target {target:.3f} {unit} per replica: {why}; peak demand needs "
          f"{math.ceil(demand.max() / target)}")  # fmt: skip
    print(
        f"   forecast grid {setup.bin_s} s, demand over {setup.demand_window_s} s, decisions every 15 s, "
        f"first {warmup_s} s left out of every policy's figures (forecasters' warm-up)"
    )
    lines = [f"{name} {metric.value}: target {target:.3f} {unit} ({why})"]
    for startup in args.startups:
        policy = ScalingPolicy(
            target=target, startup_s=startup, margin_s=margin_s, metric=metric, starting_hold_s=args.starting_hold_s
        )
        rows: list[tuple[str, ReplayResult]] = []
        picks: Counter[str] = Counter()
        upper_by_tick: np.ndarray | None = None
        for window, from_step in (("now", 0), ("lead", startup // setup.bin_s)):
            for quantile in args.quantiles:
                choices = rolling_choices(
                    paths, notes, series, horizons[startup], replace(settings, band_quantile=quantile), from_step
                )
                results = compare(trace.arrivals_s, policy, config, _reader(choices), trace.exec_s)
                rows.append((f"pred {window} q{quantile:g}", results["predictive"]))
                if window == "now" and quantile == args.quantiles[-1]:
                    picks = Counter(
                        c.forecast.method if c.forecast else "none" for c in choices[warmup_s // setup.bin_s :]
                    )
                    upper_by_tick = _upper(choices, len(sized), setup.bin_s)
        if rate_paths is not None:
            rates, r_paths, r_notes = rate_paths
            quantile = args.quantiles[-1]
            choices = rolling_choices(
                r_paths, r_notes, rates, horizons[startup], replace(settings, band_quantile=quantile)
            )
            reader = _littles_law(choices, counts, sized, setup.bin_s)
            rows.append(
                (
                    f"rate x L q{quantile:g}",
                    compare(trace.arrivals_s, policy, config, reader, trace.exec_s)["predictive"],
                )
            )
        rows += [("reactive (HPA)", results["reactive"]), ("fixed (peak)", results["fixed"])]
        if args.hindsight:
            rows += _hindsight_rows(trace, policy, config, demand, setup.bin_s, args)
        reactive = results["reactive"]
        print(
            f"\n   start-up {startup} s (forecast {horizons[startup]} bins = {horizons[startup] * setup.bin_s} s ahead)"
        )
        extra = f" {'work-miss s':>11s}" if work is not None else ""
        print(f"   {'policy':18s} {'replica-s':>12s} {'SLO-miss s':>10s} {'cost/react':>10s} {'miss/react':>10s}"
              f"{extra}  aim")  # fmt: skip
        for label, result in rows:
            cost = result.replica_seconds / reactive.replica_seconds
            miss = result.slo_miss_s / reactive.slo_miss_s if reactive.slo_miss_s else math.nan
            aim = "met" if miss <= 0.5 and cost <= 1.10 else ""
            figures = f"{result.replica_seconds:12,.0f} {result.slo_miss_s:10,d} {cost:10.2f} {miss:10.2f}"
            if work is not None:
                short = work[warmup_s:] > result.ready[warmup_s:] * CONCURRENCY_TARGET + 1e-9
                figures += f" {int(np.count_nonzero(short)):11,d}"
            print(f"   {label:18s} {figures}  {aim}")
            lines.append(f"{name} {metric.value} startup {startup}s {label}: cost x{cost:.2f} miss x{miss:.2f}")
        total = sum(picks.values())
        print("   forecaster picked: " + ", ".join(f"{m} {n / total:.0%}" for m, n in picks.most_common()))
        if args.explain:
            for label, result in rows:
                if label.startswith("pred") and label.endswith(f"q{args.quantiles[-1]:g}"):
                    _explain(label, attribute(result, reactive, demand, policy, config), reactive.replica_seconds)
        if upper_by_tick is not None:
            out = args.out / f"{name}-{metric.value}-startup{startup}s.png"
            _plot(out, name, startup, demand, upper_by_tick, rows, target, unit)
    print(f"   ({time.monotonic() - started:.0f} s for this metric, {fitted_s:.0f} s of it fitting and forecasting)")
    return lines


def _hindsight_rows(
    trace: Trace, policy: ScalingPolicy, config: ReplayConfig, demand: np.ndarray, bin_s: int, args: argparse.Namespace
) -> list[tuple[str, ReplayResult]]:
    """``--hindsight``'s yardsticks: the predictive rule fed an exact forecast over each window, with the policy's
    stabilisation and with each of ``--exact-stabilisation-s`` (an exact forecast already knows the fall); over
    ``[t, t + h]`` for each of ``--exact-horizons-s`` (a forecast exact less far ahead); and the floor."""

    def exact(label: str, start_s: float, end_s: float, stabilisation_s: float) -> tuple[str, ReplayResult]:
        predictive = replace(policy, mode=Mode.PREDICTIVE, stabilisation_s=stabilisation_s)
        forecasts = exact_forecasts(demand, bin_s, start_s, end_s)
        return label, simulate(trace.arrivals_s, predictive, config, forecasts, trace.exec_s)

    rows = []
    for stabilisation in [policy.stabilisation_s, *args.exact_stabilisation_s]:
        tag = "" if stabilisation == policy.stabilisation_s else f" stab {stabilisation:g}"
        rows.append(exact(f"exact now{tag}", 0.0, policy.horizon_s, stabilisation))
        rows.append(exact(f"exact lead{tag}", policy.startup_s, policy.horizon_s, stabilisation))
    rows += [exact(f"exact {h} s ahead", 0.0, h, policy.stabilisation_s) for h in args.exact_horizons_s]
    rows.append((HINDSIGHT_FLOOR, hindsight_floor(trace.arrivals_s, policy, config, trace.exec_s)))
    return rows


LATENCY_WINDOW_S = 3600
"""The mean latency that turns a rate forecast into a concurrency one is measured over the last hour."""


def _littles_law(
    choices: list[Choice], counts: np.ndarray, busy: np.ndarray, bin_s: int
) -> Callable[[int], Forecast | None]:
    """A concurrency forecast from a rate forecast: the band times the mean latency of the last
    :data:`LATENCY_WINDOW_S` (request-seconds over requests, both observed before the forecast's origin)."""
    requests = np.concatenate([[0.0], np.cumsum(counts)])
    seconds = np.concatenate([[0.0], np.cumsum(busy)])

    def at(n: int) -> Forecast | None:
        forecast = choices[n].forecast if n < len(choices) else None
        end = min(n * bin_s, len(counts))
        start = max(0, end - LATENCY_WINDOW_S)
        if forecast is None or requests[end] == requests[start]:
            return None
        latency = (seconds[end] - seconds[start]) / (requests[end] - requests[start])
        scaled = {k: getattr(forecast, k) * latency for k in ("mean", "lower", "upper")}
        return replace(forecast, **scaled, method=f"{forecast.method} x L")

    return at


def _explain(label: str, found: Attribution, reactive_replica_s: float) -> None:
    """Print where ``label``'s replica-seconds beyond reactive's went and where each missed (``--explain``)."""
    print(f"   where {label} paid and missed, against reactive (extra replica-s as a share of reactive's):")
    shares = [(f"decision cause {cause}", share) for cause, share in found.by_cause.items()]
    if found.baseline_at_min.seconds:
        shares.append(("reactive at its minimum", found.baseline_at_min))
    for name, share in shares:
        print(
            f"     {name:34s} {share.seconds:9,d} s  extra {share.extra_replica_seconds:+11,.0f} "
            f"({share.extra_replica_seconds / reactive_replica_s:+6.1%})  misses {share.misses:7,d} "
            f"vs reactive {share.baseline_misses:7,d}"
        )
    print(
        f"     misses with replicas already starting (ordered too late): {found.late_misses:,d}; "
        f"reactive's: {found.baseline_late_misses:,d}"
    )


def _reader(choices: list[Choice]) -> Callable[[int], Forecast | None]:
    return lambda n: choices[n].forecast if n < len(choices) else None


def _upper(choices: list[Choice], duration: int, bin_s: int) -> np.ndarray:
    upper = np.array([c.forecast.upper if c.forecast else np.nan for c in choices])
    return upper[np.minimum(np.arange(duration) // bin_s, len(upper) - 1)]


def _plot(
    path: Path,
    name: str,
    startup: int,
    demand: np.ndarray,
    upper: np.ndarray,
    rows: list[tuple[str, ReplayResult]],
    target: float,
    unit: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = dict(rows)
    predictive = next(result for label, result in rows if label.startswith("pred now"))
    spans = [(0, len(demand))]
    if len(demand) > 2 * 86400:  # the busiest day as well
        daily = demand[: len(demand) // 86400 * 86400].reshape(-1, 86400).sum(axis=1)
        day = int(np.argmax(daily))
        spans.append((day * 86400, (day + 1) * 86400))
    figure, axes = plt.subplots(len(spans), 1, figsize=(12, 4 * len(spans)), squeeze=False)
    for axis, (start, end) in zip(axes[:, 0], spans, strict=True):
        step = max(1, (end - start) // 4000)
        hours = np.arange(start, end, step) / 3600
        axis.plot(hours, demand[start:end:step], lw=0.6, color="black", label=f"demand ({unit})")
        axis.plot(hours, upper[start:end:step], lw=0.8, color="tab:orange", label="forecast upper band")
        axis.plot(
            hours, predictive.ready[start:end:step] * target, lw=1, color="tab:blue", label="predictive ready capacity"
        )
        axis.plot(
            hours,
            results["reactive (HPA)"].ready[start:end:step] * target,
            lw=1,
            color="tab:red",
            label="reactive ready capacity",
        )
        axis.set_xlabel("hours from the first request")
        axis.set_ylabel(unit)
        axis.legend(loc="upper left", fontsize=8)
    axes[0, 0].set_title(f"{name}, replica start-up {startup} s")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=TRACES, help="the traces folder (read in place)")
    parser.add_argument("--only", nargs="*", choices=sorted(SETUPS), help="replay these traces only")
    parser.add_argument("--startups", type=int, nargs="+", default=[30, 60, 120, 300], help="replica start-up, s")
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.5, 0.7, 0.9], help="band quantiles")
    parser.add_argument(
        "--lstm-epochs", type=int, default=40, help="epochs of one LSTM fit (on one CPU thread: the same fit anywhere)"
    )
    parser.add_argument(
        "--lstm-train-s",
        type=float,
        default=math.inf,
        help="time bound of one LSTM fit (default none: a time bound makes the figures move with the machine's load)",
    )
    parser.add_argument(
        "--band-days",
        type=int,
        default=ForecastSettings.band_days,
        help="calibrate the band on the same time of day of this many earlier days (0: the last hour only)",
    )
    parser.add_argument(
        "--starting-hold-s",
        type=float,
        default=ScalingPolicy.starting_hold_s,
        help="predictive: cancel a starting replica that no recommendation of this many seconds asks for"
        " (300, the stabilisation window: never)",
    )
    parser.add_argument("--no-fitted", action="store_true", help="persistence and seasonal only (no Prophet, LSTM)")
    parser.add_argument(
        "--hindsight",
        action="store_true",
        help="add two yardsticks that read the future: the predictive rule with an exact forecast (`exact now`,"
        " `exact lead`) and the least any scaler pays without missing a second (`hindsight floor`)",
    )
    parser.add_argument(
        "--exact-stabilisation-s",
        type=int,
        nargs="*",
        default=[60],
        help="--hindsight: the exact forecast's rows again with these scale-down stabilisation windows, s",
    )
    parser.add_argument(
        "--exact-horizons-s",
        type=int,
        nargs="*",
        default=[],
        help="--hindsight: rows with a forecast exact only this many seconds ahead, over [t, t + h]",
    )
    parser.add_argument(
        "--explain", action="store_true", help="where predictive's extra replica-seconds go and where it misses"
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/strata-autoscale"), help="where the PNGs go")
    args = parser.parse_args()
    if not args.no_fitted:
        import torch  # the LSTM's fits on one thread: faster here than two, and the same sums on any machine

        torch.set_num_threads(1)
    for name in args.only or SETUPS:
        run_trace(name, SETUPS[name], args)
    print(f"\nplots: {args.out}/*.png")


if __name__ == "__main__":
    main()
