"""Shared fixtures: the tier marker of each test comes from its folder, and the cluster fixtures.

`cluster` starts the real local control plane once per session (etcd, kube-apiserver, controller manager,
kube-scheduler, kwok with the default GPU fleet). With STRATA_USE_EXISTING_CLUSTER=1 it uses the cluster that
KUBECONFIG points to instead (envtest's convention) and runs kwok locally against it for the fake GPU nodes.

The suite imports with ``--import-mode=importlib``, which leaves ``sys.path`` alone, so the test-support folder
(``tests/support``: ``cluster_support``) is put on it here, before any test module is imported.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SUPPORT = str(Path(__file__).resolve().parent / "support")
if SUPPORT not in sys.path:
    sys.path.insert(0, SUPPORT)

from cluster_support import ClusterHandle  # noqa: E402

TIERS = ("unit", "cluster", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for tier in TIERS:
            if tier in parts and not item.get_closest_marker(tier):
                item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    from strata_dev import binaries
    from strata_dev.cluster import ClusterSettings, LocalCluster, run_kwok
    from strata_dev.fleet import create_fleet, load_fleet

    fleet = load_fleet()
    bin_dir = binaries.ensure(quiet=True)
    if os.environ.get("STRATA_USE_EXISTING_CLUSTER") == "1":
        kubeconfig = Path(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]).expanduser()
        log = tmp_path_factory.mktemp("kwok") / "kwok.log"
        kwok = run_kwok(bin_dir, kubeconfig, log)
        try:
            handle = ClusterHandle(kubeconfig, bin_dir)
            create_fleet(handle.core(), fleet)
            yield handle
        finally:
            kwok.terminate()
            kwok.wait(10)
        return
    keep = os.environ.get("STRATA_KEEP_CLUSTER_LOGS") == "1"
    with LocalCluster(ClusterSettings(keep_workdir=keep), bin_dir=bin_dir) as local:
        handle = ClusterHandle(local.kubeconfig, bin_dir)
        create_fleet(handle.core(), fleet)
        yield handle


@pytest.fixture
def namespace(cluster: ClusterHandle, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    from kubernetes.client.exceptions import ApiException

    from strata_dev.fleet import create_namespace

    core = cluster.core()
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{base}-{secrets.token_hex(3)}"
    create_namespace(core, name, {"strata.dev/test": "true"})
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as err:
        if err.status != 404:
            raise
