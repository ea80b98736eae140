"""Replay a request trace through the autoscaler: what each policy would have cost and how often it fell short.

A discrete simulation on a one-second grid. Every ``interval_s`` the policy decides through
:func:`strata_serving.autoscale.decide` (the live controller's own rule, not a copy); a replica it adds is ready
``startup_s`` after that decision; one it removes goes at once (a starting one first, the newest first). Costs::

    demand(s)          = the policy's metric over the ``demand_window_s`` seconds up to s
                         (in the first window: the first window's value)
                         rps:         requests arriving in the window, per second
                         concurrency: request-seconds in the window, per second: the mean requests in flight
                                      (Little's law on each request's duration; a trace with durations only)
    replica-seconds    = sum over s of (ready + starting replicas)          a starting replica is paid for
    SLO-miss seconds   = count of s with demand(s) > ready(s) * target
    (both from ``warmup_s`` on)

A ``p99Latency`` target is not replayed: its misses depend on how latency grows with load per replica, a queueing
model the replay does not have (the live router measures it instead).

The policies: ``predictive`` and ``reactive`` (the HPA-like rule) from :mod:`~strata_serving.autoscale`, and a fixed
fleet sized for the trace's peak demand from the start (no misses; the cost of never scaling). Two yardsticks
that are not policies, since they read the future: :func:`hindsight_floor`, the least any scaler could pay
without missing a second, and :func:`exact_forecasts`, the forecast a perfect forecaster would give the
predictive rule.

The trace loader reads the Azure LLM inference 2023 (``TIMESTAMP``) and Alibaba GenAI 2026 (``gmt_create``)
request CSVs, gzip or plain, in place; a malformed row is an error naming the file, the line and the column.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from strata_serving.autoscale import (
    Forecast,
    Metric,
    Mode,
    Recommendation,
    ScalingDecision,
    ScalingPolicy,
    decide,
    replicas_for,
)

FIXED = "fixed"


class TraceError(ValueError):
    """A trace file that cannot be read: the message names the file, the line and the column."""


@dataclass(frozen=True)
class Trace:
    name: str
    arrivals_s: np.ndarray
    """Request arrival times in seconds after the first request, sorted."""
    start: datetime
    exec_s: np.ndarray | None = None
    """Per-request execution time in seconds where the trace has it (Alibaba's ``exec_time_seconds``)."""


_FORMATS = {
    "TIMESTAMP": "%Y-%m-%d %H:%M:%S.%f",  # Azure LLM inference 2023: seven fraction digits, cut to six
    "gmt_create": "%Y-%m-%d %H:%M:%S",  # Alibaba GenAI 2026
}
_EXEC_COLUMN = "exec_time_seconds"


def load_trace(path: Path) -> Trace:
    """The arrivals of one request trace (format chosen by its time column; see the module docstring)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            reader = csv.reader(text)
            header = next(reader, None)
            if header is None:
                raise TraceError(f"{path}: line 1: the file is empty (expected a header)")
            header = [column.strip() for column in header]
            time_column = next((column for column in _FORMATS if column in header), None)
            if time_column is None:
                raise TraceError(f"{path}: line 1: no time column; expected one of {', '.join(_FORMATS)}")
            time_index = header.index(time_column)
            exec_index = header.index(_EXEC_COLUMN) if _EXEC_COLUMN in header else None
            times: list[float] = []
            execs: list[float] = []
            for line, row in enumerate(reader, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise TraceError(f"{path}: line {line}: {len(row)} fields, the header has {len(header)}")
                times.append(_parse_time(row[time_index], time_column, path, line))
                if exec_index is not None:
                    execs.append(_parse_float(row[exec_index], _EXEC_COLUMN, path, line))
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as error:
        raise TraceError(f"{path}: cannot read: {error}") from error
    if not times:
        raise TraceError(f"{path}: no requests after the header")
    stamps = np.array(times)
    order = np.argsort(stamps, kind="stable")
    return Trace(
        name=path.name.split(".")[0],
        arrivals_s=stamps[order] - stamps[order[0]],
        start=datetime.fromtimestamp(float(stamps[order[0]])),
        exec_s=np.array(execs)[order] if exec_index is not None else None,
    )


def _parse_time(text: str, column: str, path: Path, line: int) -> float:
    value = text.strip()
    if "." in value:  # strptime's %f takes at most six digits
        head, fraction = value.split(".", 1)
        value = f"{head}.{fraction[:6]}"
    try:
        return datetime.strptime(value, _FORMATS[column]).timestamp()
    except ValueError:
        raise TraceError(
            f"{path}: line {line}, column {column!r}: {text!r} is not a time like {_FORMATS[column]}"
        ) from None


def _parse_float(text: str, column: str, path: Path, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceError(f"{path}: line {line}, column {column!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise TraceError(f"{path}: line {line}, column {column!r}: {text!r} is not a finite number")
    return value


def per_second_counts(arrivals_s: np.ndarray, duration_s: int | None = None) -> np.ndarray:
    """Requests arriving in each second ``[s, s + 1)``."""
    seconds = np.floor(arrivals_s).astype(int)
    length = duration_s if duration_s is not None else int(seconds.max()) + 1
    return np.bincount(seconds[seconds < length], minlength=length).astype(float)


def per_second_busy(arrivals_s: np.ndarray, durations_s: np.ndarray, duration_s: int | None = None) -> np.ndarray:
    """Request-seconds in flight in each second ``[s, s + 1)``: each request is in flight from its arrival for its
    duration, so a second's value is the mean number in flight during it (Little's law, second by second)."""
    if len(arrivals_s) != len(durations_s):
        raise ValueError(f"{len(arrivals_s)} arrivals but {len(durations_s)} durations")
    if np.any(np.asarray(durations_s) < 0):
        raise ValueError("durations_s must be >= 0")
    starts = np.asarray(arrivals_s, dtype=float)
    ends = starts + np.asarray(durations_s, dtype=float)
    length = duration_s if duration_s is not None else int(np.floor(ends.max())) + 1 if len(ends) else 0
    busy = np.zeros(length + 1)  # the partial seconds; index length collects what falls past the end
    full = np.zeros(length + 2)  # difference array of the whole seconds each request covers
    first, last = np.floor(starts).astype(int), np.floor(ends).astype(int)
    same = first == last
    np.add.at(busy, np.minimum(first[same], length), ends[same] - starts[same])
    spans = ~same
    np.add.at(busy, np.minimum(first[spans], length), first[spans] + 1 - starts[spans])
    np.add.at(busy, np.minimum(last[spans], length), ends[spans] - last[spans])
    np.add.at(full, np.minimum(first[spans] + 1, length), 1.0)
    np.add.at(full, np.minimum(last[spans], length), -1.0)
    result: np.ndarray = (busy + np.cumsum(full)[: length + 1])[:length]
    return result


def demand_rate(counts: np.ndarray, window_s: int) -> np.ndarray:
    """Requests per second over the ``window_s`` seconds up to and including each second.

    The first ``window_s`` seconds all get the first window's rate: a trace that begins mid-traffic neither ramps
    up from zero nor spikes on a request in its first second.
    """
    cumulative = np.concatenate([[0.0], np.cumsum(counts)])
    ends = np.maximum(np.arange(1, len(counts) + 1), min(window_s, len(counts)))
    starts = ends - min(window_s, len(counts))
    result: np.ndarray = (cumulative[ends] - cumulative[starts]) / min(window_s, len(counts))
    return result


def rate_series(counts: np.ndarray, bin_s: int, window_s: int) -> np.ndarray:
    """What the forecasters read: the demand rate (over ``window_s``) at the end of each whole bin of ``bin_s``.

    Bin ``b`` covers seconds ``[b * bin_s, (b + 1) * bin_s)``; its value is the demand at its last second.
    """
    result: np.ndarray = demand_rate(counts, window_s)[bin_s - 1 :: bin_s][: len(counts) // bin_s]
    return result


@dataclass(frozen=True)
class ReplayConfig:
    interval_s: int = 15
    """Seconds between decisions (HPA's sync period)."""
    bin_s: int = 15
    """The forecasters' grid: a decision at t reads the forecast made after the bins that ended by t."""
    demand_window_s: int = 60
    """Demand at a second is the arrival rate over this window (a queue absorbs shorter bursts)."""
    initial_replicas: int | None = None
    """Ready at the start; None: what the first window's demand needs."""
    duration_s: int | None = None
    """Seconds replayed; None: up to the last arrival."""
    warmup_s: int = 0
    """Costs and misses count from this second on, for every policy alike: the forecasters' warm-up (before
    they have scored enough origins the predictive mode is the reactive floor) is left out of the comparison."""


@dataclass
class ReplayResult:
    policy: str
    replica_seconds: float
    slo_miss_s: int
    ready: np.ndarray
    """Ready replicas in each second."""
    provisioned: np.ndarray
    """Ready plus starting replicas in each second."""
    decisions: list[ScalingDecision] = field(default_factory=list)


ForecastAt = Callable[[int], Forecast | None]
"""The forecast made after the first ``n`` bins (the replay's table or a live forecaster)."""


def sized_per_second(
    arrivals_s: np.ndarray, policy: ScalingPolicy, config: ReplayConfig, durations_s: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Requests per second, and the per-second values the policy's metric sizes by (the same requests for rps,
    the request-seconds in flight for concurrency)."""
    counts = per_second_counts(arrivals_s, config.duration_s)
    if policy.metric is Metric.RPS:
        return counts, counts
    if policy.metric is Metric.P99_LATENCY:
        raise ValueError("the replay evaluates the rps and concurrency metrics, not p99Latency (no queueing model)")
    if durations_s is None:
        raise ValueError("the concurrency metric needs durations_s: each request's time in flight")
    return counts, per_second_busy(arrivals_s, durations_s, len(counts))


def simulate(
    arrivals_s: np.ndarray,
    policy: ScalingPolicy,
    config: ReplayConfig,
    forecast_at: ForecastAt | None = None,
    durations_s: np.ndarray | None = None,
) -> ReplayResult:
    """Replay ``arrivals_s`` through :func:`decide` with ``policy`` (see the module docstring for the costs);
    ``durations_s``, each request's time in flight, is needed for the concurrency metric."""
    counts, sized = sized_per_second(arrivals_s, policy, config, durations_s)
    duration = len(counts)
    demand = demand_rate(sized, config.demand_window_s)
    first = config.initial_replicas
    if first is None:
        first = replicas_for(demand[min(duration, config.demand_window_s) - 1], policy.target)
    first = min(max(first, policy.min_replicas), policy.max_replicas)
    ready_delta = np.zeros(duration + 1)
    provisioned_delta = np.zeros(duration + 1)
    ready_delta[0] = provisioned_delta[0] = first
    ready, starting = first, deque[int]()  # starting: the second each will be ready, oldest first
    past: deque[Recommendation] = deque()
    decisions = []
    window = int(policy.metric_window_s)
    for now in range(config.interval_s, duration, config.interval_s):
        while starting and starting[0] <= now:
            starting.popleft()
            ready += 1
        predictive = forecast_at is not None and policy.mode is Mode.PREDICTIVE
        forecast = forecast_at(now // config.bin_s) if forecast_at is not None and predictive else None
        recent = slice(max(0, now - window), now)
        decision = decide(now, counts[recent], 1, ready, len(starting), policy, forecast, past, busy=sized[recent])
        decisions.append(decision)
        past.append(decision.remembered())
        while past and now - past[0].time_s >= policy.stabilisation_s:
            past.popleft()
        change = decision.replicas - ready - len(starting)
        for _ in range(max(0, change)):
            at = now + math.ceil(policy.startup_s)
            starting.append(at)
            provisioned_delta[now] += 1
            ready_delta[min(at, duration)] += 1
        for _ in range(max(0, -change)):
            provisioned_delta[now] -= 1
            if starting:
                ready_delta[min(starting.pop(), duration)] -= 1
            else:
                ready -= 1
                ready_delta[now] -= 1
    ready_curve = np.cumsum(ready_delta)[:duration]
    provisioned = np.cumsum(provisioned_delta)[:duration]
    return _result(policy.mode.value, demand, ready_curve, provisioned, policy, config, decisions)


def _result(
    name: str,
    demand: np.ndarray,
    ready: np.ndarray,
    provisioned: np.ndarray,
    policy: ScalingPolicy,
    config: ReplayConfig,
    decisions: list[ScalingDecision],
) -> ReplayResult:
    counted = slice(config.warmup_s, None)
    misses = int(np.count_nonzero(_short(demand[counted], ready[counted], policy.target)))
    return ReplayResult(name, float(provisioned[counted].sum()), misses, ready, provisioned, decisions)


def _short(demand: np.ndarray, ready: np.ndarray, target: float) -> np.ndarray:
    """The seconds a replay counts as SLO misses: demand above what the ready replicas carry."""
    result: np.ndarray = demand > ready * target + 1e-9
    return result


def fixed_fleet(
    arrivals_s: np.ndarray, policy: ScalingPolicy, config: ReplayConfig, durations_s: np.ndarray | None = None
) -> ReplayResult:
    """A fleet sized for the trace's peak demand, ready from the first second and never scaled."""
    demand = demand_rate(sized_per_second(arrivals_s, policy, config, durations_s)[1], config.demand_window_s)
    size = min(max(replicas_for(float(demand.max()), policy.target), policy.min_replicas), policy.max_replicas)
    fleet = np.full(len(demand), float(size))
    return _result(FIXED, demand, fleet, fleet, policy, config, [])


HINDSIGHT_FLOOR = "hindsight floor"


def hindsight_floor(
    arrivals_s: np.ndarray, policy: ScalingPolicy, config: ReplayConfig, durations_s: np.ndarray | None = None
) -> ReplayResult:
    """The cheapest fleet that misses no second, for a scaler that knew the whole trace: no rule can cost less
    and miss nothing.

    A replica ready at second u was ordered by ``u - startup_s`` and is paid from then, so at every second t at
    least the replicas needed at any second of ``[t, t + startup_s]`` are paid for::

        provisioned(t) >= max over u in [t, t + startup_s] of need(u),   need(u) = replicas_for(demand(u))

    and that bound is reached: one replica per level of need, ordered ``startup_s`` before the level is first
    needed and kept through gaps shorter than ``startup_s``. The bound ignores the decision interval and the
    metric's window, which only make a real rule dearer.
    """
    demand = demand_rate(sized_per_second(arrivals_s, policy, config, durations_s)[1], config.demand_window_s)
    need = np.fromiter((replicas_for(d, policy.target) for d in demand), float, len(demand))
    need[_short(demand, need, policy.target)] += 1  # replicas_for's tolerance is relative, a miss's absolute
    need = np.clip(need, policy.min_replicas, policy.max_replicas)
    return _result(HINDSIGHT_FLOOR, demand, need, _ahead_max(need, math.ceil(policy.startup_s)), policy, config, [])


def _ahead_max(values: np.ndarray, span: int) -> np.ndarray:
    """Each second's highest value over ``[t, t + span]`` (clipped at the end)."""
    padded = np.concatenate([values, np.full(span, -np.inf)])
    result: np.ndarray = np.lib.stride_tricks.sliding_window_view(padded, span + 1).max(axis=1)
    return result


def exact_forecasts(demand: np.ndarray, bin_s: int, start_s: float, end_s: float) -> ForecastAt:
    """A forecaster that knows the future: at the origin after ``n`` bins (``t = n * bin_s``), the highest
    ``demand`` over ``[t + start_s, t + end_s]``, with no band (mean, lower and upper alike).

    Replayed through :func:`simulate`, it separates what the rule costs from what the forecast does: from
    :func:`hindsight_floor` to this replay is the rule's (its decision interval, metric window, stabilisation),
    from this replay to the forecasters' the forecast's.
    """

    def at(n: int) -> Forecast | None:
        first, last = n * bin_s + math.ceil(start_s), n * bin_s + math.ceil(end_s) + 1
        if first >= len(demand):
            return None
        peak = float(demand[first:last].max())
        return Forecast(peak, peak, peak, end_s, "exact")

    return at


def compare(
    arrivals_s: np.ndarray,
    policy: ScalingPolicy,
    config: ReplayConfig,
    forecast_at: ForecastAt,
    durations_s: np.ndarray | None = None,
) -> dict[str, ReplayResult]:
    """Predictive, reactive and the fixed fleet on the same arrivals and policy settings."""
    predictive, reactive = replace(policy, mode=Mode.PREDICTIVE), replace(policy, mode=Mode.REACTIVE)
    return {
        Mode.PREDICTIVE.value: simulate(arrivals_s, predictive, config, forecast_at, durations_s),
        Mode.REACTIVE.value: simulate(arrivals_s, reactive, config, durations_s=durations_s),
        FIXED: fixed_fleet(arrivals_s, policy, config, durations_s),
    }


INITIAL = "Initial"
"""The cause :func:`attribute` gives the seconds before a policy's first decision."""


@dataclass(frozen=True)
class Share:
    """Some seconds of a replay, set against the same seconds of a baseline policy's replay."""

    seconds: int
    extra_replica_seconds: float
    """The policy's replica-seconds minus the baseline's over those seconds (negative: it spent less)."""
    misses: int
    baseline_misses: int


@dataclass(frozen=True)
class Attribution:
    """Where a policy's replica-seconds beyond a baseline's went and where each policy missed (:func:`attribute`)."""

    by_cause: dict[str, Share]
    """The counted seconds grouped by the cause of the policy's decision in force (``Forecast``, ``Stabilizing``,
    ...; :data:`INITIAL` before its first decision)."""
    baseline_at_min: Share
    """The counted seconds in which the baseline ran ``min_replicas``: the service's quiet hours."""
    late_misses: int
    """The policy's misses while some of its replicas were starting: the replicas were ordered, too late."""
    baseline_late_misses: int


def attribute(
    result: ReplayResult,
    baseline: ReplayResult,
    demand: np.ndarray,
    policy: ScalingPolicy,
    config: ReplayConfig,
) -> Attribution:
    """Set ``result`` against ``baseline`` (both replayed on ``demand`` with ``policy``'s target and ``config``),
    second by second from ``config.warmup_s``: why a predictive policy pays more than the reactive one, and which
    of the reactive policy's misses it avoids. Pure bookkeeping over the two replays; it decides nothing."""
    counted = slice(config.warmup_s, len(demand))
    cause = np.full(len(demand), INITIAL, dtype=object)
    for decision in result.decisions:
        cause[int(decision.time_s) :] = decision.cause
    cause = cause[counted]
    extra = (result.provisioned - baseline.provisioned)[counted]
    need = demand[counted] - 1e-9
    miss = need > result.ready[counted] * policy.target
    baseline_miss = need > baseline.ready[counted] * policy.target

    def share(mask: np.ndarray) -> Share:
        return Share(
            int(mask.sum()),
            float(extra[mask].sum()),
            int((miss & mask).sum()),
            int((baseline_miss & mask).sum()),
        )

    starting = (result.provisioned > result.ready)[counted]
    baseline_starting = (baseline.provisioned > baseline.ready)[counted]
    return Attribution(
        by_cause={name: share(cause == name) for name in sorted(set(cause))},
        baseline_at_min=share(baseline.provisioned[counted] <= policy.min_replicas),
        late_misses=int((miss & starting).sum()),
        baseline_late_misses=int((baseline_miss & baseline_starting).sum()),
    )
