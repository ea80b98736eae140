"""Training settings: one object, built once from the environment the operator sets (and flags for local runs).

Every STRATA_* variable is documented in docs/workloads.md; the operator sets exactly these.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class TrainSettings:
    """Field -> env var STRATA_<FIELD upper-cased>. Units in the comments."""

    model: str = "debug"  # preset name (presets.PRESETS)
    steps: int = 100  # optimizer steps in total (a resumed run continues up to this)
    global_batch: int = 8  # sequences per optimizer step, all data-parallel ranks together
    micro_batch: int = 4  # sequences per forward/backward on one data-parallel rank
    seq_len: int = 64  # tokens per sequence
    seed: int = 0
    # Degrees. dp_shard=0 means "whatever is left": world / (dp_replicate * tp * pp).
    dp_replicate: int = 1
    dp_shard: int = 0
    tp: int = 1
    pp: int = 1
    ep: int = 1
    pp_schedule: str = "1f1b"  # gpipe | 1f1b | interleaved_1f1b | interleaved_zb | zbv
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
    checkpoint_dir: str = ""  # empty: no checkpoints
    checkpoint_every_steps: int = 50  # 0: only on SIGTERM / at the end
    checkpoint_every_seconds: float = 0.0  # 0: off; otherwise also save when this much wall time has passed
    checkpoint_keep: int = 3  # complete checkpoints kept
    checkpoint_async: bool = True
    data_dir: str = ""  # empty: the Python standard library's sources
    data_max_docs: int = 0  # 0: all documents
    data_shards: int = 64
    anomaly_contamination: float = 0.02  # share of documents IsolationForest drops; 0 disables the filter
    metrics_port: int = 0  # Prometheus exporter on LOCAL_RANK 0; 0: off
    log_format: str = "auto"  # auto (tqdm bar on a TTY, JSON lines otherwise) | json | tty

    @property
    def checkpoint_path(self) -> Path | None:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else None


def env_name(field: str) -> str:
    return f"STRATA_{field.upper()}"


def parse_value(kind: object, raw: str) -> object:
    if kind in (bool, "bool"):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if kind in (int, "int"):
        return int(raw)
    if kind in (float, "float"):
        return float(raw)
    return raw


def load_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> TrainSettings:
    """Defaults, then STRATA_* env vars, then command-line flags (--steps 10 ...)."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    parser = argparse.ArgumentParser(prog="python -m strata_workloads.train")
    for f in fields(TrainSettings):
        if env_name(f.name) in env:
            values[f.name] = parse_value(f.type, env[env_name(f.name)])
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, help=env_name(f.name))
    args = parser.parse_args(argv)
    kinds = {f.name: f.type for f in fields(TrainSettings)}
    for name, raw in vars(args).items():
        if raw is not None:
            values[name] = parse_value(kinds[name], raw)
    return TrainSettings(**values)  # type: ignore[arg-type]
