"""The extender's one settings object, built once at start-up from flags (each also readable from the environment)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from strata_api.catalog import DEFAULT_CATALOG
from strata_api.settings import load_settings


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    """Address to listen on. Loopback by default; in a pod, 0.0.0.0 behind a Service."""
    port: int = 8888
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
    high_priority: int = 100
    """Pods whose strata.dev/priority is at least this (and not deferrable) count as high priority."""
    record_interval_s: float = 60.0
    """Seconds between demand samples; one minute matches the forecaster's resolution."""
    forecast_interval_s: float = 300.0
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
    pin_ttl_s: float = 30.0
    """How long a tensor-parallel group stays pinned to a node before its first pod is seen bound (seconds)."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request accepted; 5,000 node names are about 100 KiB, full NodeLists far more."""
    default_runtime_s: float = 4 * 3600.0
    """Runtime assumed for a GPU pod that does not declare one (seconds); drives its spot interruption cost."""
    watch_crds: bool = True
    """Watch ResourcePools and TrainingJobs; their absence on a cluster is tolerated either way."""
    gil_switch_interval_s: float = 0.0005
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
