"""Named model presets: a registry instead of if/else chains."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

EOS_TOKEN = 256  # one past the byte range: separates documents in the token stream


class FFNActivation(StrEnum):
    GELU = "gelu"  # w2(gelu(w1 x)): the presets' MLP
    SWIGLU = "swiglu"  # w2(silu(w1 x) * w3 x): Llama's and Qwen2's MLP


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3's rotary frequency scaling ("rope_type": "llama3"): wavelengths longer than the original context
    divided by `factor`, shorter than original/high_freq_factor kept, the band between blended smoothly."""

    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_len: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the decoder, Llama 3 / Qwen2 shaped (the presets are the GELU, full-head special case).
    All sizes are element counts."""

    dim: int
    n_layers: int
    n_heads: int
    ffn_hidden: int
    # Padded past 257 (bytes + EOS) to a multiple of 64 so tensor parallel shards the vocabulary evenly.
    vocab_size: int = 320
    max_seq_len: int = 256
    # Every `moe_every`-th layer (1-based: layers moe_every-1, 2*moe_every-1, ...) is mixture-of-experts; 0 = none.
    moe_every: int = 0
    n_experts: int = 0
    top_k: int = 1
    # Load-balancing auxiliary loss weight (Switch Transformer uses 0.01); 0 turns it off.
    moe_aux_loss_coef: float = 0.01
    # DeepSeek-MoE options. Hidden size of each routed and shared expert, 0 = ffn_hidden: fine-grained experts are
    # many experts with a small `moe_hidden` (and a larger top_k), so a token's active parameters stay put.
    moe_hidden: int = 0
    # Experts every token passes through besides its routed ones: one SwiGLU MLP of n_shared_experts x moe_hidden.
    n_shared_experts: int = 0
    # The first k layers stay dense whatever `moe_every` says (DeepSeek's first_k_dense_replace).
    moe_first_dense_layers: int = 0
    # Router scores: softmax over experts (False), or DeepSeek-V3's per-expert sigmoid with the top k's weights
    # normalised to sum to 1 (True).
    moe_sigmoid_router: bool = False
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # Key/value heads (grouped-query attention: each serves n_heads / n_kv_heads query heads); 0 = n_heads.
    n_kv_heads: int = 0
    ffn_activation: FFNActivation = FFNActivation.GELU
    qkv_bias: bool = False  # biases on the query, key and value projections (Qwen2)
    # The checkpoint's output projection was its embedding (a loaded model gets its own copy, trained apart).
    tie_embeddings: bool = False
    rope_scaling: RopeScaling | None = None

    def is_moe_layer(self, layer_id: int) -> bool:
        return self.moe_every > 0 and layer_id >= self.moe_first_dense_layers and (layer_id + 1) % self.moe_every == 0

    @property
    def expert_hidden(self) -> int:
        return self.moe_hidden or self.ffn_hidden

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    def validate(self) -> None:
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} must be divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be divisible by n_kv_heads={self.n_kv_heads}")
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size={self.vocab_size} must be positive")
        if self.moe_every and not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k={self.top_k} must lie in [1, n_experts={self.n_experts}]")

    def num_params(self) -> int:
        kv_dim = self.kv_heads * self.head_dim
        attn = 2 * self.dim * self.dim + 2 * self.dim * kv_dim + (self.dim + 2 * kv_dim) * self.qkv_bias
        ffn_matrices = 3 if self.ffn_activation is FFNActivation.SWIGLU else 2
        dense = ffn_matrices * self.dim * self.ffn_hidden
        routed = self.n_experts * 2 * self.dim * self.expert_hidden + self.dim * self.n_experts
        moe = routed + 3 * self.dim * self.n_shared_experts * self.expert_hidden
        layers = sum(attn + 2 * self.dim + (moe if self.is_moe_layer(i) else dense) for i in range(self.n_layers))
        return layers + 2 * self.vocab_size * self.dim + self.dim


PRESETS: dict[str, ModelConfig] = {
    # Tests: four layers so two pipeline ranks can hold two stages each; layers 1 and 3 are MoE.
    "debug": ModelConfig(dim=32, n_layers=4, n_heads=4, ffn_hidden=64, max_seq_len=64, moe_every=2, n_experts=4),
    "debug-dense": ModelConfig(dim=32, n_layers=4, n_heads=4, ffn_hidden=64, max_seq_len=64),
    # Llama 3 / Qwen2 shaped: grouped-query attention (2 key/value heads), SwiGLU, q/k/v biases, Llama 3 rotary
    # scaling; the shape a Hugging Face directory loads into, so parallel layouts are tested on it too.
    "debug-llama": ModelConfig(
        dim=32,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        ffn_hidden=64,
        max_seq_len=64,
        ffn_activation=FFNActivation.SWIGLU,
        qkv_bias=True,
        rope_theta=500000.0,
        rope_scaling=RopeScaling(factor=8.0, original_max_len=32),
    ),
    # DeepSeek-MoE shaped: the first layer dense, then fine-grained experts (8 of a quarter of the dense MLP's
    # hidden size, top 2) beside 2 shared ones, sigmoid router; four layers for two pipeline stages.
    "debug-deepseek-moe": ModelConfig(
        dim=32,
        n_layers=4,
        n_heads=4,
        ffn_hidden=64,
        max_seq_len=64,
        moe_every=1,
        moe_first_dense_layers=1,
        n_experts=8,
        top_k=2,
        moe_hidden=16,
        n_shared_experts=2,
        moe_sigmoid_router=True,
    ),
    # CPU benchmarks and quick local runs.
    "small": ModelConfig(dim=128, n_layers=4, n_heads=4, ffn_hidden=512, max_seq_len=256),
    "small-moe": ModelConfig(
        dim=128, n_layers=4, n_heads=4, ffn_hidden=512, max_seq_len=256, moe_every=2, n_experts=4, top_k=2
    ),
    # small-moe's active expert width per token (top 2 of 512 = 1024) split DeepSeek's way: 2 shared and the top 6
    # of 32 routed experts, each 128 wide; layer 0 dense.
    "small-deepseek-moe": ModelConfig(
        dim=128,
        n_layers=4,
        n_heads=4,
        ffn_hidden=512,
        max_seq_len=256,
        moe_every=1,
        moe_first_dense_layers=1,
        n_experts=32,
        top_k=6,
        moe_hidden=128,
        n_shared_experts=2,
        moe_sigmoid_router=True,
    ),
    # GPU presets, named by parameter count (byte vocabulary, so smaller than their word-piece namesakes).
    "85m": ModelConfig(dim=768, n_layers=12, n_heads=12, ffn_hidden=3072, max_seq_len=1024),
    # 8 experts top-2 on every other layer: 724M parameters in total, about 280M active per token.
    "720m-moe": ModelConfig(
        dim=1024, n_layers=24, n_heads=16, ffn_hidden=2816, max_seq_len=2048, moe_every=2, n_experts=8, top_k=2
    ),
    "640m": ModelConfig(dim=2048, n_layers=16, n_heads=16, ffn_hidden=5632, max_seq_len=2048),
}


def get_preset(name: str, **overrides: int | float) -> ModelConfig:
    try:
        config = PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None
    config = replace(config, **overrides)  # type: ignore[arg-type]
    config.validate()
    return config
