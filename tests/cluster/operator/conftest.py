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

import pytest
from cluster_support import ClusterHandle

for folder in (Path(__file__).resolve().parent, Path(__file__).resolve().parents[2] / "unit" / "operator"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from operator_harness import OperatorProcess, Strata  # noqa: E402  (needs the folder on sys.path)

from strata_dev.stack import apply_worker_policy  # noqa: E402

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
