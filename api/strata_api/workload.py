"""The contract between the operator's worker pods and the bundled workload: what a pod tells its processes and
what they tell back.

The operator sets these environment variables on each worker (docs/workloads.md), the workload reads them; the
worker's exit code tells the operator what to do next; a worker reports its progress in the
:data:`strata_api.ANN_PROGRESS` annotation in the encoding of :class:`Progress`. Both sides import this module, so
a name exists once. Standard library only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from strata_api import format_time, parse_time


class WorkerEnv:
    """Names of the environment variables the operator sets on a worker and the workload reads
    (docs/workloads.md)."""

    MASTER_ADDR = "MASTER_ADDR"
    MASTER_PORT = "MASTER_PORT"
    WORLD_SIZE = "WORLD_SIZE"
    RANK = "RANK"
    """Global rank of the worker's first process; local process ``i`` has rank ``RANK + i``."""
    LOCAL_WORLD_SIZE = "LOCAL_WORLD_SIZE"
    NODE_RANK = "NODE_RANK"
    NNODES = "NNODES"
    DP_REPLICATE = "STRATA_DP_REPLICATE"
    DP_SHARD = "STRATA_DP_SHARD"
    """The job's data degree runs as FSDP (sharded data parallel); replication stays 1."""
    TENSOR = "STRATA_TP"
    PIPELINE = "STRATA_PP"
    EXPERT = "STRATA_EP"
    PP_MICROBATCHES = "STRATA_PP_MICROBATCHES"
    PIPELINE_SCHEDULE = "STRATA_PP_SCHEDULE"
    MODEL = "STRATA_MODEL"
    MODEL_DIR = "STRATA_MODEL_DIR"
    """Set only when spec.workload.modelDir is: a Hugging Face directory whose weights start the run."""
    TOKENIZER = "STRATA_TOKENIZER"
    """Set only when spec.workload.tokenizer is."""
    DATA_DIR = "STRATA_DATA_DIR"
    """Set only when spec.workload.dataDir is: a prepared folder or a jsonl/parquet dataset to train on."""
    GLOBAL_BATCH = "STRATA_GLOBAL_BATCH"
    MICRO_BATCH = "STRATA_MICRO_BATCH"
    STEPS = "STRATA_STEPS"
    PRECISION = "STRATA_PRECISION"
    ACTIVATION_CHECKPOINTING = "STRATA_AC"
    MAX_GRAD_NORM = "STRATA_MAX_GRAD_NORM"
    LEARNING_RATE = "STRATA_LR"
    CHECKPOINT_DIR = "STRATA_CHECKPOINT_DIR"
    CHECKPOINT_EVERY_SECONDS = "STRATA_CHECKPOINT_EVERY_SECONDS"
    CHECKPOINT_EVERY_STEPS = "STRATA_CHECKPOINT_EVERY_STEPS"
    CHECKPOINT_KEEP = "STRATA_CHECKPOINT_KEEP"
    METRICS_PORT = "STRATA_METRICS_PORT"
    LOG_FORMAT = "STRATA_LOG_FORMAT"
    JOB = "STRATA_JOB"
    """Operator-only (for logs): the workload ignores it."""
    ATTEMPT = "STRATA_ATTEMPT"
    """Operator-only (for logs): the workload ignores it."""
    PROGRESS_ANNOTATION = "STRATA_PROGRESS_ANNOTATION"
    """The annotation the workload writes its progress into on its own pod (:data:`strata_api.ANN_PROGRESS`)."""
    POD_NAME = "POD_NAME"
    """The pod's own name and namespace (downward API): the pod the workload reports progress on."""
    POD_NAMESPACE = "POD_NAMESPACE"
    OMP_NUM_THREADS = "OMP_NUM_THREADS"
    """Set on a CPU worker only: the whole cores of its ``cpuPerWorker`` (at least 1), read by PyTorch at start.
    Without it PyTorch sizes its thread pool by the host's cores, not the pod's CPU limit, and the CFS quota then
    throttles the oversubscribed pool (docs/benchmarks.md, "CPU TrainingJob")."""


DOWNWARD_ENV = ((WorkerEnv.POD_NAME, "metadata.name"), (WorkerEnv.POD_NAMESPACE, "metadata.namespace"))


PIPELINE_SCHEDULES = {
    "GPipe": "gpipe",
    "1F1B": "1f1b",
    "Interleaved1F1B": "interleaved_1f1b",
    "InterleavedZeroBubble": "interleaved_zb",
    "ZeroBubbleV": "zbv",
}
"""The API's pipeline schedule names (``spec.parallelism.pipelineSchedule``) and the workload's
(``STRATA_PP_SCHEDULE``)."""


class ExitCode:
    """What a worker pod's exit code means (docs/workloads.md, "Exit codes"; the launcher combines its processes')."""

    SUCCEEDED = 0
    ERROR = 1
    INVALID_CONFIGURATION = 2
    NO_USABLE_CHECKPOINT = 3
    """Checkpoints exist but none passes its checksums and loads: a restart would read the same bytes."""
    DIVERGED = 4
    """The loss or the gradient norm was not finite for more steps in a row than the budget: a restart would replay
    the same batches from the same weights."""
    CHECKPOINTED = 85
    """SIGTERM received and a complete checkpoint saved: reschedule, it resumes from there."""
    PERMANENT = frozenset({INVALID_CONFIGURATION, NO_USABLE_CHECKPOINT, DIVERGED})
    """The failures a retry cannot mend: the job fails, with the kind in its status."""


@dataclass(frozen=True, slots=True)
class Progress:
    """What a worker reports about itself in :data:`strata_api.ANN_PROGRESS`: the step it reached, its last
    committed checkpoint, and the figures a user watches (docs/workloads.md, "What a run reports")."""

    step: int | None = None
    checkpoint_step: int | None = None
    checkpoint_time: datetime | None = None
    loss: float | None = None
    """Training loss of the global batch at ``step``."""
    tokens_per_second: float | None = None
    """Tokens trained on per second by the whole job at ``step``."""
    mfu: float | None = None
    """Model FLOPs utilisation at ``step``, from 0 to 1 (none when the device's peak is unknown)."""
    peak_memory_bytes: int | None = None
    """The most memory the worker's process has held (GPU allocations, or resident set size on CPU)."""
    validation_loss: float | None = None
    """Loss on the held-out split at the last evaluation."""

    def encode(self) -> str:
        """The annotation's value, as :meth:`parse` reads it (the time in whole seconds, UTC; JSON has no NaN or
        infinity, so a figure that is not finite is left out)."""
        data: dict[str, object] = {"step": self.step, "checkpointStep": self.checkpoint_step}
        figures = {
            "loss": self.loss,
            "tokensPerSecond": self.tokens_per_second,
            "mfu": self.mfu,
            "peakMemoryBytes": self.peak_memory_bytes,
            "validationLoss": self.validation_loss,
        }
        data.update({key: value for key, value in figures.items() if value is not None and math.isfinite(value)})
        if self.checkpoint_time is not None:
            data["checkpointTime"] = format_time(self.checkpoint_time.astimezone(UTC))
        return json.dumps(data)

    @classmethod
    def parse(cls, value: str | None) -> Progress:
        """Read ``strata.dev/progress``; malformed values (and steps outside int64) report nothing rather than break
        the reconcile, and each figure out of its range is left out on its own."""
        try:
            data = json.loads(value) if value else {}
        except (ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
            return cls()
        if not isinstance(data, dict):
            return cls()
        return cls(
            step=_whole_number(data.get("step")),
            checkpoint_step=_whole_number(data.get("checkpointStep")),
            checkpoint_time=parse_time(data.get("checkpointTime")),
            loss=_finite(data.get("loss")),
            tokens_per_second=_at_least_zero(_finite(data.get("tokensPerSecond"))),
            mfu=_ratio(_finite(data.get("mfu"))),
            peak_memory_bytes=_whole_number(data.get("peakMemoryBytes")),
            validation_loss=_finite(data.get("validationLoss")),
        )


MAX_STEP = 2**63 - 1
"""The largest step a worker may report: status.progress.step and status.lastCheckpoint.step are int64, and the
operator's JSON encoder (orjson) refuses integers past 64 bits."""


def _whole_number(value: object) -> int | None:
    """A reported step or byte count: a whole number from 0 to :data:`MAX_STEP`; anything else (a bool, a float, a
    string, a number past int64 from a buggy or hostile worker) reports nothing rather than break the operator."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STEP:
        return None
    return value


def _finite(value: object) -> float | None:
    """A reported loss, rate or ratio: a finite number (JSON has no NaN or infinity, and status must stay valid
    JSON); anything else reports nothing."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)  # an integer past float's range raises
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _at_least_zero(value: float | None) -> float | None:
    """A rate: a negative one reports nothing."""
    return value if value is not None and value >= 0 else None


def _ratio(value: float | None) -> float | None:
    """A utilisation: outside [0, 1] it is a wrong peak or a wrong clock, and reports nothing."""
    return value if value is not None and 0 <= value <= 1 else None
