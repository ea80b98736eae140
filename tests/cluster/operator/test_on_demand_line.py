"""A pool's ``onDemandMaxDurationSeconds`` on the real control plane: a job expected to run longer than the line
waits for spot or reserved GPUs while an on-demand node stands free, and a shorter job takes that node.

The default fleet has no on-demand GPU node, so the test turns one of the two H100 spot nodes into an on-demand
one (its capacity-type label and its spot taint) for its duration and puts it back after.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from cluster_support import eventually
from operator_harness import OperatorProcess, Strata
from operator_manifests import a_job

import strata_api as api


@pytest.fixture
def on_demand_node(strata: Strata) -> Iterator[tuple[str, str]]:
    """(the H100 spot node left as it is, the H100 spot node made on-demand for the test)."""
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


def test_a_job_expected_past_the_line_waits_for_spot_while_a_short_one_takes_on_demand(
    operator: OperatorProcess, strata: Strata, on_demand_node: tuple[str, str]
) -> None:
    spot, on_demand = on_demand_node
    pool = strata.pool("line", gpuTypes=["H100"], capacityTypes=["spot", "on-demand"], onDemandMaxDurationSeconds=3600)

    def job(name: str, expected_s: int) -> dict[str, Any]:
        return a_job(name, pool, data=1, scheduling={"expectedDurationSeconds": expected_s})

    strata.submit(job("first-long", 7200))
    strata.wait_phase("first-long", "Running")
    [pod] = strata.live_pods("first-long")
    assert pod.spec.node_name == spot
    required = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution
    assert required.node_selector_terms[0].match_expressions[0].values == ["spot"]

    strata.submit(job("second-long", 7200))  # only the on-demand node is free: it waits
    eventually(lambda: strata.status("second-long").get("reason") == "WaitingForGPUs", 30, "WaitingForGPUs")
    assert strata.pods("second-long") == []

    strata.submit(job("short", 600))  # ends long before the spot node frees: it takes the on-demand node
    strata.wait_phase("short", "Running")
    assert [p.spec.node_name for p in strata.live_pods("short")] == [on_demand]
    assert strata.status("second-long")["phase"] == "Queued"
    assert strata.pods("second-long") == []

    strata.exit_workers("first-long", 0)  # the spot node frees: the long job takes it, not on-demand
    strata.wait_phase("second-long", "Running", timeout_s=90)
    assert [p.spec.node_name for p in strata.live_pods("second-long")] == [spot]
