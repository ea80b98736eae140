"""What a checkpoint holds besides model and optimizer: the data position and every rank's RNG.

The data position is one token offset per shard, merged across ranks, so it survives a change of the
data-parallel degree (shards move between ranks with their offsets), and one cursor per data-parallel rank,
restored when the data-parallel degree is unchanged (tp=2 -> one process continues the same batches); the RNG
is restored only when the world size is unchanged (checkpoint.py drops entries whose saved shape differs).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from strata_workloads.checkpoint import TrainState
from strata_workloads.data import ShardedLoader


def gather_train_state(step: int, loader: ShardedLoader, n_shards: int, world: int) -> TrainState:
    """Data position (every shard's offset, merged across ranks) and every rank's RNG, identical on all ranks."""
    mine = loader.state_dict()
    gathered: list[dict[str, object]] = [mine]
    rng = torch.get_rng_state().unsqueeze(0)
    if dist.is_initialized():
        gathered = [{} for _ in range(world)]
        dist.all_gather_object(gathered, mine)
        parts = [torch.empty_like(rng) for _ in range(world)]
        dist.all_gather(parts, rng)
        rng = torch.cat(parts)
    offsets = torch.zeros(n_shards, dtype=torch.int64)
    cursors = torch.zeros(loader.dp, dtype=torch.int64)  # ranks of one data-parallel rank share its cursor
    for state in gathered:
        for shard, offset in state["offsets"].items():  # type: ignore[attr-defined]
            offsets[int(shard)] = int(offset)
        cursors[int(state["dp_rank"])] = int(state["cursor"])  # type: ignore[call-overload]
    return TrainState(step=step, data={"offsets": offsets, "cursors": cursors}, rng=rng)


def restore_train_state(saved: TrainState, fresh: TrainState, loader: ShardedLoader, rank: int) -> None:
    """Put this rank's loader and RNG where `saved` left them; entries the checkpoint could not restore (a
    different world size) keep their `fresh` values."""
    offsets = saved.data.get("offsets", fresh.data["offsets"])
    cursors = saved.data.get("cursors", fresh.data["cursors"])
    loader.load_state_dict({s: int(o) for s, o in enumerate(offsets.tolist())}, int(cursors[loader.dp_rank]))
    if saved.rng is not fresh.rng:
        torch.set_rng_state(saved.rng[rank])
