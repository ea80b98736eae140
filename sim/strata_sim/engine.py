"""The discrete-event loop: arrivals, finishes, spot reclaims and forecast ticks, one heap of events.

A policy (:mod:`strata_sim.policies`) is asked where jobs go after every batch of events at one instant; it
answers through :class:`SimState` (``place``, ``preempt``). A job makes progress only while all its workers are
placed (a gang half placed by a per-pod scheduler holds GPUs and does nothing). Work is saved at every
checkpoint of the running attempt; a reclaim or a preemption loses the work since the last one and puts the job
back in the queue with its original arrival time. A reclaimed spot node is replaced at once (a new node of the
same kind), so the fleet's size never changes; its jobs must still start again.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from strata_api import CapacityType, GPUType
from strata_api.catalog import Catalog
from strata_sim.model import HOUR_S, Fleet, Job, PowerClock, SimNode, gpu_hour_price, throughput

ARRIVE, FINISH, RECLAIM, TICK = 0, 1, 2, 3


@dataclass
class Run:
    """A job that holds GPUs in this attempt."""

    job: Job
    gpu_type: GPUType
    placed: dict[str, int] = field(default_factory=dict)
    """GPUs held per node."""
    workers: int = 0
    """Workers placed so far (a gang is running when all are)."""
    since: dict[str, float] = field(default_factory=dict)
    """When the GPUs on each node were taken (for per-use billing)."""
    started_s: float | None = None
    """When the last worker was placed: progress counts from here."""
    attempt: int = 0


@dataclass
class JobRecord:
    """What the report needs of one job."""

    job: Job
    first_start_s: float | None = None
    finish_s: float | None = None
    done_h: float = 0.0
    """Reference work saved (hours of the whole gang on the reference GPU)."""
    lost_gpu_h: float = 0.0
    """GPU-hours of progress thrown away by reclaims and preemptions."""
    interruptions: int = 0
    gpu_type: GPUType | None = None
    capacity: str | None = None


class Policy(Protocol):
    name: str

    def schedule(self, now_s: float, state: SimState) -> None:
        """Place queued jobs (and preempt running ones) through ``state``."""

    def tick(self, now_s: float, state: SimState) -> bool:
        """A periodic chance to record demand and refit a forecast; True when a new pass may decide otherwise."""


@dataclass
class Series:
    """Samples over time for the plots: time, GPUs busy, GPUs held, queued jobs, spend so far."""

    t_s: list[float] = field(default_factory=list)
    busy: list[int] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    queued: list[int] = field(default_factory=list)
    spend: list[float] = field(default_factory=list)


class SimState:
    """The fleet, the queue and the running jobs during one replay; policies act only through its methods."""

    def __init__(self, fleet: Fleet, catalog: Catalog, clock: PowerClock) -> None:
        self.fleet = fleet
        self.catalog = catalog
        self.clock = clock
        self.nodes: dict[str, SimNode] = {n.name: n for n in fleet.nodes}
        self.free: dict[str, int] = {n.name: n.gpus for n in fleet.nodes}
        self.changed: set[str] = set()
        """Nodes whose free GPUs changed since a policy last cleared this (so it can keep a view of ``free`` up to
        date without reading every node at every pass)."""
        self.queue: dict[str, Job] = {}
        """Jobs waiting, in arrival order (dicts keep insertion order; a requeued job goes to the end)."""
        self.runs: dict[str, Run] = {}
        self.records: dict[str, JobRecord] = {}
        self.usage_cost = 0.0
        self.busy_gpus = 0
        self.held_gpus = 0
        self.busy_gpu_s = 0.0
        """GPU-seconds of running gangs so far (up to ``_busy_until``)."""
        self._busy_until = 0.0
        self._finish: Callable[[str, float], None] = lambda key, at: None
        self.now_s = 0.0
        self.wake_s = 0.0
        """The latest moment a policy said a pass may start a job that waits for it (valley scheduling's deferred
        starts): until then the replay goes on (its ticks run passes) even with nothing running or to arrive."""

    def place(self, job: Job, gpu_type: GPUType, node: str, workers: int) -> None:
        """Put ``workers`` workers of ``job`` on ``node`` (their GPUs must be free there)."""
        gpus = workers * job.gpus_per_worker
        if self.free[node] < gpus or self.nodes[node].gpu_type != gpu_type:
            raise ValueError(f"{job.key}: {gpus} {gpu_type} GPUs do not fit on {node} ({self.free[node]} free)")
        run = self.runs.get(job.key)
        if run is None:
            run = self.runs[job.key] = Run(job, gpu_type)
            del self.queue[job.key]
        self.free[node] -= gpus
        self.changed.add(node)
        self.held_gpus += gpus
        run.placed[node] = run.placed.get(node, 0) + gpus
        run.since.setdefault(node, self.now_s)
        run.workers += workers
        if run.workers == job.workers:
            self._start(run)

    def preempt(self, key: str) -> None:
        """Stop a running job: it loses the work since its last checkpoint and waits again."""
        self._interrupt(self.runs[key])

    def waiting(self) -> list[Job]:
        """Queued jobs in arrival order."""
        return sorted(self.queue.values(), key=lambda j: (j.arrival_s, j.key))

    def spend_now(self) -> float:
        """On-demand and spot spend so far, including what running jobs owe up to now."""
        owed = sum(self._bill(run, node, self.now_s) for run in self.runs.values() for node in run.placed)
        return self.usage_cost + owed

    def _add_busy(self, gpus: int) -> None:
        self.busy_gpu_s += self.busy_gpus * (self.now_s - self._busy_until)
        self._busy_until = self.now_s
        self.busy_gpus += gpus

    def _start(self, run: Run) -> None:
        run.started_s = self.now_s
        self._add_busy(run.job.gpus)
        record = self.records[run.job.key]
        if record.first_start_s is None:
            record.first_start_s = self.now_s
        record.gpu_type = run.gpu_type
        record.capacity = "/".join(sorted({self.nodes[n].capacity_type for n in run.placed}))
        left_h = (run.job.work_h - record.done_h) / throughput(self.catalog, run.gpu_type)
        self._finish(run.job.key, self.now_s + left_h * HOUR_S)

    def _bill(self, run: Run, node: str, until_s: float) -> float:
        sim_node = self.nodes[node]
        if sim_node.capacity_type == CapacityType.RESERVED:
            return 0.0
        price = gpu_hour_price(self.catalog, sim_node)
        return price * run.placed[node] * self.clock.hours(run.since[node], until_s)

    def _release(self, run: Run) -> None:
        for node, gpus in run.placed.items():
            self.usage_cost += self._bill(run, node, self.now_s)
            self.free[node] += gpus
            self.changed.add(node)
            self.held_gpus -= gpus
        if run.started_s is not None:
            self._add_busy(-run.job.gpus)
        del self.runs[run.job.key]

    def _interrupt(self, run: Run) -> None:
        record = self.records[run.job.key]
        record.interruptions += 1
        if run.started_s is not None:
            elapsed_s = self.now_s - run.started_s
            checkpoint = run.job.checkpoint_s
            saved_s = math.floor(elapsed_s / checkpoint) * checkpoint if checkpoint else 0.0
            record.done_h = min(
                run.job.work_h, record.done_h + saved_s / HOUR_S * throughput(self.catalog, run.gpu_type)
            )
            record.lost_gpu_h += (elapsed_s - saved_s) / HOUR_S * run.job.gpus
        self._release(run)
        self.queue[run.job.key] = run.job

    def finish(self, key: str) -> None:
        run = self.runs[key]
        record = self.records[key]
        record.done_h, record.finish_s = run.job.work_h, self.now_s
        self._release(run)


@dataclass
class Outcome:
    policy: str
    records: list[JobRecord]
    usage_cost: float
    end_s: float
    series: Series
    fleet: Fleet
    busy_gpu_s: float
    """GPU-seconds of running gangs over the whole replay."""


def simulate(
    jobs: Sequence[Job],
    fleet: Fleet,
    catalog: Catalog,
    policy: Policy,
    seed: int = 0,
    tick_s: float = 300.0,
    sample_s: float = 3600.0,
    progress: Callable[[float], None] | None = None,
) -> Outcome:
    """Replay ``jobs`` on ``fleet`` under ``policy``; spot reclaims are drawn from the catalog's hazard per
    capacity type with ``seed``, so every policy of one run sees the same reclaim times on the same nodes."""
    clock = PowerClock(catalog)
    state = SimState(fleet, catalog, clock)
    events: list[tuple[float, int, int, str]] = []
    seq = 0
    attempts: dict[str, int] = {}

    def push(at: float, kind: int, key: str) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (at, kind, seq, key))

    def on_finish(key: str, at: float) -> None:
        attempts[key] = attempts.get(key, 0) + 1
        state.runs[key].attempt = attempts[key]
        push(at, FINISH, f"{key}\0{attempts[key]}")

    state._finish = on_finish
    by_key = {job.key: job for job in jobs}
    for job in jobs:
        state.records[job.key] = JobRecord(job)
        push(job.arrival_s, ARRIVE, job.key)
    reclaims = random.Random(seed)
    for node in fleet.nodes:
        rate = catalog.hazard(node.capacity_type)
        if rate > 0:
            push(reclaims.expovariate(rate) * HOUR_S, RECLAIM, node.name)
    arrivals_left = len(jobs)
    push(0.0, TICK, "")
    series = Series()
    next_sample = 0.0
    now = 0.0
    while events:
        waits = events[0][0] <= state.wake_s
        if not arrivals_left and not waits and not any(run.started_s is not None for run in state.runs.values()):
            break  # nothing left that could finish: the rest waits forever (reported as unfinished)
        now = events[0][0]
        while next_sample <= now:
            _sample(state, series, next_sample)
            next_sample += sample_s
        state.now_s = now
        decide = False
        while events and events[0][0] == now:
            _, kind, _, key = heapq.heappop(events)
            decide |= kind != TICK
            if kind == ARRIVE:
                state.queue[key] = by_key[key]
                arrivals_left -= 1
            elif kind == FINISH:
                name, attempt = key.split("\0")
                run = state.runs.get(name)
                if run is not None and run.attempt == int(attempt):
                    state.finish(name)
            elif kind == RECLAIM:
                for run in [r for r in state.runs.values() if key in r.placed]:
                    state.preempt(run.job.key)
                rate = catalog.hazard(state.nodes[key].capacity_type)
                push(now + reclaims.expovariate(rate) * HOUR_S, RECLAIM, key)
            elif kind == TICK:
                decide |= policy.tick(now, state)
                push(now + tick_s, TICK, "")
        if decide:
            policy.schedule(now, state)
        if progress is not None:
            progress(now)
    state.now_s = now
    for run in list(state.runs.values()):  # never finished (e.g. half-placed gangs): bill up to the end
        for name in run.placed:
            state.usage_cost += state._bill(run, name, now)
    _sample(state, series, now)
    state._add_busy(0)
    return Outcome(policy.name, list(state.records.values()), state.usage_cost, now, series, fleet, state.busy_gpu_s)


def _sample(state: SimState, series: Series, at: float) -> None:
    state.now_s = max(state.now_s, at)
    series.t_s.append(at)
    series.busy.append(state.busy_gpus)
    series.held.append(state.held_gpus)
    series.queued.append(len(state.queue))
    series.spend.append(state.spend_now())


def fill_order(names: Iterable[str], state: SimState, most_free_first: bool) -> list[str]:
    """Nodes by free GPUs (kube-scheduler's LeastAllocated when ``most_free_first``, MostAllocated otherwise);
    ties by name so every run is the same."""
    return sorted(names, key=lambda n: (-state.free[n] if most_free_first else state.free[n], n))
