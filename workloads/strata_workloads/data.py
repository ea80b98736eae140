"""Training data: a dataset tokenized once into memory-mapped shards (`prepare_dataset`), documents packed with
EOS between them into windows of seq_len + 1 tokens (`PackedWindows`), and the one global sample order every
layout reads its batches from (`PackedLoader`).

The order is a fixed function of (seed, sample number): step s of a run with global batch B trains on samples
s*B .. s*B + B - 1, and data-parallel rank r of dp takes the r-th of dp equal slices of them, micro-batch by
micro-batch. So every rank gets an equal share whatever the shard count, and one process with gradient
accumulation, dp=2, fsdp=2 and tp=2 train on the same batches. The position is one number (samples consumed),
which any world size can resume from.

An IsolationForest filter drops anomalous documents (generated tables, binary-ish blobs) before tokenizing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sysconfig
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import IsolationForest

from strata_workloads.datasets import DatasetError, Document, read_documents
from strata_workloads.settings import TrainSettings
from strata_workloads.shards import FORMAT_VERSION, HEADER_FILE, SPLITS, PreparedDataset, ShardWriter, token_dtype
from strata_workloads.tokenizer import ByteTokenizer, Tokenizer

log = logging.getLogger(__name__)

_STDLIB_SKIPPED = ("site-packages/", "test/", "idlelib/idle_test/")


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_documents(root: Path | None = None) -> Iterator[Document]:
    """The default corpus: every *.py of the standard library except its tests and site-packages."""
    return read_documents(
        root or stdlib_root(), skip=lambda rel: not rel.endswith(".py") or rel.startswith(_STDLIB_SKIPPED)
    )


def load_documents(root: Path, max_docs: int | None = None) -> list[Document]:
    """The standard library's documents in memory (small corpora for benchmarks and tests)."""
    return list(islice(stdlib_documents(root), max_docs))


def document_features(data: bytes) -> list[float]:
    """Per-document features the anomaly filter looks at: size, line shape and character mix."""
    arr = np.frombuffer(data, dtype=np.uint8)
    lines = data.split(b"\n")
    lengths = np.array([len(line) for line in lines], dtype=np.float64)
    n = max(1, arr.size)
    return [
        float(np.log1p(arr.size)),
        float((arr >= 128).sum() / n),  # non-ASCII
        float(np.isin(arr, (9, 10, 13, 32)).sum() / n),  # whitespace
        float(((arr >= 48) & (arr <= 57)).sum() / n),  # digits
        float(lengths.mean()),
        float(np.log1p(lengths.max())),
    ]


def anomaly_mask(features: np.ndarray, contamination: float, seed: int) -> np.ndarray:
    """True for documents to keep: IsolationForest's inliers (all of them under 16 documents or when off)."""
    if len(features) < 16 or contamination <= 0:
        return np.ones(len(features), dtype=bool)
    forest = IsolationForest(contamination=contamination, random_state=seed, n_estimators=100)
    return np.asarray(forest.fit_predict(features) == 1)


def filter_anomalies(docs: list[Document], contamination: float = 0.02, seed: int = 0) -> list[Document]:
    """Drops documents IsolationForest marks as outliers; logs how many."""
    keep = anomaly_mask(np.array([document_features(d.data) for d in docs]), contamination, seed)
    _log_dropped([d.name for d, k in zip(docs, keep, strict=True) if not k], int(keep.sum()))
    return [d for d, k in zip(docs, keep, strict=True) if k]


def _log_dropped(dropped: list[str], kept: int) -> None:
    log.info("anomaly filter dropped documents", extra={"dropped": len(dropped), "kept": kept, "examples": dropped[:5]})


def tokenizer_identity(tokenizer: Tokenizer) -> str:
    """What the header records to tell tokenizers apart: `bytes`, or the sha256 of a tokenizer.json."""
    path = getattr(tokenizer, "path", None)
    if isinstance(path, Path):
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    return "bytes"


def prepare_dataset(
    documents: Callable[[], Iterable[Document]],
    out: Path,
    tokenizer: Tokenizer,
    *,
    n_shards: int = 1,
    validation_fraction: float = 0.0,
    seed: int = 0,
    contamination: float = 0.0,
    max_docs: int = 0,
    source: str = "",
) -> dict[str, Any]:
    """Tokenize `documents()` into `out` and return the header it wrote last (a folder without header.json is
    incomplete). `documents()` is called twice: one pass counts the documents (and, with the anomaly filter on,
    computes its features), one writes; memory holds a flag (and six features) per document, never text.

    A fixed share of the kept documents, `validation_fraction` of them chosen by `seed` (at least one when
    the share is above zero), goes to the validation split; each other document goes to train shard
    hash(name) % n_shards. Raises DatasetError when no document is left."""
    if n_shards < 1:
        raise DatasetError(f"data_shards={n_shards} must be at least 1")
    if not 0 <= validation_fraction < 1:
        raise DatasetError(f"validation_fraction={validation_fraction} must be in [0, 1)")
    limit = max_docs or None
    if contamination > 0:  # six floats per document, no text
        features = np.array([document_features(doc.data) for doc in islice(documents(), limit)])
        keep = anomaly_mask(features, contamination, seed)
    else:
        keep = np.ones(sum(1 for _ in islice(documents(), limit)), dtype=bool)
    if not keep.size:
        raise DatasetError(f"dataset {source or out} has no documents")
    kept = np.flatnonzero(keep)
    n_validation = 0
    if validation_fraction > 0 and kept.size > 1:
        n_validation = min(kept.size - 1, max(1, round(validation_fraction * kept.size)))
    validation = np.zeros(keep.size, dtype=bool)
    validation[np.random.default_rng(seed).choice(kept, n_validation, replace=False)] = True
    dtype = token_dtype(tokenizer.vocab_size)
    out.mkdir(parents=True, exist_ok=True)
    (out / HEADER_FILE).unlink(missing_ok=True)
    dropped: list[str] = []
    train = [ShardWriter(out, "train", s, dtype) for s in range(n_shards)]
    held_out = ShardWriter(out, "validation", 0, dtype)
    for i, doc in enumerate(islice(documents(), keep.size)):
        if not keep[i]:
            dropped.append(doc.name)
            continue
        writer = held_out if validation[i] else train[_hash(doc.name) % n_shards]
        writer.add(tokenizer.encode(doc.data.decode("utf-8")), tokenizer.eos_id)
    _log_dropped(dropped, int(kept.size))
    splits = {
        "train": {"shards": [w.close() for w in train]},
        "validation": {"shards": [held_out.close()]},
    }
    for entry in splits.values():
        entry["documents"] = sum(s["documents"] for s in entry["shards"])
        entry["tokens"] = sum(s["tokens"] for s in entry["shards"])
    if not splits["train"]["documents"]:
        raise DatasetError(f"dataset {source or out} has no training documents left after filtering")
    header = {
        "format": FORMAT_VERSION,
        "source": source,
        "tokenizer": {
            "id": tokenizer_identity(tokenizer),
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
        },
        "dtype": dtype.str,
        "seed": seed,
        "validation_fraction": validation_fraction,
        "anomaly_contamination": contamination,
        "splits": splits,
    }
    (out / HEADER_FILE).write_text(json.dumps(header, indent=2) + "\n")
    log.info(
        "prepared dataset",
        extra={"out": str(out), **{f"{s}_tokens": splits[s]["tokens"] for s in SPLITS}, "dtype": dtype.name},
    )
    return header


class PackedWindows:
    """A split's token stream (its shards one after another; EOS already ends every document) cut into windows
    of seq_len + 1 tokens, window i starting at i * seq_len: inputs are its first seq_len tokens, targets its
    last, so no token is skipped as a target and windows cross document boundaries (packing)."""

    def __init__(self, shards: list[np.ndarray], seq_len: int) -> None:
        self.shards = [s for s in shards if len(s)]
        self.seq_len = seq_len
        sizes = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.total = int(self.starts[-1])
        self.count = max(0, (self.total - 1) // seq_len)

    def __len__(self) -> int:
        return self.count

    def window(self, i: int) -> np.ndarray:
        begin, end = i * self.seq_len, i * self.seq_len + self.seq_len + 1
        shard = int(np.searchsorted(self.starts, begin, side="right")) - 1
        pieces = []
        while begin < end:
            local = begin - int(self.starts[shard])
            piece = self.shards[shard][local : local + end - begin]
            pieces.append(np.asarray(piece, dtype=np.int64))
            begin += len(piece)
            shard += 1
        return np.concatenate(pieces)


class PackedLoader:
    """Yields (inputs, targets) micro-batches for one data-parallel rank from the global sample order.

    Sample n is window order(n) of `windows`: a permutation of all windows per epoch, drawn from (seed, epoch)
    when `shuffle`, else the windows in order. `samples` (the state) counts the samples every rank together
    consumed before the current step; a step is `global_batch` samples, this rank's slice of them is
    micro_batch * grad_accum samples, handed out one micro-batch at a time."""

    def __init__(
        self,
        windows: PackedWindows,
        dp_rank: int,
        dp: int,
        micro_batch: int,
        global_batch: int,
        seed: int,
        shuffle: bool = True,
    ) -> None:
        if not len(windows):
            raise DatasetError(
                f"the data has {windows.total} tokens: fewer than seq_len + 1 = {windows.seq_len + 1} for one sample"
            )
        if global_batch % (micro_batch * dp):
            raise ValueError(f"global_batch={global_batch} must be a multiple of micro_batch={micro_batch} * dp={dp}")
        self.windows = windows
        self.dp_rank, self.dp = dp_rank, dp
        self.micro_batch, self.global_batch = micro_batch, global_batch
        self.grad_accum = global_batch // (micro_batch * dp)
        self.seed, self.shuffle = seed, shuffle
        self.samples = 0
        self.micro = 0  # micro-batches this rank has taken within the current step
        self._epoch = -1
        self._order = np.arange(0)

    def sample_window(self, n: int) -> int:
        """Which window global sample n is."""
        epoch, position = divmod(n, len(self.windows))
        if not self.shuffle:
            return position
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))
            self._epoch = epoch
        return int(self._order[position])

    def step_samples(self) -> range:
        """Global sample numbers of this rank's next micro-batch."""
        first = self.samples + self.dp_rank * self.micro_batch * self.grad_accum + self.micro * self.micro_batch
        return range(first, first + self.micro_batch)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self.windows.window(self.sample_window(n)) for n in self.step_samples()]
        self.micro += 1
        if self.micro == self.grad_accum:
            self.micro = 0
            self.samples += self.global_batch
        batch = torch.from_numpy(np.stack(rows))
        return batch[:, :-1], batch[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def rewind(self, samples: int = 0) -> None:
        """Continue from global sample `samples` (a step boundary: resume, or the start of an evaluation)."""
        self.samples, self.micro = samples, 0


def open_splits(dataset: PreparedDataset, seq_len: int) -> dict[str, PackedWindows]:
    """Every split of a prepared dataset as packed windows (memory-mapped)."""
    return {split: PackedWindows([s.tokens for s in dataset.shards(split)], seq_len) for split in SPLITS}


def pack_documents(docs: Iterable[Document], tokenizer: Tokenizer | None = None) -> np.ndarray:
    """Documents tokenized into one in-memory stream with EOS after each (small corpora: benchmarks, tests)."""
    tok = tokenizer or ByteTokenizer()
    parts = [np.array([*tok.encode(d.data.decode("utf-8")), tok.eos_id], dtype=np.int64) for d in docs]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@dataclass
class TrainingData:
    """The splits a run trains and validates on, memory-mapped from a prepared folder."""

    dataset: PreparedDataset
    train: PackedWindows
    validation: PackedWindows
    scratch: tempfile.TemporaryDirectory[str] | None  # a dataset prepared at start-up lives here until exit

    def validation_loader(self, settings: TrainSettings, dp_rank: int, dp: int) -> PackedLoader | None:
        """The held-out windows in order (no shuffle), or None when evaluation is off or nothing is held out."""
        if settings.eval_every_steps <= 0 or settings.eval_batches <= 0:
            return None
        if not len(self.validation):
            log.warning(
                "no validation loss: the held-out split is shorter than one sample",
                extra={"validation_tokens": self.validation.total, "seq_len": self.validation.seq_len},
            )
            return None
        return PackedLoader(
            self.validation, dp_rank, dp, settings.micro_batch, settings.global_batch, settings.seed, shuffle=False
        )


def open_training_data(settings: TrainSettings, tokenizer: Tokenizer, model_vocab_size: int) -> TrainingData:
    """`data_dir` as a prepared folder (it has header.json: checked, memory-mapped), or any other dataset (or the
    standard library when empty) prepared at start-up into a temporary folder by the same `prepare_dataset`.
    Raises DatasetError when the data cannot serve this model and tokenizer."""
    root = Path(settings.data_dir) if settings.data_dir else None
    scratch = None
    if root is not None and (root / HEADER_FILE).is_file():
        try:
            dataset = PreparedDataset.open(root)
        except ValueError as err:
            raise DatasetError(str(err)) from err
        prepared_with, training_with = dataset.header["tokenizer"]["id"], tokenizer_identity(tokenizer)
        if prepared_with != training_with:
            raise DatasetError(
                f"{root / HEADER_FILE}: prepared with tokenizer {prepared_with}, but this run tokenizes with"
                f" {training_with}: prepare it again with the run's tokenizer"
            )
    else:
        scratch = tempfile.TemporaryDirectory(prefix="strata-data-")
        source = root
        prepare_dataset(
            (lambda: read_documents(source, settings.data_text_field)) if source is not None else stdlib_documents,
            Path(scratch.name),
            tokenizer,
            n_shards=settings.data_shards,
            validation_fraction=settings.data_validation_fraction,
            seed=settings.seed,
            contamination=settings.anomaly_contamination,
            max_docs=settings.data_max_docs,
            source=str(root) if root is not None else "the Python standard library",
        )
        dataset = PreparedDataset.open(Path(scratch.name), verify=False)
    if dataset.vocab_size > model_vocab_size:
        raise DatasetError(
            f"{dataset.root / HEADER_FILE}: tokenizer vocab_size={dataset.vocab_size} exceeds the model's"
            f" vocab_size={model_vocab_size}"
        )
    splits = open_splits(dataset, settings.seq_len)
    return TrainingData(dataset, splits["train"], splits["validation"], scratch)
