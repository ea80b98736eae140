"""Valley scheduling: when a deferrable TrainingJob should start so that its run costs least in time-of-use power
and still ends by its deadline. Pure; no I/O (the simulator calls it as the operator does).

The price of a node-hour is its catalog price times the time-of-use multiplier of the hour
(:meth:`strata_api.catalog.Catalog.power_multiplier`), so for a run of duration ``d`` started at ``s`` the price
scales with

    cost(s) = integral from s to s + d of m(t) dt

where ``m`` is the job's tariff: one multiplier per tariff hour, repeating every day. ``cost`` is piecewise linear
in ``s`` and bends only where ``s`` or ``s + d`` crosses an hour boundary, so its minimum over the allowed starts
``[now, latest]`` is at ``now``, ``latest``, an hour boundary ``b`` or ``b - d`` inside that range: those few
candidates are compared exactly, the earliest of equal cost wins (a later start only adds risk). ``latest`` is the
deadline less the expected duration; a job without a deadline may wait up to one day (one cycle of the tariff,
beyond which no start is cheaper). Since the tariff repeats daily, no start more than a day ahead can be cheaper
than one within the day, which bounds the candidates to about 50 whatever the deadline.

A deadline that leaves no slack starts the job now; one already impossible (``now + d`` past it) starts it now too,
and the plan says so.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property

from strata_api import GPUType, ResourcePool, Scheduling, TrainingJob, format_time
from strata_api.catalog import HOURS_PER_DAY, Catalog
from strata_operator.core.observed import Node

HOUR_S = 3600.0
DAY = timedelta(days=1)
UNDEFERRED_HORIZON = DAY
"""How long a deferrable job without a deadline may wait: one cycle of the tariff."""
SAVING_EPSILON = 1e-9
"""Relative cost below which two starts count as equally cheap (floating-point noise is no saving)."""


@dataclass(frozen=True)
class Tariff:
    """Time-of-use multipliers, one per tariff hour (index 0 starts ``offset_s`` seconds after UTC midnight)."""

    hourly: tuple[float, ...]
    offset_s: float = 0.0

    @cached_property
    def _before(self) -> tuple[float, ...]:
        """Multiplier-hours of the tariff day before each hour (and the whole day last)."""
        return tuple(itertools.accumulate(self.hourly, initial=0.0))

    def hours(self, moment: datetime) -> float:
        """Tariff hours since the tariff's first midnight at or after the Unix epoch (itself a UTC midnight)."""
        return (moment.timestamp() - self.offset_s) / HOUR_S

    def moment(self, hours: float) -> datetime:
        """The moment ``hours`` tariff hours after the tariff's epoch (to the microsecond)."""
        return datetime.fromtimestamp(hours * HOUR_S + self.offset_s, UTC)

    def _integral_to(self, hours: float) -> float:
        """Multiplier-hours from the tariff's epoch to ``hours``."""
        day, within = divmod(hours, HOURS_PER_DAY)
        hour = min(int(within), HOURS_PER_DAY - 1)
        return day * self._before[-1] + self._before[hour] + (within - hour) * self.hourly[hour]

    def cost(self, start: datetime, duration: timedelta) -> float:
        """Multiplier-hours of a run of ``duration`` from ``start``: its price relative to one at multiplier 1."""
        return self.cost_hours(self.hours(start), duration.total_seconds() / HOUR_S)

    def cost_hours(self, start: float, length: float) -> float:
        """:meth:`cost` in tariff hours: a run of ``length`` hours from ``start``."""
        return self._integral_to(start + length) - self._integral_to(start)


def job_tariff(catalog: Catalog, zones: Iterable[str | None], offset_s: float = 0.0) -> Tariff:
    """The tariff a job will pay: the catalog's multipliers of the zones its nodes may be in, averaged hour by hour
    (the extender picks the node later, so no one zone is known); the default table when no zone is known."""
    tables = [
        tuple(catalog.power_multiplier(zone, hour) for hour in range(HOURS_PER_DAY))
        for zone in sorted(set(zones), key=str)
    ] or [catalog.power_default]
    return Tariff(tuple(sum(column) / len(tables) for column in zip(*tables, strict=True)), offset_s)


@dataclass(frozen=True)
class ValleyPlan:
    """When a deferrable job starts, and what that saves against starting when it was submitted."""

    start: datetime
    duration: timedelta
    deadline: datetime | None
    cost: float
    """Multiplier-hours of the run from ``start`` (see :meth:`Tariff.cost`)."""
    submitted_cost: float
    """Multiplier-hours of the run had it started when submitted."""
    deadline_missed: bool = False
    """Even starting now the run ends after its deadline: the job starts now."""

    @property
    def saving(self) -> float:
        """Fraction of the run's price saved against starting when submitted (0 when nothing is saved)."""
        return max(0.0, 1 - self.cost / self.submitted_cost) if self.submitted_cost > 0 else 0.0

    def defers(self, now: datetime) -> bool:
        return self.start > now

    @property
    def message(self) -> str:
        """Why the job waits: the window, its mean multiplier, the saving and the deadline. It does not depend on
        the moment it is written, so the status is written once, not at every admission pass."""
        hours = self.duration.total_seconds() / HOUR_S
        end = self.start + self.duration
        by = f", ending by its deadline {format_time(self.deadline)}" if self.deadline else ""
        return (
            f"deferred to the cheapest time-of-use power window that meets its deadline: {format_time(self.start)} "
            f"to {format_time(end)} at a mean multiplier of {self.cost / hours:.3g} (against "
            f"{self.submitted_cost / hours:.3g} from submission), {self.saving:.1%} cheaper{by}"
        )

    @property
    def missed_message(self) -> str:
        """What admission adds when the deadline cannot be met."""
        assert self.deadline is not None
        return (
            f"started at once: its expected {format_seconds(self.duration)} run cannot end by its deadline "
            f"{format_time(self.deadline)} (spec.scheduling)"
        )


def format_seconds(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds}s"


def plan_start(
    now: datetime, submitted: datetime, deadline: datetime | None, duration: timedelta, tariff: Tariff
) -> ValleyPlan:
    """The start in ``[now, deadline - duration]`` (``[now, now + 1 day]`` without a deadline) where the run costs
    least under ``tariff``, the earliest of equal cost; ``now`` when the deadline leaves no slack or cannot be met."""
    submitted_cost = tariff.cost(submitted, duration)
    latest = deadline - duration if deadline is not None else now + UNDEFERRED_HORIZON
    if latest <= now:
        missed = deadline is not None and now + duration > deadline
        return ValleyPlan(now, duration, deadline, tariff.cost(now, duration), submitted_cost, missed)
    latest = min(latest, now + DAY)  # the tariff repeats daily: no later start is cheaper than one within a day
    # in tariff hours: now, latest, and every hour boundary b with b or b - duration between them
    first, last, length = tariff.hours(now), tariff.hours(latest), duration.total_seconds() / HOUR_S
    candidates = {first, last}
    for boundary in range(math.floor(first) + 1, math.ceil(last + length)):
        candidates.update(start for start in (boundary, boundary - length) if first <= start <= last)
    best, best_cost = first, tariff.cost_hours(first, length)
    for start in sorted(candidates):
        cost = tariff.cost_hours(start, length)
        if cost < best_cost * (1 - SAVING_EPSILON):
            best, best_cost = start, cost
    moment = now if best == first else latest if best == last else tariff.moment(best)
    return ValleyPlan(moment, duration, deadline, best_cost, submitted_cost)


def plan_for(
    scheduling: Scheduling, created: datetime, submitted: datetime, now: datetime, tariff: Tariff
) -> ValleyPlan | None:
    """A job's plan from its ``spec.scheduling``; None when it is not deferrable (or gives no expected duration,
    which the CRD requires of a deferrable job)."""
    if not scheduling.deferrable or not scheduling.expected_duration_seconds:
        return None
    duration = timedelta(seconds=scheduling.expected_duration_seconds)
    return plan_start(now, submitted, scheduling.deadline_after(created), duration, tariff)


ZoneIndex = Mapping[tuple[GPUType | None, str | None], frozenset[str | None]]
"""The zones of the schedulable nodes of each (GPU type, capacity type); GPU type None for CPU nodes."""


def fleet_zones(fleet: Iterable[Node]) -> ZoneIndex:
    """Index the fleet's zones once per admission pass (every deferrable job then reads a few sets, not the fleet)."""
    zones: dict[tuple[GPUType | None, str | None], set[str | None]] = {}
    for node in fleet:
        if node.schedulable:
            zones.setdefault((node.gpu_type, node.capacity_type), set()).add(node.zone)
    return {kind: frozenset(found) for kind, found in zones.items()}


def plan_job(
    job: TrainingJob,
    pool: ResourcePool | None,
    zones: ZoneIndex,
    catalog: Catalog,
    now: datetime,
    tariff_offset_s: float = 0.0,
) -> ValleyPlan | None:
    """A queued job's plan, priced at the tariff of the zones of the nodes it may run on (its GPU types and capacity
    types that its pool allows; CPU nodes for a CPU job). None when it is not deferrable, or was admitted before:
    a requeued job (preempted, restarted) has begun its run and resumes as soon as it can."""
    if job.status.attempt > 0 or not job.spec.scheduling.deferrable:
        return None
    estimate = job.spec.scheduling.expected_duration_seconds
    capacity = set(job.spec.resources.capacity_types) & (set(pool.capacity_types_for(estimate)) if pool else set())
    allowed: set[GPUType] = set(job.spec.gpu_types) & (set(pool.gpu_types) if pool else set())
    types: set[GPUType | None] = {None} if job.spec.on_cpu else set(allowed)
    tariff = kinds_tariff(types, capacity, zones, catalog, tariff_offset_s)
    return plan_for(job.spec.scheduling, job.created, job.status.submitted_at or job.created, now, tariff)


def kinds_tariff(
    gpu_types: Iterable[GPUType | None],
    capacity_types: Iterable[str],
    zones: ZoneIndex,
    catalog: Catalog,
    tariff_offset_s: float = 0.0,
) -> Tariff:
    """The tariff of a job that may run on nodes of these GPU types (None: CPU nodes) and capacity types: that of
    the zones such nodes are in (:func:`job_tariff`)."""
    capacity = set(capacity_types)
    where = set().union(*(zones.get((gpu_type, kind), ()) for gpu_type in set(gpu_types) for kind in capacity))
    return job_tariff(catalog, where, tariff_offset_s)
