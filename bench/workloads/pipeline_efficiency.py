"""Pipeline efficiency per schedule against the bound 1 - (p-1)/(m+p-1).

Each stage is a fixed-duration block (forward sleeps t_f, backward 2 t_f), so the measurement isolates the
schedule and its communication from how many CPU cores the machine has. Efficiency = ideal busy time of one
stage (m (t_f + t_b)) / measured step time. For interleaved schedules each rank holds two stages of half the
duration, so the ideal per-rank work is the same.

    python bench/workloads/pipeline_efficiency.py --stages 2 4 --microbatches 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.pipelining import PipelineStage

from strata_workloads.pipeline import SCHEDULES, stage_ids_for_rank

FORWARD_S = 0.01


class _Timed(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, seconds: float) -> torch.Tensor:
        ctx.seconds = seconds
        time.sleep(seconds)
        return x * w

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        time.sleep(2 * ctx.seconds)
        return grad, grad.sum().reshape(1), None


class TimedStage(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.seconds = seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Timed.apply(x, self.w, self.seconds)  # type: ignore[no-any-return]


def _loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out - target).pow(2).mean()


def worker(rank: int, world: int, init: str, schedule: str, m: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    spec = SCHEDULES[schedule]
    n_stages = world * spec.stages_per_rank
    per_stage = FORWARD_S / spec.stages_per_rank
    stages = [
        PipelineStage(TimedStage(per_stage), s, n_stages, torch.device("cpu"))
        for s in stage_ids_for_rank(rank, world, spec)
    ]
    if spec.stages_per_rank == 1:
        sched = spec.cls(stages[0], n_microbatches=m, loss_fn=_loss)  # type: ignore[call-arg]
    else:
        sched = spec.cls(stages, n_microbatches=m, loss_fn=_loss)  # type: ignore[call-arg]
    x = torch.ones(m, 4)
    first = any(s.is_first for s in stages)
    last = any(s.is_last for s in stages)
    times = []
    for _ in range(3):
        dist.barrier()
        began = time.perf_counter()
        args = (x,) if first else ()
        if last:
            sched.step(*args, target=torch.zeros(m, 4), losses=[])
        else:
            sched.step(*args)
        dist.barrier()
        times.append(time.perf_counter() - began)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(min(times[1:]), f)
    dist.destroy_process_group()


def measure(schedule: str, p: int, m: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "t.json")
        mp.start_processes(
            worker, args=(p, os.path.join(tmp, "init"), schedule, m, out), nprocs=p, start_method="spawn"
        )
        with open(out) as f:
            seconds = float(json.load(f))
    ideal = m * 3 * FORWARD_S
    return ideal / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--microbatches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--schedules", nargs="+", default=["gpipe", "1f1b", "interleaved_1f1b"])
    args = parser.parse_args()
    print("| schedule | p | m | efficiency | bound 1-(p-1)/(m+p-1) | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for schedule in args.schedules:
        for p in args.stages:
            for m in args.microbatches:
                if schedule != "gpipe" and m < p:
                    continue  # torch's 1F1B-family schedules need at least one micro-batch per stage
                if SCHEDULES[schedule].stages_per_rank > 1 and m % p:
                    continue
                eff = measure(schedule, p, m)
                bound = 1 - (p - 1) / (m + p - 1)
                print(f"| {schedule} | {p} | {m} | {eff:.3f} | {bound:.3f} | {eff / bound:.3f} |", flush=True)


if __name__ == "__main__":
    main()
