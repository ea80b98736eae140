"""Cost per unit of useful work, and the 0..10 score kube-scheduler receives.

For a pod ``p`` on node ``n`` at UTC hour ``h``::

    price(n)      = n's strata.dev/price-per-hour annotation, else catalog[instance type][capacity type]
                    (dollars per node-hour)
    per_gpu(n)    = price(n) / allocatable GPUs of n                 (strata_api's Catalog.gpu_price)
    marginal(n)   = 0 when n is reserved, else per_gpu(n)
    r(p, n)       = p's relative-throughput override for n's GPU type, else catalog[p's precision][GPU type]
    c             = hours of work at risk per interruption: min(checkpoint interval, expected runtime), or the
                    expected runtime when the job never checkpoints
    slowdown(p,n) = (exp(lambda * c) - 1) / (lambda * c)      with lambda = hazard(capacity type of n) per hour;
                    1 when lambda = 0
    cost(p, n)    = marginal(n) * power(zone of n, h) / r(p, n) * slowdown(p, n)
    list(p, n)    = the same with per_gpu(n) for marginal(n)   (the commitment rate: a tie-break only)

A reserved GPU is **sunk cost**: the commitment is paid every hour whether a pod uses the GPU or not, so placing
a pod on a free reserved GPU adds nothing to the bill, and ``cost`` prices it at zero. The catalog has no
energy price apart from the node price (``power`` is a time-of-use multiplier on the whole node-hour price,
commitment included), so nothing in it varies with use: the marginal price of a free reserved GPU is exactly
zero, power included. Free reserved capacity is therefore filled before on-demand and spot, whose every hour is
billed. The reserved hold-back (:mod:`strata_scheduler.filtering`, check 6) still keeps low-priority pods off
the reserved GPUs it holds for forecast high-priority demand: a held node never reaches scoring.
``list`` (the node's commitment or list price per unit of work) orders GPU types whose free reserved GPUs all
cost zero: the quote and the simulator break ties by it, so a job still goes to the reserved type that does
its work for the lower commitment rate.

The quote (``POST /quote``) ranks **node kinds**, GPU type x capacity type, by :func:`rank_kinds`: each kind at
its cheapest node, ordered by ``(cost, list, GPU type, capacity type)``. Admission takes the first kind in that
order that holds a whole gang, so that jobs admitted in one pass go where this score puts their pods, cheapest
first, rather than all to the type whose cheapest kind had room (issue 21, finding 6).

``slowdown`` is the expected wall-clock time per hour of useful work when every reclaim throws away the work
since the last checkpoint (the renewal result for restarts from a checkpoint); to first order it is
``1 + lambda * c / 2``, the hazard rate times the work an interruption loses on average. Multiplying by it
adds the expected cost of interruptions to the spot price, so a long job that rarely checkpoints pays for
its risk while a job that checkpoints often keeps nearly all of the spot discount.

The score of node ``n`` among the nodes ``N`` of one request::

    score(n)  = clamp(points(n) + pack(n) + zone(n), 0, 10)
    points(n) = 8                                               when cost(p, n) = 0 (a free reserved GPU)
              = round_half_up(S * min over paid N of cost / cost(p, n))   otherwise (paid: cost > 0)
    S         = 8, or 5 when a node of N costs 0
    pack(n)   = 1 when n already runs a pod of p's job, or p would use exactly the GPUs n has left
    zone(n)   = 1 when p's job already has pods bound and n is in the zone that holds most of them

The cheapest node gets 8, a node twice as expensive 4; packing a gang and keeping pipeline neighbours in one
zone break near-ties. Beside a free reserved node the paid nodes score at most 5, so even with both bonuses
(7) they stay below it (8): reserved first, then the paid nodes in their cost order. A node whose cost is
unknown (not in the cache, no GPU type, no price, no throughput for its GPU type, no allocatable GPUs) scores
0: never preferred, never an error.

A pod whose gang admission counted on some capacity types (``strata.dev/planned-capacity-types``, a quoted job's
plan: :attr:`strata_operator.core.admission.Decision.planned`) scores in two tiers::

    planned(n)   = 6 + score(n) * 4 // 10     (6..10) when n's capacity type is in the plan
    unplanned(n) = score(n) // 2              (0..5)  otherwise

so the nodes admission counted the gang on come first, in their usual order, and the rest keep theirs below them
(a plan the fleet no longer matches, say another pod took the GPUs, falls back to cost). Without it, the jobs one
pass admits land in the order kube-scheduler binds their pods: a later, lower-priority job of the pass could take
the free reserved GPUs the pass counted for an earlier one, which then ran on spot (issue 21's fidelity replay).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from strata_api import CapacityType, GPUType
from strata_api.catalog import Catalog
from strata_api.nodes import NodeFacts
from strata_scheduler.columns import NodeColumns
from strata_scheduler.protocol import MAX_SCORE
from strata_scheduler.views import PodView, cost_class

COST_POINTS = 8
"""Cost points of the cheapest node of a request (and of every free reserved node)."""
PAID_POINTS_BESIDE_SUNK = 5
"""Cost points of the cheapest paid node when a free reserved node is in the request: below 8 by more than the
two bonus points, so reserved capacity is filled first."""
PLANNED_FLOOR = 6
"""The lowest score of a node of a capacity type in the pod's plan; every other node scores below it."""
K = TypeVar("K")
MAX_EXPONENT = 60.0
"""Caps lambda * c so exp() cannot overflow; the slowdown is astronomically large well before that."""


@dataclass(frozen=True)
class Defaults:
    """What scoring assumes when a pod does not say."""

    expected_runtime_s: float = 4 * 3600.0
    """Runtime assumed for a job without ``strata.dev/expected-runtime-seconds`` (seconds)."""


def interruption_slowdown(hazard_per_hour: float, checkpoint_s: float | None, runtime_s: float | None) -> float:
    """Expected wall-clock hours per hour of useful work under reclaims; see the module docstring."""
    runtime = _positive(runtime_s)
    checkpoint = _positive(checkpoint_s)
    if hazard_per_hour <= 0 or runtime is None:
        return 1.0
    at_risk_h = min(checkpoint, runtime) / 3600.0 if checkpoint is not None else runtime / 3600.0
    exponent = min(hazard_per_hour * at_risk_h, MAX_EXPONENT)
    if exponent <= 0:
        return 1.0
    return math.expm1(exponent) / exponent


def cost_per_unit_work(
    catalog: Catalog,
    pod: PodView,
    node: NodeFacts,
    hour_utc: int,
    defaults: Defaults = Defaults(),
    *,
    marginal: bool = True,
) -> float | None:
    """Dollars per GPU-hour of reference (H100) work that placing ``pod`` on ``node`` adds to the bill: 0 on a
    reserved node (sunk cost, see the module docstring); ``marginal=False``: at the node's list or commitment
    price whatever its capacity type (the tie-break ``list``). None when anything the formula needs is missing,
    a reserved node's price and throughput included, so that an unpriced node is never preferred."""
    per_gpu = catalog.gpu_price(node.price_override, node.instance_type, node.capacity_type, node.gpu_count)
    if per_gpu is None or node.gpu_type is None:
        return None
    if marginal and node.capacity_type == CapacityType.RESERVED:
        per_gpu = 0.0
    throughput = catalog.relative_throughput(node.gpu_type, pod.contract.precision, pod.contract.throughput_override)
    if throughput is None or throughput <= 0:
        return None
    runtime = pod.contract.expected_runtime_s
    if _positive(runtime) is None:
        runtime = defaults.expected_runtime_s
    slowdown = interruption_slowdown(catalog.hazard(node.capacity_type), pod.contract.checkpoint_interval_s, runtime)
    return per_gpu * catalog.power_multiplier(node.zone, hour_utc) / throughput * slowdown


@dataclass(frozen=True)
class KindCost:
    """One node kind (GPU type x capacity type) at its cheapest node: what the quote answers per kind."""

    gpu_type: GPUType
    capacity_type: CapacityType | None
    """None for nodes without a capacity-type label (the operator's admission cannot ask for them)."""
    cost: float
    """``cost`` of the module docstring: dollars per GPU-hour of reference work (0 on a free reserved GPU)."""
    listed: float
    """``list``: the same at the node's list or commitment price (the tie-break)."""
    node: str
    """The cheapest node of the kind (its name breaks ties)."""
    nodes: int
    """Nodes of the kind that were priced."""

    @property
    def order(self) -> tuple[float, float, str, str]:
        """The quote's order: cheapest unit of work, then the lower commitment rate, then the names."""
        return (self.cost, self.listed, self.gpu_type.value, self.capacity_type.value if self.capacity_type else "")


def rank_kinds(
    catalog: Catalog, pod: PodView, nodes: Iterable[NodeFacts], hour_utc: int, defaults: Defaults = Defaults()
) -> list[KindCost]:
    """The node kinds of ``nodes`` (the ones the filter passed for ``pod``), cheapest per unit of work first
    (:attr:`KindCost.order`), each at its cheapest node; a node the formula cannot price is left out.

    Free reserved GPUs of several types all cost 0 (sunk), so the lower commitment rate per unit of work orders
    them. The extender's quote and the simulator (:mod:`strata_sim.policies`) both rank with this function."""
    best: dict[tuple[GPUType, CapacityType | None], tuple[float, float, str]] = {}
    counts: Counter[tuple[GPUType, CapacityType | None]] = Counter()
    by_class: dict[tuple[object, ...], tuple[float, float] | None] = {}  # nodes of one cost class cost the same
    for node in nodes:
        if node.gpu_type is None:
            continue
        node_class = cost_class(node)
        if node_class not in by_class:
            cost = cost_per_unit_work(catalog, pod, node, hour_utc, defaults)
            listed = cost_per_unit_work(catalog, pod, node, hour_utc, defaults, marginal=False)
            by_class[node_class] = (cost, listed) if cost is not None and listed is not None else None
        priced = by_class[node_class]
        if priced is None:
            continue
        kind = (node.gpu_type, node.capacity_type)
        counts[kind] += 1
        entry = (*priced, node.name)
        if kind not in best or entry < best[kind]:
            best[kind] = entry
    kinds = [KindCost(g, c, cost, listed, name, counts[(g, c)]) for (g, c), (cost, listed, name) in best.items()]
    return sorted(kinds, key=lambda kind: kind.order)


@dataclass(frozen=True)
class JobPlacement:
    """Where the pod's job already runs: bound pods per node, and the zone of each node."""

    pods_per_node: Mapping[str, int]
    zone_of: Mapping[str, str | None]

    @property
    def main_zone(self) -> str | None:
        zones: Counter[str] = Counter()
        for node, count in self.pods_per_node.items():
            zone = self.zone_of.get(node)
            if zone:
                zones[zone] += count
        # Ties go to the alphabetically first zone so the answer never depends on dict order.
        return min(zones, key=lambda z: (-zones[z], z)) if zones else None


def score_rows(
    catalog: Catalog,
    pod: PodView,
    columns: NodeColumns,
    rows: npt.NDArray[np.int64],
    placement: JobPlacement,
    hour_utc: int,
    defaults: Defaults = Defaults(),
) -> npt.NDArray[np.int64]:
    """The score of each node at ``rows`` of ``columns`` (-1: not in the cache) for ``pod``, as array operations.

    Free GPUs (for ``pack``) are the node's own GPU resource less what bound pods hold there
    (``columns.used_own``). The cost formula runs once per cost class present; the rest is a gather and a few
    vector operations. The tests hold the same score as a loop over nodes (``score_nodes`` in
    ``tests/unit/scheduler/scheduler_reference.py``) and check both give the same scores.
    """
    known = rows >= 0
    cost_class = columns.cost_class[rows]
    classes = max(len(columns.cost_reps), 1)  # unknown rows gather class 0 too; they are masked
    base = np.zeros(classes, dtype=np.int64)
    priced = np.zeros(classes, dtype=np.bool_)
    if pod.gpus:
        present = np.flatnonzero(np.bincount(cost_class[known], minlength=classes)).tolist()
        costs = {
            code: cost_per_unit_work(catalog, pod, columns.cost_reps[code], hour_utc, defaults) for code in present
        }
        for code, given in cost_points(costs).items():
            base[code] = given
            priced[code] = True
    points = base[cost_class]
    bonus = columns.gpu_count[rows] - columns.used_own[rows] == pod.gpus
    for row in columns.rows_of(name for name, count in placement.pods_per_node.items() if count > 0):
        bonus |= rows == row  # a job spans a few nodes: a pass per node beats np.isin's sort
    points += bonus
    main_zone = placement.main_zone
    if main_zone is not None and main_zone in columns.zone_codes:
        points += columns.zone[rows] == columns.zone_codes[main_zone]
    scores = np.minimum(points, MAX_SCORE)
    if planned := pod.contract.planned_capacity_types:
        on_plan = np.array([str(rep.capacity_type) in planned for rep in columns.cost_reps] or [False])[cost_class]
        scores = planned_tiers(scores, on_plan)
    tiered: npt.NDArray[np.int64] = np.where(known & priced[cost_class], scores, 0)
    return tiered


def planned_tiers(scores: npt.NDArray[np.int64], on_plan: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """The module docstring's two tiers: ``scores`` (0..10) of nodes in the pod's plan to 6..10, the rest to 0..5."""
    high = PLANNED_FLOOR + scores * (MAX_SCORE - PLANNED_FLOOR) // MAX_SCORE
    tiers: npt.NDArray[np.int64] = np.where(on_plan, high, scores // 2)
    return tiers


def cost_points(costs: Mapping[K, float | None]) -> dict[K, int]:
    """``points`` of the module docstring for each priced entry of ``costs`` (unpriced ones are left out)."""
    priced = {key: cost for key, cost in costs.items() if cost is not None}
    paid = [cost for cost in priced.values() if cost > 0]
    sunk = len(paid) < len(priced)
    scale = PAID_POINTS_BESIDE_SUNK if sunk else COST_POINTS
    cheapest = min(paid, default=0.0)
    return {
        key: COST_POINTS if cost <= 0 else math.floor(scale * cheapest / cost + 0.5) for key, cost in priced.items()
    }


def _positive(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and value > 0 else None
