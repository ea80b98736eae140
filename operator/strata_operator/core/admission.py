"""Gang admission: which queued TrainingJobs get GPUs now, and which running ones give way. Pure; no I/O.

Rules, in the order a user would check them:

1. Order. Queued jobs are considered by their pool's priority (high first), then submission time, then name.
2. All or nothing. A job is admitted only if its pool's quota and the fleet's free GPUs of one usable type hold
   the whole gang at once: every worker gets ``gpusPerWorker`` GPUs on one node, and the workers of one
   tensor-parallel group share a node. With the extender's quote by node kind (GPU type x capacity type,
   cheapest unit of work first), the gang goes to the first kind that holds it whole, counting what this pass
   admitted before it, which is where the extender's scores put its pods; when no single kind holds it, to the
   first type that does, its kinds filled in the quote's order. Before issue 21's finding 6 the pass took the
   first quoted *type* with room on any capacity type, best fit: every job of one pass got the type whose
   cheapest kind had room when the quote was asked, and once that kind was full the rest went to the type's
   dearer kinds (MI300X on-demand) while a cheaper kind of the other type (H100 spot) stood free. The capacity
   types the pass counted a quoted gang on are its plan (``Decision.planned``): its pods carry it and the extender
   scores those nodes first, so that kube-scheduler, which binds the pass's pods in its own order, puts each gang
   where the pass counted it (a low-priority job does not take the reserved GPUs counted for a high-priority one).
   A pool's ``onDemandMaxDurationSeconds`` keeps a job expected to run longer off on-demand capacity: its gang is
   counted on reserved and spot only (:meth:`strata_api.ResourcePool.capacity_types_for`, as its pods ask), and
   waits for them as any gang that does not fit.
3. No overtaking on the GPU type the head waits for; the other types stay open. The first job of each priority
   that does not fit is its priority's head, and it reserves one GPU type: the one it will take, where it lacks
   the fewest GPUs on the nodes nearest to holding it (the fewest GPUs still busy there), its quote's order
   (cheapest first) breaking ties. Later jobs in the order may take every other type, and wait with
   WaitingBehindEarlierJobs, naming the heads, when they would fit only on a reserved type. No later job of the
   head's priority or below takes a GPU of its type, so that type's free GPUs only grow until the head starts
   (it moves to another type only when that one lacks fewer): a large gang is not starved by a stream of small
   ones, which keep running on the other types meanwhile. A job that preempts reserves the type it preempts
   on. Reserving a type, not nodes, is what admission can enforce: a gang's GPU type is fixed when it is
   admitted, its node is chosen later by the scheduler. Until issue 21's replay a waiting gang reserved every
   type it accepted, so one waiting 8-GPU pod that accepted H100 and MI300X blocked every later job of its
   priority on both. A job that exceeds its pool's quota, or could not fit even on an empty fleet, reserves
   nothing. Backfill, as Slurm's EASY backfill: a later job with a run-time estimate
   (``spec.scheduling.expectedDurationSeconds``) may take GPUs of a reserved type when it is expected to end
   before the head could start there. The head's earliest start is when enough of that type frees for it, by
   the expected ends of the jobs holding it (admission time plus estimate; one past its estimate is expected to
   end at once); a GPU held by a job without an estimate is never counted as freeing, so where the head needs
   one nobody backfills, and a job without an estimate never backfills: for them rule 3 is as before, and a
   large gang is not starved. Nor does a backfill take pool quota a head needs (the head would then wait for
   quota, reserve nothing, and be overtaken). A backfilled job that overruns its estimate is not preempted for
   the head: the head starts later than expected, as in Slurm. A head that preempts has no earliest start (its
   victims are going now): nobody backfills onto its type. Nor does a job backfill where a job of a higher
   priority waits behind the heads (one that could not backfill for its pool's quota): the higher-priority job
   would preempt it for those GPUs, and once requeued it would take them back (issue 21's replay of a 40-GPU
   fleet: one pair 34 times in an hour; docs/simulation.md, finding 10). ``Decision.backfilled`` names the
   heads each backfilled job went ahead of.
4. Preemption. A job that does not fit may preempt admitted jobs of lower-priority pools marked preemptible,
   lowest priority first and, among equals, the most recently admitted first (they lost the least work); only
   as many as make the gang fit, and only if preempting them is enough.
5. CPU jobs (``resources.gpuType: CPU``) take no GPUs: they are admitted in the same order when their pool's CPU
   quota (``maxCPUs``, in cores of ``workers x cpuPerWorker``) holds the whole gang, as a Kueue ClusterQueue
   admits on quota; kube-scheduler then places the ungated gang on CPU nodes. They neither reserve GPU types
   nor preempt or get preempted.
6. Inadmissible. A job whose workers ask more CPU or memory (``cpuPerWorker``, ``memoryPerWorker``; a
   tensor-parallel group's workers together, as they share a node) than any node of its kind (GPU type and
   capacity type; CPU nodes for a CPU job) has allocatable stays queued with reason NoNodeFitsWorker and the
   largest node's figures, and reserves nothing: as Kueue leaves a workload pending with an inadmissible reason
   rather than failing it, since a node that fits may still join the fleet.
7. Reserved hold-back. With the scheduler extender's hold (``GET /holdback``), a gang of a pool whose priority is
   below the extender's high-priority line counts a GPU type's reserved GPUs only above those the extender keeps
   free for forecast high-priority demand, as the extender will place it; one that fits only on held GPUs waits
   with reason ReservedGPUsHeldBack, naming the type and the hold (:mod:`strata_operator.core.holdback`). A
   deferrable job's gang counts as below the line whatever its pool, as its workers' ``strata.dev/deferrable``
   tells the extender.
8. Valley scheduling. A deferrable job whose plan (:mod:`strata_operator.core.valley`) starts later than ``now``
   waits with reason WaitingForCheaperPower and its expected start; it keeps its place in the order (its
   submission time), reserves no GPU type and blocks nobody, and from its start on it competes as any other.
9. Serving. The replicas of the pool's InferenceServices hold quota too (:class:`ServingShare`, counted by
   :func:`strata_operator.core.serving.serving_shares`): a job is admitted only into what the admitted jobs and
   those replicas leave, and one that does not fit because of them waits with WaitingForQuota naming their share.
10. Defragmentation (a pool's ``defragmentAfterSeconds``). A priority's head that no node can hold, nor any
   preemption, and that has waited that long since its submission, moves smaller jobs off one node of a type it
   may take: jobs all of whose workers are bound there, together with fewer GPUs than the head,
   of the head's own pool or of preemptible lower-priority pools, and only when each of them fits on the other
   nodes now (the hold respected). The node that moves the fewest GPUs is chosen, the most recently admitted jobs
   first. The moved jobs are preempted (they checkpoint on SIGTERM and are requeued in their old place) and the
   head is admitted at once with that node counted for it, so a moved job cannot take it back; where they fit is
   counted taken for the rest of the pass. The node and the GPUs counted there are the job's plan
   (``Decision.defragmented``); its pods carry it and the extender keeps those GPUs for them while the moved
   jobs' pods go, and later passes count the node's free GPUs for its unbound workers before anyone else's.
   Without it, issue 21's replay of a 40-GPU fleet kept 8-GPU gangs of a few minutes waiting for days behind
   1-GPU jobs of weeks, one on every node (docs/simulation.md, finding 9).
11. Consolidation (a pool's ``consolidation``), as Karpenter replaces on-demand capacity with cheaper capacity,
   but for a job rather than a node. After the queue is served, a running gang of such a pool, every worker bound,
   admitted at least ``afterSeconds`` ago and expected to run at least ``minRemainingSeconds`` longer (admission
   time plus ``expectedDurationSeconds``, less now) is moved when the room this pass leaves holds its whole gang on
   cheaper capacity: reserved or spot for a gang on on-demand GPUs, reserved for one on spot. Reserved GPUs count as the
   extender will place the gang (the hold respected), and no GPU type a waiting head reserves (rule 3) is counted.
   The gangs that save the most (GPUs x expected time left) go first, and each move counts its room taken for the
   rest. A moved job is preempted by itself (it checkpoints on SIGTERM and is requeued in its old place), and its
   next admission, by the quote's cost order, starts it on the cheaper capacity. A job without an estimate is
   never moved. In issue 21's replay of Helios, jobs that started on on-demand GPUs while spot and reserved ones
   were full paid on-demand prices for their whole run (docs/simulation.md, finding 14).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from strata_api import (
    CapacityType,
    Consolidation,
    GPUType,
    PlannedNode,
    ResourcePool,
    TrainingJob,
    cpu_millis,
    format_cpu_millis,
    memory_bytes,
)
from strata_api.holdback import ReservedHoldBack
from strata_operator.core.holdback import ReservedHold
from strata_operator.core.observed import Node
from strata_operator.core.room import Room, fleet_rooms
from strata_operator.core.valley import ValleyPlan


@dataclass(frozen=True)
class GangRequest:
    """What a job asks of the fleet."""

    key: str
    pool: str
    workers: int
    gpus_per_worker: int
    pods_per_group: int
    gpu_types: tuple[GPUType, ...]
    capacity_types: frozenset[str]
    submitted: datetime
    cpu_millis: int = 0
    """CPU of a CPU job's whole gang, in millicores; 0 for a GPU job (its pool's maxCPUs does not count it)."""
    worker_cpu_millis: int = 0
    """CPU each worker requests (``cpuPerWorker``), in millicores; 0 when unset."""
    worker_memory: int = 0
    """Memory each worker requests (``memoryPerWorker``), in bytes; 0 when unset."""
    valley: ValleyPlan | None = None
    """A deferrable job's valley-scheduling plan: not admitted before its start."""
    deferrable: bool = False
    """``spec.scheduling.deferrable``: its workers carry ``strata.dev/deferrable``, which the extender holds back
    from reserved GPUs whatever the pool's priority (as it does a low-priority pod), so admission does too."""
    kinds: tuple[tuple[GPUType, str], ...] = ()
    """The extender's quote by node kind (GPU type, capacity type), cheapest unit of work first (rule 2): the gang
    goes to the first of them that holds it whole. Empty without a quote by kind: types in ``gpu_types`` order."""
    expected_duration_s: float | None = None
    """``spec.scheduling.expectedDurationSeconds``: how long one run takes by the user's estimate, seconds; None
    without one. A queued job with one may backfill onto a type a waiting head reserves, and an admitted gang's
    GPUs count as freeing at its admission plus this (rule 3)."""

    @property
    def on_cpu(self) -> bool:
        """A CPU job: it accepts no GPU type."""
        return not self.gpu_types

    @property
    def gpus(self) -> int:
        return self.workers * self.gpus_per_worker

    @property
    def group_gpus(self) -> int:
        """GPUs of one tensor-parallel group, which share a node."""
        return self.gpus_per_worker * self.pods_per_group

    @property
    def groups(self) -> int:
        """Tensor-parallel groups of workers, each of which needs one node."""
        return self.workers // self.pods_per_group

    @classmethod
    def from_job(cls, job: TrainingJob) -> GangRequest:
        return cls(
            key=job.key,
            pool=job.spec.pool,
            workers=job.spec.workers,
            gpus_per_worker=job.spec.resources.gpus_per_worker,
            pods_per_group=job.spec.pods_per_tp_group,
            gpu_types=job.spec.gpu_types,
            capacity_types=frozenset(job.spec.resources.capacity_types),
            submitted=job.status.submitted_at or job.created,
            cpu_millis=job.spec.cpu_millis if job.spec.on_cpu else 0,
            worker_cpu_millis=_or_zero(cpu_millis, job.spec.resources.cpu_per_worker),
            worker_memory=_or_zero(memory_bytes, job.spec.resources.memory_per_worker),
            deferrable=job.spec.scheduling.deferrable,
            expected_duration_s=job.spec.scheduling.expected_duration_seconds,
        )


def _or_zero(parse: Callable[[object], int], quantity: str | None) -> int:
    """A worker's request for the fit check; 0 (no check) when unset or unreadable, so that one job's odd value
    never stops the admission pass for every job (the API server validated it; this reader is stricter)."""
    try:
        return parse(quantity) if quantity is not None else 0
    except (ValueError, ArithmeticError):
        return 0


@dataclass(frozen=True)
class AdmittedGang:
    """A job that holds GPUs: bound workers on their nodes, unbound ones as a reservation."""

    request: GangRequest
    gpu_type: GPUType | None
    """None for a CPU job."""
    admitted_at: datetime
    bound: Mapping[str, int] = field(default_factory=dict)
    """GPUs its bound, unfinished workers hold per node."""
    unbound_workers: int = 0
    """Workers not on a node yet; admission reserves room for them so nobody else takes it."""
    planned_node: PlannedNode | None = None
    """The node rule 10 emptied for it and the GPUs counted for it there (``status.placement.plannedNode``)."""


@dataclass(frozen=True)
class ServingShare:
    """What one pool's InferenceServices hold of its quota, by service key: GPUs (``maxGPUs``) and CPU millicores
    (``maxCPUs``) of their replicas, as :func:`strata_operator.core.serving.serving_shares` counts them."""

    gpus: Mapping[str, int] = field(default_factory=dict)
    cpu_millis: Mapping[str, int] = field(default_factory=dict)

    def why(self, on_cpu: bool) -> str:
        """The share in words for a waiting job's message, or "" when the services hold none of that quota."""
        held = {k: v for k, v in (self.cpu_millis if on_cpu else self.gpus).items() if v > 0}
        if not held:
            return ""
        show = format_cpu_millis if on_cpu else str
        total = show(sum(held.values()))
        each = ", ".join(f"{key} {show(amount)}" for key, amount in sorted(held.items()))
        return f"; the pool's InferenceServices' replicas hold {total} of them ({each})"


@dataclass(frozen=True)
class Waiting:
    position: int
    reason: str
    message: str
    expected_start: datetime | None = None
    """When a deferred job (valley scheduling) is to start."""


@dataclass(frozen=True)
class Preemption:
    victim: str
    by: str
    """The job it makes room for; the victim itself for a move onto cheaper capacity (rule 11)."""
    message: str


@dataclass
class Decision:
    admit: dict[str, GPUType] = field(default_factory=dict)
    admit_cpu: list[str] = field(default_factory=list)
    """CPU jobs admitted (they get no GPU type)."""
    preempt: list[Preemption] = field(default_factory=list)
    waiting: dict[str, Waiting] = field(default_factory=dict)
    kept_off: dict[str, frozenset[GPUType]] = field(default_factory=dict)
    """Admitted jobs that rule 3 kept off GPU types waiting heads reserve, with those types."""
    backfilled: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Admitted jobs that took a GPU type waiting heads reserve, expected to end before those could start there
    (rule 3's backfill), with those heads."""
    defragmented: dict[str, PlannedNode] = field(default_factory=dict)
    """Admitted jobs for which rule 10 moved smaller jobs off a node, with that node and the GPUs the pass counted
    for the job there (the moved jobs are in ``preempt``, by the admitted job). Their pods carry it, and the
    extender keeps those GPUs for them until they are bound there."""
    planned: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Admitted jobs with a quote by kind: the capacity types the pass counted their workers on, in the API's order
    (rule 2). Their pods carry them, and the extender scores those nodes first: the jobs of one pass then land where
    the pass counted them whatever order their pods are bound in (otherwise a later job of the pass could take the
    reserved GPUs counted for an earlier, higher-priority one, and leave it the dearer kind)."""


def admitted_after_moves(decision: Decision, moved: Collection[str]) -> dict[str, GPUType]:
    """The GPU jobs to write Admitted once the pass's preemptions are written, ``moved`` those written: a job rule
    10 made room for only if every job it moves is written requeued. Admitted first, it would be a record of the
    room whose moves were lost (an operator killed between the writes, a moved job changed meanwhile), and nothing
    would move them again: the gang would sit on its node's missing GPUs until requeued as unschedulable."""
    owed = {p.victim for p in decision.preempt if p.by in decision.defragmented} - set(moved)
    stranded = {p.by for p in decision.preempt if p.victim in owed}
    return {key: gpu_type for key, gpu_type in decision.admit.items() if key not in stranded}


LOWEST_PRIORITY = -(2**31)
"""Below every pool's priority (a pool that does not exist; a deferrable job for the extender's hold-back)."""


class Reason:
    POOL_NOT_FOUND = "PoolNotFound"
    NO_USABLE_GPUS = "NoUsableGPUs"
    EXCEEDS_QUOTA = "ExceedsPoolQuota"
    NO_CPU_QUOTA = "NoCPUQuota"
    WAITING_FOR_QUOTA = "WaitingForQuota"
    EXCEEDS_FLEET = "ExceedsFleet"
    NO_NODE_FITS = "NoNodeFitsWorker"
    WAITING_FOR_GPUS = "WaitingForGPUs"
    WAITING_FOR_PREEMPTION = "WaitingForPreemption"
    HELD_BACK = "ReservedGPUsHeldBack"
    """The gang fits only on reserved GPUs the scheduler extender holds for forecast high-priority demand."""
    BEHIND_HIGHER_PRIORITY = "WaitingBehindEarlierJobs"
    WAITING_FOR_CHEAPER_POWER = "WaitingForCheaperPower"
    """A deferrable job waits for the cheapest time-of-use power window that meets its deadline."""


def admit(
    queue: Sequence[GangRequest],
    admitted: Sequence[AdmittedGang],
    pools: Mapping[str, ResourcePool],
    fleet: Sequence[Node],
    free: Mapping[str, int],
    hold: ReservedHoldBack | None = None,
    now: datetime | None = None,
    serving: Mapping[str, ServingShare] | None = None,
    rooms: tuple[Room, Room] | None = None,
) -> Decision:
    """Decide one admission pass.

    ``fleet`` is every schedulable GPU node; ``free`` its GPUs not held by any bound, unfinished pod (Strata's or
    anyone's). Unbound workers of ``admitted`` gangs are placed first, as reservations. ``hold``: the scheduler
    extender's reserved hold-back (:mod:`strata_operator.core.holdback`), so that a gang of a pool below its
    high-priority line is admitted only where the extender will place every worker; None holds nothing back.
    ``now``: the moment of the pass, against which deferred jobs' starts are compared; None defers nobody.
    ``serving``: by pool, what its InferenceServices' replicas hold of its quota; None holds nothing.
    ``rooms``: ``fleet``'s schedulable GPU nodes as rooms (:class:`Room`) with ``free`` and with their allocatable GPUs,
    from a caller that keeps them up to date across passes (a replay of a fleet of thousands of nodes, where
    building both at every pass cost more than the pass); the pass takes GPUs on a copy. None: built here.
    """
    room, empty = fleet_rooms(fleet, free) if rooms is None else (rooms[0].copy(), rooms[1])
    held = ReservedHold(hold)

    def priority(request: GangRequest) -> int:
        pool = pools.get(request.pool)
        return pool.priority if pool else LOWEST_PRIORITY

    def rank_of(request: GangRequest) -> int:
        return hold_rank(request.deferrable, pools.get(request.pool))

    reserved: dict[str, dict[str, int]] = {}
    # room for the unbound workers of admitted gangs (a fully bound gang takes none, so it is not even sorted:
    # most of a large fleet's gangs at every pass), the gangs the hold does not hold back first: what they take
    # on reserved nodes lowers the hold for the others
    unbound = [g for g in admitted if g.unbound_workers > 0]
    for gang in sorted(unbound, key=lambda g: (held.holds_back(rank_of(g.request)), g.admitted_at, g.request.key)):
        r = gang.request
        if gang.gpu_type is None:
            continue
        groups = -(-gang.unbound_workers // r.pods_per_group)
        group_gpus = r.group_gpus
        on_plan, planned_groups = _on_planned_node(held, room, gang, rank_of(r))
        taken = _take_gang(held, room, r, gang.gpu_type, r.capacity_types, group_gpus, groups - planned_groups,
                           rank_of(r))  # fmt: skip
        for name, gpus in on_plan.items():
            taken[name] = taken.get(name, 0) + gpus
        reserved[r.key] = taken
    ends = Ends(now)
    if now is not None:
        for gang in admitted:
            ends.add(gang.request, gang.admitted_at, gang.bound, reserved.get(gang.request.key, {}))
    shares = serving or {}
    usage = {pool: sum(share.gpus.values()) for pool, share in shares.items()}
    cpu_usage = {pool: sum(share.cpu_millis.values()) for pool, share in shares.items()}
    for gang in admitted:
        usage[gang.request.pool] = usage.get(gang.request.pool, 0) + gang.request.gpus
        cpu_usage[gang.request.pool] = cpu_usage.get(gang.request.pool, 0) + gang.request.cpu_millis

    decision = Decision()
    heads = Reservations()
    victims_left = {g.request.key: g for g in admitted}

    order = sorted(queue, key=lambda r: (-priority(r), r.submitted, r.key))
    for position, request in enumerate(order, start=1):
        pool = pools.get(request.pool)

        def wait(reason: str, message: str, key: str = request.key, position: int = position) -> None:
            decision.waiting[key] = Waiting(position, reason, message)

        if pool is None:
            wait(Reason.POOL_NOT_FOUND, f"ResourcePool {request.pool} does not exist")
            continue
        if request.valley is not None and now is not None and request.valley.defers(now):
            start = request.valley.start
            decision.waiting[request.key] = Waiting(
                position, Reason.WAITING_FOR_CHEAPER_POWER, request.valley.message, start
            )
            continue
        types = [t for t in request.gpu_types if t in pool.gpu_types]
        capacity = _capacity(request, pool)
        # only the GPU types with a node that can hold the workers' CPU and memory (gpuType Any may fit on one)
        fitting = [t for t in types if _no_node_fits(request, fleet, [t], capacity) is None]
        too_big = _no_node_fits(request, fleet, types, capacity) if request.on_cpu or not fitting else None
        if too_big is not None:
            wait(Reason.NO_NODE_FITS, too_big)
            continue
        types = fitting
        share = shares.get(pool.name, ServingShare())
        if request.on_cpu:
            cpu_wait = _cpu_quota(request, pool, cpu_usage.get(pool.name, 0), capacity)
            if cpu_wait is not None:
                reason, message = cpu_wait
                wait(reason, message + share.why(on_cpu=True) if reason == Reason.WAITING_FOR_QUOTA else message)
            else:
                cpu_usage[pool.name] = cpu_usage.get(pool.name, 0) + request.cpu_millis
                decision.admit_cpu.append(request.key)
            continue
        if not types or not capacity:
            wait(
                Reason.NO_USABLE_GPUS, f"the job's GPU and capacity types and pool {pool.name}'s have nothing in common"
            )
            continue
        if request.gpus > pool.max_gpus:
            wait(Reason.EXCEEDS_QUOTA, f"needs {request.gpus} GPUs; pool {pool.name} allows {pool.max_gpus} in all")
            continue
        in_use = usage.get(pool.name, 0)
        if in_use + request.gpus > pool.max_gpus:
            wait(
                Reason.WAITING_FOR_QUOTA,
                f"needs {request.gpus} GPUs; pool {pool.name} has {max(0, pool.max_gpus - in_use)} of {pool.max_gpus} "
                f"left{share.why(on_cpu=False)}",
            )
            continue
        group_gpus, rank = request.group_gpus, rank_of(request)
        possible = [t for t in types if empty.slots(t, capacity, group_gpus) >= request.groups]
        if not possible:
            wait(
                Reason.EXCEEDS_FLEET,
                f"no {'/'.join(types)} fleet of {'/'.join(sorted(capacity))} nodes can hold "
                f"{request.workers} workers of {request.gpus_per_worker} GPUs",
            )
            continue
        end = ends.end_of(request, now)
        backfill = frozenset(
            t
            for t in possible
            if heads.backfills(t, end, request, priority(request), partial(_quota_left, pools, usage))
        )
        candidates = [t for t in possible if t not in heads.blocked or t in backfill]
        fits = partial(held.fits, capacity=capacity, group_gpus=group_gpus, groups=request.groups, priority=rank)
        chosen = _choose(request, candidates, capacity, fits, room)
        if chosen is not None:
            planned = _quote_is_current(request, chosen, capacity, held, room, rank)
            taken = _take_gang(held, room, request, chosen, capacity, group_gpus, request.groups, rank)
            ends.add(request, now, taken)
            usage[pool.name] = in_use + request.gpus
            decision.admit[request.key] = chosen
            if chosen in heads.blocked:
                decision.backfilled[request.key] = tuple(heads.blocked[chosen])
            if planned:
                on = {room.kind[name][1] for name in taken}
                decision.planned[request.key] = tuple(c.value for c in CapacityType if c.value in on)
            if blocked := frozenset(t for t in possible if t in heads.blocked and t not in backfill):
                decision.kept_off[request.key] = blocked
            continue
        preempting = _preemption(request, pool, candidates, fits, room, victims_left, reserved, pools, heads, empty)
        if preempting is not None:
            victims, gpu_type = preempting
            heads.block(gpu_type, request, None)
            for victim in victims:
                del victims_left[victim.request.key]
                decision.preempt.append(
                    Preemption(
                        victim=victim.request.key,
                        by=request.key,
                        message=f"preempted to admit {request.key} of higher-priority pool {pool.name}",
                    )
                )
            names = ", ".join(v.request.key for v in victims)
            wait(Reason.WAITING_FOR_PREEMPTION, f"waiting for preempted jobs to release their GPUs: {names}")
            continue
        if priority(request) not in heads.priorities and _may_defragment(pool, request, now):
            move = _defragment(request, pool, candidates, fits, room, victims_left, reserved, pools, held, rank)
            if move is not None:
                for name, gpus in move.room.free.items():
                    if room.free[name] != gpus:
                        room.put(name, gpus)
                held.keep, node = move.held.keep, move.node
                ends.add(request, now, move.taken)
                usage[pool.name] = in_use + request.gpus
                decision.admit[request.key] = move.gpu_type
                decision.defragmented[request.key] = PlannedNode(node, move.taken.get(node, request.group_gpus))
                waited = int((now - request.submitted).total_seconds()) if now is not None else 0
                for victim in move.victims:
                    del victims_left[victim.request.key]
                    decision.preempt.append(
                        Preemption(
                            victim=victim.request.key,
                            by=request.key,
                            message=f"moved off node {node} to make room for {request.key} ({request.workers} "
                            f"workers x {request.gpus_per_worker} GPUs), which no node held for {waited} s "
                            f"(pool {pool.name}'s defragmentAfterSeconds is {pool.defragment_after_s}); it fits "
                            "on other nodes now",
                        )
                    )
                continue
        headed = [t for t in possible if t in heads.blocked and t not in backfill]
        if not candidates or (behind := [t for t in headed if fits(room, t)]):
            waiting_on = headed if not candidates else behind
            heads.wait_behind(waiting_on, priority(request))
            wait(
                Reason.BEHIND_HIGHER_PRIORITY,
                f"jobs ahead in the queue wait for the {'/'.join(waiting_on)} GPUs it would take: "
                + ", ".join(dict.fromkeys(k for t in waiting_on for k in heads.blocked[t]))
                + heads.why_not_backfilled(waiting_on, request, priority(request), end, now),
            )
            continue
        if heads.first_of(priority(request)):
            reach = {t: held.reach(room, t, capacity, rank) for t in candidates}
            head_type = nearest_type(room, empty, reach, group_gpus, request.groups)
            fits_head = partial(fits, gpu_type=head_type, capacity=reach[head_type])
            heads.block(head_type, request, ends.earliest_start(room, head_type, reach[head_type], fits_head))
            heads.remember(head_type, reach, group_gpus, request.groups)
        if kept_out := [t for t in candidates if held.kept_out(room, t, capacity, group_gpus, request.groups, rank)]:
            wait(
                Reason.HELD_BACK,
                f"{held.why(room, kept_out[0])}; {request.workers} workers x {request.gpus_per_worker} "
                f"{'/'.join(kept_out)} GPUs fit only on those ("
                + ("the job is deferrable" if request.deferrable else f"pool {pool.name} has priority {rank}")
                + ", below the extender's high-priority line)",
            )
        else:
            wait(
                Reason.WAITING_FOR_GPUS,
                f"waiting for {request.workers} workers x {request.gpus_per_worker} "
                f"{'/'.join(candidates)} GPUs to be free at once",
            )
    if now is not None:
        _consolidate(decision, list(victims_left.values()), pools, room, held, heads, now, rank_of)
    return decision


CHEAPEST_CAPACITY_FIRST: tuple[str, ...] = (CapacityType.RESERVED, CapacityType.SPOT, CapacityType.ON_DEMAND)
"""Rule 11: capacity types by what one more GPU of them costs (a reserved GPU is paid whether used or not)."""
_PRICE_RANK = {capacity: rank for rank, capacity in enumerate(CHEAPEST_CAPACITY_FIRST)}


def _consolidate(
    decision: Decision,
    running: Sequence[AdmittedGang],
    pools: Mapping[str, ResourcePool],
    room: Room,
    held: ReservedHold,
    heads: Reservations,
    now: datetime,
    rank_of: Callable[[GangRequest], int],
) -> None:
    """Rule 11: move running gangs of consolidating pools onto cheaper capacity that the pass left free."""
    if not any(pool.consolidation is not None for pool in pools.values()):
        return  # every pass of every fleet comes here: without a consolidating pool, no gang is even looked at
    movable: list[tuple[float, AdmittedGang, ResourcePool, Consolidation, frozenset[str]]] = []
    for gang in running:
        request, pool = gang.request, pools.get(gang.request.pool)
        if (
            pool is None
            or pool.consolidation is None
            or request.expected_duration_s is None
            or gang.gpu_type is None
            or gang.unbound_workers
            or not gang.bound
        ):
            continue
        rule = pool.consolidation
        ran_s = (now - gang.admitted_at).total_seconds()
        left_s = request.expected_duration_s - ran_s
        ranks = {_PRICE_RANK.get(room.kind.get(name, (None, None))[1] or "", -1) for name in gang.bound}
        if ran_s < rule.after_s or left_s < rule.min_remaining_s or min(ranks) < 0:
            continue  # (a node gone or without a capacity type: the lifecycle requeues such a gang, not this rule)
        cheaper = frozenset(CHEAPEST_CAPACITY_FIRST[: max(ranks)]) & _capacity(request, pool)
        if cheaper:
            movable.append((left_s, gang, pool, rule, cheaper))
    movable.sort(key=lambda m: (-m[0] * m[1].request.gpus, m[1].request.key))  # the most saved first: GPUs x time left
    for left_s, gang, pool, rule, cheaper in movable:
        request, rank = gang.request, rank_of(gang.request)
        types = [t for t in request.gpu_types if t in pool.gpu_types and t not in heads.blocked]
        target = next((t for t in types if held.fits(room, t, cheaper, request.group_gpus, request.groups, rank)), None)
        if target is None:
            continue
        _take_gang(held, room, request, target, cheaper, request.group_gpus, request.groups, rank)
        decision.preempt.append(
            Preemption(
                victim=request.key,
                by=request.key,
                message=f"moved to cheaper capacity: {target} {'/'.join(sorted(cheaper))} holds its "
                f"{request.workers} workers x {request.gpus_per_worker} GPUs now, and it is expected to run "
                f"{int(left_s)} s more (pool {pool.name} moves jobs with at least {rule.min_remaining_s} s left)",
            )
        )


def _choose(
    request: GangRequest,
    candidates: Sequence[GPUType],
    capacity: frozenset[str],
    fits: Callable[..., bool],
    room: Room,
) -> GPUType | None:
    """Rule 2: the GPU type the gang is admitted on, None when it fits nowhere now. With a quote by kind, the type
    of the first quoted kind that holds the whole gang, else the first type that does; without one, the first
    type that does."""
    whole = (t for t, c in request.kinds if t in candidates and c in capacity and fits(room, t, capacity={c}))
    return next(whole, None) or next((t for t in candidates if fits(room, t)), None)


def _quote_is_current(
    request: GangRequest, gpu_type: GPUType, capacity: frozenset[str], held: ReservedHold, room: Room, rank: int
) -> bool:
    """Whether the gang's quote may plan it on ``gpu_type``: it has one, and it lists every capacity type of that
    type with room for a worker now. A quote lists the kinds with room when it was asked and is kept for a while
    (``runtime.quoter.QUOTE_TTL_S``), so a kind that has freed since is missing from it, and its order says nothing
    of that kind's price (a free reserved GPU costs nothing): such a gang gets no plan, and its pods go by the
    extender's cost order as they would without one."""
    if not request.kinds:
        return False
    return all(
        (gpu_type, c) in request.kinds or not held.fits(room, gpu_type, (c,), request.gpus_per_worker, 1, rank)
        for c in capacity
    )


def _fill(request: GangRequest, gpu_type: GPUType, capacity: frozenset[str]) -> list[frozenset[str]]:
    """The capacity types a gang's groups fill on ``gpu_type``, in order, each entry best fit before the next: its
    quoted kinds cheapest first, then its other capacity types together, as the extender's scores place the pods
    one by one (a cheaper kind with room for some of them gets those); without a quote by kind every capacity
    type together (best fit), as before kinds were quoted."""
    quoted = list(dict.fromkeys(c for t, c in request.kinds if t == gpu_type and c in capacity))
    rest = capacity - set(quoted)
    return [frozenset({c}) for c in quoted] + ([rest] if rest else [])


def _take_gang(
    held: ReservedHold,
    room: Room,
    request: GangRequest,
    gpu_type: GPUType,
    capacity: frozenset[str],
    group_gpus: int,
    groups: int,
    rank: int,
) -> dict[str, int]:
    """Take ``groups`` of the gang's groups of ``group_gpus`` GPUs on ``gpu_type``, its capacity types in
    :func:`_fill`'s order; GPUs taken per node (none when ``groups`` is 0: every worker is bound)."""
    taken: dict[str, int] = {}
    for kinds in _fill(request, gpu_type, capacity) if groups > 0 else ():
        left = groups - sum(taken.values()) // group_gpus
        taken.update(held.take(room, gpu_type, kinds, group_gpus, left, rank))
    return taken


def _quota_left(pools: Mapping[str, ResourcePool], usage: Mapping[str, int], pool: str) -> int:
    """GPUs of ``pool``'s quota (``maxGPUs``) that admitted jobs and serving replicas leave now."""
    return pools[pool].max_gpus - usage.get(pool, 0)


class Reservations:
    """The GPU types waiting heads reserve during one pass (rule 3), with the jobs that reserve each, the earliest
    moment any of them could start there (None: not known, nobody backfills) and what they need of their pools'
    quota."""

    def __init__(self) -> None:
        self.blocked: dict[GPUType, list[str]] = {}
        self.starts: dict[GPUType, datetime | None] = {}
        self.quota: dict[GPUType, list[tuple[str, int]]] = {}
        """By reserved type, each head's pool and GPUs."""
        self.priorities: set[int] = set()
        self.behind: dict[GPUType, int] = {}
        """By reserved type, the highest priority of the jobs that wait behind its heads (see :meth:`backfills`)."""
        self.choices: list[tuple[GPUType, Mapping[GPUType, frozenset[str]], int, int]] = []
        """Each priority's head: the type it reserves, and what it chose it from (its reach, GPUs per group,
        groups): to tell whether GPUs freed later in the pass would make it choose another."""

    def remember(
        self, gpu_type: GPUType, reach: Mapping[GPUType, frozenset[str]], group_gpus: int, groups: int
    ) -> None:
        """A priority's head reserves ``gpu_type``, the nearest of ``reach`` (:func:`nearest_type`)."""
        self.choices.append((gpu_type, reach, group_gpus, groups))

    def would_turn_to(self, room: Room, empty: Room, gpu_type: GPUType) -> bool:
        """Whether a head that reserves another type would reserve ``gpu_type`` instead with ``room`` (the GPUs a
        preemption would free): those GPUs would then go to the head, not to the job that preempted for them."""
        return any(
            chosen != gpu_type
            and gpu_type in reach
            and nearest_type(room, empty, reach, group_gpus, groups) == gpu_type
            for chosen, reach, group_gpus, groups in self.choices
        )

    def first_of(self, priority: int) -> bool:
        """Whether a job of ``priority`` that waits now is its priority's head (the first to wait); marks it."""
        first = priority not in self.priorities
        self.priorities.add(priority)
        return first

    def block(self, gpu_type: GPUType, head: GangRequest, start: datetime | None) -> None:
        """``head`` reserves ``gpu_type``; ``start``: when it could start there at the earliest (None: unknown)."""
        first = gpu_type not in self.blocked
        self.blocked.setdefault(gpu_type, []).append(head.key)
        self.quota.setdefault(gpu_type, []).append((head.pool, head.gpus))
        earlier = self.starts.get(gpu_type)
        self.starts[gpu_type] = start if first else None if start is None or earlier is None else min(start, earlier)

    def wait_behind(self, gpu_types: Sequence[GPUType], priority: int) -> None:
        """A job of ``priority`` waits behind the heads of ``gpu_types`` (WaitingBehindEarlierJobs)."""
        for gpu_type in gpu_types:
            self.behind[gpu_type] = max(priority, self.behind.get(gpu_type, priority))

    def backfills(
        self,
        gpu_type: GPUType,
        end: datetime | None,
        request: GangRequest,
        priority: int,
        quota_left: Callable[[str], int],
    ) -> bool:
        """Whether ``request``'s job, of ``priority``, expected to end at ``end`` (None: no estimate), may take
        ``gpu_type`` although heads reserve it: it ends before every one of them could start there, leaves each
        head's pool the quota the head needs (``quota_left``: by pool, what is left now), or the head would wait
        for quota then, reserve nothing, and be overtaken after all, and no job of a higher priority waits behind
        them (one that could not backfill, for its pool's quota, would preempt it for those GPUs at the next
        pass, and it would take them back: issue 21's replay repeated that 34 times for one pair in an hour)."""
        start = self.starts.get(gpu_type)
        if gpu_type not in self.blocked or start is None or end is None or end > start:
            return False
        if self.behind.get(gpu_type, priority) > priority:
            return False
        return all(
            gpus + (request.gpus if pool == request.pool else 0) <= quota_left(pool)
            for pool, gpus in self.quota[gpu_type]
        )

    def why_not_backfilled(
        self,
        gpu_types: Sequence[GPUType],
        request: GangRequest,
        priority: int,
        end: datetime | None,
        now: datetime | None,
    ) -> str:
        """Why a job behind the heads of ``gpu_types`` does not backfill, for its waiting message ("" in a pass
        without ``now``, which backfills nothing)."""
        if now is None:
            return ""
        if end is None:
            return " (without spec.scheduling.expectedDurationSeconds it cannot go first on their type)"
        starts = [self.starts.get(t) for t in gpu_types]
        if any(start is None for start in starts):
            return " (when they could start is not known: a job holding their GPUs has no expected duration)"
        first = min(start for start in starts if start is not None)
        if end > first:
            return f" (by its expectedDurationSeconds it would not end before they could start at {first.isoformat()})"
        if any(self.behind.get(t, priority) > priority for t in gpu_types):
            return " (a job of a higher priority waits for their type too)"
        return " (it would take pool quota they need)"


class Ends:
    """When the GPUs jobs hold are expected to free, by node (rule 3's backfill): admission time plus the job's
    ``expected_duration_s``, never before ``now`` (a job past its estimate may end any moment); GPUs of a job
    without an estimate are not listed (they never count as freeing). Empty without ``now``."""

    def __init__(self, now: datetime | None) -> None:
        self.now = now
        self.by_node: dict[str, list[tuple[datetime, int]]] = {}

    def end_of(self, request: GangRequest, start: datetime | None) -> datetime | None:
        """When ``request``'s job would end if it started at ``start``; None without an estimate or a start."""
        if start is None or request.expected_duration_s is None:
            return None
        end = start + timedelta(seconds=request.expected_duration_s)
        return end if self.now is None else max(end, self.now)

    def add(self, request: GangRequest, start: datetime | None, *held: Mapping[str, int]) -> None:
        """The GPUs per node of ``held`` free when ``request``'s job, started at ``start``, is expected to end."""
        end = self.end_of(request, start)
        if end is None:
            return
        for gpus_by_node in held:
            for name, gpus in gpus_by_node.items():
                self.by_node.setdefault(name, []).append((end, gpus))

    def earliest_start(
        self, room: Room, gpu_type: GPUType, capacity: frozenset[str], fits: Callable[[Room], bool]
    ) -> datetime | None:
        """The first moment a gang ``fits`` in ``room`` as ``gpu_type``'s nodes of ``capacity`` free by the expected
        ends; None when it never does by them (or there is no ``now``)."""
        if self.now is None:
            return None
        kinds = {(gpu_type, c) for c in capacity}
        frees = sorted(
            (end, name, gpus)
            for name, kind in room.kind.items()
            if kind in kinds
            for end, gpus in self.by_node.get(name, ())
        )
        trial = room.copy()
        if fits(trial):
            return self.now
        for end, name, gpus in frees:
            trial.put(name, trial.free[name] + gpus)
            if fits(trial):
                return end
        return None


def nearest_type(
    room: Room, empty: Room, reach: Mapping[GPUType, frozenset[str]], group_gpus: int, groups: int
) -> GPUType:
    """The GPU type a waiting head reserves (rule 3): of ``reach`` (type -> capacity types it may count on there,
    in the quote's order, not empty), the one where it lacks the fewest GPUs on the nodes nearest to holding it
    (the fewest GPUs still busy, one node per group), the first in order among equals.

    Without run-time estimates the node that frees soonest is not known; the one with the least left to free is
    the best guess. With them, reserving the type where the head could start soonest by the expected ends was
    tried on issue 21's replays and changed nothing measurable (docs/simulation.md, finding 7), so this rule
    stays."""
    best: tuple[int, int, GPUType] | None = None
    for index, (gpu_type, capacity) in enumerate(reach.items()):
        kinds = {(gpu_type, c) for c in capacity}
        busy = sorted(
            empty.free[name] - room.free[name]
            for name, kind in room.kind.items()
            if kind in kinds and empty.free[name] >= group_gpus
        )[:groups]
        missing = sum(busy) + (groups - len(busy)) * group_gpus  # too few nodes there: the rest lacks whole groups
        if best is None or (missing, index) < best[:2]:
            best = (missing, index, gpu_type)
    assert best is not None, "reach is never empty"
    return best[2]


def _no_node_fits(
    request: GangRequest, fleet: Sequence[Node], types: Sequence[GPUType], capacity: frozenset[str]
) -> str | None:
    """Why no node of the job's kind could ever hold one of its nodes' share of workers (CPU and memory), or None
    when one could (or the job asks for neither, or no node of its kind is known: other reasons say so)."""
    per_node = 1 if request.on_cpu else request.pods_per_group
    cpu, memory = request.worker_cpu_millis * per_node, request.worker_memory * per_node
    if not cpu and not memory:
        return None
    if request.on_cpu:  # a node without a capacity-type label counts as on-demand (see core.pods.affinity)
        kind = [n for n in fleet if n.gpu_type is None and (n.capacity_type or CapacityType.ON_DEMAND) in capacity]
    else:
        kind = [n for n in fleet if n.gpu_type in types and n.capacity_type in capacity]
    if not kind or any(_holds(n, cpu, memory) for n in kind):
        return None
    most_cpu = max((n.allocatable_cpu_millis or 0) for n in kind)
    most_memory = max((n.allocatable_memory or 0) for n in kind)
    what = "a worker" if per_node == 1 else f"a node's {per_node} workers of a tensor-parallel group"
    return (
        f"no node can ever hold {what}: it needs {format_cpu_millis(cpu)} CPUs and {_gib(memory)} memory, the "
        f"largest of the {len(kind)} {'CPU' if request.on_cpu else '/'.join(types)} nodes of "
        f"{'/'.join(sorted(capacity))} capacity allocate {format_cpu_millis(most_cpu)} CPUs and {_gib(most_memory)}"
        " (spec.resources.cpuPerWorker, spec.resources.memoryPerWorker)"
    )


def _holds(node: Node, cpu: int, memory: int) -> bool:
    cpu_ok = node.allocatable_cpu_millis is None or node.allocatable_cpu_millis >= cpu
    return cpu_ok and (node.allocatable_memory is None or node.allocatable_memory >= memory)


def _gib(size: int) -> str:
    return f"{size / 2**30:.4g}Gi"


def _cpu_quota(
    request: GangRequest, pool: ResourcePool, in_use: int, capacity: frozenset[str]
) -> tuple[str, str] | None:
    """Why a CPU job's gang may not be admitted now (reason, message); None when its pool's CPU quota holds it."""
    need = format_cpu_millis(request.cpu_millis)
    if not capacity:
        return Reason.NO_USABLE_GPUS, f"the job's capacity types and pool {pool.name}'s have nothing in common"
    if pool.max_cpu_millis is None:
        return Reason.NO_CPU_QUOTA, f"pool {pool.name} admits no CPU jobs: its spec.maxCPUs is unset"
    quota = format_cpu_millis(pool.max_cpu_millis)
    if request.cpu_millis > pool.max_cpu_millis:
        return Reason.EXCEEDS_QUOTA, f"needs {need} CPUs; pool {pool.name} allows {quota} in all (spec.maxCPUs)"
    if in_use + request.cpu_millis > pool.max_cpu_millis:
        left = format_cpu_millis(max(0, pool.max_cpu_millis - in_use))
        return Reason.WAITING_FOR_QUOTA, f"needs {need} CPUs; pool {pool.name} has {left} of {quota} left"
    return None


def _preemption(
    request: GangRequest,
    pool: ResourcePool,
    types: Sequence[GPUType],
    fits: Callable[[Room, GPUType], bool],
    room: Room,
    candidates: Mapping[str, AdmittedGang],
    reserved: Mapping[str, Mapping[str, int]],
    pools: Mapping[str, ResourcePool],
    heads: Reservations,
    empty: Room,
) -> tuple[list[AdmittedGang], GPUType] | None:
    """The fewest victims, in preemption order, whose GPUs make the gang fit, with the GPU type they free; None
    when no victims would make it fit.

    Not on a type whose freed GPUs would turn a waiting head ahead of the gang (one that reserves another type)
    to that type: the head would reserve them at the next pass and the gang, behind it, could not take them; its
    victims, back in the queue, would take them again, and the gang preempt them again (a livelock the Alibaba
    replay on a 40-GPU fleet ran into: 300,000 preemptions of the same few jobs in one simulated day)."""

    def preemptible(gang: AdmittedGang) -> bool:
        victim_pool = pools.get(gang.request.pool)
        return victim_pool is not None and victim_pool.preemptible and victim_pool.priority < pool.priority

    for gpu_type in types:
        eligible = sorted(
            (g for g in candidates.values() if g.gpu_type == gpu_type and preemptible(g)),
            key=lambda g: (pools[g.request.pool].priority, -g.admitted_at.timestamp(), g.request.key),
        )
        if not eligible:
            continue
        trial = room.copy()
        chosen: list[AdmittedGang] = []
        for victim in eligible:
            for held in (victim.bound, reserved.get(victim.request.key, {})):
                for name, gpus in held.items():
                    if name in trial.free:
                        trial.put(name, trial.free[name] + gpus)
            chosen.append(victim)
            if fits(trial, gpu_type):
                if heads.would_turn_to(trial, empty, gpu_type):
                    break  # more victims would only free more of it
                return chosen, gpu_type
    return None


def hold_rank(deferrable: bool, pool: ResourcePool | None) -> int:
    """The priority the extender's hold-back sees for a job's workers: its pool's (below every pool's when it does
    not exist); a deferrable job's workers are below every line."""
    return LOWEST_PRIORITY if deferrable or pool is None else pool.priority


def _on_planned_node(held: ReservedHold, room: Room, gang: AdmittedGang, rank: int) -> tuple[dict[str, int], int]:
    """Room on the node rule 10 emptied for an admitted gang whose workers there are not bound yet: every GPU it
    has free, up to what the pass counted for the gang there less its workers bound there, so that no later job
    counts on them (the moved jobs' GPUs there are the gang's as they go; the extender keeps them for it too).
    The GPUs taken, and the gang's unbound groups they stand for; none without such a node."""
    plan = gang.planned_node
    if plan is None or plan.name not in room.free:
        return {}, 0
    owed = max(0, plan.gpus - gang.bound.get(plan.name, 0))
    gpus = min(room.free[plan.name], owed)
    held.take_on(room, plan.name, gpus, rank)
    return {plan.name: gpus}, owed // gang.request.group_gpus


def _may_defragment(pool: ResourcePool, request: GangRequest, now: datetime | None) -> bool:
    """Whether rule 10 applies to ``request`` now: its pool sets ``defragmentAfterSeconds`` and it has waited that
    long since its submission (a pass without ``now`` moves nobody)."""
    after = pool.defragment_after_s
    return after is not None and now is not None and (now - request.submitted).total_seconds() >= after


@dataclass(frozen=True)
class _Move:
    """Rule 10's choice: the jobs to move off ``node`` so that the gang fits on ``gpu_type``, and the pass's room and
    hold after the move (the gang taken, the moved jobs counted where they fit), with the GPUs the gang takes per
    node."""

    victims: list[AdmittedGang]
    gpu_type: GPUType
    node: str
    room: Room
    held: ReservedHold
    taken: dict[str, int]

    @property
    def gpus(self) -> int:
        """GPUs of the moved jobs."""
        return sum(g.request.gpus for g in self.victims)


def _defragment(
    request: GangRequest,
    pool: ResourcePool,
    types: Sequence[GPUType],
    fits: Callable[[Room, GPUType], bool],
    room: Room,
    candidates: Mapping[str, AdmittedGang],
    reserved: Mapping[str, Mapping[str, int]],
    pools: Mapping[str, ResourcePool],
    held: ReservedHold,
    rank: int,
) -> _Move | None:
    """Rule 10: the move that frees the fewest GPUs, off one node, so that ``request`` fits; None when no node's
    movable jobs free enough, together move as many GPUs as the gang, or would not all fit elsewhere now.
    ``rank``: the priority the extender's hold-back sees for ``request``."""

    def movable(gang: AdmittedGang) -> bool:
        victim_pool = pools.get(gang.request.pool)
        return (
            victim_pool is not None
            and gang.gpu_type is not None
            and len(gang.bound) == 1
            and gang.unbound_workers == 0
            and not reserved.get(gang.request.key)
            and (victim_pool.name == pool.name or (victim_pool.preemptible and victim_pool.priority < pool.priority))
        )

    capacity = _capacity(request, pool)
    by_node: dict[str, list[AdmittedGang]] = {}
    for gang in candidates.values():
        if movable(gang):
            (name,) = gang.bound
            if room.kind.get(name, (None, None))[1] in capacity:
                by_node.setdefault(name, []).append(gang)
    best: _Move | None = None
    for name, gangs in sorted(by_node.items()):
        gpu_type = room.kind[name][0]
        if gpu_type is None or gpu_type not in types:
            continue
        if room.free[name] + sum(g.bound[name] for g in gangs) < request.group_gpus:
            continue  # even empty, the node would not hold one group (and the room is not copied for it)
        trial, chosen = room.copy(), []
        for gang in sorted(gangs, key=lambda g: (-g.admitted_at.timestamp(), g.request.key)):
            trial.put(name, trial.free[name] + gang.bound[name])
            chosen.append(gang)
            if fits(trial, gpu_type):
                break
        else:
            continue
        moved = sum(g.request.gpus for g in chosen)
        if moved >= request.gpus or (best is not None and moved >= best.gpus):
            continue
        trial_held = held.copy()
        taken = _take_gang(trial_held, trial, request, gpu_type, capacity, request.group_gpus, request.groups, rank)
        left = trial.free[name]
        trial.put(name, 0)  # a moved job goes to another node, never back onto this one
        if all(_take_elsewhere(trial_held, trial, g.request, pools[g.request.pool]) for g in chosen):
            trial.put(name, left)
            best = _Move(chosen, gpu_type, name, trial, trial_held, taken)
    return best


def _capacity(request: GangRequest, pool: ResourcePool) -> frozenset[str]:
    """The capacity types the gang may be counted on: its own and its pool's for its run-time estimate (a pool's
    ``onDemandMaxDurationSeconds`` keeps a job expected to run longer off on-demand capacity)."""
    return request.capacity_types & pool.capacity_types_for(request.expected_duration_s)


def _take_elsewhere(held: ReservedHold, room: Room, request: GangRequest, pool: ResourcePool) -> bool:
    """Take room for a moved job's whole gang on the first of its types that holds it now; whether one did."""
    capacity = _capacity(request, pool)
    rank = hold_rank(request.deferrable, pool)
    for gpu_type in (t for t in request.gpu_types if t in pool.gpu_types):
        if held.fits(room, gpu_type, capacity, request.group_gpus, request.groups, rank):
            held.take(room, gpu_type, capacity, request.group_gpus, request.groups, rank)
            return True
    return False
