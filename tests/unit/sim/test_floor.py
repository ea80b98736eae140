"""The cost floor: the least any schedule could pay, on traces small enough to work out by hand, and never above
what a policy of the simulator paid on the same trace.

Hand-made cases use a flat-power catalog without reclaims, H100 only: a reserved node costs $80 a node-hour ($10 a
GPU-hour), on-demand $120 ($15), spot $40 ($5).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from strata_api import GPUType
from strata_api.catalog import DEFAULT_CATALOG, Catalog, load_catalog, parse_catalog
from strata_sim.__main__ import main
from strata_sim.engine import simulate
from strata_sim.floor import CostFloor, cost_floor
from strata_sim.model import HOUR_S, Fleet, Job, SimNode, load_fleet
from strata_sim.policies import all_policies
from strata_sim.report import Figures, figures, floor_line, floor_lines
from strata_sim.traces import synthetic

pytestmark = pytest.mark.timeout(60)

FLAT = parse_catalog(
    {
        "prices": {"p5.48xlarge": {"reserved": 80.0, "on-demand": 120.0, "spot": 40.0}},
        "throughput": {"bf16": {"H100": 1.0, "MI300X": 0.85}},
    }
)


def nodes(*kinds: str) -> Fleet:
    return Fleet(tuple(SimNode(f"n{i}-{kind}", GPUType.H100, kind, "p5.48xlarge", 8) for i, kind in enumerate(kinds)))


def job(key: str, at_h: float, hours: float, gpus: int = 8) -> Job:
    return Job(key, at_h * HOUR_S, 1, gpus, hours, gpu_types=(GPUType.H100,))


def floor(jobs: list[Job], fleet: Fleet, catalog: Catalog = FLAT, **kw: float) -> tuple[float, float]:
    found = cost_floor(jobs, fleet, catalog, **kw)
    return round(found.total, 6), round(found.end_h, 6)


def test_reserved_nodes_are_paid_from_the_start_to_the_earliest_end() -> None:
    fleet = nodes("reserved")
    assert floor([job("a", 0, 2)], fleet) == (160.0, 2.0)
    # A job arriving at 5 h of 2 h: the node is paid for 7 hours, used or not.
    assert floor([job("a", 5, 2, gpus=1)], fleet) == (560.0, 7.0)


def test_spot_is_paid_per_gpu_hour_used() -> None:
    found = cost_floor([job("a", 0, 2), job("b", 1, 1, gpus=2)], nodes("spot"), FLAT)
    assert round(found.total, 6) == (16 + 2) * 5.0
    assert found.reserved == 0.0
    assert found.usage == pytest.approx({"H100 spot": 90.0})


def test_without_a_jct_bound_work_waits_for_the_cheaper_capacity() -> None:
    # Two whole-node jobs of an hour at once: one after the other on the spot node, never on-demand.
    jobs, fleet = [job("a", 0, 1), job("b", 0, 1)], nodes("spot", "on-demand")
    assert floor(jobs, fleet, slot_h=0.25)[0] == 16 * 5.0


def test_a_jct_bound_makes_the_floor_pay_for_dearer_capacity() -> None:
    jobs, fleet = [job("a", 0, 1), job("b", 0, 1)], nodes("spot", "on-demand")
    # Both finishing at 1 h needs both nodes for the hour: 8 GPU-hours on-demand. The relaxation counts a slot's
    # work from the slot's start, so with quarter-hour slots it lets some work into the next hour; the floor
    # lies above the cost without the bound and at most at that schedule's.
    bounded = floor(jobs, fleet, slot_h=0.25, max_mean_jct_h=1.0)[0]
    assert 16 * 5.0 < bounded <= 8 * 5.0 + 8 * 15.0
    # A looser bound costs no more.
    assert floor(jobs, fleet, slot_h=0.25, max_mean_jct_h=1.5)[0] <= bounded


def test_a_jct_bound_no_schedule_meets_is_reported() -> None:
    with pytest.raises(ValueError, match=r"mean JCT of 1\.0 h"):
        cost_floor([job("a", 0, 2)], nodes("spot"), FLAT, max_mean_jct_h=1.0)


def test_the_floor_never_exceeds_what_a_policy_paid() -> None:
    # The shipped catalog (time-of-use power, spot reclaims) on a small synthetic trace with gangs and both GPU
    # types: every policy's cost is at least the floor, and so is every policy's within its own mean JCT.
    catalog = load_catalog(DEFAULT_CATALOG)
    fleet = load_fleet(Path(__file__).parents[3] / "sim" / "strata_sim" / "fleet.yaml", 0.25)
    jobs = synthetic(120, 2, seed=3)
    free = cost_floor(jobs, fleet, catalog, slot_h=6)
    builders = all_policies(fleet, catalog)
    for name in ("default", "kueue", "karpenter", "strata-no-holdback"):
        paid = figures(simulate(jobs, fleet, catalog, builders[name](), seed=0), catalog)
        assert paid.total_cost >= free.total - 1e-6, name
        within = cost_floor(jobs, fleet, catalog, slot_h=6, max_mean_jct_h=paid.mean_jct_h)
        assert free.total - 1e-6 <= within.total <= paid.total_cost + 1e-6, name


def test_the_floor_line_reads_the_floor_against_default_and_each_policy() -> None:
    floor = CostFloor(100.0, 60.0, 12.0, {"H100 spot": 40.0, "H100 on-demand": 0.0}, None)
    rows = [_row("default", 200.0), _row("strata", 150.0)]
    assert floor_line(floor, rows) == (
        "cost floor: $100 (reserved $60 to 12 h; H100 on-demand $0, H100 spot $40); 0.500 of default's "
        "(30% below it: $140); policies over it: default 2.00, strata 1.50"
    )
    bounded = CostFloor(120.0, 60.0, 12.0, {"H100 spot": 60.0}, 9.5)
    assert floor_line(bounded, rows[1:]) == (
        "cost floor with mean JCT at most 9.50 h: $120 (reserved $60 to 12 h; H100 spot $60); policies over it: "
        "strata 1.25"
    )


def test_the_command_prints_the_floor_and_the_floor_within_defaults_jct(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(
        "pools:\n  - {name: r, gpu: H100, capacityType: reserved, nodes: 1}\n"
        "  - {name: s, gpu: H100, capacityType: spot, nodes: 3}\n"
    )
    argv = ["--trace", "synthetic:40", "--days", "1", "--fleet", str(fleet_file), "--no-progress",
            "--policies", "default,strata-no-holdback", "--floor", "--floor-slot-h", "2"]  # fmt: skip
    assert main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("cost floor")]
    assert len(lines) == 2
    assert "of default's" in lines[0]
    assert lines[1].startswith("cost floor with mean JCT at most")


def test_a_default_jct_no_schedule_meets_gets_a_line_not_a_traceback() -> None:
    # Default's mean JCT counts only the jobs it finished: here 1 h, where the one job's work alone takes 2 h.
    jobs, fleet = [job("a", 0, 2)], nodes("spot")
    lines = floor_lines(jobs, fleet, FLAT, 1.0, [_row("default", 100.0, jct_h=1.0)])
    assert lines[0].startswith("cost floor: $80 ")
    assert lines[1] == (
        "cost floor with mean JCT at most 1.05 h: none (no schedule of this trace on this fleet has a mean JCT of "
        "1.05 h or less)"
    )


def _row(policy: str, cost: float, jct_h: float = 10.0) -> Figures:
    return Figures(policy, cost, 0.0, 0.0, 0.0, {}, {}, jct_h, 0.0, 0, 0, 0.0)
