"""How many replicas an InferenceService should have now: the one scaling decision, pure.

The live controller and the trace replay (:mod:`strata_serving.replay`) both call :func:`decide`; neither has a
copy of its rules. The policy's ``metric`` says what ``target`` is (``spec.autoscaling.metric`` and ``target``):

- ``rps``: requests per second one replica serves within its SLO; ``observed`` the request rate over the window.
- ``concurrency``: requests in flight one replica carries (Knative KPA's target); ``observed`` the time-averaged
  number of requests in flight over the window (the request-seconds the window holds, divided by its length:
  KPA's stable-window average of concurrency, exact rather than sampled).
- ``p99Latency``: seconds the 99th percentile of request latency must stay under; not a capacity per replica, so
  it is sized by a controller (:func:`latency_recommendation`), not by a ratio.

For ``rps`` and ``concurrency`` (``target`` a capacity per replica, ``observed`` its mean over the window)::

    reactive_floor   = ceil(observed / target)            never below what the load needs now
    predictive       = max(ceil(forecast.upper / target), reactive_floor)
                       forecast.upper: the highest upper band edge of the metric's forecast over
                       [t, t + lead + margin], lead the replica start-up time, so that a replica ordered now is
                       ready before the load it is for
    reactive (HPA)   = current                         if |observed / (current * target) - 1| <= tolerance
                       ceil(observed / target)         otherwise            (current = ready + starting)

For ``p99Latency`` (``p99`` over the window, ``current`` = ready + starting), in either mode::

    no request in the window             0                            idle: the floor, after stabilisation
    requests, none finished in it        current (1 if 0)             nothing measured: hold
    starting > 0 and p99 > target        current                      wait for the replicas already ordered
    p99 > target                         min(ceil(current * p99 / target), current + max(current, 4))
    p99 < latency_scale_down_below * target   current - 1
    otherwise                            current                      the hysteresis band

Then, for every metric::

    requests waiting = at least 1 while requests wait in the router for a replica (its hold, a service scaled to
                       zero): the metric's window may have forgotten their arrival, and the replica starting for
                       them must not be cancelled
    scale-down       = to the highest recommendation of the last ``stabilisation_s`` only (HPA's behaviour)
    replicas         = clamp(that, min_replicas, max_replicas)

except that the predictive mode of a capacity metric holds a replica still starting only while something still
asks for it (ready replicas are held as above)::

    starting held    = up to the highest reactive floor of the last ``stabilisation_s`` (the load asked for it)
                       or the highest recommendation of the last ``starting_hold_s`` (the band asks for it still)
    otherwise        cancelled, newest first (a Deployment scaled down deletes its not-ready pods first)

A band-sized order that the next forecasts no longer back (an upward blip the forecast then reads as noise)
costs ``starting_hold_s`` of a starting replica, not the ``startup_s`` it would take to start and the
stabilisation window it would then be held for; an order the observed load made is held as HPA holds it.

The reactive mode is a Kubernetes HPA on the metric (the ratio rule with its 10% tolerance, the 300 s
scale-down stabilisation window, the metric averaged over a short window), kept here beside the predictive rule
so that the replay compares the two on identical footing. HPA's scale-up rate limit (4 pods or 100% per 15 s) is
left out for the capacity metrics: it can only slow the reactive baseline down, so leaving it out makes the
comparison harder for the predictive mode, not easier. The latency controller keeps it: there a step is a guess
(latency is not proportional to load), and the limit bounds how far one guess goes.

Predictive mode without a forecast (too little history, every forecaster failed) is the reactive floor alone,
and the decision's reason says so. A latency target is never forecast (there is no capacity per replica to turn a
forecast into replicas); its decisions say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import numpy as np

from strata_api import format_time
from strata_api.serving import ScaleForecast, ScaleReport


class Mode(StrEnum):
    PREDICTIVE = "predictive"
    REACTIVE = "reactive"


class Metric(StrEnum):
    """What ``target`` is (``spec.autoscaling.metric``, spelt as the CRD spells it)."""

    RPS = "rps"
    CONCURRENCY = "concurrency"
    P99_LATENCY = "p99Latency"

    @property
    def unit(self) -> str:
        """How a value of the metric reads in a decision's reason."""
        return {Metric.RPS: "req/s", Metric.CONCURRENCY: "in flight", Metric.P99_LATENCY: "s"}[self]

    @property
    def is_capacity(self) -> bool:
        """Whether ``target`` is what one replica carries (sized by a ratio, and forecastable)."""
        return self is not Metric.P99_LATENCY


LATENCY_STEP_PODS = 4
"""The latency controller's scale-up limit per decision: ``max(current, 4)`` more replicas (HPA's default scale-up
policy, 4 pods or 100% per period, whichever is more)."""


@dataclass(frozen=True)
class ScalingPolicy:
    """One service's scaling settings (the InferenceService's ``autoscaling`` and ``replicas`` fields)."""

    target: float
    """The metric's target per replica: requests per second (``rps``), requests in flight (``concurrency``), or
    the seconds the 99th percentile latency stays under (``p99Latency``)."""
    startup_s: float
    """Replica start-up time (image pull, weight load, warm-up): the lead a predictive scale-up needs."""
    min_replicas: int = 1
    max_replicas: int = 1000
    mode: Mode = Mode.PREDICTIVE
    metric: Metric = Metric.RPS
    margin_s: float = 30.0
    """Forecast window past the lead: covers the next decision's own start-up (one tick) and jitter."""
    stabilisation_s: float = 300.0
    """Scale down only to the highest recommendation over this window (HPA's default scale-down window)."""
    tolerance: float = 0.1
    """Reactive mode: a usage ratio within 1 +- tolerance changes nothing (HPA's default)."""
    metric_window_s: float = 60.0
    """The observed value is over this many seconds (a Prometheus ``rate(...[1m])``, KPA's 60 s stable window)."""
    starting_hold_s: float = 30.0
    """Predictive mode, capacity metrics: a replica still starting that no reactive floor of the stabilisation
    window asked for is cancelled once no recommendation of the last ``starting_hold_s`` asks for it (the module
    docstring). ``stabilisation_s`` or more holds it like a ready one, as the reactive mode does."""
    latency_scale_down_below: float = 0.5
    """``p99Latency``: one replica fewer only while the p99 is under this share of the target; between it and the
    target nothing changes (the hysteresis band: a p99 just under the target after a scale-up must not undo it)."""

    def __post_init__(self) -> None:
        if self.target <= 0:
            raise ValueError(f"target must be > 0, got {self.target}")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        if min(self.startup_s, self.margin_s, self.stabilisation_s, self.starting_hold_s) < 0:
            raise ValueError("startup_s, margin_s, stabilisation_s and starting_hold_s must be >= 0")
        if self.metric_window_s <= 0:
            raise ValueError(f"metric_window_s must be > 0, got {self.metric_window_s}")
        if not 0 < self.latency_scale_down_below < 1:
            raise ValueError(f"latency_scale_down_below must be within (0, 1), got {self.latency_scale_down_below}")

    @property
    def horizon_s(self) -> float:
        """How far ahead the predictive mode looks: start-up time plus margin."""
        return self.startup_s + self.margin_s

    @property
    def target_rps(self) -> float:
        """``target`` under its earlier name, when ``metric`` is rps (the operator's tests still read it)."""
        if self.metric is not Metric.RPS:
            raise AttributeError(f"target_rps: the metric is {self.metric.value}, not rps; read target")
        return self.target


@dataclass(frozen=True)
class Forecast:
    """A forecast of the policy's metric (request rate or concurrency) over the window [t, t + horizon_s]."""

    mean: float
    """The chosen forecaster's highest mean over the window."""
    lower: float
    upper: float
    """The highest upper band edge over the window: what a scale-up must cover."""
    horizon_s: float
    method: str
    """The forecaster the measured accuracy chose (``persistence``, ``seasonal``, ``prophet``, ``lstm``)."""
    dropped: tuple[str, ...] = ()
    """Forecasters that raised or had no forecast this round, each ``name: why``."""


@dataclass(frozen=True)
class Recommendation:
    """One past decision's unclamped, unstabilised replica count and its reactive floor: what stabilisation
    remembers (:meth:`ScalingDecision.remembered`)."""

    time_s: float
    replicas: int
    floor: int = 0
    """What the observed load alone needed then (the decision's ``reactive_floor``)."""


@dataclass(frozen=True)
class ScalingDecision:
    """A decision with every input it was made from (for the service's status, an Event and a metric)."""

    time_s: float
    mode: Mode
    observed_rps: float
    """The request rate over the metric window, whatever the metric."""
    reactive_floor: int
    """``ceil(observed / target)`` for a capacity metric; 0 for ``p99Latency``, which has no floor."""
    forecast: Forecast | None
    ready: int
    starting: int
    recommended: int
    """What the rule asked for before stabilisation and clamping (remembered for later stabilisation)."""
    replicas: int
    """The replica count to run."""
    cause: str
    """What set the count, one CamelCase word for the status' ``lastScale.reason``: ``Forecast``,
    ``ObservedLoad``, ``WithinTolerance``, ``LatencyAboveTarget``, ``LatencyBelowTarget``, ``AwaitingStartup``,
    ``Idle``, ``Stabilizing``, ``MinReplicas`` or ``MaxReplicas``."""
    reason: str
    """The same in a sentence with its figures (an Event's message)."""
    metric: Metric = Metric.RPS
    observed: float | None = None
    """The metric's value the decision read: the rate, the mean concurrency or the p99 in seconds (None: no
    request finished in the window, so no p99)."""

    def remembered(self) -> Recommendation:
        """What later decisions' stabilisation remembers of this one."""
        return Recommendation(self.time_s, self.recommended, self.reactive_floor)

    def report(self) -> ScaleReport:
        """The router's ``GET /scale`` answer (:class:`strata_api.serving.ScaleReport`), ``time_s`` read as unix
        time; the operator turns it into the InferenceService's ``status.lastScale``."""
        forecast = None
        if self.forecast is not None:
            f = self.forecast
            forecast = ScaleForecast(f.mean, f.lower, f.upper, f.horizon_s, f.method)
        return ScaleReport(
            time=format_time(datetime.fromtimestamp(self.time_s, UTC)),
            mode=self.mode.value,
            replicas=self.replicas,
            reason=self.cause,
            message=self.reason,
            observed_rps=self.observed_rps,
            ready=self.ready,
            starting=self.starting,
            forecast=forecast,
            metric=self.metric.value,
            observed=self.observed,
        )


def observed_rate(counts: Sequence[float] | np.ndarray, bin_s: float, window_s: float) -> float:
    """Per-bin sums over the last ``window_s``, per second (fewer bins at the start): the request rate from request
    counts, the mean concurrency from request-seconds."""
    bins = max(1, round(window_s / bin_s))
    recent = np.asarray(counts, dtype=float)[-bins:]
    return float(recent.sum() / (len(recent) * bin_s)) if len(recent) else 0.0


def replicas_for(value: float, target: float) -> int:
    """Replicas that carry ``value`` at ``target`` each (a hair over a whole number does not add one)."""
    return max(0, math.ceil(value / target - 1e-9))


def latency_recommendation(
    p99_s: float | None, rate_rps: float, ready: int, starting: int, policy: ScalingPolicy
) -> tuple[int, str, str]:
    """The ``p99Latency`` controller's recommendation, cause and reason (the module docstring's table).

    Why a controller: latency is not proportional to load (it sits at the service time until the replicas
    saturate, then climbs steeply), so ``ceil(current * p99 / target)`` is a direction and a step size, not an
    answer; each step is bounded as HPA bounds it, nothing more is ordered while ordered replicas are still
    starting (they have not helped yet: ordering more for the same excess overshoots), and the scale-down is one
    replica at a time below the hysteresis band, which the stabilisation window then paces.
    """
    current = ready + starting
    target = policy.target
    if p99_s is None:
        if rate_rps <= 0:
            return 0, "Idle", "no request in the window"
        if current == 0:
            return 1, "ObservedLoad", "requests arrive and no replica runs: needs 1"
        return current, "WithinTolerance", "no request finished in the window: holding"
    if current == 0:
        return 1, "ObservedLoad", f"p99 {p99_s:.3g} s with no replica running: needs 1"
    if p99_s > target:
        if starting:
            return (
                current,
                "AwaitingStartup",
                (f"p99 {p99_s:.3g} s is above the {target:.3g} s target; waiting for {starting} starting replica(s)"),
            )
        wanted = min(math.ceil(current * p99_s / target - 1e-9), current + max(current, LATENCY_STEP_PODS))
        wanted = max(wanted, current + 1)
        return wanted, "LatencyAboveTarget", f"p99 {p99_s:.3g} s is above the {target:.3g} s target: {wanted}"
    low = policy.latency_scale_down_below * target
    if p99_s < low:
        return current - 1, "LatencyBelowTarget", f"p99 {p99_s:.3g} s is under {low:.3g} s: one fewer"
    return current, "WithinTolerance", f"p99 {p99_s:.3g} s is within [{low:.3g}, {target:.3g}] s"


def decide(
    now_s: float,
    counts: Sequence[float] | np.ndarray,
    bin_s: float,
    ready: int,
    starting: int,
    policy: ScalingPolicy,
    forecast: Forecast | None,
    past: Sequence[Recommendation] = (),
    *,
    busy: Sequence[float] | np.ndarray | None = None,
    p99_s: float | None = None,
    waiting: int = 0,
) -> ScalingDecision:
    """The replica count for ``now_s`` (see the module docstring for the rules).

    ``counts`` are the requests per bin of ``bin_s`` seconds up to ``now_s`` (the newest last); ``busy`` the
    request-seconds in the same bins (requests in flight integrated over time; needed for ``concurrency``);
    ``p99_s`` the 99th percentile latency of the requests that finished in the metric window (read for
    ``p99Latency``; None when none did); ``waiting`` the requests the router holds for want of a replica.
    ``past`` holds the recommendations of earlier decisions (older than ``stabilisation_s`` are ignored);
    ``forecast`` (of the metric) is read only in predictive mode.
    """
    rate = observed_rate(counts, bin_s, policy.metric_window_s)
    current = ready + starting
    floor = 0
    metric = policy.metric
    observed: float | None
    if metric is Metric.P99_LATENCY:
        observed = p99_s
        forecast = None
        recommended, cause, why = latency_recommendation(p99_s, rate, ready, starting, policy)
        if policy.mode is Mode.PREDICTIVE:
            why += " (a latency target is not forecast)"
    else:
        if metric is Metric.CONCURRENCY:
            if busy is None:
                raise ValueError("the concurrency metric needs busy: the request-seconds per bin")
            observed = observed_rate(busy, bin_s, policy.metric_window_s)
        else:
            observed = rate
        recommended, cause, why = _capacity_recommendation(observed, current, policy, forecast)
        floor = replicas_for(observed, policy.target)
    if waiting and recommended < 1:
        recommended, cause = 1, "RequestsWaiting"
        why = f"{waiting} request(s) wait in the router for a replica, " + (
            "and none is ready or starting" if current == 0 else "and the one starting is kept for them"
        )
    chosen = recommended
    if recommended < current:
        window = [r for r in past if now_s - r.time_s < policy.stabilisation_s]
        chosen = min(current, max([recommended, *(r.replicas for r in window)]))
        cancelled = 0
        if starting and policy.mode is Mode.PREDICTIVE and metric.is_capacity:
            asked = [r.replicas for r in window if now_s - r.time_s < policy.starting_hold_s]
            kept = min(chosen, max(ready, recommended, *(r.floor for r in window), *asked))
            cancelled, chosen = chosen - kept, kept
        if chosen > recommended:
            cause = "Stabilizing"
            why += f"; held at {chosen} by the {policy.stabilisation_s:.0f}s scale-down stabilisation"
        if cancelled:
            why += (
                f"; {cancelled} starting replica(s) cancelled: neither the load in the last"
                f" {policy.stabilisation_s:.0f}s nor a recommendation in the last {policy.starting_hold_s:.0f}s"
                " asks for them"
            )
    clamped = min(max(chosen, policy.min_replicas), policy.max_replicas)
    if clamped != chosen:
        cause = "MinReplicas" if clamped > chosen else "MaxReplicas"
        why += f"; clamped to [{policy.min_replicas}, {policy.max_replicas}]"
    return ScalingDecision(
        time_s=now_s,
        mode=policy.mode,
        observed_rps=rate,
        reactive_floor=floor,
        forecast=forecast if policy.mode is Mode.PREDICTIVE else None,
        ready=ready,
        starting=starting,
        recommended=recommended,
        replicas=clamped,
        cause=cause,
        reason=why,
        metric=metric,
        observed=observed,
    )


def _capacity_recommendation(
    observed: float, current: int, policy: ScalingPolicy, forecast: Forecast | None
) -> tuple[int, str, str]:
    """The ratio rules of a capacity metric (``rps``, ``concurrency``): recommendation, cause and reason."""
    unit = policy.metric.unit
    floor = replicas_for(observed, policy.target)
    if policy.mode is Mode.REACTIVE:
        ratio = observed / (current * policy.target) if current else math.inf
        if current and abs(ratio - 1) <= policy.tolerance:
            why = f"observed {observed:.3g} {unit} is within {policy.tolerance:.0%} of {current} replicas' target"
            return current, "WithinTolerance", why
        return floor, "ObservedLoad", f"observed {observed:.3g} {unit} needs {floor}"
    if forecast is None:
        return floor, "ObservedLoad", f"no forecast; observed {observed:.3g} {unit} needs {floor}"
    ahead = replicas_for(forecast.upper, policy.target)
    if ahead >= floor:
        why = f"forecast upper band {forecast.upper:.3g} {unit} at +{forecast.horizon_s:.0f}s needs {ahead}"
        return ahead, "Forecast", why + f" ({forecast.method})"
    why = f"observed {observed:.3g} {unit} needs {floor} (forecast upper band needs {ahead})"
    return floor, "ObservedLoad", why + f" ({forecast.method})"
