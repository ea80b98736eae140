"""What the simulator replays: jobs, the fleet (the ``examples/fleet.yaml`` format, scaled) and the cost model.

Time is in seconds from the start of the replay; hour ``h`` of the replay is UTC hour ``h % 24`` (the replay
starts at midnight UTC), which is what the catalog's time-of-use table is indexed by.

Cost model, applied to every policy alike (see docs/simulation.md):

- a reserved node is paid every hour of the replay, used or not: ``price * power(hour)``;
- an on-demand or spot GPU is paid while a job holds it: ``price / GPUs per node * power(hour)`` per GPU-hour;
- ``price`` is the catalog's dollars per node-hour for the node's instance and capacity type, ``power`` the
  catalog's time-of-use multiplier of the hour (:meth:`strata_api.catalog.Catalog.power_multiplier`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from strata_api import CapacityType, GPUType
from strata_api.catalog import HOURS_PER_DAY, Catalog
from strata_api.fleet import FleetError, read_fleet

HOUR_S = 3600.0


HIGH_POOL, LOW_POOL = "high", "low"
"""The two pools every trace is mapped to: high priority (not preemptible) and low priority (preemptible)."""


class SimInputError(ValueError):
    """A trace or fleet the simulator cannot replay; the message names the file, row and column, or the job."""


@dataclass(frozen=True)
class Job:
    """One job of a trace."""

    key: str
    arrival_s: float
    workers: int
    gpus_per_worker: int
    work_h: float
    """Hours the whole gang runs on the reference GPU (H100, relative throughput 1.0)."""
    pool: str = LOW_POOL
    checkpoint_s: float | None = 1800.0
    """Seconds between checkpoints; None: never checkpoints (an interruption loses everything)."""
    gpu_types: tuple[GPUType, ...] = (GPUType.H100, GPUType.MI300X)
    pods_per_group: int = 1
    """Workers of one tensor-parallel group, which share a node."""

    @property
    def gpus(self) -> int:
        return self.workers * self.gpus_per_worker


@dataclass(frozen=True)
class SimNode:
    name: str
    gpu_type: GPUType
    capacity_type: str
    instance_type: str
    gpus: int
    zone: str | None = None


@dataclass(frozen=True)
class Fleet:
    nodes: tuple[SimNode, ...]

    def gpus(self, capacity_type: str | None = None) -> int:
        return sum(n.gpus for n in self.nodes if capacity_type is None or n.capacity_type == capacity_type)

    def largest_gang(self, job: Job) -> bool:
        """Whether an empty fleet could hold the job at all (one GPU type, each group on one node)."""
        group = job.gpus_per_worker * job.pods_per_group
        groups = job.workers // job.pods_per_group
        return any(sum(n.gpus // group for n in self.nodes if n.gpu_type == t) >= groups for t in job.gpu_types)


MAX_NODES = 100_000
"""The most nodes a fleet may have after ``--scale`` (a year of a million jobs takes 1,248, docs/simulation.md):
``--scale 1e9`` would otherwise build nodes until memory runs out."""


def load_fleet(path: Path, scale: float = 1.0) -> Fleet:
    """GPU pools of a fleet file (:func:`strata_api.fleet.read_fleet`, whose errors name the file, the pool and the
    field), each pool's node count times ``scale`` (rounded, at least one node for a pool that has any); CPU pools
    (``gpu: none``) are left out. The fleet has at least one GPU node and at most :data:`MAX_NODES`."""
    if not (math.isfinite(scale) and scale > 0):
        raise SimInputError(f"--scale: expected a number more than 0, got {scale!r}")
    try:
        pools = read_fleet(path)
    except FleetError as error:
        raise SimInputError(str(error)) from error
    nodes: list[SimNode] = []
    for index, pool in enumerate(pools):
        machine = pool.machine
        if machine.gpu is None:
            continue
        too_many = f"{path}: pools[{index}].nodes: {pool.nodes} nodes x --scale {scale:g} takes the fleet past"
        too_many += f" {MAX_NODES:,} nodes"
        if pool.nodes > MAX_NODES / scale:
            raise SimInputError(too_many)
        scaled = max(1, round(pool.nodes * scale)) if pool.nodes > 0 else 0
        if len(nodes) + scaled > MAX_NODES:
            raise SimInputError(too_many)
        nodes += [
            SimNode(f"{pool.name}-{i}", machine.gpu, pool.capacity_type.value, machine.instance_type, machine.gpus,
                    pool.zone)
            for i in range(scaled)
        ]  # fmt: skip
    if not nodes:
        raise SimInputError(f"{path}: no GPU nodes (every pool has gpu: none or nodes: 0)")
    return Fleet(tuple(nodes))


def check_catalog(fleet: Fleet, catalog: Catalog) -> None:
    """Every node kind of the fleet is priced and its GPU type has a throughput, before any replay starts (the
    replay would stop at the first job placed there)."""
    for kind in nodes_by_kind(fleet).values():
        gpu_hour_price(catalog, kind[0])
        throughput(catalog, kind[0].gpu_type)


@dataclass
class PowerClock:
    """Integrals of the time-of-use multiplier over replay time, so a cost over any interval is exact."""

    catalog: Catalog
    zone: str | None = None
    _cumulative: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        total, self._cumulative = 0.0, [0.0]
        for hour in range(HOURS_PER_DAY):
            total += self.catalog.power_multiplier(self.zone, hour)
            self._cumulative.append(total)

    def hours(self, start_s: float, end_s: float) -> float:
        """Multiplier-weighted hours in ``[start_s, end_s)``: plain hours when every multiplier is 1."""
        return self._at(end_s) - self._at(start_s)

    def _at(self, t_s: float) -> float:
        hours = t_s / HOUR_S
        days, rest = divmod(hours, HOURS_PER_DAY)
        whole = math.floor(rest)
        partial = (rest - whole) * self.catalog.power_multiplier(self.zone, whole)
        return days * self._cumulative[-1] + self._cumulative[whole] + partial


def gpu_hour_price(catalog: Catalog, node: SimNode) -> float:
    """List dollars per GPU-hour of a node (:meth:`Catalog.gpu_price`); a fleet the catalog does not price is
    an input error, since every policy's cost would be wrong."""
    price = catalog.gpu_price(None, node.instance_type, node.capacity_type, node.gpus)
    if price is None:
        raise SimInputError(f"the catalog has no price for {node.instance_type} {node.capacity_type} ({node.name})")
    return price


def reserved_cost(catalog: Catalog, fleet: Fleet, clock: PowerClock, end_s: float) -> float:
    """What the reserved nodes cost over the replay, used or not."""
    return sum(
        gpu_hour_price(catalog, n) * n.gpus * clock.hours(0.0, end_s)
        for n in fleet.nodes
        if n.capacity_type == CapacityType.RESERVED
    )


def throughput(catalog: Catalog, gpu_type: GPUType) -> float:
    """Work per hour of ``gpu_type`` relative to the reference at bf16 (the catalog's row)."""
    value = catalog.relative_throughput(gpu_type.value, "bf16", {})
    if value is None or value <= 0:
        raise SimInputError(f"the catalog has no bf16 throughput for {gpu_type}")
    return value


def nodes_by_kind(fleet: Fleet) -> dict[tuple[GPUType, str], list[SimNode]]:
    kinds: dict[tuple[GPUType, str], list[SimNode]] = {}
    for node in fleet.nodes:
        kinds.setdefault((node.gpu_type, node.capacity_type), []).append(node)
    return kinds


def too_big(jobs: Sequence[Job], fleet: Fleet) -> list[Job]:
    """Jobs no placement of the empty fleet could hold: reported, never dropped silently."""
    return [job for job in jobs if not fleet.largest_gang(job)]
