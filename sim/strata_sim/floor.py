"""The least any schedule could pay for a trace on a fleet: a lower bound on every policy's cost, in hindsight.

Issue 21 asks for Strata at least 30% cheaper than the default scheduler with mean JCT no more than 5% worse. On a
fleet the trace keeps busy, reserved nodes are paid by every policy and the work beyond them must run somewhere;
this bound says how low any scheduler, knowing the whole trace in advance, could bring the cost, so a missed aim
can be told apart from an unreachable one.

The bound is a linear programme (HiGHS, through SciPy) over a relaxation of the replay's model
(:mod:`strata_sim.model`): time is cut into slots of ``slot_h`` hours, and in each slot a job may run any
fraction of its GPUs on any node kind (GPU type x capacity type) it accepts, split across kinds, nodes and slots,
stopped and resumed at no loss (no gangs, no nodes, no reclaims, no checkpoints). Every real schedule is a
solution of it, so its optimum is at most the cost of every policy:

- a job runs only after it arrives, on at most its GPUs at a time; its work (GPU-hours on the reference GPU) is
  done at each kind's relative throughput; a kind runs at most its GPUs in each slot;
- an on-demand or spot GPU-hour costs the catalog's price at the lowest time-of-use multiplier of its slot;
- reserved nodes are paid to the end ``T``, which is no earlier than any job could finish (its arrival plus its
  work on the fastest GPU): exactly up to that time, and at the day's lowest multiplier after it; nothing runs
  after ``T`` (a slot past that time holds only the part of it before ``T``), and every job finishes by ``T``;
- with ``max_mean_jct_h``, the mean JCT is at most that: a job's completion is at least its arrival plus its
  work on the fastest GPU, and at least the mean time its work is done plus half its work on the fastest GPU
  (work done at most at that rate, so it spans at least that long), counting each slot's work from the slot's
  start or the job's arrival, whichever is later.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

from strata_api import CapacityType
from strata_api.catalog import HOURS_PER_DAY, Catalog
from strata_sim.model import HOUR_S, Fleet, Job, PowerClock, gpu_hour_price, nodes_by_kind, reserved_cost, throughput


class NoScheduleWithin(ValueError):
    """No schedule of the relaxation meets the mean-JCT bound asked for."""


@dataclass(frozen=True)
class CostFloor:
    total: float
    """Dollars: no schedule of the trace on the fleet (within the JCT bound, if one was given) costs less."""
    reserved: float
    """Of it, the reserved nodes up to the end the bound chose."""
    end_h: float
    """The end the bound chose (reserved nodes are paid to it)."""
    usage: dict[str, float]
    """Dollars of on-demand and spot GPU-hours in the bound's schedule, by node kind ("H100 spot")."""
    max_mean_jct_h: float | None


def cost_floor(
    jobs: Sequence[Job],
    fleet: Fleet,
    catalog: Catalog,
    *,
    max_mean_jct_h: float | None = None,
    slot_h: float = 24.0,
    tail_h: float = 7 * HOURS_PER_DAY,
) -> CostFloor:
    """The bound (module docstring) with slots of ``slot_h`` hours; the end may fall up to ``tail_h`` hours after
    the last moment a job could finish. Raises NoScheduleWithin when no schedule of the relaxation meets the JCT bound,
    and ValueError when the end it would choose lies past ``tail_h`` (the bound would then not be one)."""
    if not jobs:
        return CostFloor(0.0, 0.0, 0.0, {}, max_mean_jct_h)
    clock = PowerClock(catalog)
    kinds = nodes_by_kind(fleet)
    kind_keys = list(kinds)
    speed = {k: throughput(catalog, k[0]) for k in kind_keys}
    fastest = max(speed.values())
    capacity = {k: sum(n.gpus for n in kinds[k]) for k in kind_keys}
    paid_by_use = {k: 0.0 if k[1] == CapacityType.RESERVED else gpu_hour_price(catalog, kinds[k][0]) for k in kind_keys}
    reserved_rate = sum(
        gpu_hour_price(catalog, n) * n.gpus for n in fleet.nodes if n.capacity_type == CapacityType.RESERVED
    )
    cheapest_hour = min(catalog.power_multiplier(None, h) for h in range(HOURS_PER_DAY))

    arrival_h = np.array([j.arrival_s / HOUR_S for j in jobs])
    fastest_h = np.array([j.work_h / fastest for j in jobs])
    earliest_end_h = float(np.max(arrival_h + fastest_h))
    slots = math.ceil((earliest_end_h + tail_h) / slot_h)
    horizon_h = slots * slot_h
    first_tail = math.floor(earliest_end_h / slot_h)
    """Slots from here on may be cut short by the end; those before it lie wholly before any end."""
    slot_multiplier = [
        min(catalog.power_multiplier(None, int(s * slot_h + h) % HOURS_PER_DAY) for h in range(math.ceil(slot_h)))
        for s in range(slots)
    ]

    costs: list[float] = []
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    upper: list[float] = []
    row = 0

    def add(r: np.ndarray, c: np.ndarray, v: np.ndarray) -> None:
        rows.append(r)
        cols.append(c)
        vals.append(v)

    usage_of: dict[tuple[int, int], list[int]] = {}
    """(slot, kind index) -> the columns of jobs' GPU-hours there."""
    jct_terms: list[tuple[int, np.ndarray, np.ndarray]] = []
    work_rows = row
    row += len(jobs)
    upper += [-(j.work_h * j.gpus) for j in jobs]
    for index, job in enumerate(jobs):
        accepted = [i for i, k in enumerate(kind_keys) if k[0] in job.gpu_types]
        first = math.floor(arrival_h[index] / slot_h)
        job_cols: list[int] = []
        job_weights: list[float] = []
        for s in range(first, slots):
            start_h = max(arrival_h[index], s * slot_h)
            open_h = (s + 1) * slot_h - start_h
            cap_row = row
            row += 1
            upper.append(job.gpus * open_h)
            for i in accepted:
                column = len(costs)
                costs.append(paid_by_use[kind_keys[i]] * slot_multiplier[s])
                usage_of.setdefault((s, i), []).append(column)
                add(
                    np.array([work_rows + index, cap_row]),
                    np.array([column, column]),
                    np.array([-speed[kind_keys[i]], 1.0]),
                )
                job_cols.append(column)
                job_weights.append(speed[kind_keys[i]] * start_h / (job.work_h * job.gpus or 1.0))
        jct_terms.append((index, np.array(job_cols), np.array(job_weights)))

    completion = len(costs)
    costs += [0.0] * len(jobs)
    end = len(costs)
    costs.append(reserved_rate * cheapest_hour)
    cut = {s: len(costs) + s - first_tail for s in range(first_tail, slots)}
    """Slot -> its hours before the end (a column), for the slots the end may cut short: the end is the first of
    them's start plus their hours, which relaxes "the hours before the end" only by not making them consecutive."""
    costs += [0.0] * (slots - first_tail)

    for (s, i), columns in usage_of.items():
        column_array = np.array(columns)
        add(np.full(len(columns), row), column_array, np.ones(len(columns)))
        if s in cut:
            add(np.array([row]), np.array([cut[s]]), np.array([-float(capacity[kind_keys[i]])]))
            upper.append(0.0)
        else:
            upper.append(capacity[kind_keys[i]] * slot_h)
        row += 1
    for index, job_columns, weights in jct_terms:
        add(np.full(len(job_columns) + 1, row), np.append(job_columns, completion + index), np.append(weights, -1.0))
        upper.append(-fastest_h[index] / 2)
        row += 1
        add(np.array([row, row]), np.array([completion + index, end]), np.array([1.0, -1.0]))
        upper.append(0.0)
        row += 1
    if max_mean_jct_h is not None:
        add(np.full(len(jobs), row), np.arange(completion, completion + len(jobs)), np.ones(len(jobs)))
        upper.append(max_mean_jct_h * len(jobs) + float(arrival_h.sum()))
        row += 1

    matrix = sparse.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(row, len(costs))
    )
    bounds = (
        [(0.0, None)] * completion
        + [(a + p, None) for a, p in zip(arrival_h, fastest_h, strict=True)]
        + [(earliest_end_h, horizon_h)]
        + [(0.0, slot_h)] * len(cut)
    )
    ends_with = sparse.csr_matrix(
        (np.append(-np.ones(len(cut)), 1.0), (np.zeros(len(cut) + 1, dtype=int), np.append(list(cut.values()), end))),
        shape=(1, len(costs)),
    )
    cost_vector = np.array(costs)
    result = linprog(
        cost_vector,
        A_ub=matrix,
        b_ub=np.array(upper),
        A_eq=ends_with,
        b_eq=np.array([first_tail * slot_h]),
        bounds=bounds,
        method="highs",
    )
    if result.status == 2:
        raise NoScheduleWithin(f"no schedule of this trace on this fleet has a mean JCT of {max_mean_jct_h} h or less")
    if result.status != 0:
        raise ValueError(f"the cost floor's programme did not solve: {result.message}")
    end_h = float(result.x[end])
    if reserved_rate > 0 and end_h > horizon_h - slot_h:
        raise ValueError(f"the cheapest end ({end_h:.0f} h) lies at the bound's horizon: raise tail_h")
    if reserved_rate == 0:
        # The end costs nothing then, so the programme may put it anywhere after the work: report the end of the
        # last slot that holds any.
        busy = [s for (s, _), columns in usage_of.items() if result.x[columns].sum() > 1e-9]
        end_h = max(earliest_end_h, min(end_h, (max(busy, default=0) + 1) * slot_h))
    before = reserved_cost(catalog, fleet, clock, earliest_end_h * HOUR_S)
    reserved = before + reserved_rate * cheapest_hour * (end_h - earliest_end_h)
    usage: dict[str, float] = {}
    for (_, i), columns in usage_of.items():
        gpu_type, capacity_type = kind_keys[i]
        if capacity_type != CapacityType.RESERVED:
            name = f"{gpu_type.value} {capacity_type}"
            usage[name] = usage.get(name, 0.0) + float(np.dot(result.x[columns], cost_vector[columns]))
    return CostFloor(reserved + sum(usage.values()), reserved, end_h, usage, max_mean_jct_h)
