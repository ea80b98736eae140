"""Pipeline efficiency per schedule against the bound 1 - (p-1)/(m+p-1).

The bound is about the schedule: with p stages of equal per-micro-batch cost t (forward plus backward) and m
micro-batches, a stage is busy m*t out of a step of (m+p-1)*t. Two modes measure it:

- `timed` (the schedule's own figure): each stage's compute is a controlled wait that occupies no core.
  A stage is `out = _WaitInput(x) + _WaitWeight(w)`: forward waits t_f, the input-gradient backward t_f and
  the weight-gradient backward t_f (so the zero-bubble schedules' B/W split has something to split; plain
  backward costs 2 t_f). `time.sleep` releases the GIL, so p ranks wait in parallel even on a 2-core machine,
  and what is left beyond the bound is torch.distributed.pipelining's own bubble, its Python bookkeeping and
  gloo send/recv.
- `real` (what this machine does): each stage is a slice of a real preset (`small` by default) from
  `pipeline.build_stages`, the loss is cross-entropy. With p ranks on fewer cores than p the stages cannot run
  in parallel, so this figure is core-bound and says more about the machine than about the schedule.

Efficiency = (m x per-micro-batch stage time) / measured step time. The stage time is measured per rank, one
rank at a time while the others wait at a barrier: forward + backward of one micro-batch through that rank's
stage(s), alone, minimum of several runs; the slowest rank's time is used (the bottleneck stage sets the pace).
The step time is the minimum over several `schedule.step()` calls after a warm-up step, between barriers.
`excess/mb` is (step - (m+p-1) x stage time) / m: the overhead per micro-batch beyond the ideal schedule.
`p2p` is one gloo send/recv of one micro-batch's activation between two ranks (half a ping-pong), measured in
the same process group. All configurations for one p run in one set of spawned ranks.

    python bench/workloads/pipeline_efficiency.py --stages 2 4 --microbatches 1 2 4 8            # timed, 20 ms
    python bench/workloads/pipeline_efficiency.py --stage-ms 10 20 50 --schedules 1f1b
    python bench/workloads/pipeline_efficiency.py --mode real --stages 2 4 --microbatches 2 4 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.pipelining import PipelineStage

from strata_workloads.model import Transformer, cross_entropy_loss
from strata_workloads.pipeline import SCHEDULES, build_schedule, build_stages, stage_ids_for_rank
from strata_workloads.presets import get_preset

SEQ = 128
REPEATS = 6


class _WaitInput(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, seconds: float) -> torch.Tensor:
        ctx.seconds = seconds
        time.sleep(seconds)
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        time.sleep(ctx.seconds)
        return grad, None


class _WaitWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: torch.Tensor, seconds: float) -> torch.Tensor:
        ctx.seconds = seconds
        return w.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        time.sleep(ctx.seconds)
        return grad, None


class TimedStage(nn.Module):
    """Forward waits t_f; backward waits t_f for the input gradient and t_f for the weight gradient."""

    def __init__(self, forward_s: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.forward_s = forward_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.requires_grad:
            # The first stage's input (the data) needs no gradient, so autograd would skip _WaitInput's backward
            # and that stage would cost t_f less than the others; a leaf that requires grad keeps stages equal.
            x = x.detach().requires_grad_()
        return _WaitInput.apply(x, self.forward_s) + _WaitWeight.apply(self.w, self.forward_s)  # type: ignore[no-any-return]


@dataclass
class Config:
    mode: str
    schedule: str
    p: int
    m: int
    stage_ms: float  # timed mode: forward wait per stage (backward is twice that); real mode: 0


def _mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out.float() - target.float()).pow(2).mean()


def _stage_time(modules: list[nn.Module], first_input: torch.Tensor, dim: int, reps: int = 5) -> float:
    """Forward + backward of one micro-batch through this rank's stage modules, alone (min of reps)."""
    best = float("inf")
    for _ in range(reps):
        began = time.perf_counter()
        for module in modules:
            is_first = isinstance(module, Transformer) and module.tok_embeddings is not None
            x = first_input if is_first else torch.randn(*first_input.shape[:2], dim, requires_grad=True)
            out = module(x)
            out.backward(torch.ones_like(out))
        best = min(best, time.perf_counter() - began)
    return best


def _p2p_seconds(rank: int, shape: tuple[int, ...], reps: int = 20) -> float:
    """Half a gloo ping-pong of one activation between ranks 0 and 1."""
    t = torch.zeros(shape)
    dist.barrier()
    began = time.perf_counter()
    for _ in range(reps):
        if rank == 0:
            dist.send(t, 1)
            dist.recv(t, 1)
        elif rank == 1:
            dist.recv(t, 0)
            dist.send(t, 0)
    elapsed = (time.perf_counter() - began) / (2 * reps)
    out = torch.tensor([elapsed])
    dist.broadcast(out, 0)
    return float(out)


def _run_config(rank: int, world: int, cfg: Config, preset: str, mesh: Any) -> dict[str, float]:
    spec = SCHEDULES[cfg.schedule]
    n_stages = world * spec.stages_per_rank
    if cfg.mode == "timed":
        dim, per_stage = 128, cfg.stage_ms / 1000 / spec.stages_per_rank
        modules: list[nn.Module] = [TimedStage(per_stage) for _ in stage_ids_for_rank(rank, world, spec)]
        stages = [
            PipelineStage(module, s, n_stages, torch.device("cpu"))
            for module, s in zip(modules, stage_ids_for_rank(rank, world, spec), strict=True)
        ]
        sched = build_schedule(cfg.schedule, stages, cfg.m, _mse)
        x = torch.ones(cfg.m, SEQ, dim)
        target = torch.zeros(cfg.m, SEQ, dim)
        one = torch.ones(1, SEQ, dim, requires_grad=True)
    else:
        torch.manual_seed(0)
        model = Transformer(get_preset(preset))
        dim = model.config.dim
        modules, stages = build_stages(model, mesh["pp"], cfg.schedule, torch.device("cpu"), lambda part: part)
        sched = build_schedule(cfg.schedule, stages, cfg.m, cross_entropy_loss)
        x = torch.randint(0, 256, (cfg.m, SEQ))
        target = torch.randint(0, 256, (cfg.m, SEQ))
        one = x[:1]
    # Isolated stage time, one rank at a time.
    stage_s = 0.0
    for r in range(world):
        dist.barrier()
        if r == rank:
            stage_s = _stage_time(modules, one, dim)
    slowest = torch.tensor([stage_s])
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    first = any(s.is_first for s in stages)
    last = any(s.is_last for s in stages)
    times = []
    for _ in range(REPEATS + 1):
        for module in modules:
            module.zero_grad(set_to_none=True)
        dist.barrier()
        began = time.perf_counter()
        args = (x,) if first else ()
        if last:
            sched.step(*args, target=target, losses=[])
        else:
            sched.step(*args)
        dist.barrier()
        times.append(time.perf_counter() - began)
    return {"stage_s": float(slowest), "step_s": min(times[1:])}


def worker(rank: int, world: int, init: str, configs: list[dict[str, Any]], preset: str, out: str) -> None:
    cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // world))
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("pp",))
    dim = get_preset(preset).dim
    p2p = _p2p_seconds(rank, (1, SEQ, dim))
    results = []
    for raw in configs:
        cfg = Config(**raw)
        results.append({**asdict(cfg), **_run_config(rank, world, cfg, preset, mesh), "p2p_s": p2p})
        if rank == 0:
            with open(out, "w") as f:
                json.dump(results, f)
    dist.destroy_process_group()


def measure(p: int, configs: list[Config], preset: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "t.json")
        mp.start_processes(
            worker,
            args=(p, os.path.join(tmp, "init"), [asdict(c) for c in configs], preset, out),
            nprocs=p,
            start_method="spawn",
        )
        with open(out) as f:
            return list(json.load(f))


def _valid(schedule: str, p: int, m: int) -> bool:
    spec = SCHEDULES[schedule]
    if schedule != "gpipe" and m < p:
        return False  # torch's 1F1B-family schedules need at least one micro-batch per stage
    return not (spec.stages_per_rank > 1 and m % p)  # interleaved schedules take micro-batches in rounds of p


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["timed", "real"], default="timed")
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--microbatches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES))
    parser.add_argument("--stage-ms", type=float, nargs="+", default=[20.0], help="timed mode: forward wait")
    parser.add_argument("--preset", default="small", help="real mode: model preset")
    args = parser.parse_args()
    stage_ms = args.stage_ms if args.mode == "timed" else [0.0]
    print(
        f"mode={args.mode}" + (f" preset={args.preset}, seq {SEQ}, 1 sequence per micro-batch" * (args.mode == "real"))
    )
    columns = "schedule|p|m|stage fwd (ms)|stage f+b (ms)|step (ms)|efficiency|bound|ratio|excess/mb (ms)|p2p (ms)"
    print("| " + " | ".join(columns.split("|")) + " |")
    print("|" + " --- |" * len(columns.split("|")))
    for p in args.stages:
        configs = [
            Config(args.mode, s, p, m, ms)
            for ms in stage_ms
            for s in args.schedules
            for m in args.microbatches
            if _valid(s, p, m)
        ]
        for r in measure(p, configs, args.preset):
            m, stage, step = r["m"], r["stage_s"], r["step_s"]
            eff = m * stage / step
            bound = 1 - (p - 1) / (m + p - 1)
            excess = (step - (m + p - 1) * stage) / m
            print(
                f"| {r['schedule']} | {p} | {m} | {r['stage_ms'] or '-':} | {stage * 1e3:.1f} | {step * 1e3:.1f} | "
                f"{eff:.3f} | {bound:.3f} | {eff / bound:.3f} | {excess * 1e3:.1f} | {r['p2p_s'] * 1e3:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
