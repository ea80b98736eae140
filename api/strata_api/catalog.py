"""The cost catalog: node prices, relative GPU throughput, time-of-use power multipliers, interruption hazards.

One YAML document (a ConfigMap key or the chart's values) holds all four tables, so an operator edits prices and
hazards in one place and neither component needs a code change for a new instance type. Both read it: the
scheduler extender scores nodes by cost per unit of work, the operator prices ``status.cost`` from the same
prices. It is part of the shared contract (:mod:`strata_api`), and the default document ships inside
the package (:data:`DEFAULT_CATALOG`), so an installed wheel has it too. Loading is strict:
a wrong value stops start-up with a message naming the entry, because a silently ignored price would quietly
steer a whole fleet. A price that is simply *absent* is not an error: such nodes get the neutral score (see
:mod:`strata_scheduler.scoring`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HOURS_PER_DAY = 24
DEFAULT_CATALOG = Path(__file__).with_name("catalog.yaml")
"""The catalog shipped with Strata (package data); the chart mounts its copy as a ConfigMap instead."""


class CatalogError(ValueError):
    """The catalog document is malformed; the message names the offending entry."""


@dataclass(frozen=True)
class Catalog:
    """Everything the scoring formula needs besides the node and the pod.

    ``prices[instance_type][capacity_type]`` is dollars per node-hour. ``throughput[precision][gpu_type]`` is the
    work a GPU type does per hour relative to the reference (H100 = 1.0) at that precision. ``power[zone]`` is 24
    multipliers, one per UTC hour, applied to the price (``power_default`` for zones not listed).
    ``hazard_per_hour[capacity_type]`` is the rate of reclaims per node-hour.
    """

    prices: Mapping[str, Mapping[str, float]]
    throughput: Mapping[str, Mapping[str, float]]
    power_default: tuple[float, ...] = (1.0,) * HOURS_PER_DAY
    power: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    hazard_per_hour: Mapping[str, float] = field(default_factory=dict)

    def price(self, instance_type: str | None, capacity_type: str | None) -> float | None:
        """Catalog price of one node-hour; None when the catalog does not list the pair."""
        if instance_type is None or capacity_type is None:
            return None
        return self.prices.get(instance_type, {}).get(capacity_type)

    def node_price(self, override: float | None, instance_type: str | None, capacity_type: str | None) -> float | None:
        """A node's price per node-hour: its own annotation (``override``, see :func:`parse_price`) wins over the
        catalog's row for its instance and capacity type; None when neither prices it."""
        return override if override is not None else self.price(instance_type, capacity_type)

    def gpu_price(
        self, override: float | None, instance_type: str | None, capacity_type: str | None, gpus: int
    ) -> float | None:
        """Dollars per GPU-hour on a node of ``gpus`` allocatable GPUs: its node-hour price (:meth:`node_price`)
        shared by its GPUs. None when nothing prices the node or it has no GPUs."""
        price = self.node_price(override, instance_type, capacity_type)
        return price / gpus if price is not None and gpus > 0 else None

    def relative_throughput(self, gpu_type: str, precision: str, override: Mapping[str, float]) -> float | None:
        """Throughput of ``gpu_type`` for a job; the job's own override wins over the catalog."""
        if gpu_type in override:
            return override[gpu_type]
        table = self.throughput.get(precision) or self.throughput.get("bf16", {})
        return table.get(gpu_type)

    def power_multiplier(self, zone: str | None, hour_utc: int) -> float:
        table = self.power.get(zone or "", self.power_default)
        return table[hour_utc % HOURS_PER_DAY]

    def hazard(self, capacity_type: str | None) -> float:
        return self.hazard_per_hour.get(capacity_type or "", 0.0)


def load_catalog(path: Path) -> Catalog:
    """Read a catalog file; a ConfigMap mounted as a volume is read the same way."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise CatalogError(f"cannot read the price catalog {path}: {error}") from error
    return parse_catalog(document, source=str(path))


def parse_catalog(document: Any, source: str = "catalog") -> Catalog:
    if not isinstance(document, Mapping):
        raise CatalogError(f"{source}: expected a mapping with prices, throughput, power and interruption")
    prices = {
        str(instance): _positive_table(table, f"{source}: prices.{instance}")
        for instance, table in _mapping(document.get("prices", {}), f"{source}: prices").items()
    }
    throughput = {
        str(precision): _positive_table(table, f"{source}: throughput.{precision}")
        for precision, table in _mapping(document.get("throughput", {}), f"{source}: throughput").items()
    }
    power = _mapping(document.get("power", {}), f"{source}: power")
    default = _hours(power.get("default", [1.0] * HOURS_PER_DAY), f"{source}: power.default")
    zones = {
        str(zone): _hours(hours, f"{source}: power.zones.{zone}")
        for zone, hours in _mapping(power.get("zones", {}), f"{source}: power.zones").items()
    }
    interruption = _mapping(document.get("interruption", {}), f"{source}: interruption")
    hazards = {
        str(capacity): _number(rate, f"{source}: interruption.hazardPerHour.{capacity}", allow_zero=True)
        for capacity, rate in _mapping(interruption.get("hazardPerHour", {}), f"{source}: hazardPerHour").items()
    }
    return Catalog(prices=prices, throughput=throughput, power_default=default, power=zones, hazard_per_hour=hazards)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CatalogError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _positive_table(value: Any, where: str) -> dict[str, float]:
    return {str(key): _number(number, f"{where}.{key}") for key, number in _mapping(value, where).items()}


def _number(value: Any, where: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CatalogError(f"{where}: expected a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "more than zero"
        raise CatalogError(f"{where}: expected a finite number {bound}, got {value!r}")
    return number


def _hours(value: Any, where: str) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != HOURS_PER_DAY:
        raise CatalogError(f"{where}: expected a list of {HOURS_PER_DAY} multipliers, one per UTC hour")
    return tuple(_number(number, f"{where}[{hour}]") for hour, number in enumerate(value))


def parse_price(value: str | None) -> float | None:
    """A node's ``strata.dev/price-per-hour`` annotation in dollars per node-hour; None (the catalog decides) when
    it is absent, not a number, not finite or not positive."""
    try:
        price = float(value) if value is not None else None
    except ValueError:
        return None
    return price if price is not None and math.isfinite(price) and price > 0 else None
