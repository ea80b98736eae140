"""A pool's ``onDemandMaxDurationSeconds`` on the real control plane: a job expected to run longer than the line
waits for spot or reserved GPUs while an on-demand node stands free, and a shorter job takes that node.

The default fleet has no on-demand GPU node, so the test turns one of the two H100 spot nodes into an on-demand
one for its duration (the ``on_demand_node`` fixture).
"""

from __future__ import annotations

from typing import Any

from cluster_support import eventually
from operator_harness import OperatorProcess, Strata
from operator_manifests import a_job


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
