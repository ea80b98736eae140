"""Model FLOPs utilisation (MFU): the FLOPs training needs per token, and the peak of the device it runs on.

FLOPs per token are PaLM's (Chowdhery et al. 2022, appendix B), counted as torchtitan counts them:
``6 N + 12 L H Q T``. ``N`` is the parameters a token goes through in a matrix product: every parameter but the
token embedding (a lookup), and of a mixture-of-experts layer its router and ``top_k`` of its ``n_experts``
experts (the active parameters). 6 is 2 FLOPs per multiply-add for the forward pass and twice that for the
backward. ``12 L H Q T`` is the attention's scores and weighted values over ``T`` positions (``L`` layers, ``H``
query heads of ``Q`` dimensions), forward and backward. Recomputation under activation checkpointing is not
counted: this is model FLOPs, not hardware FLOPs.

The parameters are counted on the model itself, built on the meta device (no memory, no arithmetic), so the count
follows the architecture wherever it changes (grouped-query attention, gated MLPs, tied embeddings).

MFU is the FLOPs a second of training did over what the devices could do: ``tokens/s x FLOPs per token / (peak x
devices)``. The peak is the datasheet's dense figure (no 2:4 sparsity) at the training precision for the GPUs in
:data:`PEAK_FLOPS`; fp32 is the plain fp32 rate, as PyTorch leaves TF32 off for matrix products by default. A CPU
has no datasheet figure that means anything for one process's threads: its peak is measured once at start
(:func:`measure_matmul_flops`). An unknown GPU has no peak, and no MFU is reported rather than a guess.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from strata_workloads.model import Transformer
from strata_workloads.moe import MoE
from strata_workloads.presets import ModelConfig

PEAK_FLOPS: dict[str, dict[str, float]] = {
    # NVIDIA H100 / H200 datasheets (dense; the sparse tensor-core figures are twice these).
    "H100 SXM": {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756.5e12, "fp16": 756.5e12, "fp32": 51.2e12},
    "H100 NVL": {"bf16": 835.5e12, "fp16": 835.5e12, "fp32": 60.0e12},
    "H200": {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12},
    "H200 NVL": {"bf16": 835.5e12, "fp16": 835.5e12, "fp32": 60.0e12},
    # AMD Instinct MI300X datasheet (dense matrix rates).
    "MI300X": {"bf16": 1307.4e12, "fp16": 1307.4e12, "fp32": 163.4e12},
}
"""Peak dense FLOP/s of one device, by precision (the ``precision`` setting's names)."""

_DEVICE_NAMES: tuple[tuple[str, str], ...] = (
    ("H100 PCIe", "H100 PCIe"),
    ("H100 NVL", "H100 NVL"),
    ("H100", "H100 SXM"),  # "NVIDIA H100 80GB HBM3"
    ("H200 NVL", "H200 NVL"),
    ("H200", "H200"),
    ("MI300X", "MI300X"),  # "AMD Instinct MI300X" (ROCm reports it through torch.cuda)
)
"""``torch.cuda.get_device_name()`` substrings to :data:`PEAK_FLOPS` rows, the more specific first."""

MATMUL_SIZE = 512
"""Side of the square matrices the CPU measurement multiplies: large enough to be compute bound, small enough
to take a few milliseconds on one core."""
MEASURE_S = 0.5
"""How long the CPU measurement multiplies at start."""
MIN_REPEATS = 5
"""Products the CPU measurement times at least, however long they take."""


@dataclass(frozen=True)
class DevicePeak:
    """What one device can do, and where the figure comes from."""

    device: str
    """The table's row (``H100 SXM``), or ``cpu``."""
    flops_per_second: float
    measured: bool
    """True: measured on this machine (a CPU); False: the datasheet's figure."""


def active_matmul_params(model: nn.Module) -> int:
    """The parameters one token passes through in matrix products: all but embeddings, with each
    mixture-of-experts layer counting ``top_k / n_experts`` of its experts."""
    looked_up = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    multiplied = {id(p) for m in model.modules() if not isinstance(m, nn.Embedding) for p in m.parameters(False)}
    embeddings = looked_up - multiplied  # an output projection tied to the embedding is a matrix product
    expert_params = {}
    for module in model.modules():
        if isinstance(module, MoE):
            share = module.top_k / module.n_experts
            expert_params.update({id(p): share for p in module.experts.parameters()})
    total = 0.0
    for param in model.parameters():  # each once, however many modules share it
        if id(param) not in embeddings:
            total += param.numel() * expert_params.get(id(param), 1.0)
    return round(total)


def flops_per_token(config: ModelConfig, seq_len: int) -> int:
    """Training FLOPs per token of ``config`` on sequences of ``seq_len`` tokens (the module docstring's formula)."""
    with torch.device("meta"):
        model = Transformer(config)
    attention = 12 * config.n_layers * config.n_heads * config.head_dim * seq_len
    return 6 * active_matmul_params(model) + attention


def device_peak(device: torch.device, precision: str) -> DevicePeak | None:
    """The peak of ``device`` at ``precision`` (fp32, bf16, fp16): the table's for a known GPU, measured for a
    CPU, None for a GPU the table does not know."""
    if device.type == "cpu":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        return DevicePeak("cpu", measure_matmul_flops(dtype), measured=True)
    name = torch.cuda.get_device_name(device)
    row = gpu_row(name)
    return DevicePeak(row, PEAK_FLOPS[row][precision], measured=False) if row is not None else None


def gpu_row(device_name: str) -> str | None:
    """The :data:`PEAK_FLOPS` row of a GPU named as torch names it; None when the table has none."""
    return next((row for part, row in _DEVICE_NAMES if part in device_name), None)


def measure_matmul_flops(dtype: torch.dtype = torch.float32, seconds: float = MEASURE_S) -> float:
    """FLOP/s of the fastest of the square matrix products this process's CPU threads do in ``seconds`` (after one
    warm-up; at least :data:`MIN_REPEATS`): what this process can reach, not a datasheet figure. The fastest, as
    on a machine shared with other processes the slower ones measure the others' load, not the hardware."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE).to(dtype)
    torch.mm(a, b)
    best, repeats, until = float("inf"), 0, time.perf_counter() + seconds
    while repeats < MIN_REPEATS or time.perf_counter() < until:
        began = time.perf_counter()
        torch.mm(a, b)
        best, repeats = min(best, time.perf_counter() - began), repeats + 1
    return 2 * MATMUL_SIZE**3 / max(best, 1e-9)


def mfu(tokens_per_second: float, token_flops: int, peak: DevicePeak, devices: int) -> float:
    """Model FLOPs utilisation: the share of ``devices`` devices' peak that the model's FLOPs used."""
    return tokens_per_second * token_flops / (peak.flops_per_second * devices)
