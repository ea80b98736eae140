"""Offline corpus (the Python standard library's own sources), byte tokens, consistent-hash shard assignment
to data-parallel ranks, and an IsolationForest filter that drops anomalous documents.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import IsolationForest

from strata_workloads.presets import EOS_TOKEN

log = logging.getLogger(__name__)


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass(frozen=True)
class Document:
    name: str  # path relative to the corpus root: stable across machines, used for hashing
    data: bytes


def load_documents(root: Path, max_docs: int | None = None) -> list[Document]:
    """Every *.py under root except tests and site-packages, in a deterministic order."""
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "test/", "idlelib/idle_test/")):
            continue
        data = path.read_bytes()
        if data:
            docs.append(Document(rel, data))
        if max_docs is not None and len(docs) >= max_docs:
            break
    return docs


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


def filter_anomalies(docs: list[Document], contamination: float = 0.02, seed: int = 0) -> list[Document]:
    """Drops documents IsolationForest marks as outliers (generated tables, binary-ish blobs); logs how many."""
    if len(docs) < 16 or contamination <= 0:
        return docs
    features = np.array([document_features(d.data) for d in docs])
    forest = IsolationForest(contamination=contamination, random_state=seed, n_estimators=100)
    keep = forest.fit_predict(features) == 1
    dropped = [d.name for d, k in zip(docs, keep, strict=True) if not k]
    log.info(
        "anomaly filter dropped documents",
        extra={"dropped": len(dropped), "kept": int(keep.sum()), "examples": dropped[:5]},
    )
    return [d for d, k in zip(docs, keep, strict=True) if k]


class HashRing:
    """Consistent hashing: each rank owns `vnodes` points on a ring; a shard goes to the next point clockwise.
    Going from n to n+1 ranks moves about 1/(n+1) of the shards, all of them to the new rank."""

    def __init__(self, n_ranks: int, vnodes: int = 64) -> None:
        points = sorted((_hash(f"rank-{r}-vnode-{v}"), r) for r in range(n_ranks) for v in range(vnodes))
        self._keys = [p for p, _ in points]
        self._ranks = [r for _, r in points]

    def owner(self, shard: int) -> int:
        i = bisect.bisect(self._keys, _hash(f"shard-{shard}")) % len(self._keys)
        return self._ranks[i]


def shard_of(doc: Document, n_shards: int) -> int:
    return _hash(doc.name) % n_shards


def build_shards(docs: list[Document], n_shards: int) -> list[torch.Tensor]:
    """Token stream per shard: the shard's documents as bytes, each followed by EOS."""
    parts: list[list[np.ndarray]] = [[] for _ in range(n_shards)]
    eos = np.array([EOS_TOKEN], dtype=np.int64)
    for doc in docs:
        parts[shard_of(doc, n_shards)].extend((np.frombuffer(doc.data, dtype=np.uint8).astype(np.int64), eos))
    return [torch.from_numpy(np.concatenate(p)) if p else torch.zeros(0, dtype=torch.int64) for p in parts]


class ShardedLoader:
    """Yields (inputs, targets) micro-batches for one data-parallel rank from the shards it owns.

    The position is one token offset per shard, so it survives a change of data-parallel degree: shards move
    between ranks with their offsets (see `state_dict` / `load_state_dict`)."""

    def __init__(self, shards: list[torch.Tensor], dp_rank: int, dp: int, micro_batch: int, seq_len: int) -> None:
        ring = HashRing(dp)
        self.shards = shards
        self.owned = [s for s in range(len(shards)) if ring.owner(s) == dp_rank and shards[s].numel() > seq_len + 1]
        if not self.owned:
            raise ValueError(f"data-parallel rank {dp_rank} of dp={dp} owns no usable shard; use more shards")
        self.dp_rank, self.dp = dp_rank, dp
        self.micro_batch = micro_batch
        self.seq_len = seq_len
        self.offsets = dict.fromkeys(range(len(shards)), 0)
        self.cursor = 0  # which owned shard serves the next sequence

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for _ in range(self.micro_batch):
            shard = self.owned[self.cursor % len(self.owned)]
            self.cursor += 1
            tokens = self.shards[shard]
            start = self.offsets[shard]
            if start + self.seq_len + 1 > tokens.numel():
                start = 0  # next epoch of this shard
            rows.append(tokens[start : start + self.seq_len + 1])
            self.offsets[shard] = start + self.seq_len
        batch = torch.stack(rows)
        return batch[:, :-1], batch[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, object]:
        return {"offsets": {s: self.offsets[s] for s in self.owned}, "cursor": self.cursor, "dp_rank": self.dp_rank}

    def load_state_dict(self, merged_offsets: dict[int, int], cursor: int) -> None:
        """merged_offsets: every rank's offsets together (shards this rank now owns may come from another)."""
        for shard, offset in merged_offsets.items():
            self.offsets[int(shard)] = int(offset)
        self.cursor = cursor
