"""The live autoscaler inside the router: the request history, the forecasters' refits, one decision per interval.

The router tells it of every client request as it arrives (:meth:`LiveScaler.observe`) and as it ends
(:meth:`LiveScaler.finish`, with its latency when a replica answered). Per whole second it keeps the requests that
arrived, the request-seconds spent in flight (the in-flight count integrated over time, so that the window's mean
concurrency is exact, Little's law rather than a sample) and the latencies of the requests that finished. Every
``interval_s`` the router calls :meth:`LiveScaler.tick`, which appends the policy's metric over
``policy.metric_window_s`` to the forecasters' series (one bin per interval: the rate, as
:func:`strata_serving.replay.rate_series` builds it for the replay, or the mean concurrency; a latency target is
not forecast), reads the forecasters' latest fits (:func:`~strata_serving.forecasters.forecast_now`; the fits
themselves run in a :class:`~strata_serving.refit_worker.RefitWorker` thread) and makes the one decision,
:func:`strata_serving.autoscale.decide`. The history lives in memory only: a restarted router starts with none,
so its first decisions are the reactive floor (predictive mode says "no forecast") until the forecasters have
scored ``min_eval_origins`` origins.

The lead (``policy.startup_s``, the replicas' start-up) may change while the router runs: with a
:class:`LeadFile` each decision first re-reads it, so the operator's newer measurement takes effect at the next
decision, history and all.

With ``peers`` routers in front of one service, each sees about ``1 / peers`` of the requests (the Service spreads
connections evenly), so each scales its counts and its request-seconds by ``peers``: any one of them answers for the
whole service. Its latencies are a sample of the service's and are not scaled.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from strata_serving.autoscale import Metric, Mode, Recommendation, ScalingDecision, ScalingPolicy, decide
from strata_serving.forecasters import (
    Candidate,
    FittedCandidate,
    ForecastSettings,
    LSTMCandidate,
    ProphetCandidate,
    default_candidates,
    forecast_now,
    horizon_bins,
)
from strata_serving.refit_worker import RefitWorker

log = logging.getLogger(__name__)

OPTIONAL_MODULES: dict[type, str] = {LSTMCandidate: "torch", ProphetCandidate: "prophet"}
"""The module each fitted forecaster needs; the router's image (the ``serving`` extra) leaves torch out, so the
LSTM is dropped there and the measured choice runs among the others."""


@dataclass(frozen=True)
class Candidates:
    """The forecasters this process can run, and those left out, each ``name: why``."""

    usable: list[Candidate]
    dropped: list[str]


def usable_candidates(settings: ForecastSettings, importable: frozenset[str] | None = None) -> Candidates:
    """:func:`default_candidates` less those whose module is not installed (``importable``: the modules to take
    as installed; None: look them up)."""
    usable: list[Candidate] = []
    dropped: list[str] = []
    for candidate in default_candidates(settings, fitted=True):
        module = OPTIONAL_MODULES.get(type(candidate))
        present = module is None or (
            module in importable if importable is not None else importlib.util.find_spec(module) is not None
        )
        if present:
            usable.append(candidate)
        else:
            dropped.append(f"{candidate.name}: {module} is not installed")
    return Candidates(usable, dropped)


class LeadFile:
    """The autoscaler's lead in seconds, from a file another process keeps current: the operator's router
    ConfigMap, mounted in the router's pod (the kubelet swaps a mounted ConfigMap's files in place when it
    changes, with no restart), so a new measurement of the replicas' start-up replaces no router. A file rather
    than an API watch: the router has no Kubernetes credentials, and keeps none.

    :meth:`read` is called at each decision: a ``stat``, and a parse only when the file changed (inode, size or
    modification time). A finite number >= 0 becomes the lead; a file that is absent, unreadable or holds anything
    else keeps the last good lead (``default_s`` before any) and is logged once per change, never raised: a bad
    file must not stop the decisions."""

    def __init__(self, path: str | Path, default_s: float) -> None:
        self.path = Path(path)
        self.value_s = default_s
        self._seen: object = None
        """What the file was when last looked at: its (inode, size, mtime) or, absent, the error number."""

    def read(self) -> float:
        try:
            stat = self.path.stat()
        except OSError as error:
            if error.errno != self._seen:
                log.warning("lead file %s: %s; the lead stays %g s", self.path, error.strerror, self.value_s)
            self._seen = error.errno
            return self.value_s
        seen = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if seen == self._seen:
            return self.value_s
        self._seen = seen
        try:
            text = self.path.read_text(encoding="utf-8").strip()
            value = float(text)
        except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
            log.warning(
                "lead file %s: not a number of seconds (%s); the lead stays %g s", self.path, error, self.value_s
            )
            return self.value_s
        if not (math.isfinite(value) and value >= 0):
            log.warning("lead file %s: %r is not seconds >= 0; the lead stays %g s", self.path, text, self.value_s)
            return self.value_s
        if value != self.value_s:
            log.info("lead file %s: the lead is now %g s (was %g s)", self.path, value, self.value_s)
        self.value_s = value
        return value


def starting_replicas(ready: int, not_ready: int, applied: int | None) -> int:
    """Replicas ordered and not ready yet: the not-ready ones the router sees or, when more, those of the
    operator's ``applied`` count past the ready ones (:data:`strata_api.serving.SCALE_APPLIED_PARAM`: one waiting for
    a node has no address, so the router cannot see it); ``applied`` None: not told yet."""
    return not_ready if applied is None else max(not_ready, applied - ready)


class LiveScaler:
    """One service's request history and decisions. :meth:`observe` is called as each request arrives,
    :meth:`finish` as it ends, :meth:`tick` once per ``interval_s`` (times are unix seconds). With ``lead``, each
    :meth:`tick` first takes the file's lead (:meth:`set_startup`)."""

    def __init__(
        self,
        policy: ScalingPolicy,
        interval_s: float,
        peers: int = 1,
        candidates: Sequence[Candidate] = (),
        forecast_settings: ForecastSettings | None = None,
        history_bins: int = 2 * 5760,
        lead: LeadFile | None = None,
    ) -> None:
        if interval_s <= 0 or peers < 1:
            raise ValueError(f"need interval_s > 0 and peers >= 1, got {interval_s}, {peers}")
        self.policy = policy
        self.lead = lead
        self._refits: RefitWorker | None = None
        self.interval_s = interval_s
        self.peers = peers
        forecastable = policy.mode is Mode.PREDICTIVE and policy.metric.is_capacity
        self.candidates = list(candidates) if forecastable else []
        self.forecast_settings = forecast_settings or ForecastSettings(bin_s=interval_s)
        self.last: ScalingDecision | None = None
        self._window = max(1, round(policy.metric_window_s))
        # per whole second, newest last: requests arrived, request-seconds in flight, latencies of those finished
        self._seconds: deque[float] = deque(maxlen=self._window + 1)
        self._busy: deque[float] = deque(maxlen=self._window + 1)
        self._latencies: deque[list[float]] = deque(maxlen=self._window + 1)
        self._newest_second: int | None = None
        self._in_flight = 0
        self._busy_since: float | None = None  # request-seconds are booked up to here
        self._series: deque[float] = deque(maxlen=history_bins)  # the forecasters' metric, one value per tick
        self._past: deque[Recommendation] = deque()
        self._lock = threading.Lock()

    def _roll_to(self, second: int) -> None:
        if self._newest_second is None:
            self._newest_second = second
            self._seconds.append(0.0)
            self._busy.append(0.0)
            self._latencies.append([])
            return
        for _ in range(min(second - self._newest_second, self._window + 1)):
            self._seconds.append(0.0)
            self._busy.append(0.0)
            self._latencies.append([])
        self._newest_second = max(self._newest_second, second)

    def _book_busy(self, now_s: float) -> None:
        """Add the in-flight count times the time since the last booking to the seconds it fell in."""
        assert self._newest_second is not None  # rolled first
        since = self._busy_since if self._busy_since is not None else now_s
        since = max(since, float(self._newest_second - self._window))  # older seconds have left the window
        while since < now_s and self._in_flight:
            second = math.floor(since)
            until = min(now_s, second + 1.0)
            index = second - self._newest_second - 1  # -1 is the newest second
            if -len(self._busy) <= index <= -1:
                self._busy[index] += self._in_flight * (until - since)
            since = until
        self._busy_since = now_s if self._busy_since is None else max(now_s, self._busy_since)

    def observe(self, now_s: float, requests: int = 1) -> None:
        """Count ``requests`` client requests arriving at ``now_s`` (each in flight until its :meth:`finish`)."""
        with self._lock:
            self._roll_to(int(now_s))
            self._book_busy(now_s)
            self._seconds[-1] += requests
            self._in_flight += requests

    def finish(self, now_s: float, latency_s: float | None) -> None:
        """One request observed earlier ends at ``now_s``; ``latency_s`` is its latency when a replica answered it
        (None when the router answered itself: a 400, or a 503 for want of a replica, says nothing of the
        replicas' latency)."""
        with self._lock:
            self._roll_to(int(now_s))
            self._book_busy(now_s)
            self._in_flight = max(0, self._in_flight - 1)
            if latency_s is not None:
                self._latencies[-1].append(latency_s)

    def series(self) -> np.ndarray:
        """The forecasters' series so far (a copy; the refit thread reads it)."""
        with self._lock:
            return np.array(self._series, dtype=float)

    def set_startup(self, startup_s: float) -> None:
        """The lead from the next decision on: the policy's ``startup_s``, and with it the forecasts' horizon and
        that of the background refits (a fit for a shorter horizon serves until the next refit; the LSTM's
        gives no path past its own horizon, and the measured choice runs among the others meanwhile)."""
        if startup_s == self.policy.startup_s:
            return
        self.policy = dataclasses.replace(self.policy, startup_s=startup_s)
        if self._refits is not None:
            self._refits.horizon_bins = horizon_bins(self.policy.horizon_s, self.interval_s)

    def tick(self, now_s: float, ready: int, starting: int, waiting: int = 0) -> ScalingDecision:
        """The decision at ``now_s`` for ``ready`` + ``starting`` replicas and ``waiting`` requests held for want of
        one (see the module docstring)."""
        if self.lead is not None:
            self.set_startup(self.lead.read())
        with self._lock:
            self._roll_to(int(now_s))
            self._book_busy(now_s)
            # the second now running is not whole yet; the missing seconds of a fresh router count as quiet
            counts = np.asarray(list(self._seconds)[:-1][-self._window :], dtype=float) * self.peers
            busy = np.asarray(list(self._busy)[:-1][-self._window :], dtype=float) * self.peers
            finished = [x for second in list(self._latencies)[:-1][-self._window :] for x in second]
            p99 = float(np.quantile(finished, 0.99)) if finished else None
            if self.policy.metric.is_capacity:
                sized = busy if self.policy.metric is Metric.CONCURRENCY else counts
                self._series.append(float(sized.sum() / self._window))
            series = np.array(self._series, dtype=float)
        forecast = None
        if self.candidates:
            choice = forecast_now(
                self.candidates, series, self.policy.horizon_s, self.forecast_settings, from_s=self.policy.startup_s
            )
            forecast = choice.forecast
        pad = np.zeros(self._window - len(counts))
        decision = decide(
            now_s,
            np.concatenate([pad, counts]),
            1.0,
            ready,
            starting,
            self.policy,
            forecast,
            list(self._past),
            busy=np.concatenate([pad, busy]),
            p99_s=p99,
            waiting=waiting,
        )
        self._past.append(decision.remembered())
        while self._past and now_s - self._past[0].time_s >= self.policy.stabilisation_s:
            self._past.popleft()
        self.last = decision
        return decision

    def refit_worker(self, interval_s: float) -> RefitWorker | None:
        """The background refits of the fitted forecasters (None when none is used, as in reactive mode)."""
        if not any(isinstance(c, FittedCandidate) for c in self.candidates):
            return None
        horizon = horizon_bins(self.policy.horizon_s, self.interval_s)
        self._refits = RefitWorker(self.candidates, self.series, horizon, interval_s)
        return self._refits
