"""The parallel model a training step runs: model parts (one per local pipeline stage, or the whole model),
the pipeline schedule if any, and forward/backward/clip with the right reductions for the layout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining.schedules import _PipelineSchedule

from strata_workloads.gradnorm import clip_grad_norm_
from strata_workloads.layout import Meshes, ParallelDims
from strata_workloads.model import Transformer, cross_entropy_loss
from strata_workloads.moe import MoE
from strata_workloads.parallelize import ParallelizeOptions, parallelize
from strata_workloads.pipeline import build_schedule, build_stages

LossScaler = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Engine:
    """This rank's model parts and how a micro-batch runs through them."""

    dims: ParallelDims
    mesh: Meshes | None
    parts: list[nn.Module]
    schedule: _PipelineSchedule | None
    has_first_stage: bool
    has_last_stage: bool
    loss_scale: LossScaler | None = None  # fp16 loss scaling, applied before backward
    grad_accum: int = 1
    n_microbatches: int = 1  # pipeline micro-batches per micro-batch

    def parameters(self) -> list[torch.Tensor]:
        return [p for part in self.parts for p in part.parameters()]

    def named_parameters(self) -> dict[str, nn.Parameter]:
        return {_clean(n): p for part in self.parts for n, p in part.named_parameters()}

    def pipeline_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # The schedule's own scale_grads would divide *all* accumulated grads by n_microbatches at the end of
        # every step() call, compounding under gradient accumulation; scaling each micro-batch loss is exact.
        loss = cross_entropy_loss(logits, targets) / (self.grad_accum * self.n_microbatches)
        return self.loss_scale(loss) if self.loss_scale is not None else loss

    def _set_aux_grad_scale(self) -> None:
        """MoE balancing losses enter backward inside their layers; give them the factor the main loss of each
        micro-batch gets here, so both are weighted alike (see moe.py)."""
        moes = [m for part in self.parts for m in part.modules() if isinstance(m, MoE)]
        if not moes:
            return
        scale = 1.0 / (self.grad_accum * (self.n_microbatches if self.schedule is not None else 1))
        if self.loss_scale is not None:
            device = next(p.device for part in self.parts for p in part.parameters())
            scale *= float(self.loss_scale(torch.ones((), device=device)))
        for moe in moes:
            moe.aux_grad_scale = scale

    def forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """One micro-step on this rank's micro-batch; returns the unscaled local loss / grad_accum, identical on
        every rank of the pipeline (zero-filled then summed from the last stage)."""
        self._set_aux_grad_scale()
        if self.schedule is None:
            loss = cross_entropy_loss(self.parts[0](inputs), targets) / self.grad_accum
            torch.autograd.backward(self.loss_scale(loss) if self.loss_scale is not None else loss)
            return loss.detach()
        losses: list[torch.Tensor] = []
        args = (inputs,) if self.has_first_stage else ()
        if self.has_last_stage:
            self.schedule.step(*args, target=targets, losses=losses)
        else:
            self.schedule.step(*args)
        total = torch.zeros((), device=inputs.device)
        if self.has_last_stage:
            total = torch.stack([loss.detach().float() for loss in losses]).sum()
            if self.loss_scale is not None:
                total = total / self.loss_scale(torch.ones((), device=total.device))
        assert self.mesh is not None
        dist.all_reduce(total, group=self.mesh["pp"].get_group())
        return total

    def evaluate(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of one micro-batch, forward only (validation), identical on every rank of the
        pipeline (zero-filled then summed from the last stage)."""
        with torch.no_grad():
            if self.schedule is None:
                return cross_entropy_loss(self.parts[0](inputs), targets).detach().float()
            losses: list[torch.Tensor] = []
            args = (inputs,) if self.has_first_stage else ()
            if self.has_last_stage:
                self.schedule.eval(*args, target=targets, losses=losses)
            else:
                self.schedule.eval(*args)
            total = torch.zeros((), device=inputs.device)
            if self.has_last_stage:
                # pipeline_loss divided each pipeline micro-batch's loss by grad_accum * n_microbatches.
                total = torch.stack([loss.detach().float() for loss in losses]).sum() * self.grad_accum
                if self.loss_scale is not None:
                    total = total / self.loss_scale(torch.ones((), device=total.device))
            assert self.mesh is not None
            dist.all_reduce(total, group=self.mesh["pp"].get_group())
            return total

    def global_loss(self, local: torch.Tensor) -> torch.Tensor:
        """Mean over data-parallel ranks (the loss of the global batch)."""
        if self.mesh is None or self.dims.dp == 1:
            return local
        out = local.clone()
        dist.all_reduce(out, op=dist.ReduceOp.AVG, group=self.mesh["dp"].get_group())
        return out

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        pp_group = self.mesh["pp"].get_group() if self.mesh is not None and self.dims.pp > 1 else None
        return clip_grad_norm_(list(self.parameters()), max_norm, pp_group=pp_group)


def _clean(name: str) -> str:
    return name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")


def build_engine(
    model: Transformer,
    dims: ParallelDims,
    mesh: Meshes | None,
    options: ParallelizeOptions,
    device: torch.device,
    schedule: str = "1f1b",
    n_microbatches: int = 1,
    grad_accum: int = 1,
) -> Engine:
    """Parallelize `model` (full, identically initialised on every rank) for `dims`. mesh=None: single process.
    Every part, whole model or pipeline stage, goes through `parallelize()`."""
    model = model.to(device)
    if mesh is None or dims.pp == 1:
        return Engine(dims, mesh, [parallelize(model, mesh, dims, options)], None, True, True, grad_accum=grad_accum)
    # Pipeline stages keep FSDP's parameters gathered between forward and backward of a micro-batch.
    stage_options = replace(options, reshard_after_forward=False)
    parts, stages = build_stages(
        model, mesh["pp"], schedule, device, lambda part: parallelize(part, mesh, dims, stage_options)
    )
    has_first, has_last = any(s.is_first for s in stages), any(s.is_last for s in stages)
    engine = Engine(dims, mesh, parts, None, has_first, has_last, grad_accum=grad_accum, n_microbatches=n_microbatches)
    engine.schedule = build_schedule(schedule, stages, n_microbatches, engine.pipeline_loss)
    return engine
