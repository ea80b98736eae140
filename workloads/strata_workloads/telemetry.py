"""Progress and metrics: a tqdm bar locally, JSON log lines in pods, Prometheus metrics for scraping."""

from __future__ import annotations

import logging
import resource
import sys
import time
from typing import Any

import orjson
import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from tqdm import tqdm

_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields become keys."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update({k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS})
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


def setup_logging(fmt: str, rank: int) -> bool:
    """Returns True when a progress bar should be shown (TTY, rank 0)."""
    use_tty = fmt == "tty" or (fmt == "auto" and sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s") if use_tty else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    return use_tty and rank == 0


class TrainMetrics:
    """What a training process exports for scraping. Counts are counters (``rate()`` of them: steps/s, tokens/s,
    model FLOP/s); the loss, the gradient norm, the learning rate, the peak memory and the validation loss are gauges
    of the last value, and ``strata_train_step`` is the optimizer step the run is at (it goes back to the checkpoint's
    step after a restart: a position, not a count). MFU over any window is
    ``rate(strata_train_model_flops_total[5m]) / strata_train_device_peak_flops`` (no precomputed rates)."""

    def __init__(self, port: int) -> None:
        self.registry = CollectorRegistry()
        self.loss = Gauge("strata_train_loss", "Mean loss of the last optimizer step", registry=self.registry)
        self.grad_norm = Gauge("strata_train_grad_norm", "Global gradient norm before clipping", registry=self.registry)
        self.learning_rate = Gauge(
            "strata_train_learning_rate", "Learning rate of the last optimizer step", registry=self.registry
        )
        self.step = Gauge("strata_train_step", "Optimizer step the run is at", registry=self.registry)
        self.steps = Counter(
            "strata_train_steps_total", "Optimizer steps this process completed", registry=self.registry
        )
        self.tokens = Counter(
            "strata_train_tokens_total",
            "Tokens trained on by this process's steps, all ranks together",
            registry=self.registry,
        )
        self.model_flops = Counter(
            "strata_train_model_flops_total",
            "Model FLOPs of this process's steps, all ranks together (PaLM's 6N + 12LHQT per token)",
            registry=self.registry,
        )
        self.device_peak_flops = Gauge(
            "strata_train_device_peak_flops",
            "Peak dense FLOP/s of all the run's devices at its precision (datasheet; measured on CPU): MFU's "
            "denominator; 0 for a GPU without a known peak",
            registry=self.registry,
        )
        self.peak_memory = Gauge(
            "strata_train_peak_memory_bytes",
            "Peak memory of this process: GPU memory allocated by PyTorch, or resident set size on CPU",
            registry=self.registry,
        )
        self.validation_loss = Gauge(
            "strata_train_validation_loss",
            "Mean loss on the held-out split at the last evaluation",
            registry=self.registry,
        )
        self.step_duration = Histogram(
            "strata_train_step_duration_seconds",
            "Wall time of one optimizer step",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.checkpoints = Counter("strata_train_checkpoints_total", "Checkpoints saved", registry=self.registry)
        if port:
            start_http_server(port, registry=self.registry)

    def record_step(
        self,
        step: int,
        loss: float,
        grad_norm: float,
        tokens: int,
        seconds: float,
        *,
        lr: float = 0.0,
        model_flops: float = 0.0,
        peak_memory_bytes: int = 0,
    ) -> None:
        """One optimizer step done: ``step`` is the run's step count after it, ``tokens`` what it trained on and
        ``model_flops`` what that cost."""
        self.loss.set(loss)
        self.grad_norm.set(grad_norm)
        self.learning_rate.set(lr)
        self.step.set(step)
        self.steps.inc()
        self.tokens.inc(tokens)
        self.model_flops.inc(model_flops)
        self.peak_memory.set(peak_memory_bytes)
        self.step_duration.observe(seconds)


def peak_memory_bytes(device: torch.device) -> int:
    """The most memory this process has held: PyTorch's peak allocation on a GPU (what decides an out-of-memory
    error), the peak resident set size on a CPU (Linux reports it in KiB)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class StepLogger:
    """One report per optimizer step: a tqdm bar on rank 0 of a TTY, otherwise a JSON `step` log line."""

    def __init__(self, total: int, initial: int, bar: bool) -> None:
        self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True) if bar else None
        self._last = time.monotonic()

    def update(self, **fields: float) -> None:
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in fields.items()}, refresh=False)
            self._bar.update(1)
        else:
            logging.getLogger("strata_workloads.train").info("step", extra=fields)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
