"""Fixtures for the operator on the real local control plane: the CRDs and the chart's worker policy installed
once, the operator as a real process (``python -m strata_operator``) per test, and a small client for TrainingJobs
and pools.

The operator runs with ``--scheduler-name default-scheduler`` (a documented setting: no Strata scheduler profile
runs in these tests) and short backoffs so restarts are quick to observe.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ClusterHandle, running_extender

for folder in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[2] / "unit" / "operator"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from operator_harness import OperatorProcess, Strata  # noqa: E402  (needs the folder on sys.path)

import strata_api as api  # noqa: E402
from strata_dev.stack import apply_worker_policy  # noqa: E402
from strata_scheduler.service import ExtenderService  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
CRD_NAMES = ("trainingjobs.strata.dev", "resourcepools.strata.dev", "clusterkopfpeerings.kopf.dev")


@pytest.fixture(scope="session")
def crds(cluster: ClusterHandle) -> ClusterHandle:
    cluster.kubectl("apply", "-f", str(ROOT / "crds"))
    for name in CRD_NAMES:
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    apply_worker_policy(cluster.bin_dir, cluster.kubeconfig)  # as the chart and the dev stack install it
    return cluster


@pytest.fixture
def operator(crds: ClusterHandle, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    process = OperatorProcess(crds, tmp_path, (namespace,), "--standalone").start()
    yield process
    process.stop()


@pytest.fixture
def strata(crds: ClusterHandle, namespace: str) -> Iterator[Strata]:
    helper = Strata(crds, namespace)
    yield helper
    helper.cleanup()


@pytest.fixture
def on_demand_node(strata: Strata) -> Iterator[tuple[str, str]]:
    """(the H100 spot node left as it is, the H100 spot node made on-demand for the test): the default fleet has no
    on-demand GPU node, so one of the two H100 spot nodes gets the on-demand capacity-type label and loses its spot
    taint for the test's duration, and is put back after."""
    spot = sorted(
        n.metadata.name
        for n in strata.core.list_node().items
        if api.gpu_type_of(n.metadata.labels) is api.GPUType.H100
        and n.metadata.labels.get(api.NODE_CAPACITY_TYPE) == api.CapacityType.SPOT
    )
    assert len(spot) >= 2, spot
    kept, changed = spot[0], spot[1]
    taints = strata.core.read_node(changed).spec.taints or []
    strata.core.patch_node(
        changed,
        {
            "metadata": {"labels": {api.NODE_CAPACITY_TYPE: api.CapacityType.ON_DEMAND.value}},
            "spec": {"taints": [t for t in _plain(strata, taints) if t["key"] != api.NODE_CAPACITY_TYPE] or None},
        },
    )
    try:
        yield kept, changed
    finally:
        strata.core.patch_node(
            changed,
            {
                "metadata": {"labels": {api.NODE_CAPACITY_TYPE: api.CapacityType.SPOT.value}},
                "spec": {"taints": _plain(strata, taints) or None},
            },
        )


def _plain(strata: Strata, taints: list[Any]) -> list[dict[str, Any]]:
    return [strata.api_client.sanitize_for_serialization(t) for t in taints]


@pytest.fixture(scope="module")
def extender_and_scheduler(crds: ClusterHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtenderService]:
    """The extender in this process and the shipped strata-scheduler kube-scheduler calling it."""
    from strata_dev.stack import run_strata_scheduler

    folder = tmp_path_factory.mktemp("strata-kube-scheduler")
    with running_extender(crds.kubeconfig, folder / "demand.sqlite") as extender:
        process = run_strata_scheduler(crds.bin_dir, crds.kubeconfig, extender.url, folder / "kube-scheduler.log")
        try:
            yield extender
        finally:
            process.terminate()
            process.wait(15)
