"""MFU's two halves: the training FLOPs per token of a model (PaLM's 6N + 12LHQT, experts counted as active), derived
here by hand for small models, and the peak of the device the run is on, which no run may guess."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from strata_workloads.flops import (
    PEAK_FLOPS,
    DevicePeak,
    active_matmul_params,
    device_peak,
    flops_per_token,
    gpu_row,
    mfu,
)
from strata_workloads.model import Transformer, cross_entropy_loss
from strata_workloads.presets import ModelConfig

# dim 32, 2 layers of 4 heads (head_dim 8), GELU MLP of 64, vocabulary 320, sequences of 16 tokens.
DENSE = ModelConfig(dim=32, n_layers=2, n_heads=4, ffn_hidden=64, vocab_size=320, max_seq_len=16)
SEQ = 16
ATTENTION = 12 * 2 * 4 * 8 * SEQ  # 12 L H Q T = 12,288


@pytest.mark.timeout(60)
def test_a_dense_model_counts_every_matrix_but_the_embedding_and_the_attention_over_the_sequence() -> None:
    per_layer = 4 * 32 * 32 + 2 * 32 * 64 + 2 * 32  # q, k, v, o; w1, w2; two RMSNorm weights = 8,256
    n = 2 * per_layer + 32 + 320 * 32  # the final norm and the output projection; the embedding is a lookup
    assert n == 26_784
    assert flops_per_token(DENSE, SEQ) == 6 * n + ATTENTION == 172_992


@pytest.mark.timeout(60)
def test_a_mixture_of_experts_layer_counts_its_router_and_top_k_of_its_experts() -> None:
    moe = ModelConfig(
        dim=32, n_layers=2, n_heads=4, ffn_hidden=64, vocab_size=320, max_seq_len=16, moe_every=2, n_experts=4, top_k=2
    )
    dense_layer = 4 * 32 * 32 + 2 * 32 * 64 + 2 * 32
    moe_layer = 4 * 32 * 32 + 2 * 32 + 32 * 4 + 2 * (2 * 32 * 64)  # router; 2 of the 4 experts' w1 and w2
    n = dense_layer + moe_layer + 32 + 320 * 32
    assert flops_per_token(moe, SEQ) == 6 * n + ATTENTION == 198_336


@pytest.mark.timeout(60)
def test_longer_sequences_cost_more_attention_per_token_only() -> None:
    assert flops_per_token(DENSE, 2 * SEQ) - flops_per_token(DENSE, SEQ) == ATTENTION


@pytest.mark.parametrize(
    ("name", "row"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H100 NVL", "H100 NVL"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA H200 NVL", "H200 NVL"),
        ("AMD Instinct MI300X", "MI300X"),
        ("NVIDIA A100-SXM4-80GB", None),
    ],
)
@pytest.mark.timeout(10)
def test_a_gpu_is_known_by_the_name_torch_gives_it_and_an_unknown_one_has_no_peak(name: str, row: str | None) -> None:
    assert gpu_row(name) == row


@pytest.mark.timeout(10)
def test_every_known_gpu_has_a_dense_peak_at_every_training_precision() -> None:
    assert PEAK_FLOPS["H100 SXM"]["bf16"] == 989.4e12  # dense: half the datasheet's 2:4-sparse 1,979 TFLOP/s
    assert PEAK_FLOPS["MI300X"]["bf16"] == 1307.4e12
    for row, peaks in PEAK_FLOPS.items():
        assert set(peaks) == {"fp32", "bf16", "fp16"}, row
        assert peaks["fp32"] < peaks["bf16"], row


@pytest.mark.timeout(60)
def test_a_cpu_peak_is_measured_here_and_mfu_is_the_share_of_all_devices_peaks() -> None:
    peak = device_peak(torch.device("cpu"), "fp32")
    assert peak is not None
    assert peak.device == "cpu"
    assert peak.measured
    assert peak.flops_per_second > 1e8
    h100 = DevicePeak("H100 SXM", 1000e12, measured=False)
    # 8 GPUs, 1M tokens/s of a model costing 4 GFLOPs a token: 4e15 of 8e15 FLOP/s.
    assert mfu(1e6, 4_000_000_000, h100, devices=8) == pytest.approx(0.5)


@pytest.mark.parametrize("experts", [0, 4], ids=["dense", "moe"])
@pytest.mark.timeout(120)
def test_the_formula_agrees_with_pytorch_s_flop_counter_on_a_real_training_step(experts: int) -> None:
    """PyTorch counts every matrix product of a forward and backward pass. It differs from the formula by exactly
    what each leaves out: the formula counts the norm weights in N (as PaLM and torchtitan count every parameter
    but the embedding), the counter counts no elementwise work; and the counter counts the fused attention's
    backward recomputing the scores (2 L H Q T per token: hardware FLOPs, not the model's)."""
    config = ModelConfig(
        dim=64,
        n_layers=2,
        n_heads=4,
        ffn_hidden=128,
        vocab_size=320,
        max_seq_len=32,
        moe_every=2 if experts else 0,
        n_experts=experts,
        top_k=2 if experts else 1,
    )
    torch.manual_seed(0)
    model = Transformer(config)
    batch, seq = 2, 32
    tokens = torch.randint(0, 320, (batch, seq + 1))
    with FlopCounterMode(display=False) as counter:
        cross_entropy_loss(model(tokens[:, :-1]), tokens[:, 1:]).backward()
    norm_weights = sum(p.numel() for p in model.parameters() if p.dim() == 1)
    recomputed_scores = 2 * config.n_layers * config.n_heads * config.head_dim * seq
    per_token = flops_per_token(config, seq) - 6 * norm_weights + recomputed_scores
    assert counter.get_total_flops() == per_token * batch * seq


@pytest.mark.timeout(30)
def test_an_output_projection_tied_to_the_embedding_still_counts_as_a_matrix_product() -> None:
    class TiedHead(torch.nn.Module):
        def __init__(self, tied: bool) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(10, 4)
            self.output = torch.nn.Linear(4, 10, bias=False)
            if tied:
                self.output.weight = self.embedding.weight

    assert active_matmul_params(TiedHead(tied=True)) == active_matmul_params(TiedHead(tied=False)) == 40
