"""Test support for the cluster tiers: a handle that works for the local cluster and for KUBECONFIG's, polling,
a ServiceAccount's kubeconfig, and the extender in-process.

Tests import it as ``cluster_support``: ``tests/conftest.py`` puts this folder on ``sys.path`` (the suite runs with
``--import-mode=importlib``, which leaves it alone), and no other test folder has a module of that name.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from strata_scheduler.service import ExtenderService

T = TypeVar("T")


@dataclass
class ClusterHandle:
    """What a test needs of a cluster, whichever kind it is."""

    kubeconfig: Path
    bin_dir: Path

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(str(self.kubeconfig))

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api_client())

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        from strata_dev.cluster import kubectl

        return kubectl(self.bin_dir, self.kubeconfig, *args, check=check, input=input)


CHART = Path(__file__).resolve().parents[2] / "charts" / "strata"


def helm(handle: ClusterHandle, *args: str, timeout_s: float = 300) -> str:
    """Run the pinned helm against the handle's cluster; fail with helm's own message."""
    proc = subprocess.run(
        [str(handle.bin_dir / "helm"), f"--kubeconfig={handle.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert proc.returncode == 0, f"helm {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def service_account_kubeconfig(handle: ClusterHandle, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig that acts as ServiceAccount ``namespace/name`` (a bound token from the TokenRequest API),
    for running a component with exactly the rights a chart or manifest grants it."""
    import yaml

    token = (
        handle.core()
        .create_namespaced_service_account_token(name, namespace, {"spec": {"expirationSeconds": 3600}})
        .status.token
    )
    admin = yaml.safe_load(handle.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": name, "user": {"token": token}}],
                "contexts": [{"name": name, "context": {"cluster": cluster["name"], "user": name}}],
                "current-context": name,
            }
        )
    )
    path.chmod(0o600)
    return path


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


@contextlib.contextmanager
def running_extender(kubeconfig: Path, store: Path) -> Iterator[ExtenderService]:
    """The scheduler extender in this process on a free port, watching ``kubeconfig``'s cluster, with the shipped
    catalog and no background recording or forecasting (tests publish forecasts themselves); yielded once its
    watch cache has synced, stopped on exit."""
    from strata_api.catalog import DEFAULT_CATALOG, load_catalog
    from strata_dev.cluster import free_port
    from strata_scheduler.service import ExtenderService, Parts
    from strata_scheduler.settings import Settings

    settings = Settings(port=free_port(), kubeconfig=str(kubeconfig), store=store)
    service = ExtenderService(settings, load_catalog(DEFAULT_CATALOG), Parts(record=False, forecast=False)).start()
    try:
        eventually(lambda: service.state.ready, 60, "the extender's watch cache to sync")
        yield service
    finally:
        service.stop()
