"""``python -m strata_scheduler`` as a process against the cluster: probes, metrics, forecasts, and a demand
history that survives a restart."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import urllib3
from cluster_support import ClusterHandle, eventually
from scheduler_builders import a_pod
from scheduler_cluster import TestFleet

from strata_dev.cluster import free_port

pytestmark = pytest.mark.cluster


@contextmanager
def extender_process(cluster: ClusterHandle, store: Path, log: Path) -> Iterator[str]:
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "strata_scheduler",
        f"--port={port}",
        f"--kubeconfig={cluster.kubeconfig}",
        f"--store={store}",
        "--record-interval-s=1",
        "--forecast-interval-s=1",
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: _get(url, "/readyz")[0] == 200, 60, f"the extender to be ready (log: {log})")
        yield url
    finally:
        process.terminate()
        assert process.wait(20) == 0, f"the extender did not stop cleanly on SIGTERM (log: {log})"


def _get(url: str, path: str) -> tuple[int, bytes]:
    try:
        response = urllib3.request("GET", url + path, timeout=5, retries=False)
    except urllib3.exceptions.HTTPError:
        return 0, b""
    return response.status, response.data


def _minutes(store: Path) -> list[int]:
    db = sqlite3.connect(store)
    try:
        return [row[0] for row in db.execute("SELECT DISTINCT minute FROM demand ORDER BY minute")]
    finally:
        db.close()


def test_entry_point_serves_records_forecasts_and_keeps_history_across_restarts(
    cluster: ClusterHandle, namespace: str, tmp_path: Path
) -> None:
    store, log = tmp_path / "demand.sqlite", tmp_path / "extender.log"
    core = cluster.core()
    pod = TestFleet("none", []).pod(a_pod("demand").gpus(8).priority(500), namespace)
    pod["spec"]["nodeSelector"] = {"strata.dev/never": "matches"}  # stays Pending: demand, not usage
    pod["spec"]["schedulerName"] = "default-scheduler"
    core.create_namespaced_pod(namespace, pod)
    with extender_process(cluster, store, log) as url:
        assert _get(url, "/healthz") == (200, b"ok")

        forecast = eventually(high_h100_forecast_at(url), 60, "a forecast that counts the pending pod's 8 GPUs")
        assert forecast["method"] == "persistence"  # minutes of history: too little for Prophet
        metrics = _get(url, "/metrics")[1].decode()
        assert 'strata_demand_gpus{gpu_type="H100",priority="high"}' in metrics
        assert 'strata_extender_cache_objects{kind="nodes"}' in metrics
        assert 'strata_forecast_gpus{bound="upper",gpu_type="H100",priority="high"}' in metrics
    before = _minutes(store)
    assert before
    with extender_process(cluster, store, log) as url:
        eventually(high_h100_forecast_at(url), 60, "a forecast after the restart")
    after = _minutes(store)
    assert after[: len(before)] == before, "the restarted extender kept the recorded history"


def high_h100_forecast_at(url: str) -> object:
    def probe() -> dict[str, object] | None:
        forecasts = orjson.loads(_get(url, "/forecast")[1])["forecasts"]
        wanted = [f for f in forecasts if (f["gpuType"], f["priority"]) == ("H100", "high") and f["mean"] >= 8]
        return wanted[0] if wanted else None

    return probe


def test_bad_catalog_stops_start_up_with_one_line(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text("prices:\n  p5.48xlarge: {spot: -3}\n")
    done = subprocess.run(
        [sys.executable, "-m", "strata_scheduler", f"--catalog={catalog}"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"strata-scheduler: {catalog}: prices.p5.48xlarge.spot: expected a finite number more than zero, got -3"
    )
