"""What a checkpoint holds besides model and optimizer: the data position and every rank's RNG.

The data position is one number, the global samples consumed (data.PackedLoader: the sample order is the same
for every layout), so it is restored at any world size and layout; a checkpoint saved before it was recorded
resumes at step * global_batch. The RNG is restored only when the world size is unchanged (checkpoint.py drops
entries whose saved shape differs).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from strata_workloads.checkpoint import TrainState
from strata_workloads.data import PackedLoader


def gather_train_state(step: int, loader: PackedLoader, world: int) -> TrainState:
    """Data position (the same on every rank) and every rank's RNG, identical on all ranks."""
    rng = torch.get_rng_state().unsqueeze(0)
    if dist.is_initialized():
        parts = [torch.empty_like(rng) for _ in range(world)]
        dist.all_gather(parts, rng)
        rng = torch.cat(parts)
    return TrainState(step=step, data={"samples": torch.tensor([loader.samples], dtype=torch.int64)}, rng=rng)


def restore_train_state(saved: TrainState, fresh: TrainState, loader: PackedLoader, rank: int) -> None:
    """Put this rank's loader and RNG where `saved` left them; the RNG keeps its `fresh` value when the
    checkpoint could not restore it (a different world size)."""
    samples = saved.data.get("samples")
    loader.rewind(int(samples[0]) if samples is not None else saved.step * loader.global_batch)
    if saved.rng is not fresh.rng:
        torch.set_rng_state(saved.rng[rank])
