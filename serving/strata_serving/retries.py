"""Which failed attempts the router retries on another replica, and the budget that caps retries (pure).

**What may be retried.** A request that never reached a replica's handler may always go elsewhere: a connect
failure, a replica's 503 (draining or warming up: the server refuses before reading the body) and its 429 (queue
full: refused before the model sees it). A request that was sent and then met a timeout, a broken connection or a
5xx may have been processed; it is retried only on an endpoint declared free of side effects
(:data:`ENDPOINTS`): generation, completion and scoring read the model and change nothing, so running one twice
costs compute but is invisible to the client. A streamed response is never retried once its first byte has gone
to the client (the client would see two answers spliced). Every answer says how many attempts it took in the
``x-strata-attempts`` header.

**The budget** (as Linkerd's and Envoy's retry budgets): within a sliding window, retries may be at most
``ratio`` x the requests that arrived in it plus ``floor_per_s`` x the window. When every replica fails, retries
thus add at most ``ratio`` to the load (plus the floor, so that a quiet service still retries); a storm of retries
cannot take down the replicas that are left.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from strata_api.serving import COMPLETIONS_PATH, GENERATE_PATH, MODELS_PATH, PREDICT_PATH
from strata_serving.routing import Outcome


@dataclass(frozen=True)
class Endpoint:
    """A path the router serves, its method, and whether running a request twice is harmless (then any failure
    is retried)."""

    path: str
    free_of_side_effects: bool
    method: str = "POST"


ENDPOINTS: dict[str, Endpoint] = {
    endpoint.path: endpoint
    for endpoint in (
        Endpoint(GENERATE_PATH, free_of_side_effects=True),
        Endpoint(PREDICT_PATH, free_of_side_effects=True),
        Endpoint(COMPLETIONS_PATH, free_of_side_effects=True),
        Endpoint(MODELS_PATH, free_of_side_effects=True, method="GET"),
    )
}
"""The replica endpoints the router forwards, all read-only uses of the model (``/v1/models`` lists the served
model, as OpenAI clients ask first)."""

NOT_PROCESSED = frozenset({Outcome.CONNECT_FAILED, Outcome.UNAVAILABLE, Outcome.OVERLOADED})
"""Outcomes after which the replica has certainly not run the request."""


def may_retry(outcome: Outcome, endpoint: Endpoint, response_started: bool = False) -> bool:
    """Whether an attempt that ended in ``outcome`` may be tried again on another replica (budget aside)."""
    if outcome is Outcome.OK or response_started:
        return False
    return outcome in NOT_PROCESSED or endpoint.free_of_side_effects


@dataclass
class RetryBudget:
    """Retries allowed in a sliding window: ``ratio`` x requests + ``floor_per_s`` x window (see the module; the
    router's settings ``retry_ratio``, ``retry_floor_per_s`` and ``retry_window_s`` give the defaults)."""

    ratio: float
    floor_per_s: float
    window_s: float
    _requests: deque[float] = field(default_factory=deque)
    _retries: deque[float] = field(default_factory=deque)

    def _forget_before(self, now: float) -> None:
        for times in (self._requests, self._retries):
            while times and times[0] <= now - self.window_s:
                times.popleft()

    def record_request(self, now: float) -> None:
        """A new request arrived (deposits ``ratio`` of a retry)."""
        self._forget_before(now)
        self._requests.append(now)

    def allowance(self, now: float) -> int:
        """Retries allowed in the window ending ``now``."""
        self._forget_before(now)
        # the epsilon keeps 0.1 x 10 + 0.1 x 60 at 7, not 6.999...
        return math.floor(self.ratio * len(self._requests) + self.floor_per_s * self.window_s + 1e-9)

    def try_spend(self, now: float) -> bool:
        """Take one retry from the budget; False (and nothing taken) when the window's allowance is spent."""
        if len(self._retries) >= self.allowance(now):
            return False
        self._retries.append(now)
        return True
