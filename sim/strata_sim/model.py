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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from strata_api import CapacityType, GPUType
from strata_api.catalog import HOURS_PER_DAY, Catalog

HOUR_S = 3600.0

MACHINES: Mapping[GPUType, tuple[str, int]] = {
    GPUType.H100: ("p5.48xlarge", 8),
    GPUType.MI300X: ("Standard_ND96isr_MI300X_v5", 8),
}
"""Instance type and GPUs per node of each GPU type, as the dev fleet's kwok nodes have them
(``strata_dev.fleet.MACHINES``; the simulator may not import the dev tooling)."""

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


def load_fleet(path: Path, scale: float = 1.0) -> Fleet:
    """GPU pools of a fleet file in the ``examples/fleet.yaml`` format, each pool's node count times ``scale``
    (rounded, at least one node for a pool that has any); CPU pools (``gpu: none``) are left out."""
    try:
        data: Any = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SimInputError(f"cannot read the fleet file {path}: {error}") from error
    if not isinstance(data, dict) or not isinstance(data.get("pools"), list):
        raise SimInputError(f"{path}: expected a mapping with a list of pools")
    nodes: list[SimNode] = []
    for index, pool in enumerate(data["pools"]):
        where = f"{path}: pools[{index}]"
        if not isinstance(pool, dict):
            raise SimInputError(f"{where}: expected a mapping")
        if pool.get("gpu") == "none":
            continue
        try:
            gpu = GPUType(pool["gpu"])
            capacity = CapacityType(pool["capacityType"]).value
            count = int(pool["nodes"])
        except (KeyError, ValueError, TypeError) as error:
            raise SimInputError(f"{where}: needs gpu (H100/MI300X/none), capacityType and nodes: {error}") from error
        instance, per_node = MACHINES[gpu]
        scaled = max(1, round(count * scale)) if count > 0 else 0
        name = str(pool.get("name", f"pool{index}"))
        zone = pool.get("zone")
        nodes += [SimNode(f"{name}-{i}", gpu, capacity, instance, per_node, zone) for i in range(scaled)]
    return Fleet(tuple(nodes))


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
