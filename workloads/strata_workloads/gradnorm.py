"""Gradient-norm clipping that is correct for hybrid layouts.

torch's `clip_grad_norm_` sees only this rank's parameters: under pipeline parallel each stage holds
different parameters, and DTensors on different meshes (experts on the expert mesh, the rest on the
data x tensor mesh) cannot be reduced together. Here each mesh's gradients are reduced as DTensors
(`full_tensor()` sums sharded squares once and counts replicas once), groups are combined as p-norms,
and the result is summed over the pipeline group.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


def total_grad_norm(
    params: Iterable[torch.Tensor], norm_type: float = 2.0, pp_group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    groups: dict[object, list[torch.Tensor]] = {}
    device = torch.device("cpu")
    for p in params:
        device = p.device
        if p.grad is None:
            continue
        mesh = p.grad.device_mesh if isinstance(p.grad, DTensor) else None
        groups.setdefault(None if mesh is None else id(mesh), []).append(p.grad)
    norms = []
    for grads in groups.values():
        norm = torch.nn.utils.get_total_norm(grads, norm_type=norm_type, foreach=True)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    if not norms:
        local = torch.zeros((), device=device)
    elif math.isinf(norm_type):
        local = torch.stack(norms).max()
    else:
        local = torch.stack(norms).pow(norm_type).sum()
    local = local.float()
    if pp_group is not None and dist.get_world_size(pp_group) > 1:
        dist.all_reduce(local, op=dist.ReduceOp.MAX if math.isinf(norm_type) else dist.ReduceOp.SUM, group=pp_group)
    return local if math.isinf(norm_type) else local.pow(1.0 / norm_type)


def clip_grad_norm_(
    params: list[torch.Tensor], max_norm: float, norm_type: float = 2.0, pp_group: dist.ProcessGroup | None = None
) -> torch.Tensor:
    """Clips in place; returns the global norm before clipping."""
    total = total_grad_norm(params, norm_type, pp_group)
    by_mesh: dict[object, list[torch.Tensor]] = {}
    for p in params:
        key = id(p.device_mesh) if isinstance(p, DTensor) else None
        by_mesh.setdefault(key, []).append(p)
    for group in by_mesh.values():
        torch.nn.utils.clip_grads_with_norm_(group, max_norm, total, foreach=True)
    return total
