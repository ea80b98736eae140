"""The simulated GPU fleet: node pools from a fleet file become kwok nodes with real clusters' labels.

A fleet file lists pools (GPU type, capacity type, node count, zone). Each node carries what the NVIDIA GPU
operator, AMD's node labeller, Karpenter and the cloud provider put on real nodes: GPU product, instance
type, capacity type, zone, 8 allocatable GPUs, CPU and memory. GPU nodes are tainted for their vendor's
resource and spot nodes with ``karpenter.sh/capacity-type=spot:NoSchedule``, so only pods that tolerate a
reclaim land there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import strata_api as api
from strata_api.fleet import FleetError, FleetPool, read_fleet
from strata_dev.cluster import ClusterSettings, LocalCluster, core_api
from strata_dev.paths import EXAMPLES

DEFAULT_FLEET = EXAMPLES / "fleet.yaml"


DEFAULT_ZONE = "zone-a"
"""The zone of a pool's nodes where the fleet file names none."""


@dataclass(frozen=True)
class Fleet:
    """The simulated node pools of a fleet file (:func:`load_fleet`)."""

    pools: tuple[FleetPool, ...]

    @property
    def size(self) -> int:
        return sum(p.nodes for p in self.pools)

    def scaled(self, total_nodes: int) -> Fleet:
        """The same pools in proportion, ``total_nodes`` in all (each pool keeps at least one node)."""
        if total_nodes < len(self.pools):
            raise FleetError(f"--nodes {total_nodes}: the fleet has {len(self.pools)} pools, so at least that many")
        shares = [max(1, math.floor(total_nodes * p.nodes / self.size)) for p in self.pools]
        shares[0] += total_nodes - sum(shares)  # rounding remainder goes to the first pool
        return Fleet(tuple(replace(p, nodes=n) for p, n in zip(self.pools, shares, strict=True)))


def load_fleet(path: Path = DEFAULT_FLEET) -> Fleet:
    """The pools of a fleet file (:func:`strata_api.fleet.read_fleet`: errors name the pool and the field)."""
    pools = read_fleet(path)
    if not pools:
        raise FleetError(f"{path}: the list of pools is empty")
    return Fleet(pools)


def node_manifest(pool: FleetPool, index: int) -> dict[str, Any]:
    """Node ``index`` of ``pool`` as kwok should run it (kwok manages only nodes annotated ``fake``)."""
    machine = pool.machine
    zone = pool.zone or DEFAULT_ZONE
    name = f"{pool.name}-{index:04d}"
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        api.NODE_INSTANCE_TYPE: machine.instance_type,
        api.NODE_ZONE: zone,
        "topology.kubernetes.io/region": zone[:-1],
        api.NODE_CAPACITY_TYPE: pool.capacity_type.value,
        "strata.dev/fleet-pool": pool.name,
    }
    taints = []
    resources = {"cpu": machine.cpu, "memory": machine.memory, "pods": "110", "ephemeral-storage": "1Ti"}
    if machine.gpu is not None and machine.product_label is not None:
        key, product = machine.product_label
        labels[key] = product
        resources[machine.gpu.resource] = str(machine.gpus)
        taints.append({"key": machine.gpu.resource, "value": "present", "effect": "NoSchedule"})
    if pool.capacity_type is api.CapacityType.SPOT:
        taints.append({"key": api.TAINT_SPOT, "value": "spot", "effect": "NoSchedule"})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": taints},
        "status": {"allocatable": resources, "capacity": resources},
    }


def node_manifests(fleet: Fleet) -> list[dict[str, Any]]:
    return [node_manifest(pool, i) for pool in fleet.pools for i in range(pool.nodes)]


def start_cluster_with_fleet(settings: ClusterSettings, fleet: Fleet) -> LocalCluster:
    """A local cluster with ``fleet``'s nodes Ready, saying how long each part took (``make demo`` and ``make up``)."""
    cluster = LocalCluster(settings).start()
    print(f"control plane up in {cluster.started_s:.1f}s", flush=True)
    took = create_fleet(core_api(cluster.kubeconfig), fleet)
    print(f"fleet: {fleet.size} kwok nodes Ready in {took:.1f}s", flush=True)
    return cluster


def create_fleet(core: Any, fleet: Fleet, wait_ready_s: float = 180.0, workers: int = 16) -> float:
    """Create every node through ``core`` (a kubernetes CoreV1Api) and wait until kwok marks them Ready.

    Returns the seconds it took. Existing nodes of the same name are left as they are.
    """
    from kubernetes.client.exceptions import ApiException

    begin = time.monotonic()
    manifests = node_manifests(fleet)
    # the client keeps 4 connections by default: more threads than that would only queue for one
    core.api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] = workers

    def create(manifest: dict[str, Any]) -> None:
        try:
            core.create_node(manifest)
        except ApiException as err:
            if err.status != 409:
                raise

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(create, manifests))
    wait_nodes_ready(core, {m["metadata"]["name"] for m in manifests}, wait_ready_s)
    return time.monotonic() - begin


def wait_nodes_ready(core: Any, names: Iterable[str], timeout_s: float) -> None:
    wanted = set(names)
    deadline = time.monotonic() + timeout_s
    while True:
        # resource_version="0" is served from the API server's watch cache, not a quorum read of etcd
        ready = {n.metadata.name for n in core.list_node(resource_version="0").items if _is_ready(n)}
        missing = wanted - ready
        if not missing:
            return
        if time.monotonic() > deadline:
            raise FleetError(f"{len(missing)} nodes not Ready after {timeout_s:.0f}s (e.g. {sorted(missing)[:3]})")
        time.sleep(0.5)


def create_namespace(core: Any, name: str, labels: dict[str, str] | None = None, timeout_s: float = 60) -> str:
    """Create a namespace and wait for its default ServiceAccount: pods are refused until the controller
    manager has made it."""
    from kubernetes.client.exceptions import ApiException

    core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            return name
        except ApiException as err:
            if err.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _is_ready(node: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))
