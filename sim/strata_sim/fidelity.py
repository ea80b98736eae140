"""Fidelity: the simulator's per-job decisions against the real control plane's on the same trace slice.

Pure comparison, no I/O: both sides are lists of :class:`Decision` (one per job: when it arrived, when it got its
GPUs, on which GPU type and capacity type), built by whoever ran them (``bench/sim/fidelity.py`` replays a slice
on the local control plane and in :func:`strata_sim.engine.simulate`). Times are trace seconds on both sides, so
a real replay compressed in time is scaled back before it is compared.

What is compared (docs/simulation.md, "Fidelity"):

- **placement**: the share of jobs started on both sides whose GPU type, capacity type, and both, are the same
  (the issue's aim: both at least 90%), and the count of each (simulated kind, real kind) pair;
- **admitted order**: Spearman's rank correlation of the start times of the jobs started on both sides (ties get
  their average rank, so jobs started at one instant in the simulation do not count as ordered);
- **waits**: real minus simulated wait (start minus arrival) per job, its mean, median, p95 and largest size.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Decision:
    """What one side decided for one job."""

    key: str
    arrival_s: float
    """Trace seconds from the replay's start."""
    start_s: float | None
    """When the job got its GPUs (trace seconds); None: never in the replay."""
    gpu_type: str | None
    capacity: str | None
    """Capacity type of the job's nodes ("/"-joined and sorted when they differ)."""

    @property
    def wait_s(self) -> float | None:
        return None if self.start_s is None else self.start_s - self.arrival_s

    @property
    def kind(self) -> str:
        """``GPU type/capacity type``, or ``not started``."""
        return "not started" if self.start_s is None else f"{self.gpu_type}/{self.capacity}"


@dataclass(frozen=True)
class Agreement:
    """The comparison of two decision lists (:func:`compare`)."""

    jobs: int
    started_both: int
    """Jobs started on both sides: the denominator of the shares, the order and the waits."""
    same_gpu_type: int
    same_capacity: int
    same_both: int
    order_correlation: float | None
    """Spearman's rho of start times over jobs started on both sides; None with fewer than two such jobs or when
    one side started every job at one instant (no order to compare)."""
    wait_diff_s: tuple[float, ...]
    """Real minus simulated wait of each job started on both sides, in the order of the jobs given."""
    kinds: Mapping[tuple[str, str], int] = field(default_factory=dict)
    """(simulated kind, real kind) -> jobs (:attr:`Decision.kind`), every job included."""
    only_simulated: tuple[str, ...] = ()
    """Jobs started in the simulation only."""
    only_real: tuple[str, ...] = ()
    """Jobs started on the real control plane only."""

    def share(self, count: int) -> float:
        return count / self.started_both if self.started_both else 0.0

    @property
    def disagreements(self) -> dict[tuple[str, str], int]:
        """The pairs of :attr:`kinds` whose sides differ, most frequent first."""
        pairs = [(pair, n) for pair, n in self.kinds.items() if pair[0] != pair[1]]
        return dict(sorted(pairs, key=lambda item: (-item[1], item[0])))


def compare(simulated: Sequence[Decision], real: Sequence[Decision]) -> Agreement:
    """Compare two sides' decisions job by job; both must hold the same jobs (a job on one side only is an input
    error, named)."""
    sim_by, real_by = _by_key(simulated, "simulated"), _by_key(real, "real")
    missing = sorted(set(sim_by) ^ set(real_by))
    if missing:
        side = "real" if missing[0] in sim_by else "simulated"
        raise ValueError(f"job {missing[0]} has no {side} decision ({len(missing)} job(s) on one side only)")
    keys = [d.key for d in simulated]
    both = [k for k in keys if sim_by[k].start_s is not None and real_by[k].start_s is not None]
    same_type = sum(sim_by[k].gpu_type == real_by[k].gpu_type for k in both)
    same_capacity = sum(sim_by[k].capacity == real_by[k].capacity for k in both)
    same_both = sum(sim_by[k].kind == real_by[k].kind for k in both)
    sim_starts = [_start(sim_by[k]) for k in both]
    real_starts = [_start(real_by[k]) for k in both]
    diffs = tuple(_wait(real_by[k]) - _wait(sim_by[k]) for k in both)
    kinds = Counter((sim_by[k].kind, real_by[k].kind) for k in keys)
    return Agreement(
        jobs=len(keys),
        started_both=len(both),
        same_gpu_type=same_type,
        same_capacity=same_capacity,
        same_both=same_both,
        order_correlation=spearman(sim_starts, real_starts),
        wait_diff_s=diffs,
        kinds=dict(kinds),
        only_simulated=tuple(k for k in keys if sim_by[k].start_s is not None and real_by[k].start_s is None),
        only_real=tuple(k for k in keys if sim_by[k].start_s is None and real_by[k].start_s is not None),
    )


def same_kinds_by_group(simulated: Sequence[Decision], real: Sequence[Decision], group_of: Mapping[str, str]) -> int:
    """Jobs whose kind agrees once jobs decided together (one ``group_of`` value: one admission pass) may swap
    kinds: per group, the sum over kinds of the smaller of the two sides' counts. It tells "the same capacity was
    given out, to other jobs of the pass" apart from "other capacity was given out"."""
    sides: dict[str, tuple[Counter[str], Counter[str]]] = {}
    for side, decisions in enumerate((simulated, real)):
        for d in decisions:
            group = group_of.get(d.key, d.key)
            sides.setdefault(group, (Counter(), Counter()))[side][d.kind] += 1
    return sum(
        min(count, real_kinds[kind])
        for sim_kinds, real_kinds in sides.values()
        for kind, count in sim_kinds.items()
        if kind != "not started"
    )


def ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank (as statistics textbooks and scipy's ``rankdata`` do)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman's rank correlation: Pearson's correlation of the average ranks. None when it is undefined (fewer
    than two values, or one side all tied)."""
    if len(xs) != len(ys):
        raise ValueError(f"spearman: {len(xs)} values against {len(ys)}")
    if len(xs) < 2:
        return None
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) by linear interpolation between order statistics; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def table(agreement: Agreement, limit: int = 12) -> str:
    """The comparison as text: the shares, the order, the waits (minutes), then the disagreeing kinds."""
    a = agreement
    diffs_min = [d / 60 for d in a.wait_diff_s]
    rho = "n/a" if a.order_correlation is None else f"{a.order_correlation:.3f}"
    rows = [
        ("jobs", f"{a.jobs} ({a.started_both} started on both sides)"),
        ("same GPU type", f"{a.same_gpu_type} ({a.share(a.same_gpu_type):.1%})"),
        ("same capacity type", f"{a.same_capacity} ({a.share(a.same_capacity):.1%})"),
        ("same GPU type and capacity type", f"{a.same_both} ({a.share(a.same_both):.1%})"),
        ("admitted order, Spearman rho", rho),
        (
            "wait real - simulated, min",
            f"mean {_mean(diffs_min):.1f}, median {percentile(diffs_min, 0.5):.1f}, "
            f"p95 {percentile(diffs_min, 0.95):.1f}, largest {max(diffs_min, key=abs, default=0.0):.1f}",
        ),
        ("started in the simulation only", str(len(a.only_simulated))),
        ("started on the control plane only", str(len(a.only_real))),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if a.disagreements:
        lines.append(f"{'simulated':<22} {'real':<22} jobs")
        for (sim_kind, real_kind), count in list(a.disagreements.items())[:limit]:
            lines.append(f"{sim_kind:<22} {real_kind:<22} {count}")
    return "\n".join(lines)


def _by_key(decisions: Sequence[Decision], side: str) -> dict[str, Decision]:
    out: dict[str, Decision] = {}
    for decision in decisions:
        if decision.key in out:
            raise ValueError(f"job {decision.key} has two {side} decisions")
        out[decision.key] = decision
    return out


def _start(decision: Decision) -> float:
    assert decision.start_s is not None
    return decision.start_s


def _wait(decision: Decision) -> float:
    wait = decision.wait_s
    assert wait is not None
    return wait


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else 0.0
