"""A single-process model, optimizer and checkpointer for checkpoint tests that need no process group, and the
smallest damage to a saved checkpoint."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.optim.lr_scheduler import LRScheduler

from strata_workloads.checkpoint import Checkpointer
from strata_workloads.engine import build_engine
from strata_workloads.layout import ParallelDims
from strata_workloads.model import Transformer
from strata_workloads.optim import OptimConfig, build_optimizer
from strata_workloads.parallelize import ParallelizeOptions
from strata_workloads.presets import get_preset


def single_process_state(
    root: Path, keep: int = 2
) -> tuple[Checkpointer, list[torch.nn.Module], torch.optim.Optimizer, LRScheduler]:
    torch.manual_seed(0)
    engine = build_engine(
        Transformer(get_preset("debug-dense")),
        ParallelDims(1),
        None,
        ParallelizeOptions(),
        torch.device("cpu"),
    )
    optimizer, scheduler = build_optimizer(engine, OptimConfig())
    return Checkpointer(root, keep=keep, async_save=False), engine.parts, optimizer, scheduler


def flip_a_bit(folder: Path) -> None:
    """One bit of the checkpoint's largest shard flipped in place: the file keeps its size and stays parseable."""
    shard = max(folder.glob("*.distcp"), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
