"""Mixture-of-experts feed-forward with dropless top-k routing.

Single-device by default. When `parallelize()` sets `ep_group`, expert weights are DTensors sharded on dim 0
over the expert-parallel mesh, and tokens travel to the rank that owns their expert and back through
all-to-all (autograd-aware functional collectives, so the backward pass does the reverse exchange).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


class GroupedExperts(nn.Module):
    """`n_experts` independent GELU MLPs stored as stacked weights (experts on dim 0)."""

    def __init__(self, dim: int, hidden: int, n_experts: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(n_experts, dim, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, dim))

    def forward(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """x: rows grouped by local expert, `counts[e]` rows for local expert e."""
        w1, w2 = _local(self.w1), _local(self.w2)
        outs = [F.gelu(chunk @ w1[e]) @ w2[e] for e, chunk in enumerate(torch.split(x, counts))]
        return torch.cat(outs) if outs else x[:0]


class MoE(nn.Module):
    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        self.n_experts = n_experts
        self.top_k = top_k
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = GroupedExperts(dim, hidden, n_experts)
        self.ep_group: dist.ProcessGroup | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        probs = F.softmax(self.router(tokens).float(), dim=-1)
        weights, expert_idx = probs.topk(self.top_k, dim=-1)
        flat_idx = expert_idx.flatten()
        order = torch.argsort(flat_idx, stable=True)
        token_of_row = order // self.top_k
        counts = torch.bincount(flat_idx, minlength=self.n_experts)
        rows = tokens[token_of_row]
        if self.ep_group is None:
            out_rows = self.experts(rows, counts.tolist())
        else:
            out_rows = self._dispatch_compute_combine(rows, counts, self.ep_group)
        weighted = out_rows * weights.flatten()[order].unsqueeze(-1).to(out_rows.dtype)
        out = torch.zeros_like(tokens, dtype=weighted.dtype).index_add_(0, token_of_row, weighted)
        return out.to(x.dtype).reshape(shape)

    def _dispatch_compute_combine(
        self, rows: torch.Tensor, counts: torch.Tensor, group: dist.ProcessGroup
    ) -> torch.Tensor:
        ep = group.size()
        local_experts = self.n_experts // ep
        send = counts.view(ep, local_experts)  # rows for (destination rank, its local expert)
        recv = funcol.all_to_all_single(send.flatten(), None, None, group).view(ep, local_experts)
        in_splits = send.sum(1).tolist()
        out_splits = recv.sum(1).tolist()
        received = funcol.all_to_all_single_autograd(rows, out_splits, in_splits, group)
        # Received rows are ordered (source rank, local expert); regroup them by local expert.
        expert_of_row = torch.arange(local_experts).repeat(ep).repeat_interleave(recv.flatten())
        perm = torch.argsort(expert_of_row, stable=True)
        computed = self.experts(received[perm], recv.sum(0).tolist())
        restored = computed[torch.argsort(perm)]
        return funcol.all_to_all_single_autograd(restored, in_splits, out_splits, group)
