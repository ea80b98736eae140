"""DeepSeek-MoE options: shared experts every token passes through, fine-grained routed experts, the first layers
dense, and V3's sigmoid router; their parameter and FLOPs counts derived by hand."""

from __future__ import annotations

import pytest
import torch

from strata_workloads.flops import flops_per_token
from strata_workloads.model import FeedForward, Transformer
from strata_workloads.moe import MoE
from strata_workloads.presets import ModelConfig, get_preset

# dim 32, 2 layers of 4 heads (head_dim 8): layer 0 a dense GELU MLP of 64, layer 1 eight routed experts of
# 16 (top 2) and two shared ones (one SwiGLU MLP of 32); vocabulary 320, sequences of 16 tokens.
DEEPSEEK = ModelConfig(
    dim=32,
    n_layers=2,
    n_heads=4,
    ffn_hidden=64,
    vocab_size=320,
    max_seq_len=16,
    moe_every=1,
    moe_first_dense_layers=1,
    n_experts=8,
    top_k=2,
    moe_hidden=16,
    n_shared_experts=2,
    moe_sigmoid_router=True,
)


def _moe_layer(sigmoid_router: bool) -> MoE:
    torch.manual_seed(0)
    layer = Transformer(get_preset("debug-deepseek-moe", moe_sigmoid_router=sigmoid_router)).layers["1"]
    moe = layer.feed_forward
    assert isinstance(moe, MoE)
    return moe


@pytest.mark.timeout(60)
def test_the_first_layers_are_dense_and_the_rest_mixture_of_experts_with_shared_experts() -> None:
    model = Transformer(get_preset("debug-deepseek-moe"))
    ffns = [block.feed_forward for block in model.layers.values()]
    assert isinstance(ffns[0], FeedForward)
    for ffn in ffns[1:]:
        assert isinstance(ffn, MoE)
        assert ffn.experts.w1.shape == (8, 32, 16)  # fine-grained: a quarter of the dense MLP's 64
        shared = ffn.shared_experts
        assert isinstance(shared, FeedForward)
        assert shared.w3 is not None  # SwiGLU
        assert shared.w1.weight.shape == (2 * 16, 32)


@pytest.mark.parametrize("sigmoid_router", [False, True])
@pytest.mark.timeout(60)
def test_shared_experts_see_every_token_so_with_silent_routed_experts_they_are_the_output(sigmoid_router: bool) -> None:
    moe = _moe_layer(sigmoid_router)
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        moe.experts.w2.zero_()
        assert moe.shared_experts is not None
        torch.testing.assert_close(moe(x), moe.shared_experts(x))


@pytest.mark.timeout(60)
def test_shared_experts_add_to_the_routed_output() -> None:
    moe = _moe_layer(sigmoid_router=True)
    x = torch.randn(2, 8, 32)
    with torch.no_grad():
        assert moe.shared_experts is not None
        with_shared = moe(x)
        shared_out = moe.shared_experts(x)
        moe.shared_experts = None
        torch.testing.assert_close(with_shared, moe(x) + shared_out)


@pytest.mark.timeout(60)
def test_the_sigmoid_router_weights_the_top_scoring_experts_by_their_normalised_scores() -> None:
    moe = _moe_layer(sigmoid_router=True)
    tokens = torch.randn(10, 32)
    probs, weights, expert_idx = moe.route(tokens)
    scores = torch.sigmoid(moe.router(tokens))
    top = scores.topk(2, dim=-1)
    assert torch.equal(expert_idx, top.indices)
    torch.testing.assert_close(weights, top.values / top.values.sum(-1, keepdim=True))
    torch.testing.assert_close(probs.sum(-1), torch.ones(10))  # the balancing loss's probabilities


@pytest.mark.timeout(60)
def test_the_parameter_count_matches_the_model() -> None:
    for name in ("debug-deepseek-moe", "small-deepseek-moe"):
        config = get_preset(name)
        model = Transformer(config)
        assert config.num_params() == sum(p.numel() for p in model.parameters()), name


@pytest.mark.timeout(60)
def test_flops_count_the_shared_experts_and_top_k_of_the_fine_grained_routed_ones_as_active() -> None:
    dense_layer = 4 * 32 * 32 + 2 * 32 * 64 + 2 * 32  # q, k, v, o; w1, w2; two RMSNorm weights = 8,256
    moe_layer = (
        4 * 32 * 32
        + 2 * 32  # attention and norms
        + 32 * 8  # router
        + 2 * (2 * 32 * 16)  # 2 of the 8 routed experts' w1 and w2
        + 3 * 32 * (2 * 16)  # the shared SwiGLU's w1, w2, w3, all active
    )
    n = dense_layer + moe_layer + 32 + 320 * 32  # final norm, output projection; the embedding is a lookup
    attention = 12 * 2 * 4 * 8 * 16
    assert flops_per_token(DEEPSEEK, 16) == 6 * n + attention == 180_672
