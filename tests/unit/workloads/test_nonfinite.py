"""A non-finite loss or grad norm changes no weight and is never checkpointed: the step is skipped within a
budget of steps in a row, then the run fails with the code the operator does not retry."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from workloads_launch import launch

from strata_api.workload import ExitCode
from strata_workloads.engine import build_engine
from strata_workloads.layout import ParallelDims
from strata_workloads.model import Transformer
from strata_workloads.optim import OptimConfig, build_optimizer, train_step
from strata_workloads.parallelize import ParallelizeOptions
from strata_workloads.presets import get_preset


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_a_nan_step_changes_no_weight_and_no_optimizer_state() -> None:
    torch.manual_seed(0)
    engine = build_engine(
        Transformer(get_preset("debug-dense")), ParallelDims(1), None, ParallelizeOptions(), torch.device("cpu")
    )
    optimizer, scheduler = build_optimizer(engine, OptimConfig())
    params = list(engine.parameters())
    with torch.no_grad():
        params[-1].view(-1)[0] = float("nan")  # poisons the loss and every gradient
    before = [p.detach().clone() for p in params]
    tokens = torch.randint(0, 256, (2, 17))
    result = train_step(engine, [(tokens[:, :-1], tokens[:, 1:])], optimizer, scheduler, max_grad_norm=1.0)
    assert result.nonfinite
    assert result.skipped
    assert all(torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)) for a, b in zip(params, before, strict=True))
    assert not optimizer.state, "AdamW's moments never saw the step"
    assert scheduler.last_epoch == 0, "the LR schedule follows the updates actually made"


@pytest.mark.unit
@pytest.mark.timeout(300)
def test_a_diverging_run_exits_invalid_configuration_and_never_checkpoints_the_non_finite_steps(
    tmp_path: Path,
) -> None:
    # lr 1e30: step 1 is finite and saved; from step 2 the gradient norm is infinite.
    job = launch(
        tmp_path,
        "diverging",
        1,
        model="debug-dense",
        lr="1e30",
        warmup_steps="1",
        checkpoint_every_steps="1",
        max_nonfinite_steps="1",
        checkpoint_dir=str(tmp_path / "ckpt"),
    )
    try:
        codes = job.wait()
    finally:
        job.kill()
    assert codes == [ExitCode.DIVERGED], job.logs[0].read_text()[-3000:]
    messages = [(r["msg"], r.get("step")) for r in job.records() if r["level"] in ("warning", "error")]
    assert messages == [
        ("non-finite loss or grad norm: step skipped", 2),
        ("diverged: non-finite loss or grad norm beyond the budget, exiting without a checkpoint", 3),
    ]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step-00000001"]
