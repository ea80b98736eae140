"""Progress and metrics: a tqdm bar locally, JSON log lines in pods, Prometheus metrics for scraping."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson
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
    """What a training process exports for scraping. Counts are counters (``rate()`` of them: steps/s, tokens/s);
    the loss and the gradient norm are gauges of the last step, and ``strata_train_step`` is the optimizer step the
    run is at (it goes back to the checkpoint's step after a restart: a position, not a count)."""

    def __init__(self, port: int) -> None:
        self.registry = CollectorRegistry()
        self.loss = Gauge("strata_train_loss", "Mean loss of the last optimizer step", registry=self.registry)
        self.grad_norm = Gauge("strata_train_grad_norm", "Global gradient norm before clipping", registry=self.registry)
        self.step = Gauge("strata_train_step", "Optimizer step the run is at", registry=self.registry)
        self.steps = Counter(
            "strata_train_steps_total", "Optimizer steps this process completed", registry=self.registry
        )
        self.tokens = Counter(
            "strata_train_tokens_total",
            "Tokens trained on by this process's steps, all ranks together",
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

    def record_step(self, step: int, loss: float, grad_norm: float, tokens: int, seconds: float) -> None:
        """One optimizer step done: ``step`` is the run's step count after it, ``tokens`` what it trained on."""
        self.loss.set(loss)
        self.grad_norm.set(grad_norm)
        self.step.set(step)
        self.steps.inc()
        self.tokens.inc(tokens)
        self.step_duration.observe(seconds)


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
