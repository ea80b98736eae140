"""Data preparation entry point: `python -m strata_workloads.prepare --source DATA --out FOLDER`.

Tokenizes a dataset once (a .jsonl or .parquet file, or a folder of .txt/.jsonl/.parquet files) into
memory-mapped token shards with a held-out validation split (data.prepare_dataset, shards.py); training reads
the folder with `STRATA_DATA_DIR=FOLDER`. Exit codes are the training contract's: 0 done, 2 a dataset or setting
that cannot work (the message names the file, line or row, and field).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from strata_api.settings import SIGNED, load_settings
from strata_api.workload import ExitCode
from strata_workloads.data import prepare_dataset
from strata_workloads.datasets import DEFAULT_TEXT_FIELD, read_documents
from strata_workloads.telemetry import setup_logging
from strata_workloads.tokenizer import load_tokenizer

log = logging.getLogger("strata_workloads.prepare")


@dataclass(frozen=True)
class PrepareSettings:
    """Field -> env var STRATA_PREPARE_<FIELD upper-cased>, or --field-name."""

    source: str = ""  # the dataset: a .jsonl or .parquet file, or a folder of .txt/.jsonl/.parquet files
    out: str = ""  # the folder to write (header.json last: a folder without it is incomplete)
    tokenizer: str = ""  # a tokenizer.json, or a folder holding one; empty: UTF-8 bytes (the presets' vocabulary)
    text_field: str = DEFAULT_TEXT_FIELD  # JSON field or Parquet column holding each document's text
    shards: int = 8  # training token files (the batches do not depend on it)
    validation_fraction: float = 0.02  # share of documents held out for validation loss
    seed: int = field(default=0, metadata=SIGNED)  # which documents are held out, and the anomaly filter's seed
    anomaly_contamination: float = 0.0  # share of documents IsolationForest drops; 0: keep every document
    max_docs: int = 0  # 0: every document
    log_format: str = "json"  # json | tty


def run(settings: PrepareSettings) -> int:
    setup_logging(settings.log_format, 0)
    if not settings.source or not settings.out:
        log.error("invalid configuration", extra={"error": "--source and --out are required"})
        return ExitCode.INVALID_CONFIGURATION
    source = Path(settings.source)
    try:
        header = prepare_dataset(
            lambda: read_documents(source, settings.text_field),
            Path(settings.out),
            load_tokenizer(settings.tokenizer or None),
            n_shards=settings.shards,
            validation_fraction=settings.validation_fraction,
            seed=settings.seed,
            contamination=settings.anomaly_contamination,
            max_docs=settings.max_docs,
            source=str(source),
        )
    except ValueError as err:  # DatasetError, and a tokenizer that cannot be loaded
        log.error("invalid dataset", extra={"error": str(err)})
        return ExitCode.INVALID_CONFIGURATION
    splits = header["splits"]
    log.info(
        "prepared",
        extra={
            "out": settings.out,
            "dtype": header["dtype"],
            **{f"{name}_{count}": splits[name][count] for name in splits for count in ("documents", "tokens")},
        },
    )
    return ExitCode.SUCCEEDED


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    settings = load_settings(
        PrepareSettings,
        env_prefix="STRATA_PREPARE_",
        argv=argv,
        env=os.environ if env is None else env,
        prog="python -m strata_workloads.prepare",
    )
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
