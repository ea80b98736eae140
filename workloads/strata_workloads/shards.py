"""Token shards on disk, read memory-mapped: what `prepare` writes and the training loader reads.

A prepared dataset is a folder: `header.json` (tokenizer, dtype, counts and a sha256 per file) and, per split
(`train`, `validation`) and shard, `<split>-<shard>.tokens` (the shard's documents' token ids back to back,
each document followed by the tokenizer's EOS id, as a flat little-endian uint16 array when the vocabulary fits
in 16 bits, else uint32) and `<split>-<shard>.index` (uint64 offsets: where each document starts, then the
end). The token file is already the packed stream the loader cuts into windows; the index gives documents back
(a round trip, or a split by document).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

HEADER_FILE = "header.json"
FORMAT_VERSION = 1
SPLITS = ("train", "validation")
_CHUNK_BYTES = 1 << 20  # tokens are written and hashed in pieces of about this size


def token_dtype(vocab_size: int) -> np.dtype[Any]:
    """uint16 when every id fits in 16 bits (half the disk and page cache), else uint32."""
    if vocab_size <= 1 << 16:
        return np.dtype("<u2")
    if vocab_size <= 1 << 32:
        return np.dtype("<u4")
    raise ValueError(f"vocab_size={vocab_size} does not fit in 32-bit token ids")


def shard_files(root: Path, split: str, shard: int) -> tuple[Path, Path]:
    return root / f"{split}-{shard:05d}.tokens", root / f"{split}-{shard:05d}.index"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class ShardWriter:
    """Appends documents to one shard file pair, buffering a little so a document costs no system call."""

    def __init__(self, root: Path, split: str, shard: int, dtype: np.dtype[Any]) -> None:
        self.tokens_path, self.index_path = shard_files(root, split, shard)
        self.dtype = dtype
        self._tokens = self.tokens_path.open("wb")
        self._index = self.index_path.open("wb")
        self._pending: list[np.ndarray] = []
        self._pending_bytes = 0
        self.documents = 0
        self.tokens = 0
        self._index.write(np.zeros(1, dtype="<u8").tobytes())

    def add(self, ids: list[int], eos_id: int) -> None:
        row = np.empty(len(ids) + 1, dtype=self.dtype)
        row[:-1] = ids
        row[-1] = eos_id
        self._pending.append(row)
        self._pending_bytes += row.nbytes
        self.documents += 1
        self.tokens += row.size
        self._index.write(np.array([self.tokens], dtype="<u8").tobytes())
        if self._pending_bytes >= _CHUNK_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._tokens.write(np.concatenate(self._pending).tobytes())
        self._pending, self._pending_bytes = [], 0

    def close(self) -> dict[str, Any]:
        """The shard's entry in the header: counts and checksums."""
        self._flush()
        self._tokens.close()
        self._index.close()
        return {
            "documents": self.documents,
            "tokens": self.tokens,
            "tokens_sha256": file_sha256(self.tokens_path),
            "index_sha256": file_sha256(self.index_path),
        }

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        if not self._tokens.closed:
            self._tokens.close()
            self._index.close()


@dataclass(frozen=True)
class Shard:
    tokens: np.ndarray  # memory-mapped, read-only
    offsets: np.ndarray  # memory-mapped: document i is tokens[offsets[i]:offsets[i + 1]] (EOS included)

    def document(self, i: int) -> np.ndarray:
        return self.tokens[int(self.offsets[i]) : int(self.offsets[i + 1])]


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared folder opened read-only; `header` is header.json as written."""

    root: Path
    header: dict[str, Any]

    @classmethod
    def open(cls, root: Path, verify: bool = True) -> PreparedDataset:
        """Reads the header and checks every file's size (and, with `verify`, its sha256) against it.
        Raises ValueError naming the file on any mismatch."""
        path = root / HEADER_FILE
        try:
            header = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a readable prepared-dataset header ({err})") from err
        if header.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: field 'format' is {header.get('format')!r}, expected {FORMAT_VERSION}")
        dataset = cls(root, header)
        itemsize = np.dtype(header["dtype"]).itemsize
        for split in SPLITS:
            for shard, entry in enumerate(header["splits"][split]["shards"]):
                tokens, index = shard_files(root, split, shard)
                want = {tokens: entry["tokens"] * itemsize, index: (entry["documents"] + 1) * 8}
                for file, size in want.items():
                    if not file.is_file() or file.stat().st_size != size:
                        raise ValueError(f"{file}: missing or not {size} bytes as {path} says")
                if verify:
                    for file, key in ((tokens, "tokens_sha256"), (index, "index_sha256")):
                        if file_sha256(file) != entry[key]:
                            raise ValueError(f"{file}: sha256 differs from {path} (field {key}): damaged")
        return dataset

    @property
    def vocab_size(self) -> int:
        return int(self.header["tokenizer"]["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.header["tokenizer"]["eos_id"])

    def shards(self, split: str) -> list[Shard]:
        """The split's non-empty shards, memory-mapped in shard order."""
        out = []
        for shard, entry in enumerate(self.header["splits"][split]["shards"]):
            if entry["tokens"] == 0:
                continue
            tokens_path, index_path = shard_files(self.root, split, shard)
            tokens = np.memmap(tokens_path, dtype=self.header["dtype"], mode="r")
            offsets = np.memmap(index_path, dtype="<u8", mode="r")
            out.append(Shard(tokens, offsets))
        return out
