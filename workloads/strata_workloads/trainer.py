"""The training loop as a small object: set up once, then step, checkpoint, and stop cleanly on SIGTERM.

`TrainingPlan.of` validates what the settings ask for before anything is built (an error there is exit code 2);
`Trainer` builds the parallel model, optimizer, data and checkpoints for this process, resumes from the newest
complete checkpoint, and `fit` trains to `steps`, returning the exit code the operator acts on.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType

import torch
import torch.distributed as dist

from strata_api.workload import ExitCode, WorkerEnv
from strata_workloads import progress
from strata_workloads.checkpoint import Checkpointer
from strata_workloads.data import PackedLoader, open_training_data
from strata_workloads.engine import build_engine
from strata_workloads.flops import device_peak, flops_per_token, mfu
from strata_workloads.hf_checkpoint import check_hf_model_dir, initial_model
from strata_workloads.layout import ParallelDims
from strata_workloads.optim import OptimConfig, StepResult, build_optimizer, train_step
from strata_workloads.parallelize import ActivationCheckpointing, ParallelizeOptions
from strata_workloads.pipeline import get_schedule_spec
from strata_workloads.presets import ModelConfig, get_preset
from strata_workloads.settings import TrainSettings
from strata_workloads.telemetry import StepLogger, TrainMetrics, peak_memory_bytes
from strata_workloads.tokenizer import Tokenizer, check_fits, load_tokenizer, resolve_tokenizer_path
from strata_workloads.train_state import gather_train_state, restore_train_state

log = logging.getLogger("strata_workloads.train")

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Process:
    """This process's place in the job, from torch's rendezvous variables (docs/workloads.md)."""

    world: int
    rank: int
    local_rank: int
    device: torch.device
    distributed: bool  # MASTER_ADDR set: one rank of a process group; otherwise a single process

    @classmethod
    def join(cls, env: Mapping[str, str]) -> Process:
        """NCCL on NVIDIA and ROCm (RCCL behind the same `cuda` device and `nccl` backend), gloo on CPU."""
        local_rank = int(env.get("LOCAL_RANK", "0"))
        device, backend = torch.device("cpu"), "gloo"
        if torch.cuda.is_available():
            device, backend = torch.device("cuda", local_rank), "nccl"
            torch.cuda.set_device(device)
        distributed = WorkerEnv.MASTER_ADDR in env
        if distributed:
            dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        world, rank = int(env.get(WorkerEnv.WORLD_SIZE, "1")), int(env.get(WorkerEnv.RANK, "0"))
        return cls(world, rank, local_rank, device, distributed)

    @staticmethod
    def leave() -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


@dataclass(frozen=True)
class TrainingPlan:
    """What the settings ask for, validated up front: the layout, the model, and how a step is run."""

    dims: ParallelDims
    model: ModelConfig
    grad_accum: int  # micro-batches per optimizer step on each data-parallel rank
    autocast: torch.dtype | None
    options: ParallelizeOptions
    optim: OptimConfig
    tokenizer: Tokenizer  # the data's ids; its vocabulary fits the model's

    @classmethod
    def of(cls, settings: TrainSettings, world: int) -> TrainingPlan:
        """Raises ValueError or KeyError naming the setting at fault (exit code 2: retrying cannot help)."""
        s = settings
        dp_shard = s.dp_shard or max(1, world // (s.dp_replicate * s.tp * s.pp))
        dims = ParallelDims(world, s.dp_replicate, dp_shard, s.tp, s.pp, s.ep)
        model = model_config(s)
        tokenizer = load_tokenizer(resolve_tokenizer_path(s.tokenizer, s.model_dir))
        check_fits(tokenizer, model.vocab_size)
        stages_per_rank = get_schedule_spec(s.pp_schedule).stages_per_rank if dims.pp > 1 else 1
        dims.validate_for_model(model.n_layers, model.n_heads, model.n_experts, stages_per_rank, model.n_kv_heads)
        grad_accum = dims.validate_batch(s.global_batch, s.micro_batch, s.pp_microbatches)
        autocast = AUTOCAST[s.precision]
        options = ParallelizeOptions(activation_checkpointing=ActivationCheckpointing(s.ac), compile=s.compile)
        optim = OptimConfig(
            lr=s.lr,
            weight_decay=s.weight_decay,
            warmup_steps=s.warmup_steps,
            total_steps=s.steps,
            min_lr_ratio=s.min_lr_ratio,
            max_grad_norm=s.max_grad_norm,
        )
        return cls(dims, model, grad_accum, autocast, options, optim, tokenizer)


def model_config(s: TrainSettings) -> ModelConfig:
    """The model_dir's shape (a Hugging Face directory) when given, else the preset's; long enough for seq_len."""
    if s.model_dir:
        model, _ = check_hf_model_dir(s.model_dir)  # tensors checked now: a bad directory exits 2
        if s.seq_len > model.max_seq_len:
            raise ValueError(f"seq_len={s.seq_len} exceeds {s.model_dir}'s max_position_embeddings={model.max_seq_len}")
        return model
    seq_len = max(s.seq_len, get_preset(s.model).max_seq_len)
    return get_preset(s.model, max_seq_len=seq_len, moe_aux_loss_coef=s.moe_aux_loss_coef)


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


class Trainer:
    """One process's share of a training run."""

    def __init__(self, settings: TrainSettings, plan: TrainingPlan, process: Process, show_bar: bool) -> None:
        """Set up: mesh, parallel model (same seed on every rank), optimizer, loss scaling, data, checkpoints;
        then resume from the newest complete checkpoint."""
        self.settings, self.plan, self.process = settings, plan, process
        mesh = plan.dims.build_mesh(process.device.type) if process.distributed else None
        torch.manual_seed(settings.seed)
        self.engine = build_engine(
            initial_model(plan.model, settings.model_dir),  # a model_dir's weights are step 0 (fine-tuning)
            plan.dims,
            mesh,
            plan.options,
            process.device,
            settings.pp_schedule,
            settings.pp_microbatches,
            plan.grad_accum,
        )
        self.optimizer, self.scheduler = build_optimizer(self.engine, plan.optim)
        self.scaler = self._grad_scaler()
        self.data = open_training_data(settings, plan.tokenizer, plan.model.vocab_size)
        dp_rank = mesh["dp"].get_local_rank() if mesh is not None else 0
        self.loader = PackedLoader(
            self.data.train, dp_rank, plan.dims.dp, settings.micro_batch, settings.global_batch, settings.seed
        )
        self.validation = self.data.validation_loader(settings, dp_rank, plan.dims.dp)
        self.checkpointer = (
            Checkpointer(settings.checkpoint_path, settings.checkpoint_keep, settings.checkpoint_async)
            if settings.checkpoint_path is not None
            else None
        )
        self.start = self.resume()
        self.metrics = TrainMetrics(settings.metrics_port if process.local_rank == 0 else 0)
        self.flops_per_token = flops_per_token(plan.model, settings.seq_len)
        self.peak = device_peak(process.device, settings.precision)
        if self.peak is not None:
            self.metrics.device_peak_flops.set(self.peak.flops_per_second * process.world)
        log.info(
            "model FLOPs per token and the device's peak (no MFU without one)",
            extra={
                "flops_per_token": self.flops_per_token,
                "device": self.peak.device if self.peak else torch.cuda.get_device_name(process.device),
                "peak_flops": self.peak.flops_per_second if self.peak else None,
                "peak_measured": self.peak.measured if self.peak else None,
            },
        )
        self.stop = Stop()
        self.step_log = StepLogger(settings.steps, self.start, show_bar)
        self.last_save = time.monotonic()
        self.nonfinite_in_a_row = 0

    def _grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 only: dynamic loss scaling (sharded across ranks when distributed)."""
        if self.settings.precision != "fp16":
            return None
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        device = self.process.device.type
        scaler = ShardedGradScaler(device) if self.process.distributed else torch.amp.GradScaler(device)
        self.engine.loss_scale = scaler.scale
        return scaler

    def resume(self) -> int:
        """Load the newest complete checkpoint that verifies (resharded to this layout), falling back to older
        ones; the step to continue from. Raises NoUsableCheckpoint when none loads."""
        if self.checkpointer is None:
            return 0
        fresh = gather_train_state(0, self.loader, self.process.world)
        loaded = self.checkpointer.load_newest(self.engine.parts, self.optimizer, self.scheduler, fresh)
        if loaded is None:
            return 0
        found, saved = loaded
        restore_train_state(saved, fresh, self.loader, self.process.rank)
        log.info("resumed", extra={"checkpoint": str(found), "step": saved.step})
        return saved.step

    def fit(self) -> int:
        """Train up to `steps`: ExitCode.SUCCEEDED (final checkpoint saved), ExitCode.CHECKPOINTED when
        SIGTERM stopped it after a complete checkpoint of the step it had reached, or
        ExitCode.DIVERGED without saving when more than `max_nonfinite_steps` steps in a row had a
        non-finite loss or grad norm (a restart would replay the same batches from the same weights)."""
        steps = self.settings.steps
        try:
            for done in range(self.start + 1, steps + 1):
                result = self.step(done)
                if self.diverged(done, result):
                    return ExitCode.DIVERGED
                if self.stop.agreed(self.process.device):
                    self.checkpoint(done, blocking=True)
                    log.warning(
                        "preempted: checkpoint saved, exiting", extra={"step": done, "exit_code": ExitCode.CHECKPOINTED}
                    )
                    return ExitCode.CHECKPOINTED
                if done < steps and not result.nonfinite and self.checkpoint_due(done):
                    self.checkpoint(done, blocking=False)
            if steps > self.start:
                self.checkpoint(steps, blocking=True)
            return ExitCode.SUCCEEDED
        finally:
            self.step_log.close()
            if self.checkpointer is not None:
                self.checkpointer.wait()

    def step(self, done: int) -> StepResult:
        """One optimizer step over `grad_accum` micro-batches; `done` is the step count it completes."""
        began = time.monotonic()
        micro = [self._next_micro_batch() for _ in range(self.plan.grad_accum)]
        result = train_step(
            self.engine,
            micro,
            self.optimizer,
            self.scheduler,
            self.settings.max_grad_norm,
            self.scaler,
            self.plan.autocast,
        )
        elapsed = time.monotonic() - began
        self._record(done, result, elapsed, self.validation_loss() if self.evaluation_due(done) else None)
        return result

    def evaluation_due(self, done: int) -> bool:
        every = self.settings.eval_every_steps
        return self.validation is not None and every > 0 and done % every == 0

    def validation_loss(self) -> float:
        """Mean loss over the first `eval_batches` global batches of held-out windows (the same windows at
        every evaluation and for every layout), forward only."""
        assert self.validation is not None
        self.validation.rewind(0)
        parts = self.engine.parts
        for part in parts:
            part.eval()
        total = torch.zeros((), device=self.process.device)
        count = self.settings.eval_batches * self.plan.grad_accum
        try:
            autocast = self.plan.autocast
            with torch.autocast(self.process.device.type, autocast or torch.float32, enabled=autocast is not None):
                for _ in range(count):
                    inputs, targets = self.validation.next_batch()
                    total += self.engine.evaluate(inputs.to(self.process.device), targets.to(self.process.device))
        finally:
            for part in parts:
                part.train()
        return float(self.engine.global_loss(total / count))

    def diverged(self, done: int, result: StepResult) -> bool:
        """Count a non-finite step (skipped: no weight changed); True once the budget in a row is spent."""
        if not result.nonfinite:
            self.nonfinite_in_a_row = 0
            return False
        self.nonfinite_in_a_row += 1
        budget = self.settings.max_nonfinite_steps
        details = {
            "step": done,
            "loss": result.loss,
            "grad_norm": result.grad_norm,
            "in_a_row": self.nonfinite_in_a_row,
        }
        if self.nonfinite_in_a_row <= budget:
            log.warning("non-finite loss or grad norm: step skipped", extra={**details, "budget": budget})
            return False
        log.error(
            "diverged: non-finite loss or grad norm beyond the budget, exiting without a checkpoint",
            extra={**details, "budget": budget, "exit_code": ExitCode.DIVERGED},
        )
        return True

    def _next_micro_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = self.loader.next_batch()
        return inputs.to(self.process.device), targets.to(self.process.device)

    def _record(self, done: int, result: StepResult, elapsed: float, val_loss: float | None) -> None:
        """The step's figures in the log line, the metrics and the next progress report."""
        tokens = self.settings.global_batch * self.settings.seq_len
        tokens_per_s = tokens / elapsed
        lr = float(self.scheduler.get_last_lr()[0])
        memory = peak_memory_bytes(self.process.device)
        utilisation = (
            None if self.peak is None else mfu(tokens_per_s, self.flops_per_token, self.peak, self.process.world)
        )
        self.metrics.record_step(
            done,
            result.loss,
            result.grad_norm,
            tokens,
            elapsed,
            lr=lr,
            model_flops=tokens * self.flops_per_token,
            peak_memory_bytes=memory,
        )
        optional = {"mfu": utilisation, "val_loss": val_loss}
        self.step_log.update(
            step=done,
            loss=result.loss,
            grad_norm=result.grad_norm,
            tokens_per_s=tokens_per_s,
            lr=lr,
            peak_memory_bytes=memory,
            **{key: value for key, value in optional.items() if value is not None},
        )
        if val_loss is not None:
            self.metrics.validation_loss.set(val_loss)
            progress.note_validation(val_loss)
        progress.note_step(done, result.loss, tokens_per_s, utilisation, memory)

    def checkpoint_due(self, done: int) -> bool:
        """A periodic save: every `checkpoint_every_steps` steps, or `checkpoint_every_seconds` after the last."""
        s = self.settings
        by_steps = s.checkpoint_every_steps and done % s.checkpoint_every_steps == 0
        by_time = s.checkpoint_every_seconds and time.monotonic() - self.last_save >= s.checkpoint_every_seconds
        return self.checkpointer is not None and bool(by_steps or by_time)

    def checkpoint(self, step: int, *, blocking: bool) -> None:
        """Save model, optimizer, LR schedule, data position and RNG as of `step` (no-op without a checkpoint
        dir). Blocking saves (SIGTERM, the end) wait for an in-flight async save first."""
        if self.checkpointer is None:
            return
        if blocking:
            self.checkpointer.wait()
        state = gather_train_state(step, self.loader, self.process.world)
        self.checkpointer.save(self.engine.parts, self.optimizer, self.scheduler, state, blocking=blocking)
        self.metrics.checkpoints.inc()
        self.last_save = time.monotonic()
