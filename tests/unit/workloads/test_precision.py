"""Mixed precision: bf16 autocast tracks fp32; fp16 dynamic loss scaling skips overflowing steps."""

from __future__ import annotations

import pytest
import torch

from strata_workloads.engine import Engine, build_engine
from strata_workloads.layout import ParallelDims
from strata_workloads.model import Transformer
from strata_workloads.optim import OptimConfig, build_optimizer, train_step
from strata_workloads.parallelize import ActivationCheckpointing, ParallelizeOptions
from strata_workloads.presets import get_preset


def _engine() -> Engine:
    torch.manual_seed(0)
    return build_engine(
        Transformer(get_preset("debug-dense")), ParallelDims(1), None, ParallelizeOptions(), torch.device("cpu")
    )


def _batch() -> list[tuple[torch.Tensor, torch.Tensor]]:
    data = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(1))
    return [(data[:, :-1], data[:, 1:])]


def _losses(dtype: torch.dtype | None, steps: int = 3) -> list[float]:
    engine = _engine()
    optimizer, scheduler = build_optimizer(engine, OptimConfig(lr=1e-2, warmup_steps=1))
    return [train_step(engine, _batch(), optimizer, scheduler, 1.0, None, dtype).loss for _ in range(steps)]


@pytest.mark.unit
def test_bf16_autocast_tracks_fp32() -> None:
    fp32, bf16 = _losses(None), _losses(torch.bfloat16)
    assert fp32 != bf16, "autocast did nothing"
    assert bf16 == pytest.approx(fp32, rel=2e-2)
    assert bf16[-1] < bf16[0]


@pytest.mark.unit
def test_fp16_loss_scaling_skips_overflow_then_trains() -> None:
    engine = _engine()
    optimizer, scheduler = build_optimizer(engine, OptimConfig(lr=1e-2, warmup_steps=1))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    engine.loss_scale = scaler.scale
    before = [p.detach().clone() for p in engine.parameters()]
    first = train_step(engine, _batch(), optimizer, scheduler, 1.0, scaler, torch.float16)
    assert first.skipped
    assert scaler.get_scale() == 2.0**39
    assert all(torch.equal(a, p) for a, p in zip(before, engine.parameters(), strict=True)), "an overflow step moved"
    assert scheduler.last_epoch == 0
    scaler.update(2.0**12)  # as if backoff had brought the scale down to a workable value
    results = [train_step(engine, _batch(), optimizer, scheduler, 1.0, scaler, torch.float16) for _ in range(3)]
    assert not any(r.skipped for r in results)
    assert results[-1].loss < results[0].loss
    assert results[0].loss == pytest.approx(first.loss, rel=1e-2)


@pytest.mark.unit
@pytest.mark.slow
# Dynamo reads `.grad` of a non-leaf while tracing torch's own checkpoint wrapper (torch 2.15 internals).
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning")
def test_compile_and_selective_checkpointing_match_eager() -> None:
    """torch.compile (aot_eager backend: no C++ toolchain needed) with selective activation checkpointing."""
    eager = _losses(None)
    torch.manual_seed(0)
    options = ParallelizeOptions(
        activation_checkpointing=ActivationCheckpointing.SELECTIVE, compile=True, compile_backend="aot_eager"
    )
    engine = build_engine(Transformer(get_preset("debug-dense")), ParallelDims(1), None, options, torch.device("cpu"))
    optimizer, scheduler = build_optimizer(engine, OptimConfig(lr=1e-2, warmup_steps=1))
    compiled = [train_step(engine, _batch(), optimizer, scheduler, 1.0).loss for _ in range(3)]
    assert compiled == pytest.approx(eager, rel=1e-5)
