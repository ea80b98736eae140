"""Data preparation and loading: the standard library's sources as a JSON-lines dataset, tokenized by
`python -m strata_workloads.prepare`'s function with the byte tokenizer, then read back through the packed
loader from the memory-mapped shards.

Prints documents, tokens, preparation throughput, bytes on disk per token (uint16) beside the int64 corpus the
loader held in memory before, and loader throughput (micro-batches of 8 x 1,024 tokens per second).

    .venv/bin/python bench/workloads/prepare_bench.py
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from strata_workloads.data import PackedLoader, open_splits, prepare_dataset, stdlib_documents
from strata_workloads.datasets import read_documents
from strata_workloads.shards import PreparedDataset
from strata_workloads.tokenizer import ByteTokenizer

SEQ_LEN, MICRO_BATCH, BATCHES = 1024, 8, 200


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "stdlib.jsonl"
        with source.open("w") as f:
            for doc in stdlib_documents():
                f.write(json.dumps({"text": doc.data.decode("utf-8")}) + "\n")
        out = Path(tmp) / "prepared"
        began = time.perf_counter()
        header = prepare_dataset(
            lambda: read_documents(source), out, ByteTokenizer(), n_shards=8, validation_fraction=0.02
        )
        prepare_s = time.perf_counter() - began
        train = header["splits"]["train"]
        tokens = train["tokens"] + header["splits"]["validation"]["tokens"]
        on_disk = sum(p.stat().st_size for p in out.glob("*.tokens"))
        print(f"source: {source.stat().st_size / 2**20:.1f} MiB of JSON lines, {train['documents']} training documents")
        print(f"prepare: {tokens:,} tokens in {prepare_s:.1f} s = {tokens / prepare_s / 1e6:.2f} M tokens/s")
        print(f"token files: {on_disk / tokens:.1f} bytes/token ({header['dtype']}) vs 8 in memory as int64 before")
        began = time.perf_counter()
        dataset = PreparedDataset.open(out)
        print(f"open with sha256 verification: {time.perf_counter() - began:.2f} s")
        windows = open_splits(dataset, SEQ_LEN)["train"]
        loader = PackedLoader(windows, 0, 1, MICRO_BATCH, MICRO_BATCH, seed=0)
        began = time.perf_counter()
        for _ in range(BATCHES):
            loader.next_batch()
        per_s = BATCHES / (time.perf_counter() - began)
        print(
            f"loader: {per_s:,.0f} micro-batches/s of {MICRO_BATCH} x {SEQ_LEN} tokens"
            f" = {per_s * MICRO_BATCH * SEQ_LEN / 1e6:.1f} M tokens/s (shuffled windows from the memory map)"
        )


if __name__ == "__main__":
    main()
