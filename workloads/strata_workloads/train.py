"""Training entry point: `python -m strata_workloads.train` (alone, under torchrun, or in operator pods).

Reads the layout and hyper-parameters from STRATA_* variables (settings.py) and the rendezvous from torch's
own variables (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

import torch
import torch.distributed as dist

from strata_api.workload import ExitCode
from strata_workloads.checkpoint import Checkpointer, TrainState, latest
from strata_workloads.data import ShardedLoader, build_shards, filter_anomalies, load_documents, stdlib_root
from strata_workloads.engine import Engine, build_engine
from strata_workloads.layout import ParallelDims
from strata_workloads.model import Transformer
from strata_workloads.optim import OptimConfig, build_optimizer, train_step
from strata_workloads.parallelize import ActivationCheckpointing, ParallelizeOptions
from strata_workloads.pipeline import get_schedule_spec
from strata_workloads.presets import get_preset
from strata_workloads.settings import TrainSettings, load_settings
from strata_workloads.telemetry import Progress, TrainMetrics, setup_logging

log = logging.getLogger("strata_workloads.train")

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_and_backend(env: Mapping[str, str]) -> tuple[torch.device, str]:
    """NCCL on NVIDIA and ROCm (RCCL behind the same `cuda` device and `nccl` backend), gloo on CPU."""
    if torch.cuda.is_available():
        device = torch.device("cuda", int(env.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device, "nccl"
    return torch.device("cpu"), "gloo"


def layout_from(settings: TrainSettings, world: int) -> ParallelDims:
    dp_shard = settings.dp_shard or max(1, world // (settings.dp_replicate * settings.tp * settings.pp))
    return ParallelDims(world, settings.dp_replicate, dp_shard, settings.tp, settings.pp, settings.ep)


class Stop:
    """SIGTERM (spot reclaim, suspend, eviction) only sets a flag; the loop saves at a step boundary."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def agreed(self, device: torch.device) -> bool:
        """True on every rank if any rank was signalled (pods are not signalled at the same instant)."""
        flag = torch.tensor(1.0 if self.requested else 0.0, device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def make_loader(settings: TrainSettings, dims: ParallelDims, dp_rank: int) -> ShardedLoader:
    root = Path(settings.data_dir) if settings.data_dir else stdlib_root()
    docs = load_documents(root, settings.data_max_docs or None)
    docs = filter_anomalies(docs, settings.anomaly_contamination, seed=settings.seed)
    shards = build_shards(docs, settings.data_shards)
    return ShardedLoader(shards, dp_rank, dims.dp, settings.micro_batch, settings.seq_len)


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
    cursors = torch.zeros(world, dtype=torch.int64)
    for rank, state in enumerate(gathered):
        for shard, offset in state["offsets"].items():  # type: ignore[attr-defined]
            offsets[int(shard)] = int(offset)
        cursors[rank] = int(state["cursor"])  # type: ignore[call-overload]
    return TrainState(step=step, data={"offsets": offsets, "cursors": cursors}, rng=rng)


def restore_train_state(saved: TrainState, fresh: TrainState, loader: ShardedLoader, rank: int) -> None:
    offsets = saved.data.get("offsets", fresh.data["offsets"])
    cursors = saved.data.get("cursors", fresh.data["cursors"])
    loader.load_state_dict({s: int(o) for s, o in enumerate(offsets.tolist())}, int(cursors[rank]))
    if saved.rng is not fresh.rng:
        torch.set_rng_state(saved.rng[rank])


def run(settings: TrainSettings, env: Mapping[str, str]) -> int:
    world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
    device, backend = device_and_backend(env)
    distributed = "MASTER_ADDR" in env
    if distributed:
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    bar = setup_logging(settings.log_format, rank)
    try:
        dims = layout_from(settings, world)
        config = get_preset(
            settings.model,
            max_seq_len=max(settings.seq_len, get_preset(settings.model).max_seq_len),
            moe_aux_loss_coef=settings.moe_aux_loss_coef,
        )
        spec = get_schedule_spec(settings.pp_schedule) if dims.pp > 1 else None
        dims.validate_for_model(config.n_layers, config.n_heads, config.n_experts, spec.stages_per_rank if spec else 1)
        accum = dims.validate_batch(settings.global_batch, settings.micro_batch, settings.pp_microbatches)
        autocast = AUTOCAST[settings.precision]
        ac = ActivationCheckpointing(settings.ac)
    except (ValueError, KeyError) as err:
        log.error("invalid configuration", extra={"error": str(err)})
        if dist.is_initialized():
            dist.destroy_process_group()
        return ExitCode.INVALID_CONFIGURATION
    mesh = dims.build_mesh(device.type) if distributed else None
    torch.manual_seed(settings.seed)
    options = ParallelizeOptions(activation_checkpointing=ac, compile=settings.compile)
    engine = build_engine(
        Transformer(config), dims, mesh, options, device, settings.pp_schedule, settings.pp_microbatches, accum
    )
    optim_config = OptimConfig(
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_steps,
        total_steps=settings.steps,
        min_lr_ratio=settings.min_lr_ratio,
        max_grad_norm=settings.max_grad_norm,
    )
    optimizer, scheduler = build_optimizer(engine, optim_config)
    scaler = None
    if settings.precision == "fp16":
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        scaler = ShardedGradScaler(device.type) if distributed else torch.amp.GradScaler(device.type)
        engine.loss_scale = scaler.scale
    dp_rank = mesh["dp"].get_local_rank() if mesh is not None else 0
    loader = make_loader(settings, dims, dp_rank)
    checkpointer = None
    start = 0
    if settings.checkpoint_path is not None:
        checkpointer = Checkpointer(settings.checkpoint_path, settings.checkpoint_keep, settings.checkpoint_async)
        found = latest(settings.checkpoint_path)
        if found is not None:
            fresh = gather_train_state(0, loader, settings.data_shards, world)
            saved = checkpointer.load(found, engine.parts, optimizer, scheduler, fresh)
            restore_train_state(saved, fresh, loader, rank)
            start = saved.step
            log.info("resumed", extra={"checkpoint": str(found), "step": start})
    metrics = TrainMetrics(settings.metrics_port if int(env.get("LOCAL_RANK", "0")) == 0 else 0)
    stop = Stop()
    progress = Progress(settings.steps, start, bar)
    tokens_per_step = settings.global_batch * settings.seq_len
    last_save = time.monotonic()
    try:
        for step in range(start, settings.steps):
            began = time.monotonic()
            micro = [_to(loader.next_batch(), device) for _ in range(accum)]
            result = train_step(
                engine,
                micro,
                optimizer,
                scheduler,
                settings.max_grad_norm,
                scaler,
                autocast,
            )
            elapsed = time.monotonic() - began
            done = step + 1
            metrics.loss.set(result.loss)
            metrics.step_seconds.set(elapsed)
            metrics.tokens_per_second.set(tokens_per_step / elapsed)
            metrics.grad_norm.set(result.grad_norm)
            metrics.step.set(done)
            progress.update(
                step=done,
                loss=result.loss,
                grad_norm=result.grad_norm,
                tokens_per_s=tokens_per_step / elapsed,
                lr=float(scheduler.get_last_lr()[0]),
            )
            if stop.agreed(device):
                if checkpointer is not None:
                    checkpointer.wait()
                    _save(checkpointer, engine, optimizer, scheduler, loader, settings, world, done, metrics, True)
                log.warning(
                    "preempted: checkpoint saved, exiting", extra={"step": done, "exit_code": ExitCode.CHECKPOINTED}
                )
                return ExitCode.CHECKPOINTED
            due = settings.checkpoint_every_steps and done % settings.checkpoint_every_steps == 0
            timed = (
                settings.checkpoint_every_seconds and time.monotonic() - last_save >= settings.checkpoint_every_seconds
            )
            if checkpointer is not None and done < settings.steps and (due or timed):
                _save(checkpointer, engine, optimizer, scheduler, loader, settings, world, done, metrics, False)
                last_save = time.monotonic()
        if checkpointer is not None and settings.steps > start:
            checkpointer.wait()
            _save(checkpointer, engine, optimizer, scheduler, loader, settings, world, settings.steps, metrics, True)
        return ExitCode.SUCCEEDED
    finally:
        progress.close()
        if checkpointer is not None:
            checkpointer.wait()
        if dist.is_initialized():
            dist.destroy_process_group()


def _save(
    checkpointer: Checkpointer,
    engine: Engine,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: ShardedLoader,
    settings: TrainSettings,
    world: int,
    step: int,
    metrics: TrainMetrics,
    blocking: bool,
) -> None:
    state = gather_train_state(step, loader, settings.data_shards, world)
    checkpointer.save(engine.parts, optimizer, scheduler, state, blocking=blocking)
    metrics.checkpoints.inc()


def _to(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return batch[0].to(device), batch[1].to(device)


def main(argv: Sequence[str] | None = None) -> int:
    return run(load_settings(argv), os.environ)


if __name__ == "__main__":
    sys.exit(main())
