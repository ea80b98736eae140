"""Mixture-of-experts feed-forward with dropless top-k routing.

Single-device by default. When `parallelize()` sets `ep_group`, expert weights are DTensors sharded on dim 0
over the expert-parallel mesh, and tokens travel to the rank that owns their expert and back through
all-to-all (autograd-aware functional collectives, so the backward pass does the reverse exchange).

Load balancing: a Switch/GShard auxiliary loss, computed per sequence (as DeepSeek-V3's sequence-wise
balance loss) so that it splits exactly over any data, pipeline or expert-parallel partition of the batch:
for a sequence of T tokens, f_i = E/(k T) x (tokens routed to expert i among their top k) and P_i = mean router
probability of expert i; loss = coef x mean over sequences of sum_i f_i P_i (1 when perfectly balanced). It is
not added to the model's output; `_AuxLossGradient` feeds its gradient into the backward pass at the layer
(as Megatron-LM does), so it works on any pipeline stage without carrying a second loss between stages. The
gradient is scaled by `aux_grad_scale`, which the engine sets to the factor it applies to each micro-batch's
main loss (1 / accumulation steps / pipeline micro-batches, times the fp16 loss scale), so the total
objective is main loss + aux loss in every layout alike.

DeepSeek-MoE options: `shared_experts`, a dense MLP every token passes through, is added to the routed output.
It is an ordinary module: expert parallelism shards only `experts`, so the shared ones are replicated over the
expert-parallel ranks like the router, and tensor parallel splits them like a dense SwiGLU. `sigmoid_router`
scores each expert with a sigmoid and normalises the top k's weights to sum to 1 (DeepSeek-V3), the balancing
loss then using the scores normalised over all experts as its probabilities.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor import DTensor


class _AuxLossGradient(torch.autograd.Function):
    """Identity on `out`; in backward also sends d(objective)/d(aux) = `scale` into the aux loss's graph."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, aux: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        ctx.aux_meta = (aux.shape, aux.dtype, aux.device)
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        shape, dtype, device = ctx.aux_meta
        return grad, torch.full(shape, ctx.scale, dtype=dtype, device=device), None


def load_balancing_loss(probs: torch.Tensor, expert_idx: torch.Tensor, batch: int) -> torch.Tensor:
    """Mean over the `batch` sequences of sum_i f_i P_i; probs (tokens, E), expert_idx (tokens, k), tokens
    in sequence order."""
    n_experts, top_k = probs.shape[-1], expert_idx.shape[-1]
    per_seq = probs.view(batch, -1, n_experts)
    routed = F.one_hot(expert_idx, n_experts).sum(dim=1).view(batch, -1, n_experts).to(probs.dtype)
    fraction = routed.mean(dim=1) * (n_experts / top_k)
    return (fraction * per_seq.mean(dim=1)).sum(dim=-1).mean()


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
    def __init__(
        self,
        dim: int,
        hidden: int,
        n_experts: int,
        top_k: int,
        aux_loss_coef: float = 0.0,
        shared_experts: nn.Module | None = None,
        sigmoid_router: bool = False,
    ) -> None:
        super().__init__()
        self.n_experts = n_experts
        self.top_k = top_k
        self.aux_loss_coef = aux_loss_coef
        self.sigmoid_router = sigmoid_router
        self.aux_grad_scale = 1.0  # set by the engine: the factor on each micro-batch's main loss
        self.last_aux_loss: torch.Tensor | None = None  # detached, for logging
        self.router = nn.Linear(dim, n_experts, bias=False)
        self.experts = GroupedExperts(dim, hidden, n_experts)
        self.shared_experts = shared_experts
        self.ep_group: dist.ProcessGroup | None = None

    def route(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(probabilities over all experts for the balancing loss, top-k weights, top-k expert indices), fp32."""
        logits = self.router(tokens).float()
        if not self.sigmoid_router:
            probs = F.softmax(logits, dim=-1)
            weights, expert_idx = probs.topk(self.top_k, dim=-1)
            return probs, weights, expert_idx
        scores = torch.sigmoid(logits)
        top, expert_idx = scores.topk(self.top_k, dim=-1)
        return scores / scores.sum(-1, keepdim=True), top / top.sum(-1, keepdim=True), expert_idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        probs, weights, expert_idx = self.route(tokens)
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
        out = out.to(x.dtype).reshape(shape)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        if self.aux_loss_coef > 0 and self.training and torch.is_grad_enabled():
            aux = self.aux_loss_coef * load_balancing_loss(probs, expert_idx, shape[0] if len(shape) > 2 else 1)
            self.last_aux_loss = aux.detach()
            out = _AuxLossGradient.apply(out, aux, self.aux_grad_scale)
        return out

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
