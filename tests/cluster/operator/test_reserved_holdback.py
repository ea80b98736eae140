"""Admission and the scheduler extender agree on what is placeable, reserved hold-back included (issue 18).

The real extender holds every reserved MI300X GPU for forecast high-priority demand; one spot MI300X node is full.
A low-priority pool's 2-worker MI300X gang (spot or reserved) fits only with a worker on a reserved node, which the
extender refuses a low-priority pod: admission that did not know the hold admitted it, one worker ran on spot, the
other stayed Pending until the gang was requeued (WorkerUnschedulable, 30 s) and admitted the same way again. Here
the operator reads the extender's ``GET /holdback``: the job stays Queued saying which GPUs are held and why,
is never admitted onto them (no pod, no requeue, past the 30 s grace), and once the spot node frees up it is
placed whole on spot by the real kube-scheduler running the shipped strata-scheduler profile. The second test
first shows the issue itself with an operator that does not read the hold (half placed, the extender's refusal,
the requeue), then an operator that reads it: the requeued gang waits with the reason and is not admitted again.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cluster_support import ClusterHandle, eventually
from operator_harness import OperatorProcess, Strata, cleaned_up_then_stopped
from operator_manifests import a_job

import strata_api as api
from strata_operator.core import lifecycle
from strata_operator.core.admission import Reason
from strata_scheduler.forecast_board import HIGH, Forecast
from strata_scheduler.service import ExtenderService


@pytest.fixture
def held_extender(extender_and_scheduler: ExtenderService) -> Iterator[ExtenderService]:
    """The extender with high-priority MI300X demand forecast above every reserved MI300X GPU there is."""
    board = extender_and_scheduler.board
    forecast = Forecast("MI300X", HIGH, datetime.now(UTC), 15, 1e4, 1e4, 1e4, 0.8, "test")
    board.publish({("MI300X", HIGH): forecast})
    yield extender_and_scheduler
    board.publish({})


def blocker(node: str) -> dict[str, Any]:
    """Someone else's pod holding all 8 GPUs of ``node``."""
    limits = {api.AMD_GPU: "8"}
    container = {"name": "c", "image": "registry.invalid/other:1", "resources": {"limits": limits, "requests": limits}}
    spec = {"nodeName": node, "containers": [container], "tolerations": [{"operator": "Exists"}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "spot-blocker"}, "spec": spec}


def fill_one_spot_node(strata: Strata, extender: ExtenderService) -> list[str]:
    """Put someone else's pod on the second spot MI300X node; the two spot nodes' names."""
    selector = f"{api.AMD_PRODUCT},{api.NODE_CAPACITY_TYPE}=spot"
    spot = sorted(n.metadata.name for n in strata.core.list_node(label_selector=selector).items)
    assert len(spot) == 2
    strata.core.create_namespaced_pod(strata.namespace, blocker(spot[1]))
    eventually(lambda: extender.state.used_gpus.get(spot[1]), 30, "the extender to see the spot node full")
    with urllib.request.urlopen(f"{extender.url}/holdback", timeout=10) as response:
        assert json.loads(response.read())["gpuTypes"]["MI300X"]["keepFree"] == 16  # both reserved MI300X nodes'
    return spot


def submit_batch_gang(strata: Strata) -> None:
    """A priority-10 pool's 2-worker MI300X gang that may use spot or reserved nodes."""
    pool = strata.pool("batch", priority=10, gpuTypes=["MI300X"], capacityTypes=["spot", "reserved"], maxGPUs=16)
    either = {"capacityTypes": ["spot", "reserved"]}
    strata.submit(a_job("held", pool, data=2, tensor=8, gpu_type="MI300X", resources=either))


def waiting_for_the_hold(strata: Strata) -> dict[str, Any] | None:
    status = strata.status("held")
    return status if status.get("reason") == Reason.HELD_BACK else None


def test_a_low_priority_gang_the_hold_would_split_waits_with_the_reason_then_runs_whole_on_spot(
    crds: ClusterHandle, namespace: str, strata: Strata, held_extender: ExtenderService, tmp_path: Path
) -> None:
    spot = fill_one_spot_node(strata, held_extender)
    flags = ("--standalone", "--scheduler-name", api.SCHEDULER_NAME, "--extender-url", held_extender.url)
    operator = OperatorProcess(crds, tmp_path, (namespace,), *flags, "--quote-timeout-s", "5").start()
    try:
        submit_batch_gang(strata)
        status = eventually(lambda: waiting_for_the_hold(strata), 30, "the job Queued with the hold-back reason")
        assert status["phase"] == "Queued"
        assert status["message"].startswith(
            "reserved MI300X GPUs are held for forecast high-priority demand (up to 10000 GPUs in 15 min, 80% band): "
            "16 of the 16 free must stay free; 2 workers x 8 MI300X GPUs fit only on those (pool batch-"
        )
        # past the scheduler's grace: never admitted onto the held GPUs, so no pod, no requeue, no cycle
        deadline = time.monotonic() + lifecycle.UNSCHEDULABLE_GRACE_S + 5
        while time.monotonic() < deadline:
            assert strata.pods("held") == []
            assert strata.status("held").get("phase") == "Queued"
            time.sleep(1)
        assert lifecycle.Reason.UNSCHEDULABLE not in strata.events("held")
        assert strata.status("held").get("attempt", 0) == 0

        # the spot node frees up: the gang is admitted and placed whole on spot
        strata.core.delete_namespaced_pod("spot-blocker", namespace, grace_period_seconds=0)
        status = strata.wait_phase("held", "Running", timeout_s=90)
        assert status["placement"]["capacityTypes"] == ["spot"]
        assert status["placement"]["nodes"] == spot
        assert status["attempt"] == 1
        assert lifecycle.Reason.UNSCHEDULABLE not in strata.events("held")
    finally:
        cleaned_up_then_stopped(strata, operator)


def test_a_gang_half_placed_by_an_operator_unaware_of_the_hold_is_requeued_once_and_then_waits_with_the_reason(
    crds: ClusterHandle, namespace: str, strata: Strata, held_extender: ExtenderService, tmp_path: Path
) -> None:
    fill_one_spot_node(strata, held_extender)
    # first the operator without the extender's hold-back: the half-placed gang
    unaware = ("--standalone", "--scheduler-name", api.SCHEDULER_NAME)
    operator = OperatorProcess(crds, tmp_path, (namespace,), *unaware).start()
    try:
        submit_batch_gang(strata)

        def half_placed() -> str | None:
            pods = strata.live_pods("held")
            pending = [p for p in pods if not p.spec.node_name and not p.spec.scheduling_gates]
            refused = [c.message for p in pending for c in p.status.conditions or () if c.reason == "Unschedulable"]
            return refused[0] if len(pods) == 2 and len(pending) == 1 and refused else None

        refusal = eventually(half_placed, 60, "one worker bound and the other refused")
        assert "reserved MI300X GPUs are held for forecast high-priority demand" in refusal
        eventually(
            lambda: lifecycle.Reason.UNSCHEDULABLE in strata.events("held"),
            lifecycle.UNSCHEDULABLE_GRACE_S + 30,
            "the WorkerUnschedulable requeue",
        )
    finally:
        operator.stop()

    # the operator that reads the hold: the gang (requeued, or half placed again and requeued after the grace) then
    # waits, saying why, and is not admitted again while the hold lasts
    aware = (*unaware, "--extender-url", held_extender.url, "--quote-timeout-s", "5")
    operator = OperatorProcess(crds, tmp_path, (namespace,), *aware).start()
    try:
        status = eventually(
            lambda: waiting_for_the_hold(strata), lifecycle.UNSCHEDULABLE_GRACE_S + 30, "the hold-back reason"
        )
        assert status["phase"] == "Queued"
        assert "reserved MI300X GPUs are held" in status["message"]
        attempt = status.get("attempt")
        eventually(lambda: not strata.live_pods("held"), 30, "the requeued gang's pods to go")
        deadline = time.monotonic() + lifecycle.UNSCHEDULABLE_GRACE_S + 5
        while time.monotonic() < deadline:
            assert strata.live_pods("held") == []
            assert (strata.status("held").get("phase"), strata.status("held").get("attempt")) == ("Queued", attempt)
            time.sleep(1)
    finally:
        cleaned_up_then_stopped(strata, operator)
