"""Datasets a user brings (text folders, JSON lines, Parquet), `prepare` into memory-mapped token shards, and the
packed loader's equal shares: small generated inputs, no process group."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_tokenizer import train_tokenizer_json

from strata_api.workload import ExitCode
from strata_workloads.data import PackedLoader, PackedWindows, open_splits, open_training_data, prepare_dataset
from strata_workloads.datasets import DatasetError, Document, read_documents
from strata_workloads.prepare import main as prepare_main
from strata_workloads.settings import TrainSettings
from strata_workloads.shards import HEADER_FILE, PreparedDataset, shard_files
from strata_workloads.tokenizer import ByteTokenizer, load_tokenizer

TEXTS = [f"document {i}: " + "héllo wörld " * (3 + i % 5) for i in range(24)]


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _prepare(tmp: Path, name: str, texts: list[str], **kwargs: object) -> PreparedDataset:
    docs = [Document(f"d{i}", t.encode()) for i, t in enumerate(texts)]
    prepare_dataset(lambda: iter(docs), tmp / name, ByteTokenizer(), **kwargs)  # type: ignore[arg-type]
    return PreparedDataset.open(tmp / name)


class _WideTokenizer(ByteTokenizer):
    """The byte tokenizer claiming a vocabulary past 16 bits."""

    @property
    def vocab_size(self) -> int:
        return 70_000


@pytest.mark.unit
def test_each_format_reads_its_documents(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    folder.mkdir()
    for i, text in enumerate(TEXTS[:3]):
        (folder / f"{i}.txt").write_text(text)
    (folder / "empty.txt").write_text("  \n")
    assert [d.data.decode() for d in read_documents(folder)] == TEXTS[:3]

    lines = _jsonl(tmp_path / "x.jsonl", [{"body": t, "id": i} for i, t in enumerate(TEXTS[:4])])
    docs = list(read_documents(lines, text_field="body"))
    assert [d.data.decode() for d in docs] == TEXTS[:4]
    assert docs[2].name == "x.jsonl:3"

    table = pa.table({"text": TEXTS[:5], "n": list(range(5))})
    pq.write_table(table, tmp_path / "y.parquet", row_group_size=2)
    assert [d.data.decode() for d in read_documents(tmp_path / "y.parquet")] == TEXTS[:5]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a"}\n{"text": "b"\n', "x.jsonl line 2: malformed JSON"),
        ('{"text": "a"}\n{"body": "b"}\n', "x.jsonl line 2: no field 'text' (fields: body)"),
        ('{"text": 3}\n', "x.jsonl line 1: field 'text' is int, not a string"),
        ('["text"]\n', "x.jsonl line 1: expected a JSON object"),
    ],
)
def test_a_bad_json_line_is_named_by_file_line_and_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError, match=re.escape(message)):
        list(read_documents(path))


@pytest.mark.unit
def test_a_parquet_file_without_the_column_is_named(tmp_path: Path) -> None:
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "y.parquet")
    with pytest.raises(DatasetError, match=r"y.parquet: no column 'text' \(columns: body\)"):
        list(read_documents(tmp_path / "y.parquet"))
    pq.write_table(pa.table({"text": ["a", None]}), tmp_path / "z.parquet")
    with pytest.raises(DatasetError, match=re.escape("z.parquet row 2: column 'text' is null")):
        list(read_documents(tmp_path / "z.parquet"))


@pytest.mark.unit
def test_prepare_round_trips_every_document_and_holds_out_a_fixed_share(tmp_path: Path) -> None:
    dataset = _prepare(tmp_path, "a", TEXTS, n_shards=3, validation_fraction=0.25, seed=7)
    header = dataset.header
    assert header["dtype"] == "<u2"
    assert header["splits"]["validation"]["documents"] == 6
    assert header["splits"]["train"]["documents"] == 18
    tokenizer = ByteTokenizer()
    decoded = [
        tokenizer.decode(shard.document(i).tolist())
        for split in ("train", "validation")
        for shard in dataset.shards(split)
        for i in range(len(shard.offsets) - 1)
    ]
    assert sorted(decoded) == sorted(TEXTS)
    assert all(int(shard.document(0)[-1]) == tokenizer.eos_id for shard in dataset.shards("train"))
    again = _prepare(tmp_path, "b", TEXTS, n_shards=3, validation_fraction=0.25, seed=7)
    other_seed = _prepare(tmp_path, "c", TEXTS, n_shards=3, validation_fraction=0.25, seed=8)

    def held_out(d: PreparedDataset) -> bytes:
        return b"".join(s.tokens.tobytes() for s in d.shards("validation"))

    assert held_out(again) == held_out(dataset)
    assert held_out(other_seed) != held_out(dataset)


@pytest.mark.unit
def test_token_width_follows_the_vocabulary(tmp_path: Path) -> None:
    docs = [Document("d", TEXTS[0].encode())]
    prepare_dataset(lambda: iter(docs), tmp_path / "wide", _WideTokenizer())
    wide = PreparedDataset.open(tmp_path / "wide")
    assert wide.header["dtype"] == "<u4"
    assert wide.shards("train")[0].tokens.dtype == np.dtype("<u4")
    narrow = _prepare(tmp_path, "narrow", TEXTS[:1])
    assert narrow.shards("train")[0].tokens.nbytes * 2 == wide.shards("train")[0].tokens.nbytes


@pytest.mark.unit
def test_a_damaged_or_incomplete_folder_is_refused(tmp_path: Path) -> None:
    _prepare(tmp_path, "a", TEXTS, n_shards=2)
    tokens, _ = shard_files(tmp_path / "a", "train", 1)
    data = bytearray(tokens.read_bytes())
    data[5] ^= 1
    tokens.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"train-00001.tokens: sha256 differs"):
        PreparedDataset.open(tmp_path / "a")
    (tmp_path / "a" / HEADER_FILE).unlink()
    with pytest.raises(ValueError, match=re.escape("header.json: not a readable")):
        PreparedDataset.open(tmp_path / "a")


@pytest.mark.unit
def test_no_documents_left_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="has no documents"):
        prepare_dataset(lambda: iter([]), tmp_path / "a", ByteTokenizer(), source="empty.jsonl")


@pytest.mark.unit
@pytest.mark.parametrize("n_shards", range(1, 8))
def test_every_rank_gets_an_equal_share_and_the_step_is_the_same_for_every_dp(tmp_path: Path, n_shards: int) -> None:
    dataset = _prepare(tmp_path, "a", TEXTS, n_shards=n_shards)
    windows = open_splits(dataset, seq_len=8)["train"]
    global_batch, steps = 24, 4
    single = PackedLoader(windows, 0, 1, micro_batch=4, global_batch=global_batch, seed=3)
    want = [[single.next_batch()[0] for _ in range(single.grad_accum)] for _ in range(steps)]
    for dp in range(1, 5):
        micro = 6 // dp if 6 % dp == 0 else 3
        loaders = [PackedLoader(windows, r, dp, micro, global_batch, seed=3) for r in range(dp)]
        for step in range(steps):
            per_rank = [np.concatenate([ld.next_batch()[0].numpy() for _ in range(ld.grad_accum)]) for ld in loaders]
            assert {len(rows) for rows in per_rank} == {global_batch // dp}
            assert np.array_equal(np.concatenate(per_rank), np.concatenate([b.numpy() for b in want[step]]))
    epoch = PackedLoader(windows, 0, 1, micro_batch=1, global_batch=1, seed=3)
    seen = sorted(epoch.sample_window(n) for n in range(len(windows)))
    assert seen == list(range(len(windows)))


@pytest.mark.unit
def test_windows_pack_documents_across_shard_boundaries() -> None:
    shards = [np.arange(0, 5), np.arange(5, 7), np.arange(7, 20)]
    windows = PackedWindows(shards, seq_len=4)
    assert len(windows) == 4
    assert windows.window(1).tolist() == [4, 5, 6, 7, 8]
    loader = PackedLoader(windows, 0, 1, 2, 2, seed=0, shuffle=False)
    inputs, targets = loader.next_batch()
    assert inputs.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert targets.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    loader.rewind(2)
    assert loader.next_batch()[0].tolist() == [[8, 9, 10, 11], [12, 13, 14, 15]]


@pytest.mark.unit
def test_prepare_command_writes_a_folder_and_names_a_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _jsonl(tmp_path / "good.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "out"
    assert prepare_main(["--source", str(good), "--out", str(out), "--validation-fraction", "0.1"], env={}) == 0
    assert PreparedDataset.open(out).header["splits"]["validation"]["documents"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + "{oops\n")
    code = prepare_main(["--source", str(bad), "--out", str(tmp_path / "out2")], env={})
    assert code == ExitCode.INVALID_CONFIGURATION
    assert "bad.jsonl line 25: malformed JSON" in capsys.readouterr().err


@pytest.mark.unit
def test_a_folder_serves_only_the_tokenizer_it_was_prepared_with(tmp_path: Path) -> None:
    path = train_tokenizer_json(tmp_path / "model")
    tokenizer = load_tokenizer(str(path))
    docs = [Document(f"d{i}", t.encode()) for i, t in enumerate(TEXTS)]
    prepare_dataset(lambda: iter(docs), tmp_path / "hf", tokenizer)
    dataset = PreparedDataset.open(tmp_path / "hf")
    assert dataset.header["tokenizer"] == {
        "id": "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest(),
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
    }
    shard = dataset.shards("train")[0]
    texts = [tokenizer.decode(shard.document(i).tolist()) for i in range(len(shard.offsets) - 1)]
    assert texts == TEXTS
    settings = TrainSettings(data_dir=str(tmp_path / "hf"), seq_len=16)
    assert len(open_training_data(settings, tokenizer, 320).train) > 0
    with pytest.raises(DatasetError, match=r"prepared with tokenizer sha256:\w+, but this run tokenizes with bytes"):
        open_training_data(settings, ByteTokenizer(), 320)
    with pytest.raises(DatasetError, match=f"vocab_size={tokenizer.vocab_size} exceeds the model's vocab_size=64"):
        open_training_data(settings, tokenizer, 64)
