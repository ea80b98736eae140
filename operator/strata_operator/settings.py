"""The operator's settings: one object, built once at start-up from flags and environment, passed down."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from strata_api import SCHEDULER_NAME
from strata_api.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from strata_api.settings import PORT, POSITIVE, SIGNED, load_settings

ENV_PREFIX = "STRATA_OPERATOR_"


@dataclass(frozen=True)
class OperatorSettings:
    """Everything tunable about the operator. Each field: unit, default, and why."""

    scheduler_name: str = SCHEDULER_NAME
    """schedulerName of worker pods. Default Strata's extender profile; set ``default-scheduler`` on a cluster that
    runs no Strata scheduler (plain kube-scheduler then places the gangs)."""
    master_port: int = field(default=29500, metadata=PORT)
    """TCP port of the torch.distributed rendezvous on worker 0. Default 29500, torchrun's."""
    metrics_port: int = field(default=9090, metadata=PORT)
    """Port of the Prometheus endpoint of the operator; 0 disables it. Default 9090."""
    liveness_port: int = field(default=0, metadata=PORT)
    """Port of kopf's liveness endpoint (``GET /healthz``: 200 while the operator's event loop answers), served once
    start-up (the cluster cache's first sync) is done; 0 disables it. Default 0, so that several operators can run
    on one host; the chart sets 8080 and probes it."""
    workload_metrics_port: int = field(default=9400, metadata=PORT)
    """Port on which workers export their training metrics (declared on the pods for scraping). Default 9400."""
    admission_interval_s: float = field(default=1.0, metadata=POSITIVE)
    """Seconds between admission passes. Default 1 s: queued jobs start within a second of GPUs freeing, and one
    pass over 1,000 queued jobs costs milliseconds."""
    resync_interval_s: float = field(default=15.0, metadata=POSITIVE)
    """Seconds between reconciles of a job when nothing about it changed (deadlines, GPU-second accounting).
    Default 15 s; pod changes wake the job at once."""
    backoff_base_s: float = 10.0
    """First restart delay, doubled at each further restart. Default 10 s, like a Job's pod backoff."""
    backoff_max_s: float = 600.0
    """Longest restart delay. Default 10 min: past that the fleet has changed anyway."""
    termination_grace_s: int = 120
    """Grace period of worker pods: time to write a checkpoint after SIGTERM. Default 120 s, a spot notice."""
    start_timeout_s: float = field(default=600.0, metadata=POSITIVE)
    """An admitted gang whose workers are not all running after this many seconds is requeued (its GPUs were
    not there after all). Default 10 min."""
    scheduler_grace_s: float = field(default=30.0, metadata=POSITIVE)
    """A worker or replica pod that no scheduler has looked at this many seconds after it could be placed (its gates
    lifted, or made) makes the job's or the service's status name its ``schedulerName`` and ask whether that
    scheduler runs; one placed this long ago and not started for no reason its status gives has its Events read
    for why its volumes do not come. Default 30 s: kube-scheduler takes a new pod within a second, and within
    seconds through a backlog of thousands."""
    model_retry_s: float = field(default=300.0, metadata=POSITIVE)
    """Seconds the replicas of a revision whose model their servers refused (an exit the kubelet would only repeat:
    a path that is not there, a checkpoint that does not load) stay stopped before one more try, doubled at each
    refusal of the same revision up to 8 times this. Default 5 min: the kubelet's longest crash-loop delay, without
    the loop; a new revision (a spec change, the job's next checkpoint) tries at once."""
    run_as_user: int = 1000
    """UID of the workers (restricted pod security: never root). Default 1000."""
    peering_name: str = "strata-operator"
    """kopf peering object; replicas with the same name elect one active. Default strata-operator."""
    priority: int = field(default=0, metadata=SIGNED)
    """kopf peering priority of this replica; the highest alive is active. Default 0 (the oldest wins ties)."""
    standalone: bool = False
    """Run without peering (a single replica, or no kopf peering CRD installed). Default False."""
    namespaces: tuple[str, ...] = ()
    """Namespaces to serve; empty serves the whole cluster. Default empty."""
    log_level: str = "INFO"
    """Python logging level (DEBUG shows kopf's watch and handler traffic). Default INFO."""
    catalog: Path = DEFAULT_CATALOG
    """The price catalog (YAML, the same document the scheduler extender reads; in the chart, the same ConfigMap):
    ``status.cost`` prices a worker at its node's ``prices[instance type][capacity type]`` per node-hour, shared
    by the node's GPUs. A node's ``strata.dev/price-per-hour`` annotation wins. Default: the catalog shipped in
    :mod:`strata_api`."""
    tariff_offset_s: float = field(default=0.0, metadata=SIGNED)
    """Seconds after each UTC hour at which the catalog's time-of-use hours begin, for valley scheduling: 1800 for a
    utility whose tariff hours start at half past UTC hours (India's, at UTC+5:30). Default 0: the catalog's hours
    are UTC hours, as the extender reads them."""

    extender_url: str = ""
    """Base URL of Strata's scheduler extender (``http://strata-extender:8888``). For ``gpuType: Any`` jobs,
    admission asks its ``POST /quote`` which GPU type's unit of work is cheapest now and tries that type first.
    Empty (the default): no quotes, the job's own order (H100, then MI300X)."""
    quote_timeout_s: float = field(default=0.5, metadata=POSITIVE)
    """Seconds an admission pass waits for the extender's quotes; unanswered jobs use their own order. Default
    0.5 s: a quote costs the extender milliseconds, and admission must not stall when it is away."""

    router_image: str = "ghcr.io/strata-dev/strata-serving:latest"
    """Image of every InferenceService's router (``python -m strata_serving.router``: the ``serving`` image, no
    torch). The chart sets the one it installs (``serving.image``); ``make images`` builds it as
    ``localhost/strata-serving:<hash>``."""
    router_replicas: int = 2
    """Routers per InferenceService, spread over nodes and zones: one lost leaves the service reachable. Default 2."""
    router_node_selector: tuple[str, ...] = ()
    """``key=value`` node labels the routers must run on (the chart passes its own ``nodeSelector``: where Strata's
    components run). Default none: anywhere a CPU pod fits."""
    scale_poll_interval_s: float = field(default=5.0, metadata=POSITIVE)
    """Seconds between two reads of an autoscaled service's router (``GET /scale``). Default 5 s: a decision (one
    per 15 s interval) is applied within seconds of being made."""
    scale_timeout_s: float = field(default=2.0, metadata=POSITIVE)
    """Seconds a read of ``/scale`` may take; a router that does not answer leaves the replica count as it is.
    Default 2 s."""
    router_urls: tuple[str, ...] = ()
    """``namespace/name=http://host:port`` pairs: read this service's scaling decisions from this URL instead of
    its router Service's in-cluster name (an operator run outside the cluster, as in the tests, cannot resolve
    ``<name>.<namespace>.svc``). Default none."""

    api_attempts: int = 8
    """Tries of one API call of the operator's own client when the server throttles it (429), fails (5xx) or
    cannot be reached; a 401 adds one try after logging in again (rotated tokens). Default 8."""
    api_retry_budget_s: float = 60.0
    """Seconds from an API call's first try after which no further try starts; the call then fails and its
    reconcile is retried later. Default 60 s: about how long a restarting API server is away, and a reconcile never
    hangs (a call ends within this plus one try's 30 s socket timeouts)."""

    @classmethod
    def from_args(cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> OperatorSettings:
        """Flags win over ``STRATA_OPERATOR_<FIELD>`` environment variables, which win over defaults (every Strata
        component's one loader, :func:`strata_api.settings.load_settings`)."""
        return load_settings(
            cls,
            env_prefix=ENV_PREFIX,
            argv=argv,
            env=env,
            prog="python -m strata_operator",
            description="Strata's operator: admits TrainingJobs to their ResourcePools and runs their gangs.",
        )

    @property
    def router_nodes(self) -> dict[str, str]:
        """:attr:`router_node_selector` as a pod's ``nodeSelector``."""
        return dict(pair.split("=", 1) for pair in self.router_node_selector if "=" in pair)

    def router_url(self, key: str, in_cluster: str) -> str:
        """Where to read service ``key``'s (``namespace/name``) scaling decisions: its :attr:`router_urls` entry,
        else ``in_cluster`` (its router Service's URL)."""
        for pair in self.router_urls:
            name, sep, url = pair.partition("=")
            if sep and name.strip() == key:
                return url.strip().rstrip("/")
        return in_cluster

    @cached_property
    def prices(self) -> Catalog:
        """The catalog behind :attr:`catalog`, read once (start-up reads it, so a bad file stops the operator)."""
        return load_catalog(self.catalog)
