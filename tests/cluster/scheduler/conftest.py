"""The extender in-process against the session's cluster, a second real kube-scheduler that calls it, and
per-test GPU nodes so tests never compete with each other (or with other suites) for the shared fleet.

Pods come from the unit tests' builders (``scheduler_builders``); :class:`scheduler_cluster.TestFleet` adds what
a real cluster needs: an image, tolerations for the GPU and spot taints, and a node selector that keeps them on
the test's own nodes.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The suite imports with --import-mode=importlib, which leaves sys.path alone: put this folder (helpers) and
# the unit tests' builder folder on it. Both module names are unique to the scheduler's tests.
for folder in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[2] / "unit" / "scheduler"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from cluster_support import ClusterHandle, running_extender  # noqa: E402
from scheduler_cluster import TEST_FLEET_LABEL, TestFleet  # noqa: E402

from strata_scheduler.service import ExtenderService  # noqa: E402


@pytest.fixture(scope="module")
def extender(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtenderService]:
    """The extender with a live watch cache; forecasts are published by the tests that need them."""
    with running_extender(cluster.kubeconfig, tmp_path_factory.mktemp("extender") / "demand.sqlite") as service:
        yield service


@pytest.fixture(scope="module")
def strata_scheduler(
    cluster: ClusterHandle, extender: ExtenderService, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A second kube-scheduler running the shipped strata-scheduler profile, pointed at the extender."""
    from strata_dev.stack import run_strata_scheduler

    log = tmp_path_factory.mktemp("strata-kube-scheduler") / "kube-scheduler.log"
    process = run_strata_scheduler(cluster.bin_dir, cluster.kubeconfig, extender.url, log)
    try:
        yield log
    finally:
        process.terminate()
        try:
            process.wait(10)
        except Exception:
            process.kill()
            process.wait(10)


@pytest.fixture
def test_fleet(cluster: ClusterHandle) -> Iterator[Callable[..., TestFleet]]:
    """``test_fleet(("h100", "reserved", "us-east-1a"), ...)``: one node per tuple, Ready, removed afterwards."""
    from strata_api import CapacityType
    from strata_api.fleet import FleetPool
    from strata_dev.fleet import node_manifest, wait_nodes_ready

    core = cluster.core()
    made: list[str] = []

    def make(*specs: tuple[str, str, str]) -> TestFleet:
        fleet_id = secrets.token_hex(3)
        names = []
        for index, (gpu, capacity, zone) in enumerate(specs):
            pool = FleetPool(f"t{fleet_id}-{gpu.lower()}-{capacity}", gpu, CapacityType(capacity), 1, zone)
            manifest = node_manifest(pool, index)
            manifest["metadata"]["labels"][TEST_FLEET_LABEL] = fleet_id
            core.create_node(manifest)
            names.append(manifest["metadata"]["name"])
            made.append(manifest["metadata"]["name"])
        wait_nodes_ready(core, names, 60)
        return TestFleet(fleet_id, names)

    yield make
    for name in made:
        core.delete_node(name)
