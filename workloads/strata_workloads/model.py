"""GPT-style decoder. Single-device code: parallelism is applied from outside (see parallelize.py).

Layers live in a ModuleDict keyed by their global index so that fully-qualified parameter names stay the
same when a pipeline stage keeps only some of them; checkpoints therefore load into any layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from strata_workloads.moe import MoE
from strata_workloads.presets import ModelConfig


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, theta: float, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Rotary position embedding on x of shape (batch, seq, heads, head_dim), computed on the fly (no buffers).
    `positions` (batch, seq) gives each token's position (decoding with a KV cache); default 0..seq-1."""
    seq, head_dim = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=x.device, dtype=torch.float32) / head_dim))
    if positions is None:
        angles = torch.outer(torch.arange(seq, device=x.device, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)[None, :, None, :]
    else:
        # One multiply per element, as torch.outer does: the same angles bit for bit.
        angles = positions.to(torch.float32)[..., None] * inv_freq
        angles = torch.cat((angles, angles), dim=-1)[:, :, None, :]
    return (x * angles.cos().to(x.dtype)) + (_rotate_half(x) * angles.sin().to(x.dtype))


@dataclass
class KVCache:
    """Keys and values of every layer for incremental decoding (inference only).

    Buffers are (batch, capacity, heads, head_dim). Each call writes its tokens at `positions` (batch, seq),
    which may differ per row, so requests of different prompt lengths decode together: row i attends to cache
    slots 0..positions[i, s] only. Slots past a row's own length may hold keys of padding; they are masked until
    that row's own later tokens overwrite them.
    """

    capacity: int
    positions: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.long))
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    values: dict[int, torch.Tensor] = field(default_factory=dict)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store this call's k, v (batch, seq, heads, head_dim); return all keys, values (batch, heads, used,
        head_dim) and the attention mask (batch, 1, seq, used): True where a query may look."""
        bsz = k.shape[0]
        if layer not in self.keys:
            shape = (bsz, self.capacity, *k.shape[2:])
            self.keys[layer], self.values[layer] = k.new_zeros(shape), v.new_zeros(shape)
        rows = torch.arange(bsz, device=k.device)[:, None]
        self.keys[layer][rows, self.positions] = k
        self.values[layer][rows, self.positions] = v
        used = int(self.positions.max()) + 1
        mask = torch.arange(used, device=k.device)[None, None, :] <= self.positions[:, :, None]
        keys = self.keys[layer][:, :used].transpose(1, 2)
        return keys, self.values[layer][:, :used].transpose(1, 2), mask[:, None]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int = 0) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.head_dim = config.head_dim
        self.rope_theta = config.rope_theta
        self.wq = nn.Linear(config.dim, config.dim, bias=False)
        self.wk = nn.Linear(config.dim, config.dim, bias=False)
        self.wv = nn.Linear(config.dim, config.dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        bsz, seq, _ = x.shape
        positions = None if cache is None else cache.positions
        # -1 heads: under tensor parallel each rank holds only its share of the heads.
        q = apply_rotary(self.wq(x).view(bsz, seq, -1, self.head_dim), self.rope_theta, positions)
        k = apply_rotary(self.wk(x).view(bsz, seq, -1, self.head_dim), self.rope_theta, positions)
        v = self.wv(x).view(bsz, seq, -1, self.head_dim)
        if cache is None:
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
            )
        else:
            keys, values, mask = cache.update(self.layer_id, k, v)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, -1))  # type: ignore[no-any-return]


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x)))  # type: ignore[no-any-return]


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.attention = Attention(config, layer_id)
        self.ffn_norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.feed_forward: nn.Module
        if config.is_moe_layer(layer_id):
            self.feed_forward = MoE(
                config.dim, config.ffn_hidden, config.n_experts, config.top_k, config.moe_aux_loss_coef
            )
        else:
            self.feed_forward = FeedForward(config.dim, config.ffn_hidden)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        # Training calls the attention with one argument, as the tensor-parallel input plans expect.
        attn_in = self.attention_norm(x)
        h = x + (self.attention(attn_in) if cache is None else self.attention(attn_in, cache))
        return h + self.feed_forward(self.ffn_norm(h))  # type: ignore[no-any-return]


class Transformer(nn.Module):
    """Decoder; a pipeline stage sets the parts it does not own to None and forward skips them."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.tok_embeddings: nn.Embedding | None = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleDict({str(i): Block(config, i) for i in range(config.n_layers)})
        self.norm: nn.RMSNorm | None = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.output: nn.Linear | None = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 0.02
        for name, param in self.named_parameters():
            if param.dim() == 1:
                nn.init.ones_(param)  # norm weights
            elif name.endswith(("wo.weight", "w2.weight", "w2")):
                # Scaled residual projections, as in GPT-2.
                nn.init.normal_(param, std=std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(param, std=std)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (or this stage's activations). With `cache` (inference), tokens sit at `cache.positions`."""
        h = self.tok_embeddings(tokens) if self.tok_embeddings is not None else tokens
        for layer in self.layers.values():
            h = layer(h) if cache is None else layer(h, cache)
        h = self.norm(h) if self.norm is not None else h
        return self.output(h) if self.output is not None else h


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss in fp32 (logits may be bf16/fp16 under autocast)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(0, 1))
