"""The router's replica table and its choice of replica per request (pure: no I/O, no clock, no global random).

Each replica carries what the router knows of it: requests it has in flight there (counted by the router, live),
the requests other clients had there at the last probe (the queue depth the replica reports,
``strata_serve_in_flight`` on its ``/metrics``, less this router's own count at that moment), an EWMA of its
response latency, an EWMA of its failures, its readiness from ``/readyz``, and the pressure on its node (also from
``/metrics``). From these:

- **expected wait** = ``(1 + (in flight + others') / concurrency) x latency EWMA / health``, where ``health = (1 -
  failure EWMA) x (1 - node pressure)`` (at least :data:`MIN_HEALTH`) and ``concurrency`` is how many requests a
  replica serves at once (1: one after the other, so ``(in flight + others' + 1) x latency``; a batching server's
  ``max_batch``: a request behind a full batch waits about one more batch). The router's own count is live; only
  the others' share (other router replicas, clients that bypass the router) comes from the gauge, which is up to a
  probe old: taking the gauge itself would count this router's requests twice and keep a replica that was busy at
  the probe looking busy for the rest of the interval. A replica with no latency sample yet is priced at the mean
  of the others (so a new replica gets its fair share rather than all of it or none). This is the "peak EWMA"
  cost of Finagle and Linkerd without the peak. The **node pressure** is the share of the last 10 s in which some
  task on the replica's node waited for a CPU or for memory (the most stalled of the two, as the replica reports it
  at each probe, ``strata_workloads.pressure``): a replica on a node stalled half the time costs twice its wait. It
  tells what the latency EWMA learns only from answers that are already late: a node whose other pods took its
  CPUs, or that reclaims memory on its way to the kubelet's eviction, slows the requests sent there next.
- **least-loaded** picks the lowest expected wait over every routable replica, ties broken at random. A full scan
  rather than the power of two random choices: one router's in-flight counts are live and replicas number tens,
  so the exact minimum costs microseconds; two choices pays off when many balancers herd on shared stale state or
  hosts number thousands, and it would send some requests to the slow replica that the full scan avoids.
- **round-robin** cycles over the same routable replicas (the baseline of the benchmark, and an option).
- **canary**: a replica is of the stable revision or of the canary (a new revision on trial); each request first
  draws its revision, the canary with probability ``canary_share`` (:func:`revision_candidates`), then the policy
  picks among that revision's replicas. The share is of requests, not of replicas: one canary replica among nine
  stable ones at a 10% share gets about what each stable one gets. When one revision has no routable replica the
  other takes every request: the split never fails a request that a replica could answer.
- **passive health** (Envoy's outlier detection): a connect failure ejects a replica at once (nothing listens
  there); :attr:`TableConfig.eject_after_failures` failures in a row of other kinds (timeouts, resets, 5xx) eject
  it too. An ejected replica sits out a cooldown that doubles with each ejection (capped; back to the base once it
  has answered well for the longest cooldown), and comes back only when an active probe of ``/readyz`` succeeds
  after the cooldown. A replica's 503 (draining or warming up) marks
  it not ready until a probe says ready again, without ejecting it: it is healthy, just not taking work. A probe
  that gets no answer in time counts only after a few in a row (:meth:`ReplicaTable.probed`).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

MIN_HEALTH = 0.05
"""Floor of the health: a replica that failed every recent request, or whose node stalls all the time, costs 20x
its wait, not infinity, so that it is still chosen when it is the only one left routable (ejection, not the score,
takes it out)."""


class Outcome(enum.Enum):
    """How one attempt at one replica ended, as far as routing and retrying care."""

    OK = "ok"
    """An answer the replica meant: 2xx, or a 4xx about the request (the client's fault, not the replica's)."""
    CONNECT_FAILED = "connect_failed"
    """No connection (refused, unreachable, connect timeout): the request never left the router."""
    UNAVAILABLE = "unavailable"
    """503 from the replica: draining or warming up; it refused the request without processing it."""
    OVERLOADED = "overloaded"
    """429 from the replica: its queue is full; it refused the request without processing it."""
    TIMEOUT = "timeout"
    """No answer within the upstream timeout after the request was sent: it may have been processed."""
    RESET = "reset"
    """The connection broke after the request was sent (the replica died, a stale keep-alive connection)."""
    SERVER_ERROR = "server_error"
    """Any other 5xx: the replica processed the request and failed."""

    @property
    def is_failure(self) -> bool:
        """Whether the outcome counts against the replica's health (429 and 503 are refusals, not faults)."""
        return self not in (Outcome.OK, Outcome.UNAVAILABLE, Outcome.OVERLOADED)


def outcome_of_status(status: int) -> Outcome:
    """The outcome of an HTTP answer from a replica."""
    if status == 503:
        return Outcome.UNAVAILABLE
    if status == 429:
        return Outcome.OVERLOADED
    if status >= 500:
        return Outcome.SERVER_ERROR
    return Outcome.OK


class Policy(enum.Enum):
    LEAST_LOADED = "least-loaded"
    ROUND_ROBIN = "round-robin"


class Unavailable(enum.Enum):
    """Why no replica can take a request: the ``reason`` of the router's 503."""

    NONE_DISCOVERED = "no replica discovered"
    NOT_READY = "no replica ready yet"
    ALL_EJECTED = "all replicas ejected after failures"
    ALL_DRAINING = "all replicas draining"


@dataclass(frozen=True)
class TableConfig:
    """How the table scores and ejects (``RouterSettings.table_config()``; each field's meaning and default is
    documented there)."""

    latency_alpha: float
    failure_alpha: float
    eject_after_failures: int
    eject_cooldown_s: float
    eject_cooldown_max_s: float
    replica_concurrency: int
    unready_after_unanswered_probes: int


@dataclass
class Replica:
    """What the router knows of one replica (``address`` is ``host:port``)."""

    address: str
    in_flight: int = 0
    others_in_flight: float = 0.0
    latency_ewma_s: float | None = None
    failure_ewma: float = 0.0
    consecutive_failures: int = 0
    ready: bool = False
    draining: bool = False
    ejected_until: float | None = None
    ejections: int = 0
    last_ejected_at: float = 0.0
    canary: bool = False
    """Whether it runs the canary revision (found through the canary's source) rather than the stable one."""
    unanswered_probes: int = 0
    """Probes in a row that got no answer in time (a slow answer is not a refusal: see :meth:`ReplicaTable.probed`)."""
    node_pressure: float = 0.0
    """Share of the last 10 s in which some task on its node waited for a CPU or memory, at the last probe that read
    its ``/metrics`` (0 when it reports none)."""

    @property
    def ejected(self) -> bool:
        return self.ejected_until is not None

    @property
    def routable(self) -> bool:
        return self.ready and not self.draining and not self.ejected

    @property
    def health(self) -> float:
        """1 when no recent request failed and its node stalls on nothing, falling towards :data:`MIN_HEALTH` as
        failures accumulate or its node's pressure grows."""
        return max(MIN_HEALTH, (1.0 - self.failure_ewma) * (1.0 - self.node_pressure))

    def expected_wait(self, default_latency_s: float, concurrency: int = 1) -> float:
        """Seconds a new request is expected to take here (the module docstring gives the formula)."""
        latency = self.latency_ewma_s if self.latency_ewma_s is not None else default_latency_s
        return (1 + (self.in_flight + self.others_in_flight) / concurrency) * latency / self.health


def revision_candidates(candidates: list[Replica], canary_share: float, draw: float) -> list[Replica]:
    """The candidates of the revision one request goes to: the canary's when ``draw`` (uniform in [0, 1)) is below
    ``canary_share`` (0 to 1), else the stable revision's; all of ``candidates`` when either revision has none
    among them (a canary that is down or ejected leaves the stable revision every request, and the other way
    round)."""
    canary = [replica for replica in candidates if replica.canary]
    if not canary or len(canary) == len(candidates):
        return candidates
    if draw < canary_share:
        return canary
    return [replica for replica in candidates if not replica.canary]


@dataclass
class ReplicaTable:
    """Every known replica by address, the choice among them, and the bookkeeping of each attempt's outcome."""

    config: TableConfig
    replicas: dict[str, Replica] = field(default_factory=dict)
    _next_round_robin: int = 0

    def sync(self, addresses: Iterable[str], canary: Iterable[str] = ()) -> tuple[list[str], list[str]]:
        """Make the table hold exactly ``addresses`` and ``canary`` (the sources' latest lists: the stable
        revision's and the canary's; an address in both is the canary's); returns (added, removed). A new replica
        starts not ready: it takes traffic after its first successful probe, not while warming up."""
        canaries = set(canary)
        wanted = list(dict.fromkeys([*addresses, *canaries]))
        added = [address for address in wanted if address not in self.replicas]
        removed = [address for address in self.replicas if address not in wanted]
        for address in removed:
            del self.replicas[address]
        for address in added:
            self.replicas[address] = Replica(address)
        for address in wanted:
            self.replicas[address].canary = address in canaries
        return added, removed

    def routable(self) -> list[Replica]:
        return [replica for replica in self.replicas.values() if replica.routable]

    def unavailable_reason(self) -> Unavailable | None:
        """None when some replica can take a request; otherwise why none can (ejection before draining before
        not ready: the reason that names the most specific cause among the replicas there are)."""
        replicas = list(self.replicas.values())
        if not replicas:
            return Unavailable.NONE_DISCOVERED
        if any(replica.routable for replica in replicas):
            return None
        if any(replica.ejected for replica in replicas):
            return Unavailable.ALL_EJECTED
        if any(replica.draining for replica in replicas):
            return Unavailable.ALL_DRAINING
        return Unavailable.NOT_READY

    def candidates(self, exclude: frozenset[str] = frozenset()) -> list[Replica]:
        """The routable replicas outside ``exclude``: where a (re)try of a request may go."""
        return [replica for replica in self.routable() if replica.address not in exclude]

    def choose(
        self, policy: Policy, rng: random.Random, exclude: frozenset[str] = frozenset(), canary_share: float = 0.0
    ) -> Replica | None:
        """The replica for the next attempt, or None when no routable replica is left outside ``exclude`` (the
        replicas this request already tried); first the revision (``canary_share`` of the requests go to the
        canary's replicas, :func:`revision_candidates`), then the replica by ``policy``. Counts the attempt as in
        flight there: call :meth:`finish` after."""
        candidates = self.candidates(exclude)
        if not candidates:
            return None
        if any(replica.canary for replica in candidates):
            candidates = revision_candidates(candidates, canary_share, rng.random())
        if policy is Policy.ROUND_ROBIN:
            ordered = sorted(candidates, key=lambda replica: replica.address)
            chosen = ordered[self._next_round_robin % len(ordered)]
            self._next_round_robin += 1
        else:
            default = self.default_latency_s()
            waits = [replica.expected_wait(default, self.config.replica_concurrency) for replica in candidates]
            best = min(waits)
            chosen = rng.choice([replica for replica, wait in zip(candidates, waits, strict=True) if wait == best])
        chosen.in_flight += 1
        return chosen

    def default_latency_s(self) -> float:
        """The price of a replica with no latency sample: the mean of the others' EWMAs (1 when none has one:
        then every replica is unmeasured and only load decides)."""
        known = [r.latency_ewma_s for r in self.replicas.values() if r.latency_ewma_s is not None]
        return sum(known) / len(known) if known else 1.0

    def finish(self, replica: Replica, outcome: Outcome, seconds: float, now: float) -> bool:
        """Book one attempt's end at ``replica``; returns True when this outcome ejected it."""
        replica.in_flight = max(0, replica.in_flight - 1)
        if outcome is Outcome.UNAVAILABLE:
            replica.ready = False  # until a probe says ready again
        if outcome in (Outcome.UNAVAILABLE, Outcome.OVERLOADED):
            return False  # a refusal says nothing of the replica's health, either way
        failed = outcome.is_failure
        replica.failure_ewma += self.config.failure_alpha * (float(failed) - replica.failure_ewma)
        if outcome in (Outcome.OK, Outcome.TIMEOUT, Outcome.SERVER_ERROR):
            previous = replica.latency_ewma_s
            replica.latency_ewma_s = (
                seconds if previous is None else previous + self.config.latency_alpha * (seconds - previous)
            )
        if not failed:
            replica.consecutive_failures = 0
            if replica.ejections and now - replica.last_ejected_at > self.config.eject_cooldown_max_s:
                replica.ejections = 0  # healthy for a while: the next ejection starts from the base cooldown
            return False
        replica.consecutive_failures += 1
        if replica.ejected:
            return False
        if outcome is Outcome.CONNECT_FAILED or replica.consecutive_failures >= self.config.eject_after_failures:
            self.eject(replica, now)
            return True
        return False

    def abandon(self, replica: Replica) -> None:
        """An attempt given up by the router itself (it is stopping): no longer in flight, and no verdict."""
        replica.in_flight = max(0, replica.in_flight - 1)

    def eject(self, replica: Replica, now: float) -> None:
        cooldown = min(self.config.eject_cooldown_s * 2**replica.ejections, self.config.eject_cooldown_max_s)
        replica.ejections += 1
        replica.ejected_until = now + cooldown
        replica.last_ejected_at = now

    def probed(
        self,
        address: str,
        ready: bool | None,
        draining: bool,
        queue_depth: float | None,
        now: float,
        node_pressure: float | None = None,
    ) -> bool:
        """Book an active probe's result (``/readyz``, and the queue depth and node pressure from ``/metrics`` when
        it answered: None for either keeps the last); returns True when the probe brought an ejected replica back
        (its cooldown over and ``/readyz`` 200).

        ``ready`` None is a probe that got no answer in time: the replica keeps its readiness until
        :attr:`TableConfig.unready_after_unanswered_probes` such probes in a row (Kubernetes' ``failureThreshold``),
        since a replica busy serving, or a node short of CPU for a moment, answers a probe late while it still
        answers requests; taking it out on one late probe sent every request to the other revision for a probe
        interval. An answer (200, or 503 draining or warming up) and a refused connection (``ready`` False) count
        at once."""
        replica = self.replicas.get(address)
        if replica is None:
            return False
        if ready is None:
            replica.unanswered_probes += 1
            if replica.unanswered_probes < self.config.unready_after_unanswered_probes:
                return False
            ready = False
        else:
            replica.unanswered_probes = 0
        replica.ready, replica.draining = ready, draining
        if queue_depth is not None:
            replica.others_in_flight = max(0.0, queue_depth - replica.in_flight)
        if node_pressure is not None:
            replica.node_pressure = node_pressure
        if replica.ejected_until is not None and ready and now >= replica.ejected_until:
            replica.ejected_until = None
            replica.consecutive_failures = 0
            replica.failure_ewma = 0.0
            return True
        return False

    def counts(self) -> dict[str, int]:
        """Replicas by state, for the router's gauge: routable, ejected, draining, not ready."""
        states = {"routable": 0, "ejected": 0, "draining": 0, "not_ready": 0}
        for replica in self.replicas.values():
            if replica.routable:
                states["routable"] += 1
            elif replica.ejected:
                states["ejected"] += 1
            elif replica.draining:
                states["draining"] += 1
            else:
                states["not_ready"] += 1
        return states
