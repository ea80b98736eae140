"""The schedulers compared, each a policy of the same simulator (:class:`strata_sim.engine.Policy`).

- :class:`StrataPolicy`: the operator's admission pass (:func:`strata_operator.core.admission.admit`: priority
  order, quota, all or nothing, no overtaking, preemption, the first quoted node kind that holds the gang), the
  extender's quote by node kind (:func:`strata_scheduler.scoring.rank_kinds`: cost per unit of work), workers
  placed on the admitted type's cheapest kind first by the same cost, and, with ``holdback``, the extender's
  reserved hold-back from its own forecaster (:func:`strata_scheduler.forecasting.predict`) and rule
  (:func:`strata_scheduler.filtering.reserved_holdback`) placed as admission expects
  (:class:`strata_operator.core.holdback.ReservedHold`).
- :class:`PerPodPolicy` ``default``: kube-scheduler without gangs: pods in arrival order, each on the node with
  the most free GPUs (LeastAllocated), any capacity type; a gang may be half placed.
- :class:`PerPodPolicy` ``karpenter``: the same per-pod queue, each pod on the cheapest list price per GPU-hour
  (no interruption risk, no throughput normalisation), packing nodes (MostAllocated) among equals.
- :class:`KueuePolicy`: one strict-FIFO queue per pool (higher-priority pools first), all-or-nothing admission
  of a gang onto the first flavor that holds it whole, flavors reserved > on-demand > spot; no preemption.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import numpy as np

from strata_api import (
    MAX_EXPECTED_DURATION_SECONDS,
    CapacityType,
    Consolidation,
    GPUType,
    PodContract,
    ResourcePool,
    Scheduling,
)
from strata_api.catalog import HOURS_PER_DAY, Catalog
from strata_api.holdback import ReservedHoldBack
from strata_api.nodes import NodeFacts
from strata_operator.core.admission import AdmittedGang, Decision, GangRequest, admit, hold_rank
from strata_operator.core.holdback import ReservedHold
from strata_operator.core.observed import Node
from strata_operator.core.room import Kind, Room
from strata_operator.core.valley import ValleyPlan, fleet_zones, kinds_tariff, plan_for
from strata_scheduler.filtering import HoldBack, reserved_holdback
from strata_scheduler.forecasting import ForecastConfig, predict
from strata_scheduler.scoring import rank_kinds
from strata_scheduler.state import ReservedCapacity
from strata_scheduler.views import PodView
from strata_sim.engine import Policy, Run, SimState, fill_order
from strata_sim.model import HIGH_POOL, HOUR_S, LOW_POOL, Fleet, Job, SimNode, gpu_hour_price

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
"""Replay time 0 as a timestamp (admission orders by datetimes); a midnight UTC, as the cost model assumes."""
HIGH_PRIORITY = 100
"""The extender's high-priority line (its default); the high pool sits on it, the low pool below."""
CAPACITY_ORDER = (CapacityType.RESERVED.value, CapacityType.ON_DEMAND.value, CapacityType.SPOT.value)


def expected_duration_s(job: Job) -> int:
    """The job's ``expectedDurationSeconds`` as the simulator tells admission and ``bench/sim/fidelity.py`` the
    control plane: its work as reference hours, in whole seconds within the API's bounds (1 s to 30 days), for the
    whole run whatever was saved before. It is the trace's own run time, so the estimate is exact on H100 (for a
    run under 30 days) and 15% short on MI300X (0.85 of the throughput); users' estimates are rarely as good."""
    return max(1, min(round(job.work_h * HOUR_S), MAX_EXPECTED_DURATION_SECONDS))


DEFRAGMENT_AFTER_S = round(6 * HOUR_S)
"""``strata-defrag``'s ``defragmentAfterSeconds`` on both pools unless ``--defragment-after-h`` says otherwise."""
LONG_JOB_S = round(8 * HOUR_S)
"""``strata-long-no-on-demand``'s pools' ``onDemandMaxDurationSeconds`` unless ``--long-job-h`` says otherwise:
jobs expected to run longer take reserved or spot capacity only."""
VALLEY_SLACK_S = round(12 * HOUR_S)
"""``strata-valley``: each low-priority job is deferrable with a deadline this long after its run would end had it
started on arrival (``deadlineSeconds`` = its ``expectedDurationSeconds`` + this), unless ``--valley-slack-h``
says otherwise."""
CONSOLIDATION = Consolidation()
"""``strata-consolidate``'s pools' ``consolidation`` unless ``--consolidate-h`` or ``--consolidate-after-s`` say
otherwise: the API's defaults."""
DAY_S = round(24 * HOUR_S)
"""``strata-valley`` makes jobs deferrable only if expected to run at most a day: a longer run spans every hour of
the daily tariff, so no start saves more than a sliver of its price."""
EVERY_CAPACITY_TYPE = frozenset(CapacityType)
NOT_ON_DEMAND = frozenset({CapacityType.RESERVED, CapacityType.SPOT})


def pools(
    fleet: Fleet,
    defragment_after_s: int | None = None,
    on_demand_max_duration_s: int | None = None,
    consolidation: Consolidation | None = None,
) -> dict[str, ResourcePool]:
    """The two pools every trace maps to; neither quota binds (each may use the whole fleet).
    ``defragment_after_s``: both pools' ``defragmentAfterSeconds`` (None: neither moves jobs);
    ``on_demand_max_duration_s``: both pools' ``onDemandMaxDurationSeconds`` (None: no line);
    ``consolidation``: both pools' ``consolidation`` (None: no job is moved to cheaper capacity)."""
    every = EVERY_CAPACITY_TYPE
    types = frozenset(GPUType)
    gpus = fleet.gpus()
    high = replace(
        ResourcePool(HIGH_POOL, HIGH_PRIORITY, types, gpus, None, every, preemptible=False),
        defragment_after_s=defragment_after_s,
        on_demand_max_duration_s=on_demand_max_duration_s,
        consolidation=consolidation,
    )
    return {HIGH_POOL: high, LOW_POOL: replace(high, name=LOW_POOL, priority=10, preemptible=True)}


class PerPodPolicy:
    """Pods in arrival order, each placed alone on the best node by ``rank`` (lower first); no gangs."""

    def __init__(self, name: str, rank: Callable[[SimNode, int], tuple[float | str, ...]]) -> None:
        self.name = name
        self.rank = rank
        """(node, its free GPUs) -> sort key; the first node with room wins."""

    def tick(self, now_s: float, state: SimState) -> bool:
        return False

    def schedule(self, now_s: float, state: SimState) -> None:
        partial = [run.job for run in state.runs.values() if run.workers < run.job.workers]
        for job in sorted([*partial, *state.queue.values()], key=lambda j: (j.arrival_s, j.key)):
            run = state.runs.get(job.key)
            types = (run.gpu_type,) if run else job.gpu_types
            placed = run.workers if run else 0
            while placed < job.workers:
                best = min(
                    (
                        (self.rank(state.nodes[name], free), name)
                        for name, free in state.free.items()
                        if free >= job.gpus_per_worker and state.nodes[name].gpu_type in types
                    ),
                    default=None,
                )
                if best is None:
                    break
                node = state.nodes[best[1]]
                state.place(job, node.gpu_type, node.name, 1)
                types, placed = (node.gpu_type,), placed + 1


def default_scheduler() -> PerPodPolicy:
    """kube-scheduler's LeastAllocated: the node with the largest free share of its GPUs."""
    return PerPodPolicy("default", lambda node, free: (-free / node.gpus, node.name))


def karpenter_like(catalog: Catalog) -> PerPodPolicy:
    """Cheapest list price per GPU-hour first, then the fullest node (bin packing)."""
    return PerPodPolicy("karpenter", lambda node, free: (gpu_hour_price(catalog, node), free, node.name))


class KueuePolicy:
    """Strict FIFO per pool queue, gangs admitted whole onto the first flavor that holds them."""

    name = "kueue"

    def __init__(self, pools: Mapping[str, ResourcePool]) -> None:
        self.pools = pools

    def tick(self, now_s: float, state: SimState) -> bool:
        return False

    def schedule(self, now_s: float, state: SimState) -> None:
        waiting = state.waiting()
        for pool in sorted(self.pools.values(), key=lambda p: -p.priority):
            for job in (j for j in waiting if j.pool == pool.name):
                if not self._admit(job, state) and self._could_fit(job, state):
                    break  # StrictFIFO: the head blocks its queue (one no flavor could ever hold is inadmissible)

    def _could_fit(self, job: Job, state: SimState) -> bool:
        group = job.gpus_per_worker * job.pods_per_group
        flavors: dict[tuple[GPUType, str], int] = {}
        for node in state.nodes.values():
            if node.gpu_type in job.gpu_types:
                kind = (node.gpu_type, node.capacity_type)
                flavors[kind] = flavors.get(kind, 0) + node.gpus // group
        return any(slots >= job.workers // job.pods_per_group for slots in flavors.values())

    def _admit(self, job: Job, state: SimState) -> bool:
        group = job.gpus_per_worker * job.pods_per_group
        groups = job.workers // job.pods_per_group
        for capacity in CAPACITY_ORDER:
            for gpu_type in job.gpu_types:
                kind = (gpu_type, capacity)
                names = [n for n, node in state.nodes.items() if (node.gpu_type, node.capacity_type) == kind]
                if sum(state.free[n] // group for n in names) < groups:
                    continue
                for _ in range(groups):  # each group on the node with the most free GPUs (LeastAllocated)
                    node = fill_order((n for n in names if state.free[n] >= group), state, True)[0]
                    state.place(job, gpu_type, node, job.pods_per_group)
                return True
        return False


@dataclass(frozen=True)
class HoldBackSettings:
    """How the simulated extender forecasts high-priority demand for the hold-back."""

    refit_every: int = 12
    """Ticks between forecasts (at the engine's 5-minute tick: hourly)."""
    history_s: float = 3 * 86400.0
    """Demand history each forecast sees."""
    config: ForecastConfig = field(default_factory=lambda: ForecastConfig(calibration_days=2.0))
    """The extender's forecaster settings, with a shorter calibration window than its default week so that a
    month of replay refits hourly in seconds (documented in docs/simulation.md)."""


class StrataPolicy:
    """Strata's admission and placement; ``holdback`` adds the forecast hold, ``time_of_use`` prices the hour."""

    def __init__(
        self,
        fleet: Fleet,
        catalog: Catalog,
        holdback: HoldBackSettings | None = None,
        time_of_use: bool = True,
        name: str = "strata",
        defragment_after_s: int | None = None,
        capacity_types: Callable[[Job], frozenset[CapacityType]] = lambda job: EVERY_CAPACITY_TYPE,
        on_demand_max_duration_s: int | None = None,
        deadline_s: Callable[[Job], int | None] = lambda job: None,
        consolidation: Consolidation | None = None,
    ) -> None:
        self.name = name
        self.capacity_types = capacity_types
        """A job's ``spec.resources.capacityTypes``: the capacity types it asks for."""
        self.deadline_s = deadline_s
        """A deferrable job's ``spec.scheduling.deadlineSeconds`` (valley scheduling); None: the job is not
        deferrable."""
        self.pools = pools(fleet, defragment_after_s, on_demand_max_duration_s, consolidation)
        self.consolidating = consolidation is not None
        """Whether a pass may move running jobs (rule 11), so passes run with nothing queued too."""
        self._last_tick = -1.0
        self.catalog = catalog if time_of_use else replace(catalog, power_default=(1.0,) * HOURS_PER_DAY, power={})
        self.holdback = holdback
        self.nodes = [
            Node(n.name, n.gpu_type, n.capacity_type, n.gpus, True, None, n.instance_type, zone=n.zone)
            for n in fleet.nodes
        ]
        self.zones = fleet_zones(self.nodes)
        self.plans: dict[str, ValleyPlan] = {}
        """Deferrable jobs' valley plans, made at their first pass (:meth:`_plan`)."""
        self.empty = Room(self.nodes, {n.name: n.gpus for n in fleet.nodes})
        """The fleet with every GPU free, for admission (built once)."""
        self._free_room: tuple[SimState, Room] | None = None
        """The replay whose free GPUs :meth:`_room` keeps, and its room."""
        self.facts = {
            (n.gpu_type, n.capacity_type): NodeFacts(
                n.name,
                n.gpu_type,
                CapacityType(n.capacity_type),
                n.instance_type,
                n.zone,
                {n.gpu_type.resource: n.gpus},
                n.gpu_type.resource,
                n.gpus,
                None,
                True,
            )
            for n in fleet.nodes
        }
        """One node of each kind: the cost formula reads only what a kind shares."""
        self.reserved_total = {
            t: sum(n.gpus for n in fleet.nodes if n.gpu_type == t and n.capacity_type == CapacityType.RESERVED)
            for t in GPUType
        }
        self.history: dict[GPUType, list[tuple[float, float]]] = {t: [] for t in GPUType}
        self.upper: dict[str, float] = {}
        self.fitted: dict[GPUType, tuple[int, bytes, bytes]] = {}
        """The series each GPU type's forecast was last fitted on (:meth:`_series`)."""
        self.refits_skipped = 0
        """Refits left out because a type's series was the one its last forecast was fitted on."""
        self.ticks = 0
        self.unplaced = 0
        """Gangs admission admitted that the extender's placement (cheapest kind first) could not hold whole at
        that moment (issue 21, finding 4: admission counted a gang best fit over every capacity type before it
        counted on the quote's kinds cheapest first). They stay queued (the real gang's pods would stay
        Pending)."""
        self.dearer = 0
        """Gangs placed on a node kind (GPU type x capacity type) while a kind cheaper per unit of work for them
        (:meth:`_cost`) could hold the whole gang at that moment, the hold respected (issue 21, finding 6), and
        admission's rule 3 did not keep it off that kind's type."""
        self.dearer_kept_off = 0
        """The same where every such cheaper kind's type was reserved by a waiting head (rule 3, by design)."""
        self.moves = 0
        """Jobs admission moved off a node to admit a gang that had waited past its pool's
        ``defragmentAfterSeconds`` (rule 10; counted in ``preemptions`` too)."""
        self.consolidations = 0
        """Running jobs admission moved to cheaper capacity (rule 11; not counted in ``preemptions``)."""
        self.deferred = 0
        """Deferrable jobs whose valley plan started them later than their arrival."""
        self.deferred_h = 0.0
        """Their planned deferrals, summed, in hours."""
        self.preemptions: Counter[tuple[str, str]] = Counter()
        """Admission's preemptions by (victim, preemptor): the same pair many times over is a livelock (issue 21,
        finding 8), which the report's line names."""
        self._hour = -1
        self._quotes: dict[str, dict[tuple[GPUType, str], tuple[float, float]]] = {}
        """This hour's quote per job (:meth:`_ranked`); a quote changes only with the hour's power price."""
        self._gangs: dict[str, tuple[Run, AdmittedGang]] = {}
        """Running jobs as admission sees them (:meth:`_admitted`); those that ended are dropped hourly."""
        self._gangs_hour = -1
        self._requests: dict[tuple[str, tuple[tuple[GPUType, str], ...]], GangRequest] = {}
        """This hour's requests per job and quoted kinds (:meth:`_request`), as a pass asks for every queued and
        running job and most are asked again, alike, at the next pass."""
        self.decision: Decision | None = None
        """The last admission pass's decision (why each job waits), for measurements such as
        ``bench/sim/idle_time.py``."""

    # -- the extender's view ------------------------------------------------------------------------------------
    def _ranked_uncached(self, job: Job, hour: int) -> dict[tuple[GPUType, str], tuple[float, float]]:
        """The job's node kinds in the extender's quote order (:func:`strata_scheduler.scoring.rank_kinds`, one
        node of each kind), each with its cost per unit of work (0 on reserved: sunk) and its list cost."""
        contract = PodContract(
            job=job.key,
            gang_size=job.workers,
            tp_size=job.pods_per_group,
            tp_group=None,
            priority=self.pools[job.pool].priority,
            gpu_types=frozenset(job.gpu_types),
            capacity_types=self._allowed_capacity(job),
            checkpoint_interval_s=job.checkpoint_s,
            expected_runtime_s=job.work_h * HOUR_S,
            precision="bf16",
            throughput_override={},
            deferrable=self.deferrable(job),
        )
        requests = {job.gpu_types[0].resource: job.gpus_per_worker}
        pod = PodView("", "sim", job.key, None, "Pending", requests, contract, job.pool)
        facts = [f for kind, f in self.facts.items() if kind[0] in job.gpu_types and kind[1] in contract.capacity_types]
        ranked = rank_kinds(self.catalog, pod, facts, hour)
        return {(k.gpu_type, str(k.capacity_type)): (k.cost, k.listed) for k in ranked}

    def _allowed_capacity(self, job: Job) -> frozenset[str]:
        """The capacity types the job's pods ask for, as the operator writes them (``core.pods``): its own and its
        pool's for its run-time estimate."""
        return self.capacity_types(job) & self.pools[job.pool].capacity_types_for(expected_duration_s(job))

    def _ranked(self, job: Job, hour: int) -> dict[tuple[GPUType, str], tuple[float, float]]:
        """:meth:`_ranked_uncached`, kept for the hour (the simulator's time only moves forward)."""
        if hour != self._hour:
            self._hour, self._quotes, self._requests = hour, {}, {}
        ranked = self._quotes.get(job.key)
        if ranked is None:
            ranked = self._quotes[job.key] = self._ranked_uncached(job, hour)
        return ranked

    def _kinds(self, job: Job, hour: int) -> list[tuple[GPUType, str]]:
        """The job's node kinds, cheapest per unit of work first."""
        return list(self._ranked(job, hour))

    def _cost(self, kind: tuple[GPUType, str], job: Job, hour: int) -> tuple[float, float]:
        """The cost per unit of work on a node of ``kind``, then its list cost (inf where it cannot be priced)."""
        return self._ranked(job, hour).get(kind, (float("inf"), float("inf")))

    def _request(self, job: Job, hour: int, room: Mapping[Kind, int]) -> GangRequest:
        """The job as admission sees it, with the extender's quote: the node kinds with room for one worker now
        (``room``: the most free GPUs on one node of each kind; the quote prices only the nodes its filter
        passes), cheapest first, and the GPU types in the order of their cheapest such kind, then the types
        without room."""
        kinds = self._ranked(job, hour)
        quoted = tuple(k for k in kinds if room.get(k, 0) >= job.gpus_per_worker)
        request = self._requests.get((job.key, quoted))
        if request is not None:
            return request
        order = tuple(dict.fromkeys([k[0] for k in quoted] + [k[0] for k in kinds]))
        request = self._requests[job.key, quoted] = GangRequest(
            key=job.key,
            pool=job.pool,
            workers=job.workers,
            gpus_per_worker=job.gpus_per_worker,
            pods_per_group=job.pods_per_group,
            gpu_types=order,
            capacity_types=self.capacity_types(job),
            submitted=EPOCH + timedelta(seconds=job.arrival_s),
            kinds=quoted,
            expected_duration_s=expected_duration_s(job),
        )
        return request

    def deferrable(self, job: Job) -> bool:
        return self.deadline_s(job) is not None

    def _rank(self, job: Job) -> int:
        """The priority the extender's hold-back sees for the job's workers (admission's :func:`hold_rank`)."""
        return hold_rank(self.deferrable(job), self.pools[job.pool])

    def _high(self, job: Job) -> bool:
        """Whether the extender counts the job's workers as high-priority demand."""
        return self._rank(job) >= HIGH_PRIORITY

    def _plan(self, job: Job, now_s: float, state: SimState) -> ValleyPlan | None:
        """A deferrable job's valley plan as the operator's admission pass makes it (:func:`plan_for` on the tariff
        of the zones of the kinds it may run on), for a job never started: a preempted or reclaimed one has begun
        its run and resumes as soon as it can. Made at the job's first pass and kept: with a deadline, any later
        pass before the planned start finds the same start (the cheapest of a range that still holds it)."""
        deadline_s = self.deadline_s(job)
        if deadline_s is None or state.records[job.key].first_start_s is not None:
            return None
        plan = self.plans.get(job.key)
        if plan is None:
            duration = expected_duration_s(job)
            scheduling = Scheduling(deferrable=True, deadline_seconds=deadline_s, expected_duration_seconds=duration)
            submitted = EPOCH + timedelta(seconds=job.arrival_s)
            tariff = kinds_tariff(job.gpu_types, self._allowed_capacity(job), self.zones, self.catalog)
            plan = plan_for(scheduling, submitted, submitted, EPOCH + timedelta(seconds=now_s), tariff)
            assert plan is not None  # deferrable, with an expected duration
            self.plans[job.key] = plan
            if plan.defers(EPOCH + timedelta(seconds=now_s)):
                self.deferred += 1
                self.deferred_h += (plan.start - submitted).total_seconds() / HOUR_S
                state.wake_s = max(state.wake_s, (plan.start - EPOCH).total_seconds())
        return plan

    def _deferred(self, request: GangRequest, job: Job, now_s: float, state: SimState) -> GangRequest:
        """``request`` as the operator reads a deferrable job: marked so, with its valley plan while it has one."""
        if not self.deferrable(job):
            return request
        return replace(request, deferrable=True, valley=self._plan(job, now_s, state))

    def _hold(self, state: SimState) -> ReservedHoldBack | None:
        if self.holdback is None or not self.upper:
            return None
        reserved = {}
        for gpu_type, total in self.reserved_total.items():
            used = used_high = 0
            for run in state.runs.values():
                gpus = sum(g for n, g in run.placed.items() if state.nodes[n].capacity_type == CapacityType.RESERVED)
                if run.gpu_type == gpu_type:
                    used += gpus
                    used_high += gpus if self._high(run.job) else 0
            reserved[gpu_type.value] = ReservedCapacity(total, used, used_high)
        return reserved_holdback(reserved, HoldBack(self.upper), HIGH_PRIORITY)

    # -- the policy ---------------------------------------------------------------------------------------------
    def tick(self, now_s: float, state: SimState) -> bool:
        since, self._last_tick = self._last_tick, now_s
        due = self._defragment_due(since, now_s, state) or self._valley_due(since, now_s, state)
        return self._forecast_tick(now_s, state) or due

    def _valley_due(self, since: float, now_s: float, state: SimState) -> bool:
        """Whether a deferred job's planned start came since the last tick: the operator decides every admission
        interval, the replay on events, so a pass then starts it (ticks fall on every hour boundary, where most
        planned starts are; the others start up to one tick late)."""
        return bool(self.plans) and any(
            (plan := self.plans.get(key)) is not None and since < (plan.start - EPOCH).total_seconds() <= now_s
            for key in state.queue
        )

    def _defragment_due(self, since: float, now_s: float, state: SimState) -> bool:
        """Whether a queued job's wait reached its pool's ``defragmentAfterSeconds`` since the last tick: the
        operator decides every admission interval, the replay on events, so a pass then lets rule 10 act."""
        if all(p.defragment_after_s is None for p in self.pools.values()):
            return False
        return any(
            (after := self.pools[job.pool].defragment_after_s) is not None and since < job.arrival_s + after <= now_s
            for job in state.queue.values()
        )

    def _forecast_tick(self, now_s: float, state: SimState) -> bool:
        """Record high-priority GPU demand per type (running, and queued on its cheapest type) and refit."""
        if self.holdback is None:
            return False
        hour = int(now_s // HOUR_S)
        demand = dict.fromkeys(GPUType, 0.0)
        for run in state.runs.values():
            if self._high(run.job):
                demand[run.gpu_type] += run.job.gpus
        for job in state.queue.values():
            if self._high(job):
                demand[self._kinds(job, hour)[0][0]] += job.gpus
        for gpu_type, value in demand.items():
            self.history[gpu_type].append((now_s, value))
        self.ticks += 1
        if (self.ticks - 1) % self.holdback.refit_every:
            return False
        for gpu_type, samples in self.history.items():
            recent = [(t, v) for t, v in samples if t >= now_s - self.holdback.history_s]
            self.history[gpu_type] = recent
            times = np.array([t for t, _ in recent], dtype=np.int64) + int(EPOCH.timestamp())
            values = np.array([v for _, v in recent])
            series = self._series(times, values)
            if series == self.fitted.get(gpu_type):
                self.refits_skipped += 1
                continue  # the forecast of the same series, shifted by whole bins, is the last one
            self.fitted[gpu_type] = series
            prediction = predict(times, values, self.holdback.config, None)
            if prediction is not None:
                self.upper[gpu_type.value] = prediction.upper
        return True

    def _series(self, times: np.ndarray, values: np.ndarray) -> tuple[int, bytes, bytes]:
        """What :func:`strata_scheduler.forecasting.predict` (without a curve) reads of a series: the samples'
        times from the first one, where the first falls within its bin, and the values. Two series alike in
        these are the same series shifted by whole bins, which it forecasts alike (it reads times only to bin
        them)."""
        assert self.holdback is not None
        first = int(times[0]) if len(times) else 0
        return first % (self.holdback.config.bin_min * 60), (times - first).tobytes(), values.tobytes()

    def _admitted(self, run: Run, now_s: float) -> AdmittedGang:
        """A running job as admission sees it: every worker bound, so its request carries no quote (admission
        reads only its pool, size and key; the operator builds it from the job alone too). Kept while the run
        lasts (a started run's placement and start do not change)."""
        kept = self._gangs.get(run.job.key)
        if kept is not None and kept[0] is run:
            return kept[1]
        job = run.job
        request = GangRequest(
            key=job.key,
            pool=job.pool,
            workers=job.workers,
            gpus_per_worker=job.gpus_per_worker,
            pods_per_group=job.pods_per_group,
            gpu_types=job.gpu_types,
            capacity_types=self.capacity_types(job),
            submitted=EPOCH + timedelta(seconds=job.arrival_s),
            expected_duration_s=expected_duration_s(job),
            deferrable=self.deferrable(job),
        )
        gang = AdmittedGang(
            request,
            run.gpu_type,
            EPOCH + timedelta(seconds=now_s if run.started_s is None else run.started_s),
            dict(run.placed),
        )
        if run.started_s is not None:
            self._gangs[job.key] = (run, gang)
        return gang

    def _room(self, state: SimState) -> Room:
        """The fleet's free GPUs as admission's :class:`Room`, kept up to date from the nodes that changed since
        the last pass (``state.changed``) rather than built from every node at every pass."""
        if self._free_room is None or self._free_room[0] is not state:
            self._free_room = (state, Room(self.nodes, state.free))
        else:
            room = self._free_room[1]
            for name in state.changed:
                room.put(name, max(0, state.free[name]))
        state.changed.clear()
        return self._free_room[1]

    def schedule(self, now_s: float, state: SimState) -> None:
        hour = int(now_s // HOUR_S)
        if hour != self._gangs_hour:
            self._gangs_hour = hour
            self._gangs = {key: kept for key, kept in self._gangs.items() if state.runs.get(key) is kept[0]}
        for _ in range(3):  # a pass that preempts runs again at once, as the victims' GPUs are free now
            if not state.queue and not self.consolidating:
                return
            fleet_room = self._room(state)
            # the most free GPUs on one node of each kind (what the extender's quote needs)
            room = fleet_room.most_free()
            queue = [self._deferred(self._request(job, hour, room), job, now_s, state) for job in state.waiting()]
            admitted = [self._admitted(run, now_s) for run in state.runs.values()]
            hold = self._hold(state)
            now = EPOCH + timedelta(seconds=now_s)
            rooms = (fleet_room, self.empty)
            decision = admit(queue, admitted, self.pools, self.nodes, state.free, hold, now, rooms=rooms)
            self.decision = decision
            # rule 10's moved jobs first: the gang they made room for is placed on their GPUs in this pass
            placing = fleet_room.copy()
            moved = [p for p in decision.preempt if p.by in decision.defragmented]
            for preemption in moved:
                for name, gpus in state.runs[preemption.victim].placed.items():
                    placing.put(name, placing.free[name] + gpus)
                state.preempt(preemption.victim)
            self.moves += len(moved)
            self._place(decision.admit, state, hold, hour, decision.kept_off, placing)
            for preemption in decision.preempt:
                if preemption.by not in decision.defragmented:
                    state.preempt(preemption.victim)
                if preemption.by == preemption.victim:
                    self.consolidations += 1
                else:
                    self.preemptions[(preemption.victim, preemption.by)] += 1
            if not decision.preempt:
                return

    def _place(
        self,
        admitted: Mapping[str, GPUType],
        state: SimState,
        hold: ReservedHoldBack | None,
        hour: int,
        kept_off: Mapping[str, frozenset[GPUType]],
        room: Room,
    ) -> None:
        """Each admitted gang's groups on the cheapest capacity type first, as the extender's scores order them,
        the hold respected as admission counted it; ``room``: the fleet's free GPUs now, which this takes from."""
        held = ReservedHold(hold)
        for key, gpu_type in admitted.items():
            job = state.queue[key]
            group, groups = job.gpus_per_worker * job.pods_per_group, job.workers // job.pods_per_group
            rank = self._rank(job)
            kinds = self._kinds(job, hour)
            open_kinds = [k for k in kinds if held.fits(room, k[0], (k[1],), group, groups, rank)]
            taken: dict[str, int] = {}
            for kind in kinds:
                if kind[0] == gpu_type and groups > sum(taken.values()) // group:
                    left = groups - sum(taken.values()) // group
                    for name, gpus in held.take(room, gpu_type, (kind[1],), group, left, rank).items():
                        taken[name] = taken.get(name, 0) + gpus
            if sum(taken.values()) // group < groups:  # the extender's cheapest-first order left it no room
                for name, gpus in taken.items():
                    room.put(name, room.free[name] + gpus)
                self.unplaced += 1
                continue
            dearest = max(self._cost((gpu_type, state.nodes[name].capacity_type), job, hour) for name in taken)
            cheaper = [k for k in open_kinds if self._cost(k, job, hour) < dearest]
            avoidable = [k for k in cheaper if k[0] not in kept_off.get(key, ())]
            self.dearer += bool(avoidable)
            self.dearer_kept_off += bool(cheaper) and not avoidable
            for name, gpus in taken.items():
                state.place(job, gpu_type, name, gpus // job.gpus_per_worker)


def all_policies(
    fleet: Fleet,
    catalog: Catalog,
    defragment_after_s: int = DEFRAGMENT_AFTER_S,
    long_job_s: int = LONG_JOB_S,
    valley_slack_s: int = VALLEY_SLACK_S,
    consolidation: Consolidation = CONSOLIDATION,
) -> dict[str, Callable[[], Policy]]:
    """Every policy by name, each built fresh per run; ``defragment_after_s``: ``strata-defrag``'s; ``long_job_s``:
    the pools' ``onDemandMaxDurationSeconds`` of ``strata-long-no-on-demand`` and ``strata-consolidate``;
    ``valley_slack_s``: ``strata-valley``'s deadline past each low-priority job's expected run;
    ``consolidation``: ``strata-consolidate``'s pools' ``consolidation`` (the API's defaults unless given)."""

    def low_priority_deferrable(job: Job) -> int | None:
        duration = expected_duration_s(job)
        return duration + valley_slack_s if job.pool == LOW_POOL and duration <= DAY_S else None

    return {
        "default": default_scheduler,
        "kueue": lambda: KueuePolicy(pools(fleet)),
        "karpenter": lambda: karpenter_like(catalog),
        "strata": lambda: StrataPolicy(fleet, catalog, HoldBackSettings(), name="strata"),
        "strata-no-holdback": lambda: StrataPolicy(fleet, catalog, None, name="strata-no-holdback"),
        "strata-defrag": lambda: StrataPolicy(
            fleet, catalog, HoldBackSettings(), name="strata-defrag", defragment_after_s=defragment_after_s
        ),
        "strata-no-tou": lambda: StrataPolicy(
            fleet, catalog, HoldBackSettings(), time_of_use=False, name="strata-no-tou"
        ),
        "strata-no-on-demand": lambda: StrataPolicy(
            fleet, catalog, HoldBackSettings(), name="strata-no-on-demand", capacity_types=lambda job: NOT_ON_DEMAND
        ),
        "strata-long-no-on-demand": lambda: StrataPolicy(
            fleet, catalog, HoldBackSettings(), name="strata-long-no-on-demand", on_demand_max_duration_s=long_job_s
        ),
        "strata-consolidate": lambda: StrataPolicy(
            fleet,
            catalog,
            HoldBackSettings(),
            name="strata-consolidate",
            on_demand_max_duration_s=long_job_s,
            consolidation=consolidation,
        ),
        "strata-valley": lambda: StrataPolicy(
            fleet, catalog, HoldBackSettings(), name="strata-valley", deadline_s=low_priority_deferrable
        ),
    }
