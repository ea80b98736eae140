"""Per-rank parameter + AdamW state memory under tensor parallel vs 1/tp of the unsharded model.

python bench/workloads/tp_memory.py --preset small --tp 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor

from strata_workloads.engine import build_engine
from strata_workloads.layout import ParallelDims
from strata_workloads.model import Transformer
from strata_workloads.optim import OptimConfig, build_optimizer, train_step
from strata_workloads.parallelize import ParallelizeOptions
from strata_workloads.presets import get_preset


def _local_bytes(t: torch.Tensor) -> int:
    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def _measure(engine_parts: list[torch.nn.Module], optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    params = sum(_local_bytes(p) for part in engine_parts for p in part.parameters())
    state = sum(
        _local_bytes(v) for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim()
    )
    return params, state


def worker(rank: int, world: int, init: str, preset: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    torch.manual_seed(0)
    dims = ParallelDims(world, tp=world)
    engine = build_engine(
        Transformer(get_preset(preset)), dims, dims.build_mesh("cpu"), ParallelizeOptions(), torch.device("cpu")
    )
    optimizer, scheduler = build_optimizer(engine, OptimConfig())
    data = torch.randint(0, 256, (2, 33))
    train_step(engine, [(data[:, :-1], data[:, 1:])], optimizer, scheduler, 1.0)
    params, state = _measure(engine.parts, optimizer)
    if rank == 0:
        with open(out, "w") as f:
            json.dump([params, state], f)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="small")
    parser.add_argument("--tp", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    torch.manual_seed(0)
    engine = build_engine(
        Transformer(get_preset(args.preset)), ParallelDims(1), None, ParallelizeOptions(), torch.device("cpu")
    )
    optimizer, scheduler = build_optimizer(engine, OptimConfig())
    data = torch.randint(0, 256, (2, 33))
    train_step(engine, [(data[:, :-1], data[:, 1:])], optimizer, scheduler, 1.0)
    full = sum(_measure(engine.parts, optimizer))
    print("| tp | per-rank params+AdamW bytes | 1/tp of unsharded | ratio |")
    print("| --- | --- | --- | --- |")
    for tp in args.tp:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "m.json")
            mp.start_processes(
                worker, args=(tp, os.path.join(tmp, "init"), args.preset, out), nprocs=tp, start_method="spawn"
            )
            with open(out) as f:
                params, state = json.load(f)
        print(f"| {tp} | {params + state} | {full / tp:.0f} | {(params + state) / (full / tp):.4f} |", flush=True)


if __name__ == "__main__":
    main()
