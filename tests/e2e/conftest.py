"""The end-to-end tier: Strata installed by its Helm chart, every component and every worker a real container.

Locally, the session starts the local control plane with its real node (kubelet, containerd, runc, CNI,
kube-proxy, CoreDNS) and no kwok fleet, imports the four images that `make images` built, and installs the chart
with them: the operator, the extender and the strata-scheduler kube-scheduler run on the real node, and so do the
jobs' workers. With STRATA_USE_EXISTING_CLUSTER=1 it uses the cluster KUBECONFIG points to, where Strata is
already installed (.github/workflows/e2e.yaml: kind, `kind load docker-image`, `helm install`), and needs
STRATA_E2E_WORKLOADS_IMAGE, the workers' image on that cluster's nodes. The tier never skips: a missing
prerequisite fails the session naming it.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import CHART, helm
from e2e_support import Strata, install_values, wait_for_release

RELEASE_ENV, NAMESPACE_ENV, WORKLOADS_IMAGE_ENV = (
    "STRATA_E2E_RELEASE",
    "STRATA_E2E_NAMESPACE",
    "STRATA_E2E_WORKLOADS_IMAGE",
)


@pytest.fixture(scope="session")
def strata(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Strata]:
    from cluster_support import ClusterHandle

    from strata_dev import binaries

    bin_dir = binaries.ensure(quiet=True)
    release = os.environ.get(RELEASE_ENV, "strata")
    namespace = os.environ.get(NAMESPACE_ENV, "strata-system")
    if os.environ.get("STRATA_USE_EXISTING_CLUSTER") == "1":
        workloads_image = os.environ.get(WORKLOADS_IMAGE_ENV)
        if not workloads_image:
            pytest.fail(f"{WORKLOADS_IMAGE_ENV} must name the workers' image on the cluster's nodes", pytrace=False)
        kubeconfig = Path(os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]).expanduser()
        handle = ClusterHandle(kubeconfig, bin_dir)
        installed = Strata(handle, release, namespace, workloads_image, node_selector={}, volumes_dir=None)
        wait_for_release(installed)
        yield installed
        return

    from strata_dev import images
    from strata_dev.cluster import ClusterSettings, LocalCluster
    from strata_dev.node_config import REAL_NODE_LABEL

    built = {b.name: b for b in images.ensure()}
    keep = os.environ.get("STRATA_KEEP_CLUSTER_LOGS") == "1"
    with LocalCluster(ClusterSettings(real_node=True, keep_workdir=keep), bin_dir=bin_dir) as local:
        local.load_images(*(b.archive for b in built.values()))
        on_real_node = {REAL_NODE_LABEL: "true"}
        handle = ClusterHandle(local.kubeconfig, bin_dir)
        values = install_values({name: b.ref for name, b in built.items()}, on_real_node)
        helm(handle, "install", release, str(CHART), "-n", namespace, "--create-namespace", *values)
        volumes = tmp_path_factory.mktemp("volumes")
        volumes.chmod(0o777)  # the workers run as a non-root user; a hostPath volume keeps the folder's mode
        installed = Strata(handle, release, namespace, built["workloads"].ref, on_real_node, volumes)
        wait_for_release(installed)
        yield installed


@pytest.fixture(scope="session")
def gpu_node(strata: Strata, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One simulated H100 node (kwok: a Node object, no kubelet) beside the real ones, for placement through the
    extender: kube-scheduler calls the extender only for pods that request GPUs. On an existing cluster kwok runs
    here against it (it manages only the nodes it made, annotated as kwok's)."""
    from strata_api import CapacityType
    from strata_api.fleet import FleetPool
    from strata_dev.cluster import run_kwok
    from strata_dev.fleet import Fleet, create_fleet, node_manifest

    kwok = None
    if os.environ.get("STRATA_USE_EXISTING_CLUSTER") == "1":
        log = tmp_path_factory.mktemp("kwok") / "kwok.log"
        kwok = run_kwok(strata.handle.bin_dir, strata.handle.kubeconfig, log)
    pool = FleetPool("e2e-h100", "H100", CapacityType.RESERVED, 1, "us-east-1a")
    try:
        create_fleet(strata.handle.core(), Fleet((pool,)))
        yield node_manifest(pool, 0)["metadata"]["name"]
    finally:
        if kwok is not None:
            kwok.terminate()
            kwok.wait(10)


@pytest.fixture
def namespace(strata: Strata, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting)."""
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"{base}-{secrets.token_hex(3)}"
    strata.handle.kubectl("create", "namespace", name)
    yield name
    strata.handle.kubectl("delete", "namespace", name, "--wait=false", check=False)
