"""Where valley scheduling's money goes in a replay: ``strata`` against ``strata-valley`` (issue 21, item 4).

Prints each policy's cost split into per-use spend (on-demand and spot, at the hour's time-of-use price) and
reserved nodes (paid to the replay's end), the replay's end, and, for the jobs ``strata-valley`` makes deferrable
(low priority, expected to run at most a day), their GPU-hours of work by the capacity type they finished on: a
deferral saves at most the tariff's swing on per-use spend, and the jobs it moves together into the cheap hours
may meet dearer kinds there (docs/simulation.md, finding 13).

    .venv/bin/python bench/sim/valley_breakdown.py --trace alibaba --scale 0.5
    .venv/bin/python bench/sim/valley_breakdown.py --trace helios --days 14 --scale 10
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from strata_api import CapacityType
from strata_api.catalog import DEFAULT_CATALOG, load_catalog
from strata_sim.__main__ import FLEET, TRACES
from strata_sim.engine import simulate
from strata_sim.model import HOUR_S, PowerClock, load_fleet, reserved_cost
from strata_sim.policies import VALLEY_SLACK_S, StrataPolicy, all_policies
from strata_sim.traces import read_alibaba, read_helios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", choices=("alibaba", "helios"), default="alibaba")
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--fleet", type=Path, default=FLEET)
    parser.add_argument("--valley-slack-h", type=float, default=VALLEY_SLACK_S / 3600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    catalog = load_catalog(DEFAULT_CATALOG)
    fleet = load_fleet(args.fleet, args.scale)
    read = read_alibaba if args.trace == "alibaba" else read_helios
    folder = TRACES / ("alibaba_gpu_v2023" if args.trace == "alibaba" else "helios_earth_vc_demand")
    jobs, _ = read(folder, args.days, checkpoint_s=1800.0)
    builders = all_policies(fleet, catalog, valley_slack_s=round(args.valley_slack_h * 3600))
    deferrable = builders["strata-valley"]()
    assert isinstance(deferrable, StrataPolicy)
    kinds = [c.value for c in CapacityType]
    print(
        f"{args.trace}, {fleet.gpus()} GPUs, seed {args.seed}, "
        f"deferrable: deadline {args.valley_slack_h:g} h past the run"
    )
    print(
        f"{'policy':<15}{'cost $':>11}{'per-use $':>11}{'reserved $':>12}{'end h':>8}  "
        "deferrable jobs' GPU-h by capacity type"
    )
    for name in ("strata", "strata-valley"):
        policy = builders[name]()
        outcome = simulate(jobs, fleet, catalog, policy, seed=args.seed)
        reserved = reserved_cost(catalog, fleet, PowerClock(catalog), outcome.end_s)
        gpu_h: Counter[str] = Counter()
        for record in outcome.records:
            if deferrable.deferrable(record.job) and record.capacity is not None:
                gpu_h[record.capacity] += record.job.gpus * record.job.work_h
        split = ", ".join(f"{kind} {gpu_h[kind]:,.0f}" for kind in kinds)
        print(
            f"{name:<15}{outcome.usage_cost + reserved:>11,.0f}{outcome.usage_cost:>11,.0f}{reserved:>12,.0f}"
            f"{outcome.end_s / HOUR_S:>8.1f}  {split}"
        )
        if isinstance(policy, StrataPolicy) and policy.plans:
            saving = sum(p.saving for p in policy.plans.values()) / len(policy.plans)
            print(
                f"{'':<15}deferred {policy.deferred} of {len(policy.plans)} deferrable jobs, their plans saving "
                f"{saving:.1%} of a run's power on average"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
