"""The router's settings: one object, built once at start-up from defaults, ``STRATA_ROUTER_*`` and flags."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from strata_api.serving import IDLE_CONNECTION_S
from strata_api.settings import PORT, POSITIVE, load_settings
from strata_serving.autoscale import Metric, Mode, ScalingPolicy
from strata_serving.routing import Policy, TableConfig

ENV_PREFIX = "STRATA_ROUTER_"


@dataclass(frozen=True)
class RouterSettings:
    """Everything tunable about one InferenceService's router. Each field: unit, default and why."""

    host: str = "0.0.0.0"
    """Listen address. Default every interface (the router is the service's entry point)."""
    port: int = field(default=8080, metadata=PORT)
    """Listen port. Default 8080."""
    replica: tuple[str, ...] = ()
    """Replica addresses ``host:port`` (repeatable flag; comma list in the environment). Give this or
    ``replicas_dns``."""
    replicas_dns: str = ""
    """``name:port`` of a headless Service whose name resolves to the ready replicas' addresses; re-resolved every
    ``dns_interval_s``. Give this or ``replica``."""
    canary_replica: tuple[str, ...] = ()
    """Addresses ``host:port`` of the canary revision's replicas (repeatable; comma list in the environment). Give
    this, ``canary_dns`` or neither (no canary)."""
    canary_dns: str = ""
    """``name:port`` of a headless Service that resolves to the canary revision's replicas, re-resolved as
    ``replicas_dns``. Give this, ``canary_replica`` or neither."""
    canary_percent: float = 0.0
    """Share of requests, 0 to 100, sent to the canary revision's replicas while both revisions have a routable
    replica (``spec.rollout.canaryPercent``). Default 0: the canary's replicas take requests only when no stable
    one can."""
    dns_interval_s: float = field(default=2.0, metadata=POSITIVE)
    """Seconds between resolutions of ``replicas_dns``. Default 2 s: a new replica takes traffic within about
    that of turning ready; a vanished one is ejected by its first refused connection long before."""
    probe_interval_s: float = field(default=0.5, metadata=POSITIVE)
    """Seconds between active probes (``/readyz`` and ``/metrics``) of each replica. Default 0.5 s: a draining
    replica stops getting new requests within half a second, and the queue depth is at most that old."""
    probe_timeout_s: float = field(default=0.5, metadata=POSITIVE)
    """Seconds a probe waits for its answer. Default 0.5 s (the probe interval)."""
    unready_after_unanswered_probes: int = 3
    """Probes in a row without an answer in time that take a replica out of rotation (a 503 or a refused
    connection does at once). Default 3 (Kubernetes' readiness ``failureThreshold``): a replica on a node short of
    CPU answers a probe late while it still serves; one late probe is not a verdict. A replica that hangs is also
    ejected by its requests' timeouts."""
    connect_timeout_s: float = field(default=0.5, metadata=POSITIVE)
    """Seconds to open a connection to a replica before trying another. Default 0.5 s: on a cluster network a
    connection opens in milliseconds, and a replica that cannot be reached is better skipped fast."""
    upstream_timeout_s: float = field(default=60.0, metadata=POSITIVE)
    """Seconds an attempt waits for a replica's response headers, and then between two chunks of its body; past
    it the attempt is a timeout (retried for endpoints free of side effects). Default 60 s: a long generation on a
    CPU replica takes seconds, not minutes."""
    policy: str = Policy.LEAST_LOADED.value
    """``least-loaded`` (lowest expected wait) or ``round-robin``. Default least-loaded."""
    max_attempts: int = 3
    """Attempts per request, the first included, each on a different replica. Default 3 (Envoy's default of two
    retries)."""
    retry_ratio: float = 0.2
    """Retries at most this share of the requests of the budget window. Default 0.2 (Linkerd's)."""
    retry_floor_per_s: float = 5.0
    """Retries per second allowed on top of the ratio, so that a quiet service still retries. Default 5."""
    retry_window_s: float = 10.0
    """The retry budget's sliding window, seconds. Default 10 s (Linkerd's)."""
    eject_after_failures: int = 3
    """Failures in a row (timeouts, resets, 5xx other than 503) that eject a replica; one refused connection
    ejects it at once. Default 3."""
    eject_cooldown_s: float = 2.0
    """Seconds an ejected replica sits out the first time; doubled at each further ejection. Default 2 s: a
    killed pod's replacement is a new address, and a replica that merely stumbled is back soon."""
    eject_cooldown_max_s: float = 30.0
    """Longest ejection, seconds. Default 30 s (Envoy's base ejection time)."""
    latency_alpha: float = 0.3
    """Weight of the newest sample in each replica's latency EWMA. Default 0.3: a replica that turns slow is
    priced so within a few requests."""
    failure_alpha: float = 0.2
    """Weight of the newest attempt in each replica's failure EWMA (its health). Default 0.2."""
    replica_concurrency: int = 1
    """Requests a replica serves at once, for the expected wait: a request behind ``n`` others waits ``1 + n /
    concurrency`` service times. Default 1 (one after the other: the cautious estimate, which sends a slow replica
    a share in bursts that a batching replica would have absorbed); for the workload server, its ``max_batch``."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted; larger ones get 413. Default 1 MiB (the server's prompt limit is 4 KiB)."""
    max_answer_bytes: int = 64 << 20
    """Largest answer read from a replica (a streamed one passes through and is not held); a larger one is not
    passed on, the client gets 502 naming the limit, and it counts against the replica. Default 64 MiB: far above
    any answer the workload server gives, below what would take a router's memory."""
    body_timeout_s: float = field(default=30.0, metadata=POSITIVE)
    """Seconds a request's body has to arrive whole; a later one gets 408. Default 30 s: a 1 MiB body at 35 KB/s,
    where a client that trickles its body (or stops sending it) would otherwise hold the request open."""
    idle_timeout_s: float = field(default=IDLE_CONNECTION_S, metadata=POSITIVE)
    """Seconds a client connection may sit without a whole request head, idle between requests or sending its
    headers (a slow-loris client), before the router closes it. Default 3,630 s, aiohttp's
    (``strata_api.serving.IDLE_CONNECTION_S`` says why); shorten it where clients reach the router directly."""
    hold_s: float = 0.0
    """Seconds a request that finds no replica able to take it (none discovered, none ready yet, all ejected or
    draining) waits for one before the 503: the first replica of a scale from zero, one still starting. Default 0:
    the 503 at once; the operator sets 300 s for a service whose ``replicas.min`` is 0, as Knative's activator
    holds the requests of a revision scaled to zero. A held request counts for the autoscaler as any other."""
    max_held: int = 1000
    """Requests held at once (``hold_s``); more get the 503 at once. Default 1,000 (a body is at most
    ``max_body_bytes``)."""
    shutdown_delay_s: float = 0.0
    """Seconds the router keeps answering after SIGTERM, its ``/readyz`` 503 meanwhile, before it closes its port:
    the time the cluster takes to stop sending it new connections (an endpoint's removal reaching every node's
    proxy). Default 0: close at once, as a router run by hand wants; the operator sets 5 s. A second SIGTERM or
    SIGINT ends the wait."""
    drain_s: float = field(default=25.0, metadata=POSITIVE)
    """Seconds the requests in flight have to finish once the port is closed (a streamed generation among them);
    then they are cut. Default 25 s, the workload server's own drain (``ServeSettings.drain_seconds``)."""
    autoscale_mode: str = ""
    """``predictive`` or ``reactive``: run the autoscaler (:mod:`strata_serving.scaler`) and answer its last
    decision at ``GET /scale``; empty (the default) runs none. The operator sets it from ``spec.autoscaling.mode``."""
    autoscale_metric: str = Metric.RPS.value
    """What ``autoscale_target`` is: ``rps`` (requests per second per replica), ``concurrency`` (requests in flight
    per replica) or ``p99Latency`` (seconds the p99 latency stays under), spelt as ``spec.autoscaling.metric``.
    Default rps (what the router sized by before it read a metric)."""
    autoscale_target: float | None = field(default=None, metadata=POSITIVE)
    """The metric's target (``spec.autoscaling.target``): req/s, requests in flight, or seconds for p99Latency.
    Unset: ``autoscale_target_rps``, else 1."""
    autoscale_target_rps: float | None = field(default=None, metadata=POSITIVE)
    """The earlier name of ``autoscale_target``, for ``rps`` only (an operator that predates ``autoscale_metric``
    sets it); give one of the two, not both."""
    autoscale_min_replicas: int = 1
    """``spec.replicas.min``. Default 1."""
    autoscale_max_replicas: int = 1
    """``spec.replicas.max``. Default 1."""
    autoscale_startup_s: float = 60.0
    """A replica's start-up time, the lead a predictive scale-up needs (``spec.autoscaling.horizonSeconds``), until
    ``autoscale_startup_file`` gives one. Default 60 s."""
    autoscale_startup_file: str = ""
    """A file holding the lead in seconds, re-read at each decision (:class:`strata_serving.scaler.LeadFile`): the
    operator mounts the service's router ConfigMap there, which carries the replicas' measured start-up, so that a
    new measurement reaches the running routers without replacing them. While it is absent or unreadable the last
    good value stays (``autoscale_startup_s`` before any). Default empty: the lead is ``autoscale_startup_s``."""
    autoscale_stabilisation_s: float = 300.0
    """Scale-down stabilisation window (``spec.autoscaling.scaleDownStabilizationSeconds``). Default 300 s, HPA's."""
    autoscale_window_s: float = field(default=60.0, metadata=POSITIVE)
    """The observed rate is the mean over this many seconds (a Prometheus ``rate(...[1m])``). Default 60 s."""
    autoscale_interval_s: float = field(default=15.0, metadata=POSITIVE)
    """Seconds between decisions, and the forecasters' bin. Default 15 s (HPA's sync period)."""
    autoscale_refit_interval_s: float = field(default=600.0, metadata=POSITIVE)
    """Seconds between the background refits of Prophet and the LSTM. Default 10 min (40 bins of 15 s: within the
    forecasters' ``refit_every_bins``)."""
    autoscale_peers: int = 1
    """Routers in front of the service (the router Deployment's replicas): each sees about its share of the
    requests and scales its counts by this. Default 1."""
    log_level: str = "INFO"
    """Python logging level. Default INFO (ejections, readmissions and replicas coming and going)."""

    def __post_init__(self) -> None:
        Policy(self.policy)  # a ValueError naming the value
        if self.replica_concurrency < 1:
            raise ValueError(f"replica_concurrency must be at least 1, got {self.replica_concurrency}")
        if self.max_answer_bytes < 1:
            raise ValueError(f"max_answer_bytes must be at least 1, got {self.max_answer_bytes}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if self.unready_after_unanswered_probes < 1:
            raise ValueError(
                f"unready_after_unanswered_probes must be at least 1, got {self.unready_after_unanswered_probes}"
            )
        if not 0 <= self.canary_percent <= 100:
            raise ValueError(f"canary_percent must be within 0 and 100, got {self.canary_percent}")
        if self.canary_replica and self.canary_dns:
            raise ValueError("name the canary's replicas with either --canary-replica or --canary-dns, not both")
        if self.autoscale_target is not None and self.autoscale_target_rps is not None:
            raise ValueError("give autoscale_target or its earlier name autoscale_target_rps, not both")
        if self.autoscale_target_rps is not None and self.autoscale_metric != Metric.RPS.value:
            raise ValueError(
                f"autoscale_target_rps is a request-rate target, but autoscale_metric is {self.autoscale_metric!r}:"
                " give autoscale_target"
            )
        if self.autoscale_mode:
            self.scaling_policy()  # a ValueError naming the bad value

    def scaling_policy(self) -> ScalingPolicy:
        """The autoscaler's policy from the ``autoscale_*`` fields (``autoscale_mode`` must be set)."""
        try:
            metric = Metric(self.autoscale_metric)
        except ValueError:
            choices = ", ".join(m.value for m in Metric)
            raise ValueError(f"autoscale_metric must be one of {choices}, got {self.autoscale_metric!r}") from None
        target = next((t for t in (self.autoscale_target, self.autoscale_target_rps) if t is not None), 1.0)
        return ScalingPolicy(
            target=target,
            metric=metric,
            startup_s=self.autoscale_startup_s,
            min_replicas=self.autoscale_min_replicas,
            max_replicas=self.autoscale_max_replicas,
            mode=Mode(self.autoscale_mode),
            stabilisation_s=self.autoscale_stabilisation_s,
            metric_window_s=self.autoscale_window_s,
        )

    def table_config(self) -> TableConfig:
        return TableConfig(
            latency_alpha=self.latency_alpha,
            failure_alpha=self.failure_alpha,
            eject_after_failures=self.eject_after_failures,
            eject_cooldown_s=self.eject_cooldown_s,
            eject_cooldown_max_s=self.eject_cooldown_max_s,
            replica_concurrency=self.replica_concurrency,
            unready_after_unanswered_probes=self.unready_after_unanswered_probes,
        )


def load_router_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> RouterSettings:
    """Defaults, then ``STRATA_ROUTER_*`` variables, then flags (``--replica 10.0.0.5:8000 --policy round-robin``)."""
    return load_settings(
        RouterSettings,
        env_prefix=ENV_PREFIX,
        argv=argv,
        env=env,
        prog="python -m strata_serving.router",
        description="The load-aware router of one InferenceService.",
    )
