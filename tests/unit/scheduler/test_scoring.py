"""Exact score tables for the cost formula in :mod:`strata_scheduler.scoring`: the score the extender gives
(``score_rows``), which the per-node definition in ``scheduler_reference`` gives too.

Test catalog, per GPU-hour (node price / 8): H100 on-demand 10, reserved 6, spot 4; MI300X on-demand 8,
reserved 5, spot 3. MI300X does 0.9 of an H100's bf16 work. Spot nodes are reclaimed 0.1 times per hour.
A free reserved GPU costs 0 (its commitment is paid whether used or not): 8 points, and the paid nodes beside it
share 5 points, so reserved capacity is filled first.
"""

from __future__ import annotations

import math

import pytest
from scheduler_builders import a_node, a_pod
from scheduler_reference import reference_rows, score_nodes

from strata_api.catalog import parse_catalog
from strata_api.nodes import NodeFacts
from strata_scheduler.scoring import (
    JobPlacement,
    cost_per_unit_work,
    interruption_slowdown,
    rank_kinds,
    score_rows,
)
from strata_scheduler.state import ClusterState
from strata_scheduler.views import pod_view

pytestmark = pytest.mark.unit

CATALOG = parse_catalog(
    {
        "prices": {
            "p5.48xlarge": {"on-demand": 80, "reserved": 48, "spot": 32},
            "Standard_ND96isr_MI300X_v5": {"on-demand": 64, "reserved": 40, "spot": 24},
        },
        "throughput": {"bf16": {"H100": 1.0, "MI300X": 0.9}},
        "power": {"zones": {"zone-peak": [2.0] * 24}},
        "interruption": {"hazardPerHour": {"spot": 0.1}},
    }
)
FLEET = {
    "h100-od": a_node("h100-od").h100().on_demand(),
    "h100-res": a_node("h100-res").h100().reserved(),
    "h100-spot": a_node("h100-spot").h100().spot(),
    "mi-od": a_node("mi-od").mi300x().on_demand(),
    "mi-res": a_node("mi-res").mi300x().reserved(),
    "mi-spot": a_node("mi-spot").mi300x().spot(),
}
NOBODY = JobPlacement(pods_per_node={}, zone_of={})


def score(pod_builder, nodes, placement=NOBODY, hour=3):  # type: ignore[no-untyped-def]
    """Each node's score (``nodes``: name -> builder, None for a node not in the cache; all GPUs free)."""
    pod = pod_view(pod_builder.build())
    state = ClusterState()
    for name, builder in nodes.items():
        if builder is not None:
            node = builder.build()
            node["metadata"]["name"] = name
            state.upsert_node(node)
    names = list(nodes)
    scores = score_rows(CATALOG, pod, state.columns, state.columns.rows(names), placement, hour)
    given = dict(zip(names, scores.tolist(), strict=True))
    assert given == dict(score_nodes(CATALOG, pod, reference_rows(state, names), placement, hour))
    return given


PAID = {k: v for k, v in FLEET.items() if not k.endswith("res")}
"""The fleet once its reserved GPUs are all taken: only paid nodes are left to choose from."""


def test_free_reserved_gpus_are_sunk_cost_and_come_before_spot_and_on_demand() -> None:
    pod = a_pod().gpus(4).checkpoint_every(1800).runtime(36000)
    # reserved costs 0: 8. Paid on 5 points: cheapest is MI300X spot, 3 / 0.9 * slowdown(0.05) = 3.42; H100 spot
    # 4 x 1.025 = 4.10 (4.2 points), MI300X on-demand 8 / 0.9 = 8.89 (1.9), H100 on-demand 10 (1.7).
    assert score(pod, FLEET) == {"h100-od": 2, "h100-res": 8, "h100-spot": 4, "mi-od": 2, "mi-res": 8, "mi-spot": 5}


def test_a_paid_node_with_both_bonuses_stays_below_a_free_reserved_node() -> None:
    nodes = {
        "spot-with-the-job": a_node("s").h100().spot().zone("zone-a"),
        "reserved": a_node("r").h100().reserved().zone("zone-b"),
    }
    placement = JobPlacement(pods_per_node={"spot-with-the-job": 1}, zone_of={"spot-with-the-job": "zone-a"})
    pod = a_pod().gpus(4).checkpoint_every(1800).runtime(36000).of_job("llm")
    assert score(pod, nodes, placement) == {"spot-with-the-job": 7, "reserved": 8}


def test_the_capacity_types_admission_planned_the_gang_on_come_first_each_tier_in_cost_order() -> None:
    """Admission counted this job on spot (a job before it in the pass on the free reserved GPUs): spot nodes get
    6..10, the rest 0..5, so it does not take the reserved GPUs whatever order kube-scheduler binds the pass's pods
    in. Unplanned, the same scores (see the first test): reserved 8, MI300X spot 5, H100 spot 4, on-demand 2."""
    pod = a_pod().gpus(4).checkpoint_every(1800).runtime(36000)
    assert score(pod.planned_on("spot"), FLEET) == {
        "h100-od": 1,  # 2 // 2
        "h100-res": 4,  # 8 // 2: below every planned node
        "h100-spot": 7,  # 6 + 4 * 4 // 10
        "mi-od": 1,
        "mi-res": 4,
        "mi-spot": 8,  # 6 + 5 * 4 // 10
    }
    # a plan over two types keeps reserved before spot; a plan the fleet no longer has falls back to cost order
    both = score(a_pod().gpus(4).checkpoint_every(1800).runtime(36000).planned_on("spot,reserved"), FLEET)
    assert (both["h100-res"], both["mi-res"], both["mi-spot"], both["h100-od"]) == (9, 9, 8, 1)
    gone = score(a_pod().gpus(4).checkpoint_every(1800).runtime(36000).planned_on("reserved"), PAID)
    assert gone == {"h100-od": 1, "h100-spot": 3, "mi-od": 1, "mi-spot": 4}  # PAID's scores (3, 7, 3, 8) halved


def test_without_a_free_reserved_node_a_checkpointing_job_prefers_spot_and_the_cheaper_unit_of_work() -> None:
    pod = a_pod().gpus(4).checkpoint_every(1800).runtime(36000)
    # cheapest is MI300X spot: 3 / 0.9 * slowdown(0.05); the H100 spot node costs 0.9 * 4/3 = 1.2x that.
    assert score(pod, PAID) == {"h100-od": 3, "h100-spot": 7, "mi-od": 3, "mi-spot": 8}


def test_long_job_that_never_checkpoints_avoids_spot() -> None:
    pod = a_pod().gpus(4).runtime(48 * 3600)
    # 48 h at risk: slowdown = expm1(4.8) / 4.8 = 25.1, so spot costs 25x its price; on-demand wins.
    assert score(pod, PAID) == {"h100-od": 7, "h100-spot": 1, "mi-od": 8, "mi-spot": 1}


def test_job_throughput_override_makes_mi300x_lose() -> None:
    pod = a_pod().gpus(4).checkpoint_every(1800).runtime(36000).throughput("MI300X=0.5")
    nodes = {k: v for k, v in FLEET.items() if k.endswith("spot")}
    # H100 spot 4 vs MI300X spot 3 / 0.5 = 6, both x 1.025.
    assert score(pod, nodes) == {"h100-spot": 8, "mi-spot": 5}


def test_unknown_nodes_missing_labels_missing_price_and_zero_capacity_score_zero() -> None:
    nodes = {
        "h100-res": FLEET["h100-res"],
        "not-in-cache": None,
        "cpu": a_node("cpu").instance("m7i.8xlarge").on_demand(),
        "unpriced": a_node("unpriced").h100().reserved().instance("p4d.24xlarge"),
        "no-capacity-label": a_node("no-capacity-label").h100(),
        "no-gpus": a_node("no-gpus").h100(count=0).reserved(),
    }
    assert score(a_pod().gpus(4), nodes) == {
        "h100-res": 8,
        "not-in-cache": 0,
        "cpu": 0,
        "unpriced": 0,
        "no-capacity-label": 0,
        "no-gpus": 0,
    }


def test_price_annotation_overrides_the_catalog_and_bad_annotations_are_ignored() -> None:
    nodes = {
        "h100-res": FLEET["h100-res"],
        "discounted": a_node("discounted").h100().on_demand().price("24"),
        "garbage": a_node("garbage").h100().on_demand().price("free"),
        "negative": a_node("negative").h100().on_demand().price("-5"),
    }
    # reserved is sunk (8); among the paid nodes (5 points) 24/8 = 3 per GPU-hour is cheapest; garbage and negative
    # fall back to on-demand 10 (1.5 points).
    assert score(a_pod().gpus(4), nodes) == {"h100-res": 8, "discounted": 5, "garbage": 2, "negative": 2}
    # a reserved node's own price does not make it paid: its commitment is paid anyway.
    assert score(a_pod().gpus(4), {"res": a_node("r").h100().reserved().price("999")}) == {"res": 8}


def test_power_multiplier_of_the_zone_at_that_hour() -> None:
    nodes = {
        "cheap-zone": a_node("a").h100().on_demand(),
        "peak-zone": a_node("b").h100().on_demand().zone("zone-peak"),
    }
    assert score(a_pod().gpus(4), nodes) == {"cheap-zone": 8, "peak-zone": 4}
    # a reserved node costs 0 at any hour: the tariff scales a price paid whether the node is used or not
    reserved = {
        "cheap-zone": a_node("a").h100().reserved(),
        "peak-zone": a_node("b").h100().reserved().zone("zone-peak"),
    }
    assert score(a_pod().gpus(4), reserved) == {"cheap-zone": 8, "peak-zone": 8}


def test_packing_and_zone_bonuses_break_ties() -> None:
    nodes = {"same-node": FLEET["h100-res"], "same-zone": a_node("z").h100().reserved(), "far": FLEET["h100-res"]}
    nodes["far"] = a_node("far").h100().reserved().zone("zone-b")
    placement = JobPlacement(pods_per_node={"same-node": 2}, zone_of={"same-node": "zone-a"})
    assert score(a_pod().gpus(4).of_job("llm"), nodes, placement) == {"same-node": 10, "same-zone": 9, "far": 8}


def test_tight_fit_gets_the_packing_point() -> None:
    assert score(a_pod().gpus(8), {"h100-res": FLEET["h100-res"]}) == {"h100-res": 9}
    assert score(a_pod().gpus(4), {"h100-res": FLEET["h100-res"]}) == {"h100-res": 8}


def test_pod_without_gpus_scores_zero_everywhere() -> None:
    assert score(a_pod(), FLEET) == dict.fromkeys(FLEET, 0)


@pytest.mark.parametrize(
    ("hazard", "checkpoint_s", "runtime_s", "expected"),
    [
        (0.0, None, 48 * 3600, 1.0),
        (0.05, None, None, 1.0),
        (0.05, None, 48 * 3600, math.expm1(2.4) / 2.4),
        (0.05, 1800, 48 * 3600, math.expm1(0.025) / 0.025),
        (0.05, 10 * 86400, 3600, math.expm1(0.05) / 0.05),
        (0.05, float("nan"), 3600, math.expm1(0.05) / 0.05),
        (0.05, -1, 3600, math.expm1(0.05) / 0.05),
    ],
)
def test_interruption_slowdown(
    hazard: float, checkpoint_s: float | None, runtime_s: float | None, expected: float
) -> None:
    assert interruption_slowdown(hazard, checkpoint_s, runtime_s) == pytest.approx(expected, rel=1e-12)


def test_interruption_slowdown_never_overflows() -> None:
    slowdown = interruption_slowdown(1e9, None, 1e12)
    assert math.isfinite(slowdown)
    assert slowdown > 1e20


def test_cost_is_dollars_per_reference_gpu_hour_and_zero_on_a_reserved_gpu() -> None:
    pod = pod_view(a_pod().gpus(8).build())
    on_demand = NodeFacts.from_body(FLEET["mi-od"].build())
    reserved = NodeFacts.from_body(FLEET["mi-res"].build())
    assert cost_per_unit_work(CATALOG, pod, on_demand, hour_utc=0) == pytest.approx(8 / 0.9)
    assert cost_per_unit_work(CATALOG, pod, reserved, hour_utc=0) == 0.0
    assert cost_per_unit_work(CATALOG, pod, reserved, hour_utc=0, marginal=False) == pytest.approx(5 / 0.9)


def test_the_quote_ranks_node_kinds_cheapest_unit_of_work_first() -> None:
    """Free reserved first (0; MI300X's commitment 5 / 0.9 = 5.56 below H100's 6), then spot with its reclaim
    slowdown (30-minute checkpoints at 0.1 per hour: x1.0254; MI300X 3 / 0.9 = 3.42, H100 4.10), then on-demand
    (MI300X 8.89, H100 10). A kind at its cheapest node; a node the formula cannot price is left out."""
    pod = pod_view(a_pod().gpus(8).checkpoint_every(1800).runtime(36000).build())
    nodes = [NodeFacts.from_body(b.build()) for b in FLEET.values()]
    cheap_od = a_node("mi-od-cheap").mi300x().on_demand().price("8").build()
    unpriced = a_node("h100-odd").h100().on_demand().instance("unknown-instance").build()
    nodes += [NodeFacts.from_body(cheap_od), NodeFacts.from_body(unpriced)]
    kinds = rank_kinds(CATALOG, pod, nodes, hour_utc=3)
    assert [(k.gpu_type, k.capacity_type, k.node) for k in kinds] == [
        ("MI300X", "reserved", "mi-res"),
        ("H100", "reserved", "h100-res"),
        ("MI300X", "on-demand", "mi-od-cheap"),  # $8 a node-hour: 1 / 0.9 per GPU-hour of work
        ("MI300X", "spot", "mi-spot"),
        ("H100", "spot", "h100-spot"),
        ("H100", "on-demand", "h100-od"),
    ]
    slowdown = interruption_slowdown(0.1, 1800, 36000)
    assert [round(k.cost, 4) for k in kinds] == [
        0.0,
        0.0,
        round(1 / 0.9, 4),
        round(3 / 0.9 * slowdown, 4),
        round(4 * slowdown, 4),
        10.0,
    ]
    assert [k.nodes for k in kinds] == [1, 1, 2, 1, 1, 1]  # the unpriced H100 on-demand node is not counted
    assert rank_kinds(CATALOG, pod, [], hour_utc=3) == []
