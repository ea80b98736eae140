"""The settings of each entry point: one object apiece, built once at start-up by strata_api's one loader.

Training reads ``STRATA_<FIELD>`` (the variables the operator sets on a worker, docs/workloads.md), serving
``STRATA_SERVE_<FIELD>``; ``--field-name`` flags override both for local runs. Booleans take the contract's one
set of spellings (``1/true/yes/on``, ``0/false/no/off``; ``--compile``, ``--no-compile`` or ``--compile true``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from strata_api.serving import IDLE_CONNECTION_S
from strata_api.settings import PORT, POSITIVE, SIGNED, load_settings
from strata_workloads.pressure import PSI_DIR

TRAIN_ENV_PREFIX = "STRATA_"
SERVE_ENV_PREFIX = "STRATA_SERVE_"


@dataclass(frozen=True)
class TrainSettings:
    """Field -> env var STRATA_<FIELD upper-cased>. Units in the comments."""

    model: str = "debug"  # preset name (presets.PRESETS)
    # A Hugging Face Llama/Qwen2 directory (config.json + safetensors): its shape replaces the preset and its
    # weights are step 0 (fine-tuning); empty: the preset, randomly initialised
    model_dir: str = ""
    # A tokenizer.json (or a folder holding one); empty: the model_dir's tokenizer.json if it has one, else bytes
    tokenizer: str = ""
    steps: int = 100  # optimizer steps in total (a resumed run continues up to this)
    global_batch: int = 8  # sequences per optimizer step, all data-parallel ranks together
    micro_batch: int = 4  # sequences per forward/backward on one data-parallel rank
    seq_len: int = 64  # tokens per sequence
    seed: int = field(default=0, metadata=SIGNED)
    # Degrees. dp_shard=0 means "whatever is left": world / (dp_replicate * tp * pp).
    dp_replicate: int = 1
    dp_shard: int = 0
    tp: int = 1
    pp: int = 1
    ep: int = 1
    pp_schedule: str = "1f1b"  # a workload name of strata_api.workload.PIPELINE_SCHEDULES (pipeline.SCHEDULES)
    pp_microbatches: int = 2  # pipeline micro-batches per micro_batch
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds dynamic loss scaling)
    ac: str = "none"  # activation checkpointing: none | selective | full
    compile: bool = False  # torch.compile each block
    moe_aux_loss_coef: float = 0.01  # MoE load-balancing loss weight (Switch's value); 0: off
    lr: float = 3e-4
    weight_decay: float = 0.1
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_nonfinite_steps: int = 3  # consecutive steps with a NaN/infinite loss or grad norm skipped before failing
    checkpoint_dir: str = ""  # empty: no checkpoints
    checkpoint_every_steps: int = 50  # 0: only on SIGTERM / at the end
    checkpoint_every_seconds: float = 0.0  # 0: off; otherwise also save when this much wall time has passed
    checkpoint_keep: int = 3  # complete checkpoints kept
    checkpoint_async: bool = True
    # A folder `python -m strata_workloads.prepare` wrote (header.json), or a dataset to prepare at start-up: a
    # .jsonl or .parquet file, or a folder of .txt/.jsonl/.parquet files; empty: the standard library's sources
    data_dir: str = ""
    data_text_field: str = "text"  # the JSON field or Parquet column holding each document's text
    data_max_docs: int = 0  # 0: all documents (datasets prepared at start-up only)
    data_shards: int = 64  # token shards written when preparing at start-up (the batches do not depend on it)
    data_validation_fraction: float = 0.02  # share of documents held out for validation (preparing at start-up)
    eval_every_steps: int = 50  # validation loss every this many steps; 0: never
    eval_batches: int = 4  # global batches of held-out windows each validation loss averages over
    anomaly_contamination: float = 0.02  # share of documents IsolationForest drops; 0 disables the filter
    metrics_port: int = field(default=0, metadata=PORT)  # Prometheus exporter on LOCAL_RANK 0; 0: off
    log_format: str = "auto"  # auto (tqdm bar on a TTY, JSON lines otherwise) | json | tty

    @property
    def checkpoint_path(self) -> Path | None:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else None


@dataclass(frozen=True)
class ServeSettings:
    """Field -> env var STRATA_SERVE_<FIELD upper-cased>."""

    model: str = "debug"  # preset the checkpoint was trained with
    # A Hugging Face Llama/Qwen2 directory: its shape replaces the preset, and its weights are served when no
    # checkpoint is given (a checkpoint fine-tuned from it is served on its shape otherwise)
    model_dir: str = ""
    tokenizer: str = ""  # a tokenizer.json or a folder holding one; empty: the model_dir's if present, else bytes
    checkpoint: str = ""  # step folder or checkpoint root (newest complete); empty: random weights (or model_dir's)
    # with a checkpoint root: the step to serve (the operator's: the one the replicas' revision names), else the
    # newest complete one; a step that is not there or does not load: the newest that does, with a warning
    step: int | None = None
    model_name: str = ""  # the name /v1/models lists and completions answer to; empty: the checkpoint, else the preset
    quantization: str = "none"  # none | int8-weight | int8-dynamic (torchao)
    # fp32 | bf16: dtype of weights and activations; int8-weight is fast on CPU only with bf16 and compile
    precision: str = "fp32"
    compile: bool = False  # torch.compile the linears (dynamic shapes) during warm-up, before /readyz is 200
    # requests of full length the server serves itself after warm-up, before /readyz is 200 (max_batch at a time)
    warmup_requests: int = 0
    host: str = "0.0.0.0"  # listen address
    port: int = field(default=8000, metadata=PORT)  # listen port
    max_batch: int = 8  # requests decoding together (continuous batching) / texts per scoring call
    max_wait_ms: float = 5.0  # scoring, and generation when static: how long a batch's first request waits for company
    batching: str = "continuous"  # generation: continuous | static (continuous.py)
    max_queue: int = 64  # waiting requests beyond which new ones get 429
    max_new_tokens: int = 64  # upper bound a request may ask for
    max_prompt_bytes: int = 4096  # longest prompt accepted
    # /v1/predict on a text longer than the model's max_seq_len: tokens each sliding window advances, in
    # [1, max_seq_len]; unset: half the window (inference.scoring_stride says why)
    predict_stride: int | None = None
    drain_seconds: float = 25.0  # SIGTERM: how long in-flight requests may take (below the pod's grace period)
    body_timeout_s: float = field(
        default=30.0, metadata=POSITIVE
    )  # a request's body must arrive whole within this, else 408 (no trickled bodies)
    # a connection without a whole request head (idle, or a head that never ends) is closed after this
    idle_timeout_s: float = field(default=IDLE_CONNECTION_S, metadata=POSITIVE)
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    # the node's pressure stall information (PSI), reported on /metrics for the routers; empty: report none
    node_pressure_dir: str = PSI_DIR

    @property
    def served_model(self) -> str:
        """The model's name to OpenAI clients (their requests' `model`)."""
        return self.model_name or self.checkpoint or self.model


def load_train_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> TrainSettings:
    """Defaults, then STRATA_* env vars, then command-line flags (--steps 10 ...)."""
    return load_settings(
        TrainSettings, env_prefix=TRAIN_ENV_PREFIX, argv=argv, env=env, prog="python -m strata_workloads.train"
    )


def load_serve_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServeSettings:
    """Defaults, then STRATA_SERVE_* env vars, then command-line flags (--port 8080 ...)."""
    return load_settings(
        ServeSettings, env_prefix=SERVE_ENV_PREFIX, argv=argv, env=env, prog="python -m strata_workloads.serve"
    )
