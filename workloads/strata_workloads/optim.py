"""AdamW with linear warm-up then cosine decay, and the optimizer step shared by training and tests."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR

from strata_workloads.engine import Engine
from strata_workloads.parallelize import param_groups_by_mesh


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 10
    total_steps: int = 1000
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    max_grad_norm: float = 1.0


def warmup_cosine(step: int, config: OptimConfig) -> float:
    """LR multiplier: (step+1)/warmup during warm-up, then cosine from 1 down to min_lr_ratio at total_steps."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(1, config.total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(engine: Engine, config: OptimConfig) -> tuple[torch.optim.AdamW, LambdaLR]:
    optimizer = torch.optim.AdamW(
        param_groups_by_mesh(engine.parts), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
    )
    scheduler = LambdaLR(optimizer, lambda step: warmup_cosine(step, config))
    return optimizer, scheduler


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean over the global batch
    grad_norm: float  # before clipping, over every parameter of every stage
    skipped: bool = False  # no update: fp16 overflow (scale reduced) or a non-finite loss or grad norm
    nonfinite: bool = False  # the loss or grad norm was NaN or infinite on some rank: no weight changed


def train_step(
    engine: Engine,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: LambdaLR,
    max_grad_norm: float,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
    before_step: Callable[[], None] | None = None,
) -> StepResult:
    """Accumulate gradients over this rank's micro-batches, clip by the global norm, step."""
    optimizer.zero_grad(set_to_none=True)
    device_type = micro_batches[0][0].device.type
    local = torch.zeros((), device=micro_batches[0][0].device)
    for inputs, targets in micro_batches:
        with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            local += engine.forward_backward(inputs, targets)
    if scaler is not None:
        scaler.unscale_(optimizer)
    norm = engine.clip_grad_norm(max_grad_norm)
    loss = engine.global_loss(local)
    if before_step is not None:
        before_step()  # sees the clipped gradients (tests compare them)
    # With fp16 loss scaling an infinite gradient is the scaler's to handle (skip, lower the scale).
    if _nonfinite_anywhere(loss, norm if scaler is None else None):
        optimizer.zero_grad(set_to_none=True)  # nothing of this step reaches the weights or the optimizer state
        return StepResult(float(loss), float(norm), skipped=True, nonfinite=True)
    skipped = False
    if scaler is not None:
        scale_before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped = scaler.get_scale() < scale_before
    else:
        optimizer.step()
    if not skipped:  # an overflow step is not a step: the schedule follows the updates actually made
        scheduler.step()
    return StepResult(float(loss), float(norm), skipped)


def _nonfinite_anywhere(loss: torch.Tensor, norm: torch.Tensor | None) -> bool:
    """True on every rank when any rank's loss (or the global grad norm) is NaN or infinite: pipeline stages
    without the loss must take the same decision as the last stage."""
    values = loss.detach().reshape(1) if norm is None else torch.stack([loss.detach(), norm.detach().to(loss.device)])
    flag = (~torch.isfinite(values)).any().to(torch.float32)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
