"""Text datasets read as documents, one at a time: a folder of plain-text files (one document each), JSON
lines (one document per line, its text in a field) or Parquet (one document per row, its text in a column),
chosen by each file's extension.

Readers stream: `read_documents` never holds more than one Parquet row group in memory, so a corpus larger
than memory can be tokenized (prepare.py). A malformed input raises `DatasetError` naming the file, the line or
row and the field, because a user fixes the file, not the program.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

PLAIN_TEXT = (".txt", ".py")  # one document per file (.py: the default corpus, the standard library's sources)
JSON_LINES = (".jsonl",)
PARQUET = (".parquet",)
SUPPORTED = PLAIN_TEXT + JSON_LINES + PARQUET
DEFAULT_TEXT_FIELD = "text"


class DatasetError(ValueError):
    """The dataset cannot be read as asked (a bad configuration: retrying cannot help)."""


@dataclass(frozen=True)
class Document:
    name: str  # stable across machines (path relative to the dataset root, plus line or row): used for hashing
    data: bytes  # UTF-8 text


def read_documents(
    root: Path,
    text_field: str = DEFAULT_TEXT_FIELD,
    skip: Callable[[str], bool] | None = None,
) -> Iterator[Document]:
    """Every non-empty document under `root` (a supported file, or a folder searched recursively), in a
    deterministic order: files sorted by path, then lines or rows in file order. `skip(relative_path)` leaves
    files out. Raises DatasetError for a missing path or a folder without a supported file."""
    if not root.exists():
        raise DatasetError(f"dataset {root} does not exist")
    if root.is_file():
        files, base = [root], root.parent
    else:
        files = sorted(p for p in root.rglob("*") if p.suffix in SUPPORTED and p.is_file())
        base = root
        if not files:
            raise DatasetError(f"dataset folder {root} holds no {', '.join(SUPPORTED)} file")
    for path in files:
        rel = path.relative_to(base).as_posix()
        if skip is not None and skip(rel):
            continue
        yield from read_file(path, rel, text_field)


def read_file(path: Path, name: str, text_field: str = DEFAULT_TEXT_FIELD) -> Iterator[Document]:
    """The documents of one file, chosen by its extension; `name` prefixes each document's name."""
    if path.suffix in PLAIN_TEXT:
        data = path.read_bytes()
        if data.strip():
            _check_utf8(data, f"{path}")
            yield Document(name, data)
    elif path.suffix in JSON_LINES:
        yield from _read_json_lines(path, name, text_field)
    elif path.suffix in PARQUET:
        yield from _read_parquet(path, name, text_field)
    else:
        raise DatasetError(f"{path}: unsupported extension {path.suffix!r}; use one of {', '.join(SUPPORTED)}")


def _check_utf8(data: bytes, where: str) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{where}: not UTF-8 text (byte {err.start})") from err


def _read_json_lines(path: Path, name: str, text_field: str) -> Iterator[Document]:
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            _check_utf8(line, where)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from err
            if not isinstance(record, dict):
                raise DatasetError(f"{where}: expected a JSON object with field {text_field!r}")
            if text_field not in record:
                raise DatasetError(f"{where}: no field {text_field!r} (fields: {', '.join(sorted(record))})")
            text = record[text_field]
            if not isinstance(text, str):
                raise DatasetError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
            if text.strip():
                yield Document(f"{name}:{number}", text.encode("utf-8"))


def _read_parquet(path: Path, name: str, text_field: str) -> Iterator[Document]:
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    try:
        table = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as err:
        raise DatasetError(f"{path}: not a readable Parquet file ({err})") from err
    columns = table.schema_arrow.names
    if text_field not in columns:
        raise DatasetError(f"{path}: no column {text_field!r} (columns: {', '.join(columns)})")
    kind = table.schema_arrow.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DatasetError(f"{path}: column {text_field!r} is {kind}, not a string")
    row = 0
    for group in range(table.num_row_groups):
        for text in table.read_row_group(group, columns=[text_field]).column(0).to_pylist():
            row += 1
            if text is None:
                raise DatasetError(f"{path} row {row}: column {text_field!r} is null")
            if text.strip():
                yield Document(f"{name}:{row}", text.encode("utf-8"))
