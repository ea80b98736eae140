"""The decoder: GPT-style for the presets, Llama 3 / Qwen2 shaped when loaded from Hugging Face (GQA, SwiGLU,
q/k/v biases, Llama 3 rotary scaling). Single-device code: parallelism is applied from outside (parallelize.py).

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
from strata_workloads.presets import FFNActivation, ModelConfig


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_inv_freq(config: ModelConfig, device: torch.device | None = None) -> torch.Tensor:
    """Rotary inverse frequencies (head_dim / 2,), with Llama 3's scaling when the config has it.

    The formula is Hugging Face's (`_compute_llama3_parameters`), so loaded Llama 3 weights see the same angles."""
    head_dim = config.head_dim
    exponents = torch.arange(0, head_dim, 2, device=device, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    low_freq_wavelen = scaling.original_max_len / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def apply_rotary(x: torch.Tensor, inv_freq: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """Rotary position embedding on x of shape (batch, seq, heads, head_dim), computed on the fly (no buffers).
    `positions` (batch, seq) gives each token's position (decoding with a KV cache); default 0..seq-1.

    Rotation pairs are (i, i + head_dim/2) (`_rotate_half`), Hugging Face's layout for Llama and Qwen2, so their
    q/k projection weights load without permutation."""
    seq = x.shape[1]
    inv_freq = inv_freq.to(x.device)
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
    """Causal self-attention with grouped-query heads: n_kv_heads key/value heads, each shared by
    n_heads / n_kv_heads consecutive query heads (Hugging Face's `repeat_kv` grouping)."""

    def __init__(self, config: ModelConfig, layer_id: int = 0) -> None:
        super().__init__()
        self.layer_id = layer_id
        self.head_dim = config.head_dim
        self.config = config
        kv_dim = config.kv_heads * config.head_dim
        self.wq = nn.Linear(config.dim, config.dim, bias=config.qkv_bias)
        self.wk = nn.Linear(config.dim, kv_dim, bias=config.qkv_bias)
        self.wv = nn.Linear(config.dim, kv_dim, bias=config.qkv_bias)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        bsz, seq, _ = x.shape
        positions = None if cache is None else cache.positions
        inv_freq = rope_inv_freq(self.config, x.device)
        # -1 heads: under tensor parallel each rank holds only its share of the heads.
        q = apply_rotary(self.wq(x).view(bsz, seq, -1, self.head_dim), inv_freq, positions)
        k = apply_rotary(self.wk(x).view(bsz, seq, -1, self.head_dim), inv_freq, positions)
        v = self.wv(x).view(bsz, seq, -1, self.head_dim)
        gqa = q.shape[2] != k.shape[2]
        if cache is None:
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=gqa
            )
        else:
            keys, values, mask = cache.update(self.layer_id, k, v)
            out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask, enable_gqa=gqa)
        return self.wo(out.transpose(1, 2).reshape(bsz, seq, -1))  # type: ignore[no-any-return]


class FeedForward(nn.Module):
    """The dense MLP: w2(gelu(w1 x)), or SwiGLU w2(silu(w1 x) * w3 x) (w1 Hugging Face's gate_proj, w3 up_proj)."""

    def __init__(self, dim: int, hidden: int, activation: FFNActivation = FFNActivation.GELU) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False) if activation is FFNActivation.SWIGLU else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.w3 is None:
            return self.w2(F.gelu(self.w1(x)))  # type: ignore[no-any-return]
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # type: ignore[no-any-return]


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__()
        self.attention_norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.attention = Attention(config, layer_id)
        self.ffn_norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.feed_forward: nn.Module
        if config.is_moe_layer(layer_id):
            hidden = config.expert_hidden
            shared = config.n_shared_experts
            self.feed_forward = MoE(
                config.dim,
                hidden,
                config.n_experts,
                config.top_k,
                config.moe_aux_loss_coef,
                shared_experts=FeedForward(config.dim, shared * hidden, FFNActivation.SWIGLU) if shared else None,
                sigmoid_router=config.moe_sigmoid_router,
            )
        else:
            self.feed_forward = FeedForward(config.dim, config.ffn_hidden, config.ffn_activation)

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
            if name.endswith(".bias"):
                nn.init.zeros_(param)
            elif param.dim() == 1:
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
