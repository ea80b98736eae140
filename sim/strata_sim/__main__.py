"""``python -m strata_sim``: replay a trace under each policy, print the table, write the plots.

Example: ``python -m strata_sim --trace alibaba --days 30 --policies all --out /tmp/strata-sim``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from strata_api.catalog import DEFAULT_CATALOG, Catalog, load_catalog
from strata_sim.engine import Outcome, Policy, simulate
from strata_sim.floor import cost_floor
from strata_sim.model import Fleet, Job, SimInputError, load_fleet, too_big
from strata_sim.policies import DEFRAGMENT_AFTER_S, LONG_JOB_S, StrataPolicy, all_policies
from strata_sim.report import AimRatios, Figures, aim_ratios, aims_table, figures, floor_line, plot, table
from strata_sim.traces import DAY_S, read_alibaba, read_helios, synthetic

REPO = Path(__file__).resolve().parents[2]
TRACES = REPO.parent / "shared" / "data" / "traces"
FLEET = Path(__file__).with_name("fleet.yaml")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m strata_sim", description=__doc__)
    parser.add_argument("--trace", default="alibaba", help="alibaba, helios, or synthetic:<jobs>")
    parser.add_argument("--traces", type=Path, default=TRACES, help="folder holding the public traces")
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--fleet", type=Path, default=FLEET, help="a fleet file (examples/fleet.yaml format)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every pool's node count")
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--policies", default="all", help="comma-separated names, or all")
    parser.add_argument("--checkpoint-min", type=float, default=30.0, help="every job's checkpoint interval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="replay with this many seeds of the spot reclaims, from --seed on (the trace stays the same); with more "
        "than one each row is named policy@seed, and the aims' ratios per seed follow, with their median and range",
    )
    parser.add_argument("--wait-bound-min", type=float, default=10.0, help="the high-priority wait bound")
    parser.add_argument(
        "--defragment-after-h",
        type=float,
        default=DEFRAGMENT_AFTER_S / 3600,
        help="strata-defrag's defragmentAfterSeconds on both pools, in hours",
    )
    parser.add_argument(
        "--aims-of", default="strata", help="with --seeds: the policy whose figures the aims' ratios are of"
    )
    parser.add_argument(
        "--long-job-h",
        type=float,
        default=LONG_JOB_S / 3600,
        help="strata-long-no-on-demand's pools' onDemandMaxDurationSeconds, in hours: jobs expected to run longer "
        "take reserved or spot capacity only",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also print the cost floor: the least any schedule of the trace on the fleet could pay (a linear "
        "programme over a relaxation of the replay, docs/simulation.md), and with a default row the same within "
        "5%% of default's mean JCT",
    )
    parser.add_argument("--floor-slot-h", type=float, default=24.0, help="the floor's time slots, hours")
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNG plots")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        catalog = load_catalog(args.catalog)
        fleet = load_fleet(args.fleet, args.scale)
        jobs = _jobs(args)
    except SimInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    unfit = too_big(jobs, fleet)
    if unfit:
        print(
            f"error: {len(unfit)} job(s) need more GPUs of one type than the fleet has "
            f"({fleet.gpus()} GPUs; raise --scale), e.g. {unfit[0].key} ({unfit[0].workers} x "
            f"{unfit[0].gpus_per_worker} GPUs)",
            file=sys.stderr,
        )
        return 2
    builders = all_policies(fleet, catalog, round(args.defragment_after_h * 3600), round(args.long_job_h * 3600))
    names = list(builders) if args.policies == "all" else args.policies.split(",")
    unknown = [n for n in names if n not in builders]
    if unknown:
        print(f"error: unknown policy {', '.join(unknown)}; known: {', '.join(builders)}", file=sys.stderr)
        return 2
    print(
        f"{len(jobs)} jobs, {sum(j.work_h * j.gpus for j in jobs):,.0f} GPU-hours of work; fleet "
        f"{len(fleet.nodes)} nodes, {fleet.gpus()} GPUs; seed {args.seed}"
        + (f" to {args.seed + args.seeds - 1}" if args.seeds > 1 else "")
    )
    horizon = max((j.arrival_s for j in jobs), default=0.0)
    rows: list[Figures] = []
    first_seed: list[Figures] = []
    ratios: list[AimRatios] = []
    for seed in range(args.seed, args.seed + max(1, args.seeds)):
        outcomes = [_replay(name, builders[name](), jobs, fleet, catalog, seed, horizon, args) for name in names]
        seed_rows = [figures(o, catalog, args.wait_bound_min * 60) for o in outcomes]
        ratios.append(aim_ratios(seed, seed_rows, args.aims_of))
        if seed == args.seed:
            first_seed = seed_rows
        rows += [replace(f, policy=f"{f.policy}@{seed}") for f in seed_rows] if args.seeds > 1 else seed_rows
        if args.out is not None and seed == args.seed:
            for path in plot(outcomes, args.out):
                print(f"wrote {path}")
    print(table(rows))
    if args.seeds > 1:
        print(aims_table(ratios))
    if args.floor:
        print(floor_line(cost_floor(jobs, fleet, catalog, slot_h=args.floor_slot_h), first_seed))
        default = next((f for f in first_seed if f.policy == "default"), None)
        if default is not None:
            within = 1.05 * default.mean_jct_h
            print(
                floor_line(
                    cost_floor(jobs, fleet, catalog, slot_h=args.floor_slot_h, max_mean_jct_h=within), first_seed
                )
            )
    return 0


def _replay(
    name: str,
    policy: Policy,
    jobs: list[Job],
    fleet: Fleet,
    catalog: Catalog,
    seed: int,
    horizon: float,
    args: argparse.Namespace,
) -> Outcome:
    """One policy's replay, with a progress bar and a line on how long it took (and, for Strata, its counts)."""
    started = time.perf_counter()
    with tqdm(total=round(horizon / 3600), unit="h", desc=name, disable=args.no_progress, leave=False) as bar:

        def advance(now_s: float, bar: tqdm = bar) -> None:
            bar.update(max(0, min(round(now_s / 3600), bar.total) - bar.n))

        outcome = simulate(jobs, fleet, catalog, policy, seed=seed, progress=advance)
    notes = ""
    if isinstance(policy, StrataPolicy):
        notes = (
            f"; {policy.dearer} gangs placed on a dearer node kind while a cheaper one had room "
            f"({policy.dearer_kept_off} more where its type was reserved by a waiting head), "
            f"{policy.unplaced} admitted gangs the placement could not hold, "
            f"preemptions by admission: {policy.preemptions.total()}"
            + (f" ({policy.moves} of them moves, rule 10)" if policy.moves else "")
        )
        if policy.preemptions:
            (victim, by), most = policy.preemptions.most_common(1)[0]
            notes += f" (at most {most} of one job by one job: {victim} by {by})"
    label = name if args.seeds <= 1 else f"{name}@{seed}"
    print(f"{label}: {time.perf_counter() - started:.1f} s{notes}")
    return outcome


def _jobs(args: argparse.Namespace) -> list[Job]:
    checkpoint = args.checkpoint_min * 60 if args.checkpoint_min > 0 else None
    if args.trace == "alibaba":
        jobs, summary = read_alibaba(args.traces / "alibaba_gpu_v2023", args.days, checkpoint_s=checkpoint)
    elif args.trace == "helios":
        jobs, summary = read_helios(args.traces / "helios_earth_vc_demand", args.days, checkpoint_s=checkpoint)
    elif args.trace.startswith("synthetic:"):
        return synthetic(int(args.trace.split(":", 1)[1]), args.days, args.seed, checkpoint_s=checkpoint)
    else:
        raise SimInputError(f"unknown trace {args.trace!r}: alibaba, helios or synthetic:<jobs>")
    left_out = ", ".join(f"{count} {why}" for why, count in sorted(summary.skipped.items()))
    span = max((j.arrival_s for j in jobs), default=0.0) / DAY_S
    print(f"trace {args.trace}: {summary.jobs} jobs over {span:.1f} days; left out: {left_out or 'none'}")
    return jobs


if __name__ == "__main__":
    sys.exit(main())
