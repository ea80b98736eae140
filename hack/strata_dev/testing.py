"""Helpers for tests on a cluster: a handle that works for the local cluster and for KUBECONFIG's, and polling."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class ClusterHandle:
    """What a test needs of a cluster, whichever kind it is."""

    kubeconfig: Path
    bin_dir: Path
    local: Any  # strata_dev.cluster.LocalCluster, or None on an existing cluster
    fleet: Any  # strata_dev.fleet.Fleet

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(str(self.kubeconfig))

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client())

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout


def eventually(probe: Callable[[], T | None], timeout_s: float = 60, what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.2)
