"""Apply parallelism to a single-device model, in torchtitan's fixed order:
expert parallel, tensor parallel, activation checkpointing, torch.compile, then FSDP2.

`parallelize()` is the one place that order lives, for every path: the whole model, each pipeline stage's
part, and a single process (where only checkpointing and compile apply).

Tensor-parallel plans are data: dicts keyed by module name (relative to the model or to a block).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    PrepareModuleInputOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from strata_workloads.layout import Meshes, ParallelDims
from strata_workloads.model import FeedForward
from strata_workloads.moe import MoE

# The residual stream between blocks is sharded on the sequence dimension (sequence parallel); attention and
# the MLP gather it, split heads / hidden units column-wise, and reduce-scatter back row-wise.
MODEL_TP_PLAN: dict[str, ParallelStyle] = {
    "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
    "norm": SequenceParallel(),
    "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
}

BLOCK_TP_PLAN: dict[str, ParallelStyle] = {
    "attention_norm": SequenceParallel(),
    "attention": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
    "attention.wq": ColwiseParallel(),
    "attention.wk": ColwiseParallel(),
    "attention.wv": ColwiseParallel(),
    "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
    "ffn_norm": SequenceParallel(),
}

DENSE_FFN_TP_PLAN: dict[str, ParallelStyle] = {
    "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
    "feed_forward.w1": ColwiseParallel(),
    "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
}
# SwiGLU's up projection is split like its gate, so each rank multiplies its own hidden units.
SWIGLU_FFN_TP_PLAN: dict[str, ParallelStyle] = {**DENSE_FFN_TP_PLAN, "feed_forward.w3": ColwiseParallel()}

# MoE under tensor parallel: every TP rank routes the full sequence (gathered) with replicated experts, then
# keeps its sequence shard. The gather's backward is a slice and the slice's backward an all-gather, so each
# TP rank sees the full output gradient and expert gradients need no TP reduction.
MOE_FFN_TP_PLAN: dict[str, ParallelStyle] = {
    "feed_forward": PrepareModuleInputOutput(
        input_layouts=(Shard(1),),
        desired_input_layouts=(Replicate(),),
        use_local_input=True,
        output_layouts=(Replicate(),),
        desired_output_layouts=(Shard(1),),
        use_local_output=True,
    ),
}

# DeepSeek-MoE's shared experts (a SwiGLU inside the MoE, which sees the gathered sequence as a plain tensor) are
# split like a dense SwiGLU: each rank its share of the hidden units, the products all-reduced to the full output.
MOE_SHARED_EXPERTS_TP_PLAN: dict[str, ParallelStyle] = {
    "feed_forward.shared_experts.w1": ColwiseParallel(),
    "feed_forward.shared_experts.w3": ColwiseParallel(),
    "feed_forward.shared_experts.w2": RowwiseParallel(),
}


class ActivationCheckpointing(StrEnum):
    NONE = "none"
    SELECTIVE = "selective"  # keep matmul outputs, recompute the cheap element-wise ops
    FULL = "full"  # keep only each block's input


@dataclass(frozen=True)
class ParallelizeOptions:
    activation_checkpointing: ActivationCheckpointing = ActivationCheckpointing.NONE
    compile: bool = False
    compile_backend: str = "inductor"
    # FSDP keeps parameters gathered between forward and backward when False (pipeline parallel wants that).
    reshard_after_forward: bool = True
    param_dtype: torch.dtype | None = None  # FSDP mixed precision; None keeps fp32 (autocast does the rest)


_SAVE_OPS = {torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default}


def _selective_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _has_submodule(module: nn.Module, name: str) -> bool:
    try:
        return module.get_submodule(name) is not None
    except AttributeError:
        return False


def apply_tp(model: nn.Module, tp_mesh: DeviceMesh) -> None:
    top = {name: style for name, style in MODEL_TP_PLAN.items() if _has_submodule(model, name)}
    parallelize_module(model, tp_mesh, top)
    layers: nn.ModuleDict = model.layers  # type: ignore[assignment]
    for block in layers.values():
        ffn = block.feed_forward
        if isinstance(ffn, MoE):
            shared = MOE_SHARED_EXPERTS_TP_PLAN if ffn.shared_experts is not None else {}
            ffn_plan = {**MOE_FFN_TP_PLAN, **shared}
        else:
            ffn_plan = SWIGLU_FFN_TP_PLAN if isinstance(ffn, FeedForward) and ffn.w3 is not None else DENSE_FFN_TP_PLAN
        parallelize_module(block, tp_mesh, {**BLOCK_TP_PLAN, **ffn_plan})


def apply_ep(model: nn.Module, ep_mesh: DeviceMesh) -> None:
    """Shard each MoE layer's experts on dim 0 over the expert-parallel mesh and route through all-to-all."""
    for module in model.modules():
        if isinstance(module, MoE):
            experts = module.experts
            for name, param in list(experts.named_parameters(recurse=False)):
                sharded = nn.Parameter(distribute_tensor(param.data, ep_mesh, [Shard(0)]))
                experts.register_parameter(name, sharded)
            module.ep_group = ep_mesh.get_group()


def apply_ac(model: nn.Module, mode: ActivationCheckpointing) -> None:
    if mode is ActivationCheckpointing.NONE:
        return
    layers: nn.ModuleDict = model.layers  # type: ignore[assignment]
    for name, block in list(layers.items()):
        if mode is ActivationCheckpointing.FULL:
            layers[name] = checkpoint_wrapper(block, preserve_rng_state=False)
        else:
            context_fn = partial(create_selective_checkpoint_contexts, _selective_policy)
            layers[name] = checkpoint_wrapper(block, preserve_rng_state=False, context_fn=context_fn)


def apply_compile(model: nn.Module, backend: str) -> None:
    layers: nn.ModuleDict = model.layers  # type: ignore[assignment]
    for block in layers.values():
        block.compile(backend=backend, fullgraph=False)


def apply_fsdp(model: nn.Module, mesh: Meshes, dims: ParallelDims, options: ParallelizeOptions) -> None:
    mp = MixedPrecisionPolicy(param_dtype=options.param_dtype, reduce_dtype=torch.float32)
    dp_mesh = mesh["dp_replicate", "dp_shard"]
    layers: nn.ModuleDict = model.layers  # type: ignore[assignment]
    for block in layers.values():
        moe = _find_moe(block)
        if moe is not None and dims.ep > 1:
            experts: Any = fully_shard(
                moe.experts,
                mesh=mesh["dp_replicate", "efsdp"],
                mp_policy=mp,
                reshard_after_forward=options.reshard_after_forward,
            )
            # Each expert's local gradient already sums the contributions routed from all `ep` ranks; the
            # global mean over dp ranks therefore divides by dp, not by the dp/ep ranks FSDP reduces over.
            experts.set_gradient_divide_factor(float(dims.dp))
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=options.reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=options.reshard_after_forward)


def _find_moe(block: nn.Module) -> MoE | None:
    return next((m for m in block.modules() if isinstance(m, MoE)), None)


def parallelize(model: nn.Module, mesh: Meshes | None, dims: ParallelDims, options: ParallelizeOptions) -> nn.Module:
    """Parallelize one model (or one pipeline stage's part of it) in place and return it. mesh=None: a single
    process, so only activation checkpointing and compile apply."""
    if mesh is not None and dims.ep > 1:
        apply_ep(model, mesh["ep"])
    if mesh is not None and dims.tp > 1:
        apply_tp(model, mesh["tp"])
    apply_ac(model, options.activation_checkpointing)
    if options.compile:
        apply_compile(model, options.compile_backend)
    if mesh is not None:
        apply_fsdp(model, mesh, dims, options)
    return model


def param_groups_by_mesh(parts: list[nn.Module]) -> list[dict[str, Any]]:
    """Optimizer parameter groups, one per device mesh: foreach kernels cannot mix DTensors of different meshes
    (expert parameters live on the expert mesh, the rest on the data/tensor mesh)."""
    groups: dict[Any, list[nn.Parameter]] = {}
    for part in parts:
        for param in part.parameters():
            groups.setdefault(_mesh_key(param), []).append(param)
    return [{"params": params} for params in groups.values()]


def _mesh_key(t: torch.Tensor) -> Any:
    mesh = getattr(t, "device_mesh", None)
    return None if mesh is None else (tuple(mesh.mesh.flatten().tolist()), mesh.mesh_dim_names)
