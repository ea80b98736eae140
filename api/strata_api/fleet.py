"""The fleet file (``examples/fleet.yaml``): node pools, each a machine type, a capacity type, a node count and a zone.

The dev tooling makes kwok nodes of it (``strata_dev.fleet``) and the simulator replays on it (``strata_sim.model``);
both read it here, so a file means the same fleet to each. Every error names the file, the pool and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from strata_api import AMD_PRODUCT, NVIDIA_PRODUCT, CapacityType, GPUType


@dataclass(frozen=True)
class MachineType:
    """What one node of a pool is: its instance type, CPU, memory, and GPUs with the vendor's product label."""

    instance_type: str
    cpu: str
    memory: str
    gpu: GPUType | None
    product_label: tuple[str, str] | None
    gpus: int = 8


MACHINES: dict[str, MachineType] = {
    "H100": MachineType("p5.48xlarge", "192", "2048Gi", GPUType.H100, (NVIDIA_PRODUCT, "NVIDIA-H100-80GB-HBM3")),
    "MI300X": MachineType(
        "Standard_ND96isr_MI300X_v5", "96", "1850Gi", GPUType.MI300X, (AMD_PRODUCT, "AMD_Instinct_MI300X")
    ),
    "none": MachineType("m7i.8xlarge", "32", "128Gi", None, None, gpus=0),
}
"""A pool's ``gpu`` names its machine: the instance types the price catalog prices, 8 GPUs a node."""


class FleetError(ValueError):
    """A fleet file that cannot be read or says something impossible; the message names the file, pool and field."""


@dataclass(frozen=True)
class FleetPool:
    """``nodes`` nodes of one machine type (``gpu``: a key of :data:`MACHINES`) and capacity type in one zone."""

    name: str
    gpu: str
    capacity_type: CapacityType
    nodes: int
    zone: str | None
    """None where the file names none."""

    @property
    def machine(self) -> MachineType:
        return MACHINES[self.gpu]


def read_fleet(path: Path) -> tuple[FleetPool, ...]:
    """The pools of a fleet file. Each needs ``gpu`` (a key of :data:`MACHINES`), ``capacityType`` and ``nodes``
    (a whole number of zero or more); ``name`` (default ``pool<i>``) is unique, ``zone`` optional."""
    data = _yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("pools"), list):
        raise FleetError(f"{path}: expected a mapping with a list of pools")
    pools: list[FleetPool] = []
    index_of: dict[str, int] = {}
    for index, raw in enumerate(data["pools"]):
        where = f"{path}: pools[{index}]"
        if not isinstance(raw, dict):
            raise FleetError(f"{where}: expected a mapping")
        name = str(raw.get("name", f"pool{index}"))
        if name in index_of:
            raise FleetError(f"{where}.name: {name!r} is also the name of pools[{index_of[name]}]")
        index_of[name] = index
        gpu = raw.get("gpu")
        if not isinstance(gpu, str) or gpu not in MACHINES:
            raise FleetError(f"{where}.gpu: {gpu!r} is not one of {', '.join(MACHINES)}")
        try:
            capacity = CapacityType(str(raw.get("capacityType")))
        except ValueError:
            choices = ", ".join(c.value for c in CapacityType)
            raise FleetError(f"{where}.capacityType: {raw.get('capacityType')!r} is not one of {choices}") from None
        nodes = raw.get("nodes")
        if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 0:
            raise FleetError(f"{where}.nodes: expected a whole number of zero or more, got {nodes!r}")
        zone = raw.get("zone")
        if zone is not None and not (isinstance(zone, str) and zone):
            raise FleetError(f"{where}.zone: expected a zone name, got {zone!r}")
        pools.append(FleetPool(name, gpu, capacity, nodes, zone))
    return tuple(pools)


def _yaml(path: Path) -> Any:
    """The YAML document of a file; a syntax error names the line and column, on one line."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise FleetError(f"cannot read the fleet file {path}: {error}") from error
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        at = f": line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise FleetError(f"{path}{at}: not YAML: {error.problem}") from error
    except yaml.YAMLError as error:
        raise FleetError(f"{path}: not YAML: {' '.join(str(error).split())}") from error
