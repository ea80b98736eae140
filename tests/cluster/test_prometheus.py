"""A real Prometheus (built from its Go module) scrapes Strata's running components on the local control plane: the
operator (its own process, running two jobs: one admitted, whose worker then fails and restarts, one queued on the
pool's quota), the extender (watching, recording demand, forecasting, answering the operator's quotes) and a real
training process; every query of the chart's dashboard and every alert of its PrometheusRule evaluates there
without error, and every dashboard query returns series (make test-prometheus, the last tier of make test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_support import ClusterHandle, eventually
from kubernetes import client

import strata_api as api
from strata_api.catalog import DEFAULT_CATALOG, load_catalog
from strata_api.workload import ExitCode
from strata_dev import binaries
from strata_dev.cluster import EXIT_CODE_ANNOTATION, annotate_pods, free_port
from strata_scheduler.service import ExtenderService
from strata_scheduler.settings import Settings

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "strata"
DASHBOARD = json.loads((CHART / "files" / "strata-dashboard.json").read_text())
RATE_INTERVAL = "30s"
"""What Grafana's $__rate_interval becomes here: many 1 s scrapes."""


class Processes:
    """Child processes of the test, each with its log; all stopped at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        with (self.folder / f"{name}.log").open("wb") as log:
            self.started[name] = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=self.folder
            )

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]

    def check_alive(self) -> None:
        for name, process in self.started.items():
            assert process.poll() is None, f"{name} exited: {self.log(name)}"

    def stop(self) -> None:
        for process in self.started.values():
            if process.poll() is None:
                process.terminate()
        for process in self.started.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.stop()


def rendered_rules(cluster: ClusterHandle) -> dict[str, Any]:
    """The chart's PrometheusRule groups, as Prometheus reads a rule file."""
    args = [str(cluster.bin_dir / "helm"), "template", "rel", str(CHART), "--kube-version", binaries.KUBERNETES_VERSION]
    args += ["--set", "monitoring.prometheusRule.enabled=true", "--show-only", "templates/prometheusrule.yaml"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {"groups": yaml.safe_load(proc.stdout)["spec"]["groups"]}


def prometheus_config(targets: dict[str, tuple[int, dict[str, str]]]) -> dict[str, Any]:
    """Scrape each component as the chart's ServiceMonitor and PodMonitor label it (component, and a worker's
    namespace and pod)."""
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [
            {
                "job_name": component,
                "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": {"component": component, **labels}}],
            }
            for component, (port, labels) in targets.items()
        ],
    }


def query(port: int, expr: str) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            result: dict[str, Any] = json.loads(answer.read())
    except urllib.error.HTTPError as error:  # 400/422: the expression does not parse or evaluate
        result = json.loads(error.read())
    return result


def rules_of(port: int) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10) as answer:
        groups = json.loads(answer.read())["data"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    return [
        target["expr"].replace("$__rate_interval", RATE_INTERVAL)
        for panel in DASHBOARD["panels"]
        for target in panel["targets"]
    ]


def a_job(name: str, pool: str) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.TRAINING_JOB,
        "metadata": {"name": name},
        "spec": {
            "pool": pool,
            "workload": {"image": "registry.invalid/strata/workloads:test"},
            "parallelism": {"data": 1, "tensor": 8, "pipeline": 1},
            "training": {"globalBatchSize": 8, "steps": 1000},
            "resources": {"gpus": 8, "gpusPerWorker": 8, "gpuType": "Any"},  # admission asks the extender
        },
    }


def test_prometheus_scrapes_strata_and_every_dashboard_query_and_alert_evaluates(
    cluster: ClusterHandle, namespace: str, tmp_path: Path, processes: Processes
) -> None:
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    for crd in ("trainingjobs.strata.dev", "resourcepools.strata.dev"):
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{crd}")
    extender = ExtenderService(
        Settings(
            port=free_port(),
            kubeconfig=str(cluster.kubeconfig),
            store=tmp_path / "demand.sqlite",
            record_interval_s=1,
            forecast_interval_s=2,
            history_days=1,
        ),
        load_catalog(DEFAULT_CATALOG),
    )
    extender.start()
    custom = client.CustomObjectsApi(cluster.api_client())
    pool = f"metrics-{namespace[-6:]}"
    body = {"apiVersion": api.API_VERSION, "kind": api.RESOURCE_POOL, "metadata": {"name": pool}}
    custom.create_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, {**body, "spec": {"maxGPUs": 8}})
    try:
        eventually(lambda: extender.state.ready, 60, "the extender's cache to sync")
        ports = {name: free_port() for name in ("operator", "worker", "prometheus")}
        processes.start(
            "operator",
            [
                sys.executable, "-m", "strata_operator", "--standalone", f"--namespaces={namespace}",
                f"--metrics-port={ports['operator']}", "--scheduler-name=default-scheduler",
                f"--extender-url={extender.url}", "--admission-interval-s=0.5", "--resync-interval-s=1",
                "--backoff-base-s=1", "--backoff-max-s=2",
            ],
            {"KUBECONFIG": str(cluster.kubeconfig), "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        processes.start(
            "worker",
            [sys.executable, "-m", "strata_workloads.train"],
            {
                "STRATA_MODEL": "debug", "STRATA_STEPS": "1000000", "STRATA_GLOBAL_BATCH": "4",
                "STRATA_MICRO_BATCH": "2", "STRATA_SEQ_LEN": "32", "STRATA_DATA_MAX_DOCS": "60",
                "STRATA_DATA_SHARDS": "8", "STRATA_LOG_FORMAT": "json", "STRATA_METRICS_PORT": str(ports["worker"]),
                "WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
            },
        )  # fmt: skip
        (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rendered_rules(cluster)))
        targets = {
            "strata-operator": (ports["operator"], {}),
            "strata-extender": (extender.settings.port, {}),
            "strata-worker": (ports["worker"], {"namespace": namespace, "pod": "trainer-0"}),
        }
        (tmp_path / "prometheus.yaml").write_text(yaml.safe_dump(prometheus_config(targets)))
        processes.start(
            "prometheus",
            [
                str(binaries.ensure_tool("prometheus")), f"--config.file={tmp_path / 'prometheus.yaml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                "--log.level=warn",
            ],
        )  # fmt: skip

        # one job admitted (it fills the pool's quota), one queued behind it
        for name in ("admitted", "queued"):
            custom.create_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.TRAINING_JOBS, a_job(name, pool)
            )
        core = cluster.core()

        def running_workers() -> list[str] | None:
            pods = core.list_namespaced_pod(namespace, label_selector=f"{api.LABEL_JOB}=admitted").items
            names = [p.metadata.name for p in pods if p.status.phase == "Running"]
            return names or None

        # its worker fails: the operator restarts the gang (strata_trainingjob_restarts_total)
        annotate_pods(core, namespace, eventually(running_workers, 120, "the admitted job's worker to run"),
                      {EXIT_CODE_ANNOTATION: str(ExitCode.ERROR)})  # fmt: skip

        def empty_queries() -> list[str]:
            processes.check_alive()
            empty = []
            for expr in dashboard_queries():
                answer = query(ports["prometheus"], expr)
                assert answer["status"] == "success", f"{expr}: {answer}"
                if not answer["data"]["result"]:
                    empty.append(expr)
            return empty

        deadline = time.monotonic() + 240
        while (empty := empty_queries()) and time.monotonic() < deadline:
            time.sleep(2)
        assert empty == [], "dashboard queries without series"

        # every alert rule has been evaluated, without an error
        def evaluated() -> list[dict[str, Any]] | None:
            found = rules_of(ports["prometheus"])
            return found if all(r["lastEvaluation"] > "2000" for r in found) else None

        alerts = eventually(evaluated, 30, "Prometheus to evaluate every rule")
        assert {r["name"] for r in alerts} == {
            "StrataJobQueuedTooLong",
            "StrataJobsRestarting",
            "StrataComponentRestarting",
            "StrataExtenderErrors",
            "StrataExtenderBadRequests",
            "StrataForecastStale",
        }
        assert [(r["name"], r.get("lastError")) for r in alerts if r["health"] != "ok"] == []
        for rule in alerts:  # and each reads series that exist: its expression without the threshold returns some
            left = rule["query"].rsplit(">", 1)[0]
            assert query(ports["prometheus"], left)["data"]["result"], f"{rule['name']}: {left} has no series"
    finally:
        custom.delete_cluster_custom_object(api.GROUP, api.VERSION, api.RESOURCE_POOLS, pool)
        extender.stop()
