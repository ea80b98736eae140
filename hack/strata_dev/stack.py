"""Strata's own components on a cluster, as local processes: the CRDs, the chart's admission policy for workers'
progress reports, the scheduler extender, a kube-scheduler with the shipped ``strata-scheduler`` profile calling
it, and the operator. ``make demo`` uses this; so can a
developer against ``make up``'s cluster.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from strata_dev.binaries import KUBERNETES_VERSION
from strata_dev.cluster import ClusterError, free_port, kubectl, run_kube_scheduler, spawn, terminate
from strata_dev.paths import CRDS, REPO, SCHEDULER_CONFIG

WORKER_POLICY = "templates/worker-policy.yaml"
"""The chart's ValidatingAdmissionPolicy (and binding) that keeps each worker's token to its own pod's progress
annotation; the operator's worker ServiceAccount relies on it (``strata_operator.core.pods.WORKER_SERVICE_ACCOUNT``)."""


class Stack:
    """Strata on one cluster: start with :meth:`start`, end with :meth:`stop` (also a context manager). Logs go to
    ``workdir``."""

    def __init__(self, bin_dir: Path, kubeconfig: Path, workdir: Path, operator_args: Sequence[str] = ()) -> None:
        self.bin_dir = bin_dir
        self.kubeconfig = kubeconfig
        self.workdir = workdir
        self.operator_args = list(operator_args)
        """Flags of the operator's beyond the stack's own (``python -m strata_operator --help``)."""
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.extender_url = ""

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            kubectl(self.bin_dir, self.kubeconfig, "apply", "--server-side", "-f", str(CRDS))
            kubectl(
                self.bin_dir, self.kubeconfig, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"
            )
            apply_worker_policy(self.bin_dir, self.kubeconfig)
            self._start_extender()
            self._start_scheduler()
            self._start_operator()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            terminate(process)
        self.processes.clear()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PYTHONUNBUFFERED": "1"}
        process = spawn(args, self.workdir / f"{name}.log", env=env)
        self.processes[name] = process
        return process

    def _start_extender(self) -> None:
        port = free_port()
        self.extender_url = f"http://127.0.0.1:{port}"
        process = self._spawn(
            "extender",
            [sys.executable, "-m", "strata_scheduler", f"--kubeconfig={self.kubeconfig}", f"--port={port}",
             f"--store={self.workdir / 'demand.sqlite'}"],
        )  # fmt: skip
        self._wait("extender", process, lambda: _status(f"{self.extender_url}/readyz") == 200)

    def _start_scheduler(self) -> None:
        self.processes["strata-kube-scheduler"] = run_strata_scheduler(
            self.bin_dir, self.kubeconfig, self.extender_url, self.workdir / "strata-kube-scheduler.log"
        )

    def _start_operator(self) -> None:
        args = [sys.executable, "-m", "strata_operator", "--standalone", "--metrics-port=0", *self.operator_args]
        process = self._spawn("operator", args)
        time.sleep(1.0)
        if process.poll() is not None:
            raise ClusterError(f"the operator exited at start; log: {self.workdir / 'operator.log'}")

    def _wait(
        self, name: str, process: subprocess.Popen[bytes], probe: Callable[[], bool], timeout_s: float = 90
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not probe():
            if process.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"{name} did not become ready; log: {self.workdir / (name + '.log')}")
            time.sleep(0.2)


def apply_worker_policy(bin_dir: Path, kubeconfig: Path) -> None:
    """Install the chart's worker policy as ``helm install`` would (release ``strata``), from the chart itself."""
    helm = [str(bin_dir / "helm"), "template", "strata", str(REPO / "charts" / "strata"),
            "--kube-version", KUBERNETES_VERSION, "--show-only", WORKER_POLICY]  # fmt: skip
    rendered = subprocess.run(helm, capture_output=True, text=True, timeout=60, check=False)
    if rendered.returncode != 0:
        raise ClusterError(f"helm template --show-only {WORKER_POLICY} failed: {rendered.stderr.strip()}")
    kubectl(bin_dir, kubeconfig, "apply", "--server-side", "-f", "-", input=rendered.stdout)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def run_strata_scheduler(bin_dir: Path, kubeconfig: Path, extender_url: str, log: Path) -> subprocess.Popen[bytes]:
    """A kube-scheduler running the shipped ``strata-scheduler`` profile (:data:`SCHEDULER_CONFIG`) with its
    extender at ``extender_url``; its configuration is written beside ``log``. The caller stops it."""
    config = yaml.safe_load(SCHEDULER_CONFIG.read_text())
    config["extenders"][0]["urlPrefix"] = extender_url
    path = log.with_name(f"{log.stem}.yaml")
    path.write_text(yaml.safe_dump(config))
    return run_kube_scheduler(bin_dir, kubeconfig, path, log)
