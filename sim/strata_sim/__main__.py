"""``python -m strata_sim``: replay a trace under each policy, print the table, write the plots.

Example: ``python -m strata_sim --trace alibaba --days 30 --policies all --out /tmp/strata-sim``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from tqdm import tqdm

from strata_api import CONSOLIDATE_AFTER_S, CONSOLIDATE_MIN_REMAINING_S, Consolidation
from strata_api.catalog import DEFAULT_CATALOG, Catalog, CatalogError, load_catalog
from strata_sim.engine import Outcome, Policy, simulate
from strata_sim.model import Fleet, Job, SimInputError, check_catalog, load_fleet, too_big
from strata_sim.policies import DEFRAGMENT_AFTER_S, LONG_JOB_S, VALLEY_SLACK_S, StrataPolicy, all_policies
from strata_sim.report import AimRatios, Figures, aim_ratios, aims_table, figures, floor_lines, plot, table
from strata_sim.traces import DAY_S, MAX_DAYS, read_alibaba, read_helios, synthetic

REPO = Path(__file__).resolve().parents[2]
TRACES = REPO.parent / "shared" / "data" / "traces"
FLEET = Path(__file__).with_name("fleet.yaml")
MAX_SYNTHETIC_JOBS = 10_000_000
"""Ten times the documented year (docs/simulation.md): more would fill memory before the replay starts."""
MAX_HOURS = MAX_DAYS * 24


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, as every other input error has (the usage is a ``--help`` away)."""
        self.exit(2, f"error: {message} (see --help)\n")


def _number(low: float, high: float = math.inf, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` (more than ``low`` with ``above``) to ``high``."""
    bounds = (
        ("more than " if above else "at least ") + f"{low:g}" + (f" and at most {high:g}" if high < math.inf else "")
    )

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and (value > low if above else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"expected a number {bounds}, got {text!r}")
        return value

    return parse


def _hours(parser: argparse.ArgumentParser, flag: str, default_s: int, what: str) -> None:
    """A setting in hours (0 to ``MAX_HOURS``) whose default is ``default_s`` seconds."""
    parser.add_argument(flag, type=_number(0, MAX_HOURS), default=default_s / 3600, help=f"{what}, in hours")


def _count(text: str) -> int:
    """An argparse type: a whole number of one or more."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of one or more, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m strata_sim", description=__doc__)
    parser.add_argument("--trace", default="alibaba", help="alibaba, helios, or synthetic:<jobs>")
    parser.add_argument("--traces", type=Path, default=TRACES, help="folder holding the public traces")
    parser.add_argument(
        "--days",
        type=_number(0, MAX_DAYS, above=True),
        default=30.0,
        help=f"the replay window, days (at most {MAX_DAYS:g})",
    )
    parser.add_argument("--fleet", type=Path, default=FLEET, help="a fleet file (examples/fleet.yaml format)")
    parser.add_argument("--scale", type=_number(0, above=True), default=1.0, help="multiplies every pool's node count")
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--policies", default="all", help="comma-separated names, or all")
    parser.add_argument(
        "--checkpoint-min",
        type=_number(0),
        default=30.0,
        help="every job's checkpoint interval (0: jobs never checkpoint)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        type=_count,
        default=1,
        help="replay with this many seeds of the spot reclaims, from --seed on (the trace stays the same); with more "
        "than one each row is named policy@seed, and the aims' ratios per seed follow, with their median and range",
    )
    parser.add_argument("--wait-bound-min", type=_number(0), default=10.0, help="the high-priority wait bound")
    _hours(parser, "--defragment-after-h", DEFRAGMENT_AFTER_S, "strata-defrag's defragmentAfterSeconds on both pools")
    parser.add_argument(
        "--aims-of", default="strata", help="with --seeds: the policy whose figures the aims' ratios are of"
    )
    _hours(
        parser,
        "--long-job-h",
        LONG_JOB_S,
        "the pools' onDemandMaxDurationSeconds of strata-long-no-on-demand and strata-consolidate: jobs expected to "
        "run longer take reserved or spot capacity only",
    )
    _hours(
        parser,
        "--consolidate-h",
        CONSOLIDATE_MIN_REMAINING_S,
        "strata-consolidate's pools' consolidation.minRemainingSeconds: running jobs expected to run at least this "
        "much longer move to cheaper capacity when it can hold them",
    )
    parser.add_argument(
        "--consolidate-after-s",
        type=_number(0, MAX_HOURS * 3600),
        default=CONSOLIDATE_AFTER_S,
        help="strata-consolidate's pools' consolidation.afterSeconds: a job is moved only this long after its "
        "admission",
    )
    _hours(
        parser,
        "--valley-slack-h",
        VALLEY_SLACK_S,
        "strata-valley: every low-priority job of at most a day is deferrable (valley scheduling), with "
        "deadlineSeconds its expected run plus this",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also print the cost floor: the least any schedule of the trace on the fleet could pay (a linear "
        "programme over a relaxation of the replay, docs/simulation.md), and with a default row the same within "
        "5%% of default's mean JCT",
    )
    parser.add_argument(
        "--floor-slot-h", type=_number(0, MAX_HOURS, above=True), default=24.0, help="the floor's time slots, hours"
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNG plots")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        catalog, fleet, names = _inputs(args)
        jobs = _jobs(args)
    except SimInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    unfit = too_big(jobs, fleet)
    if unfit:
        print(f"error: {_unfit(unfit, fleet)}", file=sys.stderr)
        return 2
    builders = all_policies(
        fleet,
        catalog,
        round(args.defragment_after_h * 3600),
        round(args.long_job_h * 3600),
        round(args.valley_slack_h * 3600),
        Consolidation(round(args.consolidate_h * 3600), round(args.consolidate_after_s)),
    )
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
            try:
                written = plot(outcomes, args.out)
            except OSError as error:
                print(f"error: --out {args.out}: cannot write the plots: {error}", file=sys.stderr)
                return 2
            for path in written:
                print(f"wrote {path}")
    print(table(rows))
    if args.seeds > 1:
        print(aims_table(ratios))
    if args.floor:
        for line in floor_lines(jobs, fleet, catalog, args.floor_slot_h, first_seed):
            print(line)
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
        if policy.consolidating:
            notes += f"; jobs moved to cheaper capacity (rule 11): {policy.consolidations}"
        if policy.plans:
            mean = f" by {policy.deferred_h / policy.deferred:.1f} h on average" if policy.deferred else ""
            notes += f"; valley scheduling deferred {policy.deferred} of {len(policy.plans)} deferrable jobs{mean}"
    label = name if args.seeds <= 1 else f"{name}@{seed}"
    print(f"{label}: {time.perf_counter() - started:.1f} s{notes}")
    return outcome


def _inputs(args: argparse.Namespace) -> tuple[Catalog, Fleet, list[str]]:
    """The catalog, the fleet and the policies' names, each checked before any trace is read."""
    try:
        catalog = load_catalog(args.catalog)
    except CatalogError as error:
        raise SimInputError(str(error)) from error
    fleet = load_fleet(args.fleet, args.scale)
    try:
        check_catalog(fleet, catalog)
    except SimInputError as error:
        raise SimInputError(f"{args.catalog}: {error}, which the fleet {args.fleet} needs") from error
    known = list(all_policies(fleet, catalog))
    names = known if args.policies == "all" else [n.strip() for n in args.policies.split(",")]
    unknown = [repr(n) for n in names if n not in known]
    if unknown:
        raise SimInputError(f"--policies: unknown policy {', '.join(unknown)}; known: {', '.join(known)}, or all")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SimInputError(f"--policies: {', '.join(twice)} named more than once")
    if args.aims_of not in known:
        raise SimInputError(f"--aims-of: unknown policy {args.aims_of!r}; known: {', '.join(known)}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise SimInputError(f"--out {args.out}: not a folder")
    return catalog, fleet, names


def _unfit(unfit: Sequence[Job], fleet: Fleet) -> str:
    """What stops the jobs no placement of the empty fleet could hold: a worker group wider than every node, which
    no --scale mends, or a gang wider than the fleet."""
    widest = max(n.gpus for n in fleet.nodes)
    wide = [j for j in unfit if j.gpus_per_worker * j.pods_per_group > widest]
    if wide:
        return (
            f"{len(wide)} job(s) have a worker wider than any node of the fleet ({widest} GPUs; --scale adds nodes, "
            f"not GPUs per node), e.g. {wide[0].key} ({wide[0].workers} x {wide[0].gpus_per_worker} GPUs)"
        )
    return (
        f"{len(unfit)} job(s) need more GPUs of one type than the fleet has ({fleet.gpus()} GPUs; raise --scale), "
        f"e.g. {unfit[0].key} ({unfit[0].workers} x {unfit[0].gpus_per_worker} GPUs)"
    )


def _jobs(args: argparse.Namespace) -> list[Job]:
    checkpoint = args.checkpoint_min * 60 if args.checkpoint_min > 0 else None
    if args.trace == "alibaba":
        folder = args.traces / "alibaba_gpu_v2023"
        jobs, summary = read_alibaba(folder, args.days, checkpoint_s=checkpoint)
    elif args.trace == "helios":
        folder = args.traces / "helios_earth_vc_demand"
        jobs, summary = read_helios(folder, args.days, checkpoint_s=checkpoint)
    elif args.trace.startswith("synthetic:"):
        text = args.trace.split(":", 1)[1]
        count = int(text) if text.isascii() and text.isdigit() and len(text) < 10 else 0
        if not 0 < count <= MAX_SYNTHETIC_JOBS:
            raise SimInputError(f"--trace {args.trace}: expected synthetic:<jobs>, 1 to {MAX_SYNTHETIC_JOBS:,} jobs")
        return synthetic(count, args.days, args.seed, checkpoint_s=checkpoint)
    else:
        raise SimInputError(f"unknown trace {args.trace!r}: alibaba, helios or synthetic:<jobs>")
    left_out = ", ".join(f"{count} {why}" for why, count in sorted(summary.skipped.items()))
    if not jobs:
        raise SimInputError(
            f"{folder}: no job to replay in the first {args.days:g} day(s); left out: {left_out or 'none'}"
        )
    span = max((j.arrival_s for j in jobs), default=0.0) / DAY_S
    print(f"trace {args.trace}: {summary.jobs} jobs over {span:.1f} days; left out: {left_out or 'none'}")
    return jobs


if __name__ == "__main__":
    sys.exit(main())
