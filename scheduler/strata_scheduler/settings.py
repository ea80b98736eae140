"""The extender's one settings object, built once at start-up from flags (each also readable from the environment)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from strata_api.catalog import DEFAULT_CATALOG
from strata_api.settings import PORT, POSITIVE, SIGNED, load_settings


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    """Address to listen on. Loopback by default; in a pod, 0.0.0.0 behind a Service."""
    port: int = field(default=8888, metadata=PORT)
    """HTTP port for the extender verbs, probes, /metrics and /forecast."""
    kubeconfig: str | None = None
    """Kubeconfig file; None uses the in-cluster service account (or ~/.kube/config outside a cluster)."""
    catalog: Path = DEFAULT_CATALOG
    """Cost catalog YAML (prices, throughput, power tariff, hazards); a ConfigMap mounted as a file in a pod.
    The default is the catalog shared with the operator, shipped inside strata_api (so a wheel has it too)."""
    store: Path = Path("strata-demand.sqlite")
    """Demand history (SQLite). On a PersistentVolume in a pod, so forecasts survive restarts."""
    prometheus_url: str | None = None
    """Read demand history from this Prometheus (HTTP API) instead of the local store, when set."""
    high_priority: int = field(default=100, metadata=SIGNED)
    """Pods whose strata.dev/priority is at least this (and not deferrable) count as high priority."""
    record_interval_s: float = field(default=60.0, metadata=POSITIVE)
    """Seconds between demand samples; one minute matches the forecaster's resolution."""
    forecast_interval_s: float = field(default=300.0, metadata=POSITIVE)
    """Seconds between forecaster refits; a fit takes seconds of CPU, so not more often than this."""
    horizon_min: int = 15
    """How far ahead the reserved-capacity hold looks (minutes)."""
    history_days: float = 14.0
    """Days of demand history the forecaster fits on."""
    forecast_tmp_dir: Path | None = None
    """Writable directory for the files of each Prophet fit (cmdstanpy's JSON inputs, the Stan optimiser's CSV
    output and console log; each fit's are removed when it ends). None uses Python's temp dir (``TMPDIR``, else
    /tmp). A pod with a read-only root filesystem needs a volume here, or every Prophet fit fails (and the forecast
    falls back to the model-free candidates); the chart mounts an emptyDir."""
    forecast_fit_timeout_s: float = field(default=120.0, metadata=POSITIVE)
    """Seconds one Prophet fit may run before its Stan optimiser is stopped and Prophet is left out of that
    series' forecast for the round (two fits per series and round). A fit on 14 days of 5-minute means took
    1.3-2.8 s on a loaded 2-core machine (docs/scheduler.md), so this leaves a wide margin; a hung optimiser
    would otherwise stop all forecasting."""
    pin_ttl_s: float = 30.0
    """How long a tensor-parallel group stays pinned to a node before its first pod is seen bound (seconds)."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request accepted; 5,000 node names are about 100 KiB, full NodeLists far more."""
    max_head_bytes: int = 64 * 1024
    """Largest request line plus headers (bytes), however the bytes arrive; over it: 431. Go's client sends a
    few hundred; the limit only stops a client from making the server buffer without end."""
    request_timeout_s: float = field(default=10.0, metadata=POSITIVE)
    """Seconds a request may take to arrive, head and body, from its first byte (and a new connection to send
    its first byte); past it: 408 and the connection closed. kube-scheduler sends a request in one write of
    about 100 KiB at 5,000 nodes; this stops slow-loris clients from holding connections forever."""
    idle_timeout_s: float = field(default=120.0, metadata=POSITIVE)
    """Seconds a keep-alive connection may sit idle between requests before the server closes it. Longer than
    the 90 s after which Go's HTTP client (kube-scheduler's) drops its own idle connections, so the server is
    never the one to close a connection a POST is about to be written on (Go does not retry a POST then)."""
    max_connections: int = 1024
    """Open client connections at most; keep it well below the process's file-handle limit. Past it, a new
    connection is still taken, and to make room the server closes the oldest connection that has not had a
    request answered yet (a slow-loris or silent one), else the one idle longest; a connection with a request
    in progress is never closed. So a restarted kube-scheduler gets through a flood, and the connections it
    keeps stay served. Only when every connection is busy is the new one answered 503 and closed."""
    error_log_interval_s: float = field(default=10.0, metadata=POSITIVE)
    """The same event-loop error (such as accept() failing when file handles run out) is logged at most once
    per this many seconds, with the count of repeats left out; unthrottled, one flood wrote 42 MB in 30 s."""
    tls_cert_file: Path | None = None
    """Serve HTTPS with this PEM certificate (and ``tls_key_file``); None serves plain HTTP. kube-scheduler's
    extender ``tlsConfig`` verifies it with ``caFile`` and ``serverName``, and ``enableHTTPS: true``."""
    tls_key_file: Path | None = None
    """The PEM private key of ``tls_cert_file``."""
    tls_client_ca_file: Path | None = None
    """With HTTPS: serve the verbs (/filter, /prioritize, /quote) only to clients presenting a certificate signed
    by this CA (mutual TLS; a certificate that does not verify fails the handshake, and clients without one get
    the probes and /metrics only, since kubelet's HTTPS probes present none). kube-scheduler's
    extender config sends one (``tlsConfig.certFile``/``keyFile``); it has no way to send a bearer token or any
    other header, so a client certificate is the one credential it can give. Off (None) by default."""
    default_runtime_s: float = 4 * 3600.0
    """Runtime assumed for a GPU pod that does not declare one (seconds); drives its spot interruption cost."""
    watch_crds: bool = True
    """Watch ResourcePools and TrainingJobs; their absence on a cluster is tolerated either way."""
    gil_switch_interval_s: float = field(default=0.0005, metadata=POSITIVE)
    """How long a busy thread keeps the GIL while another waits for it (``sys.setswitchinterval``; CPython's
    default is 5 ms, the whole latency budget of a call). The verbs run on the HTTP thread; while the
    forecaster or a watch thread is busy, each hand-over costs a request up to this long. With a thread kept
    busy, 0.5 ms instead of 5 ms took HTTP p50/p99 at 5,000 nodes from 28.8/133 to 15.6/84 ms (loaded 2-core
    machine; ``extender_latency.py --busy-thread --switch-interval-ms``)."""
    byte_fast_path: bool = True
    """Read filter and prioritize requests at the byte level where they allow it (:mod:`strata_scheduler.fastpath`:
    the node names are looked up from their JSON text, never decoded) and write the filter's answer from cached
    fragments. Off, every request is decoded as plain JSON; the answers are the same bytes either way, so this
    is for ruling the byte route out when something looks wrong."""


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Flags win over ``STRATA_SCHEDULER_<FIELD>`` environment variables, which win over the defaults."""
    return load_settings(
        Settings, env_prefix="STRATA_SCHEDULER_", argv=argv, prog="python -m strata_scheduler", description=__doc__
    )
