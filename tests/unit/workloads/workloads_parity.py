"""Runs in spawned ranks: trains `debug` for a few steps under a layout and records losses and gradients,
and the same from a single-process run of the same seed, for the test process to compare."""

from __future__ import annotations

import json
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from strata_workloads.engine import build_engine
from strata_workloads.layout import ParallelDims
from strata_workloads.model import Transformer
from strata_workloads.optim import OptimConfig, build_optimizer, train_step
from strata_workloads.parallelize import ActivationCheckpointing, ParallelizeOptions
from strata_workloads.presets import get_preset


@dataclass(frozen=True)
class Case:
    name: str
    dp_replicate: int = 1
    dp_shard: int = 1
    tp: int = 1
    pp: int = 1
    ep: int = 1
    schedule: str = "1f1b"
    n_microbatches: int = 2
    ac: str = "none"
    preset: str = "debug"
    global_batch: int = 8
    grad_accum: int = 1
    steps: int = 3
    moe_aux_loss_coef: float = 0.01  # the preset's default; larger where a case checks the balancing loss
    extra: dict[str, Any] = field(default_factory=dict)


SEQ = 16
OPTIM = OptimConfig(lr=1e-2, warmup_steps=1, total_steps=10, max_grad_norm=0.5)


def _batches(case: Case, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randint(0, 256, (case.global_batch, SEQ + 1), generator=gen)


def _full_grads(named: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in named.items():
        g = p.grad
        if g is None:
            continue
        out[name] = (g.full_tensor() if isinstance(g, DTensor) else g).detach().clone()
    return out


def _run(case: Case, dims: ParallelDims | None) -> tuple[list[float], list[float], list[dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    model = Transformer(get_preset(case.preset, moe_aux_loss_coef=case.moe_aux_loss_coef))
    mesh = None
    if dims is not None:
        mesh = dims.build_mesh("cpu")
    layout = dims or ParallelDims(world_size=1)
    options = ParallelizeOptions(activation_checkpointing=ActivationCheckpointing(case.ac))
    engine = build_engine(
        model, layout, mesh, options, torch.device("cpu"), case.schedule, case.n_microbatches, case.grad_accum
    )
    optimizer, scheduler = build_optimizer(engine, OPTIM)
    dp, dp_rank = 1, 0
    if mesh is not None:
        dp, dp_rank = layout.dp, mesh["dp"].get_local_rank()
    losses, norms, grads = [], [], []
    for step in range(case.steps):
        data = _batches(case, step)
        local = data.chunk(dp)[dp_rank]
        micro = [(m[:, :-1], m[:, 1:]) for m in local.chunk(case.grad_accum)]
        # Grads are compared after clipping (train_step clips): this checks the global norm too.
        captured: dict[str, torch.Tensor] = {}
        result = train_step(
            engine,
            micro,
            optimizer,
            scheduler,
            OPTIM.max_grad_norm,
            before_step=lambda captured=captured: captured.update(_full_grads(engine.named_parameters())),
        )
        losses.append(result.loss)
        norms.append(result.grad_norm)
        grads.append(captured)
    return losses, norms, grads


def reference(case: Case) -> tuple[list[float], list[float], list[dict[str, torch.Tensor]]]:
    """The single-process run, computed once in the test process and shared with every rank."""
    return _run(case, None)


def compare_case(case: Case, rank: int, ref_dir: str) -> dict[str, Any]:
    ref_losses, ref_norms, ref_grads = torch.load(Path(ref_dir, f"{case.name}.pt"), weights_only=True)
    dims = ParallelDims(
        world_size=dist.get_world_size(),
        dp_replicate=case.dp_replicate,
        dp_shard=case.dp_shard,
        tp=case.tp,
        pp=case.pp,
        ep=case.ep,
    )
    losses, norms, grads = _run(case, dims)
    torch.set_num_threads(1)
    worst = [0.0] * len(grads)
    worst_name = [""] * len(grads)
    checked = 0
    for step, (step_grads, step_ref) in enumerate(zip(grads, ref_grads, strict=True)):
        for name, g in step_grads.items():
            ref = step_ref[name]
            diff = float((g - ref).abs().max() / (ref.abs().max() + 1e-12))
            checked += 1
            if diff > worst[step]:
                worst[step], worst_name[step] = diff, name
    return {
        "rank": rank,
        "losses": losses,
        "ref_losses": ref_losses,
        "norms": norms,
        "ref_norms": ref_norms,
        "grads_checked": checked,
        "grad_names": sorted(grads[0]),
        "worst_grad_rel_diff": worst,
        "worst_grad": worst_name,
    }


def worker(rank: int, world: int, init_file: str, cases: list[Case], ref_dir: str, out_dir: str) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    results: dict[str, Any] = {}
    try:
        for case in cases:
            try:
                results[case.name] = compare_case(case, rank, ref_dir)
            except Exception:
                results[case.name] = {"error": traceback.format_exc()}
                raise
            dist.barrier()
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()
