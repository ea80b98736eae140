"""The cheapest fleet, known in hindsight, that misses at most a given share of the reactive baseline's seconds.

:func:`strata_serving.replay.hindsight_floor` is the least any scaler pays without missing a second. The issue's
aim allows half of reactive's misses, so where that floor is above 1.10 of reactive's cost this asks whether a
schedule that misses some seconds is cheap enough: a mixed-integer programme (HiGHS, through SciPy) over the same
one-second grid and the same costs as the replay::

    minimise   sum over t of provisioned(t)                      (replica-seconds, from the warm-up on)
    subject to provisioned(t) >= ready(u)  for u in [t, t + start-up]   (a replica is paid from its order)
               ready(u) >= need(u) * (1 - missed(u))              missed(u) in {0, 1}, ready(u) whole
               sum of missed(u) <= budget

Its solution is a schedule (an upper bound on the least cost within the budget) and HiGHS's dual bound a lower
bound; with a budget of 0 both equal the closed-form floor, which checks the programme. A 30-minute Azure slice
(1,350 seconds after the warm-up) solves in minutes; the 13-day Alibaba trace is out of its reach (and every one
of its cells meets the aim with the forecasters anyway).

    .venv/bin/python bench/serving/miss_budget_floor.py --only azure_conv --startups 300 --budgets 0 0.5
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from autoscale_replay import SETUPS, TRACES, forecasters_warmup_s, target_for
from scipy.optimize import Bounds, LinearConstraint, milp

from strata_serving.autoscale import Mode, ScalingPolicy
from strata_serving.forecasters import ForecastSettings
from strata_serving.replay import ReplayConfig, demand_rate, hindsight_floor, load_trace, per_second_counts, simulate


def least_cost(need: np.ndarray, startup_s: int, budget: int, min_replicas: int, limit_s: float) -> tuple[float, float]:
    """The programme above over ``need`` (replicas needed each counted second): the best schedule's
    replica-seconds and the solver's lower bound on any schedule's."""
    n = len(need)
    # provisioned(t) - ready(t + offset) >= 0 for every offset up to the start-up
    first = np.concatenate([np.arange(n - offset) for offset in range(startup_s + 1)])
    later = np.concatenate([np.arange(offset, n) for offset in range(startup_s + 1)])
    window = sp.csr_matrix(
        (
            np.concatenate([np.ones(len(first)), -np.ones(len(first))]),
            (np.concatenate([np.arange(len(first))] * 2), np.concatenate([first, n + later])),
        ),
        shape=(len(first), 3 * n),
    )
    covered = sp.hstack([sp.csr_matrix((n, n)), sp.identity(n), sp.diags(need.astype(float))])
    budgeted = sp.hstack([sp.csr_matrix((1, 2 * n)), sp.csr_matrix(np.ones((1, n)))])
    constraints = [
        LinearConstraint(window, 0, np.inf),
        LinearConstraint(covered, need.astype(float), np.inf),
        LinearConstraint(budgeted, -np.inf, budget),
    ]
    result = milp(
        np.concatenate([np.ones(n), np.zeros(2 * n)]),
        constraints=constraints,
        integrality=np.concatenate([np.zeros(n), np.ones(2 * n)]),
        bounds=Bounds(
            np.concatenate([np.zeros(n), np.full(n, min_replicas), np.zeros(n)]),
            np.concatenate([np.full(2 * n, np.inf), np.ones(n)]),
        ),
        options={"time_limit": limit_s},
    )
    if result.x is None:
        raise RuntimeError(f"no schedule found within {limit_s:g} s: {result.message}")
    return float(result.fun), float(result.mip_dual_bound)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=Path, default=TRACES, help="the traces folder (read in place)")
    parser.add_argument("--only", nargs="*", default=["azure_conv"], choices=["azure_code", "azure_conv"])
    parser.add_argument("--startups", type=int, nargs="+", default=[300], help="replica start-up, s")
    parser.add_argument(
        "--budgets", type=float, nargs="+", default=[0.0, 0.5], help="misses allowed, as shares of reactive's"
    )
    parser.add_argument("--time-limit-s", type=float, default=300.0, help="HiGHS's time limit per programme")
    args = parser.parse_args()
    for name in args.only:
        setup = SETUPS[name]
        trace = load_trace(args.traces / setup.file)
        target, _ = target_for(trace, demand_rate(per_second_counts(trace.arrivals_s), setup.demand_window_s))
        # the seconds autoscale_replay.py counts with the same --startups
        warmup_s = forecasters_warmup_s(ForecastSettings(bin_s=setup.bin_s), args.startups)
        config = ReplayConfig(bin_s=setup.bin_s, demand_window_s=setup.demand_window_s, warmup_s=warmup_s)
        for startup in args.startups:
            policy = ScalingPolicy(target=target, startup_s=startup)
            reactive = simulate(trace.arrivals_s, replace(policy, mode=Mode.REACTIVE), config)
            floor = hindsight_floor(trace.arrivals_s, policy, config)
            need = floor.ready[warmup_s:]
            print(
                f"{name}, start-up {startup} s: reactive {reactive.replica_seconds:,.0f} replica-s, "
                f"{reactive.slo_miss_s} miss s; no misses at all from {floor.replica_seconds:,.0f} "
                f"({floor.replica_seconds / reactive.replica_seconds:.3f})"
            )
            for share in args.budgets:
                budget = int(share * reactive.slo_miss_s)
                started = time.monotonic()
                cost, bound = least_cost(need, startup, budget, policy.min_replicas, args.time_limit_s)
                print(
                    f"   at most {budget} miss s ({share:g} of reactive's): a schedule of {cost:,.0f} replica-s "
                    f"({cost / reactive.replica_seconds:.3f}), none below {bound:,.0f} "
                    f"({bound / reactive.replica_seconds:.3f}); {time.monotonic() - started:.0f} s"
                )


if __name__ == "__main__":
    main()
