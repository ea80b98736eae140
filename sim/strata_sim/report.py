"""Figures per policy from an :class:`~strata_sim.engine.Outcome`, the table printed, and the plots (PNG)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from strata_api.catalog import Catalog
from strata_sim.engine import Outcome
from strata_sim.floor import CostFloor, NoScheduleWithin, cost_floor
from strata_sim.model import HIGH_POOL, HOUR_S, LOW_POOL, Fleet, Job, PowerClock, reserved_cost

JCT_AIM = 1.05
"""Issue 21's aim allows Strata's mean JCT at most this multiple of default's."""


@dataclass(frozen=True)
class Figures:
    policy: str
    total_cost: float
    """Reserved capacity over the replay plus on-demand and spot use, dollars."""
    cost_per_useful_gpu_h: float
    """Total cost per GPU-hour of finished jobs' work on the reference GPU."""
    utilisation: float
    """GPU-hours of running gangs over the fleet's GPU-hours, until the last job finished."""
    utilisation_arrivals: float
    """The same while jobs still arrive (hourly samples up to the last arrival): the busy part of a trace,
    without the tail where a few long jobs drain."""
    mean_wait_h: dict[str, float]
    p95_wait_h: dict[str, float]
    mean_jct_h: float
    lost_gpu_h: float
    high_over_bound: int
    """High-priority jobs that waited longer than the bound."""
    unfinished: int
    """Jobs that never finished (a half-placed gang that never got the rest of its GPUs, or never started)."""
    end_h: float


def figures(outcome: Outcome, catalog: Catalog, bound_s: float = 600.0) -> Figures:
    records = outcome.records
    done = [r for r in records if r.finish_s is not None]
    cost = outcome.usage_cost + reserved_cost(catalog, outcome.fleet, PowerClock(catalog), outcome.end_s)
    useful = sum(r.job.work_h * r.job.gpus for r in done)
    capacity_s = outcome.fleet.gpus() * outcome.end_s
    utilisation = outcome.busy_gpu_s / capacity_s if capacity_s > 0 else 0.0
    last_arrival = max((r.job.arrival_s for r in records), default=0.0)
    sampled = [b for t, b in zip(outcome.series.t_s, outcome.series.busy, strict=True) if t <= last_arrival]
    arriving = float(np.mean(sampled)) / outcome.fleet.gpus() if sampled else utilisation

    def waits(pool: str) -> np.ndarray:
        return np.array(wait_hours(outcome, pool))

    mean_wait, p95_wait = {}, {}
    for pool in (HIGH_POOL, LOW_POOL):
        w = waits(pool)
        mean_wait[pool] = float(w.mean()) if len(w) else 0.0
        p95_wait[pool] = float(np.percentile(w, 95)) if len(w) else 0.0
    jct = [(r.finish_s - r.job.arrival_s) / HOUR_S for r in done if r.finish_s is not None]
    high_over = sum(
        1
        for r in records
        if r.job.pool == HIGH_POOL
        and (r.first_start_s if r.first_start_s is not None else outcome.end_s) - r.job.arrival_s > bound_s
    )
    return Figures(
        policy=outcome.policy,
        total_cost=cost,
        cost_per_useful_gpu_h=cost / useful if useful else float("inf"),
        utilisation=utilisation,
        utilisation_arrivals=arriving,
        mean_wait_h=mean_wait,
        p95_wait_h=p95_wait,
        mean_jct_h=float(np.mean(jct)) if jct else 0.0,
        lost_gpu_h=sum(r.lost_gpu_h for r in records),
        high_over_bound=high_over,
        unfinished=len(records) - len(done),
        end_h=outcome.end_s / HOUR_S,
    )


COLUMNS = (
    ("policy", "{:<20}"),
    ("cost $", "{:>12,.0f}"),
    ("$/useful GPU-h", "{:>14.2f}"),
    ("util", "{:>6.1%}"),
    ("util arr", "{:>8.1%}"),
    ("wait hi mean/p95 min", "{:>20}"),
    ("wait lo mean/p95 min", "{:>20}"),
    ("JCT h", "{:>8.2f}"),
    ("lost GPU-h", "{:>10.1f}"),
    ("hi>bound", "{:>8d}"),
    ("unfinished", "{:>10d}"),
)


WIDTHS = (20, 12, 14, 6, 8, 20, 20, 8, 10, 8, 10)


def wait_hours(outcome: Outcome, pool: str) -> list[float]:
    """Hours from arrival to first start of the pool's jobs that started."""
    return [
        (r.first_start_s - r.job.arrival_s) / HOUR_S
        for r in outcome.records
        if r.job.pool == pool and r.first_start_s is not None
    ]


def table(rows: Sequence[Figures]) -> str:
    """The policy table, one line per policy (the name column as wide as the longest name)."""
    name_width = max([WIDTHS[0], *(len(f.policy) for f in rows)])
    head = "  ".join(
        f"{name:<{name_width}}" if i == 0 else f"{name:>{WIDTHS[i]}}" for i, (name, _) in enumerate(COLUMNS)
    )
    lines = [head]
    for f in rows:
        values = (
            f.policy,
            f.total_cost,
            f.cost_per_useful_gpu_h,
            f.utilisation,
            f.utilisation_arrivals,
            f"{f.mean_wait_h[HIGH_POOL] * 60:.1f}/{f.p95_wait_h[HIGH_POOL] * 60:.1f}",
            f"{f.mean_wait_h[LOW_POOL] * 60:.1f}/{f.p95_wait_h[LOW_POOL] * 60:.1f}",
            f.mean_jct_h,
            f.lost_gpu_h,
            f.high_over_bound,
            f.unfinished,
        )
        cells = [fmt.format(v) for (_, fmt), v in zip(COLUMNS, values, strict=True)]
        lines.append("  ".join([f"{f.policy:<{name_width}}", *cells[1:]]))
    return "\n".join(lines)


def floor_line(floor: CostFloor, rows: Sequence[Figures]) -> str:
    """The cost floor against the run's policies: what no schedule goes below, its parts, and each policy's cost
    as a multiple of it; with a ``default`` row, the floor as a share of default's cost beside the 30% aim."""
    parts = ", ".join(f"{kind} ${dollars:,.0f}" for kind, dollars in sorted(floor.usage.items()))
    bound = "" if floor.max_mean_jct_h is None else f" with mean JCT at most {floor.max_mean_jct_h:.2f} h"
    line = (
        f"cost floor{bound}: ${floor.total:,.0f} (reserved ${floor.reserved:,.0f} to {floor.end_h:.0f} h"
        + (f"; {parts}" if parts else "")
        + ")"
    )
    by = {f.policy: f for f in rows}
    if "default" in by and by["default"].total_cost > 0:
        default = by["default"].total_cost
        line += f"; {floor.total / default:.3f} of default's (30% below it: ${0.7 * default:,.0f})"
    if floor.total > 0:
        line += "; policies over it: " + ", ".join(f"{f.policy} {f.total_cost / floor.total:.2f}" for f in rows)
    return line


def floor_lines(
    jobs: Sequence[Job], fleet: Fleet, catalog: Catalog, slot_h: float, rows: Sequence[Figures]
) -> list[str]:
    """The floor's lines for ``--floor``: the floor, and with a ``default`` row the floor within the aim's JCT
    bound, or a line saying that no schedule of the relaxation meets it (where default leaves jobs unfinished, its
    mean JCT is over the jobs that finished, and the floor's is over all of them)."""
    lines = [floor_line(cost_floor(jobs, fleet, catalog, slot_h=slot_h), rows)]
    default = next((f for f in rows if f.policy == "default"), None)
    if default is not None:
        within = JCT_AIM * default.mean_jct_h
        try:
            lines.append(floor_line(cost_floor(jobs, fleet, catalog, slot_h=slot_h, max_mean_jct_h=within), rows))
        except NoScheduleWithin as error:
            lines.append(f"cost floor with mean JCT at most {within:.2f} h: none ({error})")
    return lines


@dataclass(frozen=True)
class AimRatios:
    """One seed's figures against issue 21's aims, each a ratio of two policies of the same run (None where a
    policy the ratio needs was not run, or its figure is 0)."""

    seed: int
    cost: float | None
    """Strata's total cost over default's."""
    jct: float | None
    """Strata's mean JCT over default's."""
    utilisation: float | None
    """Strata's utilisation while jobs arrive (not a ratio)."""
    wait_high: float | None
    """Strata's mean high-priority wait over default's."""
    wait_low: float | None
    wait_high_p95_holdback: float | None
    """Strata's high-priority p95 wait over strata-no-holdback's (the hold-back's effect)."""


AIMS = ("seed", "cost / default", "JCT / default", "util arr", "wait hi / default", "wait lo / default",
        "hi p95 / no-holdback")  # fmt: skip


def aim_ratios(seed: int, rows: Sequence[Figures], policy: str = "strata") -> AimRatios:
    """The aims' ratios of one seed's rows: ``policy``'s (``strata`` by default) over ``default``'s, and its
    high-priority p95 wait over ``strata-no-holdback``'s."""
    by = {f.policy: f for f in rows}
    strata = by.get(policy)

    def over(baseline: str, read: Callable[[Figures], float]) -> float | None:
        """Strata's figure over ``baseline``'s; None without either, or where the baseline's is 0."""
        theirs = by.get(baseline)
        return read(strata) / read(theirs) if strata is not None and theirs is not None and read(theirs) else None

    return AimRatios(
        seed=seed,
        cost=over("default", lambda f: f.total_cost),
        jct=over("default", lambda f: f.mean_jct_h),
        utilisation=strata.utilisation_arrivals if strata is not None else None,
        wait_high=over("default", lambda f: f.mean_wait_h[HIGH_POOL]),
        wait_low=over("default", lambda f: f.mean_wait_h[LOW_POOL]),
        wait_high_p95_holdback=over("strata-no-holdback", lambda f: f.p95_wait_h[HIGH_POOL]),
    )


def aims_table(ratios: Sequence[AimRatios]) -> str:
    """A line per seed, then the median and the range of each column over the seeds; ratios to three places, as
    an aim's line (0.70 of the cost, 1.05 of the JCT) may fall between two hundredths."""

    def cells(values: Sequence[float | None], percent: bool = False) -> list[str]:
        return ["-" if v is None else f"{v:.1%}" if percent else f"{v:.3f}" for v in values]

    columns = [
        [r.cost for r in ratios],
        [r.jct for r in ratios],
        [r.utilisation for r in ratios],
        [r.wait_high for r in ratios],
        [r.wait_low for r in ratios],
        [r.wait_high_p95_holdback for r in ratios],
    ]
    lines = [[str(r.seed)] for r in ratios]
    for i, column in enumerate(columns):
        for line, cell in zip(lines, cells(column, percent=i == 2), strict=True):
            line.append(cell)
    summary = [["median"], ["range"]]
    for i, column in enumerate(columns):
        known = sorted(v for v in column if v is not None)
        if not known:
            summary[0].append("-")
            summary[1].append("-")
            continue
        (median,) = cells([float(np.median(known))], percent=i == 2)
        low, high = cells([known[0], known[-1]], percent=i == 2)
        summary[0].append(median)
        summary[1].append(f"{low}-{high}")
    widths = [max(len(AIMS[i]), *(len(line[i]) for line in lines + summary)) for i in range(len(AIMS))]
    return "\n".join(
        "  ".join(cell.rjust(widths[i]) for i, cell in enumerate(line)) for line in [list(AIMS), *lines, *summary]
    )


def plot(outcomes: Sequence[Outcome], out: Path) -> list[Path]:
    """Utilisation, queue length, cost over time and wait CDFs, one PNG each, every policy on one axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    panels = (
        ("utilisation.png", "GPUs running jobs / fleet GPUs", lambda o: np.array(o.series.busy) / o.fleet.gpus()),
        ("queue.png", "jobs waiting", lambda o: np.array(o.series.queued)),
        ("spend.png", "on-demand + spot spend so far ($)", lambda o: np.array(o.series.spend)),
    )
    for name, label, values in panels:
        fig, ax = plt.subplots(figsize=(9, 4))
        for o in outcomes:
            ax.plot(np.array(o.series.t_s) / 86400, values(o), label=o.policy, linewidth=0.8)
        ax.set_xlabel("day")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(out / name)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, pool in zip(axes, (HIGH_POOL, LOW_POOL), strict=True):
        for o in outcomes:
            w = np.sort(wait_hours(o, pool)) * 60
            if len(w):
                ax.plot(w, np.arange(1, len(w) + 1) / len(w), label=o.policy, linewidth=0.8)
        ax.set_xscale("symlog")
        ax.set_xlabel(f"wait, {pool}-priority jobs (min)")
        ax.set_ylabel("fraction of jobs")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "wait_cdf.png", dpi=110)
    plt.close(fig)
    written.append(out / "wait_cdf.png")
    return written
