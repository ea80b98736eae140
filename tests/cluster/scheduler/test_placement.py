"""The real kube-scheduler, running the shipped strata-scheduler profile, places GPU pods through the extender.

Each test makes its own kwok GPU nodes (``test_fleet``) and keeps its pods on them, so what it asserts is the
extender's choice, not the state of the shared fleet. Costs come from the shipped catalog
(api/strata_api/catalog.yaml), per H100-equivalent GPU-hour: H100 spot 2.75, on-demand 6.88; MI300X spot 2.40 per
GPU-hour before dividing by its relative throughput (0.85 at bf16). A free reserved GPU costs 0: its commitment
(H100 4.82, MI300X 4.20) is paid whether it is used or not, so reserved capacity is filled first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
import pytest
import urllib3
from cluster_support import ClusterHandle, eventually
from scheduler_builders import a_pod
from scheduler_cluster import TestFleet, bound_node, capacity_of, instance_of

from strata_scheduler.forecast_board import HIGH, Forecast
from strata_scheduler.service import ExtenderService

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("strata_scheduler")]

H100_TRIO = (("H100", "reserved", "us-east-1a"), ("H100", "spot", "us-east-1b"), ("H100", "on-demand", "us-east-1a"))
Fleet = Callable[..., TestFleet]


def test_free_reserved_first_then_spot_for_a_checkpointing_job_and_on_demand_for_one_that_never_checkpoints(
    cluster: ClusterHandle, namespace: str, test_fleet: Fleet
) -> None:
    fleet = test_fleet(*H100_TRIO)
    # The free reserved node costs nothing more to use: the first job takes it, though spot is cheaper by list.
    first = a_pod("first").gpus(8).of_job("a").checkpoint_every(1800).runtime(72 * 3600)
    assert capacity_of(cluster, bound_node(cluster, namespace, fleet.create(cluster, namespace, first))) == "reserved"
    # Spot is reclaimed 0.05 times an hour. Never checkpointing on a 3-day run: 2.75 x (e^3.6 - 1) / 3.6 = 27.2,
    # dearer than on-demand 6.88.
    never = a_pod("never-checkpoints").gpus(8).of_job("b").runtime(72 * 3600)
    assert capacity_of(cluster, bound_node(cluster, namespace, fleet.create(cluster, namespace, never))) == "on-demand"
    # Checkpointing every 30 min: 2.75 x 1.013 = 2.78.
    frequent = a_pod("checkpoints-often").gpus(8).of_job("c").checkpoint_every(1800).runtime(72 * 3600)
    assert capacity_of(cluster, bound_node(cluster, namespace, fleet.create(cluster, namespace, frequent))) == "spot"


def test_a_pod_takes_the_capacity_type_admission_counted_its_gang_on_though_a_cheaper_one_is_free(
    cluster: ClusterHandle, namespace: str, test_fleet: Fleet
) -> None:
    """One admission pass counted job "high" on the free reserved node and job "low" on spot
    (``strata.dev/planned-capacity-types``). kube-scheduler binds "low" first: it still takes spot, though the
    reserved GPUs cost nothing more, so "high" gets the reserved node it was counted on. Without the plan "low"
    took the reserved node and "high" went to spot."""
    fleet = test_fleet(("H100", "reserved", "us-east-1a"), ("H100", "spot", "us-east-1b"))
    low = a_pod("low").gpus(8).of_job("low").checkpoint_every(1800).runtime(36000).planned_on("spot")
    assert capacity_of(cluster, bound_node(cluster, namespace, fleet.create(cluster, namespace, low))) == "spot"
    high = a_pod("high").gpus(8).of_job("high").checkpoint_every(1800).runtime(36000).planned_on("reserved")
    assert capacity_of(cluster, bound_node(cluster, namespace, fleet.create(cluster, namespace, high))) == "reserved"


def test_cheapest_of_the_capacity_types_the_job_allows(
    cluster: ClusterHandle, namespace: str, test_fleet: Fleet
) -> None:
    fleet = test_fleet(*H100_TRIO)
    no_spot = a_pod("no-spot").gpus(8).capacity_types("on-demand,reserved").checkpoint_every(1800)
    assert capacity_of(cluster, bound_node(cluster, namespace, fleet.create(cluster, namespace, no_spot))) == "reserved"
    only = a_pod("on-demand-only").gpus(8).capacity_types("on-demand").checkpoint_every(1800)
    assert capacity_of(cluster, bound_node(cluster, namespace, fleet.create(cluster, namespace, only))) == "on-demand"


@pytest.mark.parametrize(
    ("mi300x_throughput", "expected_type", "expected_instance"),
    [
        ("1.3", "MI300X", "Standard_ND96isr_MI300X_v5"),  # memory-bound: 2.40 / 1.3 = 1.85 beats H100's 2.75
        ("0.6", "H100", "p5.48xlarge"),  # 2.40 / 0.6 = 4.00 loses to H100's 2.75
    ],
)
def test_mi300x_wins_when_its_unit_of_work_is_cheaper_and_loses_when_it_is_not(
    cluster: ClusterHandle,
    namespace: str,
    test_fleet: Fleet,
    extender: ExtenderService,
    mi300x_throughput: str,
    expected_type: str,
    expected_instance: str,
) -> None:
    """A pod's resource fixes its vendor, so the type is chosen when the gang is made (``/quote``, as the
    operator does for ``gpuType: Any``); kube-scheduler then places the pod where the extender says."""
    fleet = test_fleet(("H100", "spot", "us-east-1b"), ("MI300X", "spot", "us-east-1b"))
    template = (
        a_pod("llm").gpus(8).capacity_types("spot").checkpoint_every(1800).throughput(f"MI300X={mi300x_throughput}")
    )
    quote = _quote(extender, fleet.pod(template, namespace))
    assert quote["recommended"] == expected_type
    gpu_resource = next(o["resource"] for o in quote["options"] if o["gpuType"] == expected_type)
    pod = template.gpus(8, gpu_resource)
    assert (
        instance_of(cluster, bound_node(cluster, namespace, fleet.create(cluster, namespace, pod))) == expected_instance
    )


def test_tensor_parallel_groups_are_never_split(
    cluster: ClusterHandle, namespace: str, test_fleet: Fleet, extender: ExtenderService
) -> None:
    fleet = test_fleet(*(("H100", "reserved", "us-east-1a"),) * 3)
    squatter = fleet.pod(a_pod("squatter").gpus(4), namespace)
    squatter["spec"]["nodeName"] = fleet.nodes[0]  # half a node taken: a tempting place to split a group
    cluster.core().create_namespaced_pod(namespace, squatter)
    bound_node(cluster, namespace, "squatter")
    eventually(lambda: extender.state.used_gpus.get(fleet.nodes[0]), 30, "the extender to see the squatter")
    groups = {}
    for group in ("0", "1"):
        for rank in range(4):
            builder = a_pod(f"llm-g{group}-r{rank}").gpus(2).of_job("llm").tp_group(group, size=8)
            groups[fleet.create(cluster, namespace, builder)] = group
    nodes_of_group: dict[str, set[str]] = {}
    for name, group in groups.items():
        nodes_of_group.setdefault(group, set()).add(bound_node(cluster, namespace, name))
    assert all(len(nodes) == 1 for nodes in nodes_of_group.values()), nodes_of_group
    assert nodes_of_group["0"] != nodes_of_group["1"]
    assert fleet.nodes[0] not in nodes_of_group["0"] | nodes_of_group["1"]


def test_the_node_admission_emptied_for_a_gang_is_kept_for_it_while_the_moved_job_leaves(
    cluster: ClusterHandle, namespace: str, test_fleet: Fleet, extender: ExtenderService
) -> None:
    """Admission moved a 1-GPU job off a node for an 8-GPU gang (rule 10); until the moved job's pod is gone the
    node has 7 GPUs free. A 1-GPU pod scheduled meanwhile is kept off them, the extender saying why, so the gang
    gets the node once the pod goes; without the keep the stranger took one of the 7 and the gang waited again."""
    fleet = test_fleet(("H100", "reserved", "us-east-1a"))
    (node,) = fleet.nodes
    core = cluster.core()
    moved = fleet.pod(a_pod("moved").gpus(1).of_job("small"), namespace)
    moved["spec"]["nodeName"] = node
    core.create_namespaced_pod(namespace, moved)
    eventually(lambda: extender.state.used_gpus.get(node), 30, "the extender to see the moved job's pod")
    gang = fleet.create(cluster, namespace, a_pod("gang").gpus(8).of_job("gang").tp_group("0", 8).planned_node(node, 8))
    eventually(lambda: extender.state.awaiting_planned_node, 30, "the extender to see the gang's pod")
    stranger = fleet.create(cluster, namespace, a_pod("stranger").gpus(1).of_job("other"))

    def kept_off() -> bool:
        events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={stranger}").items
        return any("kept for a gang being placed there" in (e.message or "") for e in events)

    eventually(kept_off, 30, "the stranger's FailedScheduling naming the gang's kept GPUs")
    core.delete_namespaced_pod("moved", namespace, grace_period_seconds=0)
    assert bound_node(cluster, namespace, gang) == node
    time.sleep(2)  # the stranger, retried as the node changed, finds no room (the gang took all 8)
    assert core.read_namespaced_pod(stranger, namespace).spec.node_name is None


def test_reserved_gpus_are_held_back_when_the_forecast_calls_for_them(
    cluster: ClusterHandle, namespace: str, test_fleet: Fleet, extender: ExtenderService
) -> None:
    fleet = test_fleet(
        ("H100", "reserved", "us-east-1a"), ("H100", "reserved", "us-east-1a"), ("H100", "spot", "us-east-1b")
    )
    # A free reserved node costs nothing more to use: a low-priority job takes it while no hold is forecast.
    before = a_pod("batch-before").gpus(8).runtime(48 * 3600)
    assert capacity_of(cluster, bound_node(cluster, namespace, fleet.create(cluster, namespace, before))) == "reserved"
    # Now high-priority H100 demand is forecast to want every reserved H100 there is (upper band 10,000 GPUs).
    forecast = Forecast("H100", HIGH, datetime.now(UTC), 15, 1e4, 1e4, 1e4, 0.8, "test")
    extender.board.publish({("H100", HIGH): forecast})
    try:
        # The same kind of low-priority job goes to spot although a reserved node is free...
        after = a_pod("batch-after").gpus(8).runtime(48 * 3600)
        assert capacity_of(cluster, bound_node(cluster, namespace, fleet.create(cluster, namespace, after))) == "spot"
        # ...which a high-priority pod then gets.
        vip = a_pod("vip").gpus(8).runtime(48 * 3600).priority(500)
        assert capacity_of(cluster, bound_node(cluster, namespace, fleet.create(cluster, namespace, vip))) == "reserved"
    finally:
        extender.board.publish({})


def test_extender_going_away_keeps_gpu_pods_pending_until_it_is_back(
    cluster: ClusterHandle, namespace: str, test_fleet: Fleet, extender: ExtenderService
) -> None:
    fleet = test_fleet(("H100", "reserved", "us-east-1a"))
    core = cluster.core()
    extender.stop_http()
    try:
        name = fleet.create(cluster, namespace, a_pod("waits").gpus(8))

        def failed_event() -> str | None:
            events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
            messages = [
                e.message for e in events if e.reason == "FailedScheduling" and extender.url in (e.message or "")
            ]
            return messages[0] if messages else None

        eventually(failed_event, 60, "a FailedScheduling event naming the extender")
        assert core.read_namespaced_pod(name, namespace).spec.node_name is None
    finally:
        extender.serve_http()
    assert bound_node(cluster, namespace, name, timeout_s=120) == fleet.nodes[0]


def _quote(extender: ExtenderService, pod: dict[str, object]) -> dict[str, object]:
    response = urllib3.request("POST", f"{extender.url}/quote", body=orjson.dumps({"Pod": pod}), timeout=10)
    assert response.status == 200, response.data
    document: dict[str, object] = orjson.loads(response.data)
    return document
