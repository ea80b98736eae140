"""How many replicas an InferenceService should have now: the one scaling decision, pure.

The live controller and the trace replay (:mod:`strata_serving.replay`) both call :func:`decide`; neither has a
copy of its rules. With ``target`` the requests per second one replica serves within its SLO::

    observed         = requests in the last ``metric_window_s`` / metric_window_s          (req/s)
    reactive_floor   = ceil(observed / target)            never below what the load needs now
    predictive       = max(ceil(forecast.upper / target), reactive_floor)
                       forecast.upper: the highest upper band edge over [t, t + lead + margin], lead the
                       replica start-up time, so a replica ordered now is ready before the load it is for
    reactive (HPA)   = current                         if |observed / (current * target) - 1| <= tolerance
                       ceil(observed / target)         otherwise            (current = ready + starting)
    scale-down       = to the highest recommendation of the last ``stabilisation_s`` only (HPA's behaviour)
    replicas         = clamp(that, min_replicas, max_replicas)

The reactive mode is a Kubernetes HPA on a request-rate metric (the ratio rule with its 10% tolerance, the 300 s
scale-down stabilisation window, the metric averaged over a short window), kept here beside the predictive rule
so that the replay compares the two on identical footing. HPA's scale-up rate limit (4 pods or 100% per 15 s) is
left out: it can only slow the reactive baseline down, so leaving it out makes the comparison harder for the
predictive mode, not easier.

Predictive mode without a forecast (too little history, every forecaster failed) is the reactive floor alone,
and the decision's reason says so.
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


@dataclass(frozen=True)
class ScalingPolicy:
    """One service's scaling settings (the InferenceService's ``autoscaling`` and ``replicas`` fields)."""

    target_rps: float
    """Requests per second one replica serves within its SLO."""
    startup_s: float
    """Replica start-up time (image pull, weight load, warm-up): the lead a predictive scale-up needs."""
    min_replicas: int = 1
    max_replicas: int = 1000
    mode: Mode = Mode.PREDICTIVE
    margin_s: float = 30.0
    """Forecast window past the lead: covers the next decision's own start-up (one tick) and jitter."""
    stabilisation_s: float = 300.0
    """Scale down only to the highest recommendation over this window (HPA's default scale-down window)."""
    tolerance: float = 0.1
    """Reactive mode: a usage ratio within 1 +- tolerance changes nothing (HPA's default)."""
    metric_window_s: float = 60.0
    """The observed rate is the mean over this many seconds (a Prometheus ``rate(...[1m])``)."""

    def __post_init__(self) -> None:
        if self.target_rps <= 0:
            raise ValueError(f"target_rps must be > 0, got {self.target_rps}")
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 0 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        if self.startup_s < 0 or self.margin_s < 0 or self.stabilisation_s < 0 or self.metric_window_s <= 0:
            raise ValueError("startup_s, margin_s and stabilisation_s must be >= 0 and metric_window_s > 0")

    @property
    def horizon_s(self) -> float:
        """How far ahead the predictive mode looks: start-up time plus margin."""
        return self.startup_s + self.margin_s


@dataclass(frozen=True)
class Forecast:
    """A request-rate forecast over the window [t, t + horizon_s], in requests per second."""

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
    """One past decision's unclamped, unstabilised replica count: what stabilisation remembers."""

    time_s: float
    replicas: int


@dataclass(frozen=True)
class ScalingDecision:
    """A decision with every input it was made from (for the service's status, an Event and a metric)."""

    time_s: float
    mode: Mode
    observed_rps: float
    reactive_floor: int
    forecast: Forecast | None
    ready: int
    starting: int
    recommended: int
    """What the rule asked for before stabilisation and clamping (remembered for later stabilisation)."""
    replicas: int
    """The replica count to run."""
    cause: str
    """What set the count, one CamelCase word for the status' ``lastScale.reason``: ``Forecast``,
    ``ObservedLoad``, ``WithinTolerance`` (reactive), ``Stabilizing``, ``MinReplicas`` or ``MaxReplicas``."""
    reason: str
    """The same in a sentence with its figures (an Event's message)."""

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
        )


def observed_rate(counts: Sequence[float] | np.ndarray, bin_s: float, window_s: float) -> float:
    """Requests per second over the last ``window_s`` of per-bin request counts (fewer bins at the start)."""
    bins = max(1, round(window_s / bin_s))
    recent = np.asarray(counts, dtype=float)[-bins:]
    return float(recent.sum() / (len(recent) * bin_s)) if len(recent) else 0.0


def replicas_for(rate_rps: float, target_rps: float) -> int:
    """Replicas that serve ``rate_rps`` at ``target_rps`` each (a hair over a whole number does not add one)."""
    return max(0, math.ceil(rate_rps / target_rps - 1e-9))


def decide(
    now_s: float,
    counts: Sequence[float] | np.ndarray,
    bin_s: float,
    ready: int,
    starting: int,
    policy: ScalingPolicy,
    forecast: Forecast | None,
    past: Sequence[Recommendation] = (),
) -> ScalingDecision:
    """The replica count for ``now_s`` (see the module docstring for the rules).

    ``counts`` are the requests per bin of ``bin_s`` seconds up to ``now_s`` (the newest last); ``past`` the
    recommendations of earlier decisions (older than ``stabilisation_s`` are ignored); ``forecast`` is read only
    in predictive mode.
    """
    observed = observed_rate(counts, bin_s, policy.metric_window_s)
    floor = replicas_for(observed, policy.target_rps)
    current = ready + starting
    if policy.mode is Mode.REACTIVE:
        ratio = observed / (current * policy.target_rps) if current else math.inf
        if current and abs(ratio - 1) <= policy.tolerance:
            recommended, cause = current, "WithinTolerance"
            why = f"observed {observed:.3g} req/s is within {policy.tolerance:.0%} of {current} replicas' target"
        else:
            recommended, cause = floor, "ObservedLoad"
            why = f"observed {observed:.3g} req/s needs {floor}"
    elif forecast is None:
        recommended, cause = floor, "ObservedLoad"
        why = f"no forecast; observed {observed:.3g} req/s needs {floor}"
    else:
        ahead = replicas_for(forecast.upper, policy.target_rps)
        recommended = max(ahead, floor)
        cause = "Forecast" if ahead >= floor else "ObservedLoad"
        if ahead >= floor:
            why = f"forecast upper band {forecast.upper:.3g} req/s at +{forecast.horizon_s:.0f}s needs {ahead}"
        else:
            why = f"observed {observed:.3g} req/s needs {floor} (forecast upper band needs {ahead})"
        why += f" ({forecast.method})"
    chosen = recommended
    if recommended < current:
        window = [r.replicas for r in past if now_s - r.time_s < policy.stabilisation_s]
        chosen = min(current, max([recommended, *window]))
        if chosen > recommended:
            cause = "Stabilizing"
            why += f"; held at {chosen} by the {policy.stabilisation_s:.0f}s scale-down stabilisation"
    clamped = min(max(chosen, policy.min_replicas), policy.max_replicas)
    if clamped != chosen:
        cause = "MinReplicas" if clamped > chosen else "MaxReplicas"
        why += f"; clamped to [{policy.min_replicas}, {policy.max_replicas}]"
    return ScalingDecision(
        time_s=now_s,
        mode=policy.mode,
        observed_rps=observed,
        reactive_floor=floor,
        forecast=forecast if policy.mode is Mode.PREDICTIVE else None,
        ready=ready,
        starting=starting,
        recommended=recommended,
        replicas=clamped,
        cause=cause,
        reason=why,
    )
