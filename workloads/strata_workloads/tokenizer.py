"""Tokenizers behind one protocol: text to token ids and back, the vocabulary size and the end-of-text id.

Two kinds: `ByteTokenizer` (UTF-8 bytes plus one EOS id, what the presets are sized for) and `HFTokenizer`
(a Hugging Face `tokenizer.json`, what a model loaded from a Hugging Face directory was trained with).
`load_tokenizer` picks one from a path; `check_fits` refuses a tokenizer whose ids the model cannot embed.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from strata_workloads.presets import EOS_TOKEN

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# End-of-text names of common Hugging Face tokenizers, tried in order when tokenizer_config.json names none.
_EOS_CANDIDATES = ("<|end_of_text|>", "<|endoftext|>", "</s>", "<eos>", "<|im_end|>")


class StreamDecoder(Protocol):
    """Text of tokens as they come, one at a time (a character split across tokens appears once whole)."""

    def step(self, token: int) -> str: ...

    def flush(self) -> str: ...


class Tokenizer(Protocol):
    @property
    def vocab_size(self) -> int:
        """Ids run from 0 to vocab_size - 1: the model's embedding must have at least this many rows."""
        ...

    @property
    def eos_id(self) -> int:
        """The id that ends a document: training separates documents with it and generation stops at it."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`; special tokens (EOS) make no text."""
        ...

    def stream_decoder(self) -> StreamDecoder: ...


class _ByteStream:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token: int) -> str:
        return self._decoder.decode(bytes([token])) if token < 256 else ""

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 and EOS_TOKEN (256) after them: no file, works for any text."""

    @property
    def vocab_size(self) -> int:
        return EOS_TOKEN + 1

    @property
    def eos_id(self) -> int:
        return EOS_TOKEN

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(t for t in ids if t < 256).decode("utf-8", errors="replace")

    def stream_decoder(self) -> StreamDecoder:
        return _ByteStream()


class _PrefixStream:
    """Streams a tokenizer's `decode` itself: each step decodes all ids so far and hands out what is new, holding
    text back while it ends in U+FFFD (a character whose remaining bytes are in tokens still to come). So the
    pieces join to exactly `decode(ids)` (a library stream decoder treats invalid bytes its own way)."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._sent = ""

    def step(self, token: int) -> str:
        self._ids.append(token)
        text = self._decode(self._ids)
        if text.endswith("\ufffd"):
            return ""
        return self._take(text)

    def flush(self) -> str:
        return self._take(self._decode(self._ids))

    def _take(self, text: str) -> str:
        if not text.startswith(self._sent):  # an earlier piece decodes differently now: it is already out
            return ""
        piece, self._sent = text[len(self._sent) :], text
        return piece


class HFTokenizer:
    """A Hugging Face `tokenizer.json` (BPE, SentencePiece-converted, ...) through the `tokenizers` library."""

    def __init__(self, path: Path, eos_token: str | None = None) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        try:
            self._tokenizer = RustTokenizer.from_file(str(path))
        except Exception as exc:  # the library raises a bare Exception for unreadable or malformed files
            raise ValueError(f"{path}: not a readable tokenizer.json ({exc})") from exc
        self.path = path
        name = eos_token or _eos_from_config(path.parent / TOKENIZER_CONFIG_FILE)
        candidates = (name,) if name else _EOS_CANDIDATES
        ids = [self._tokenizer.token_to_id(c) for c in candidates]
        found = [i for i in ids if i is not None]
        if not found:
            raise ValueError(f"{path}: no end-of-text token: none of {', '.join(candidates)} is in the vocabulary")
        self._eos_id = found[0]

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    @property
    def eos_id(self) -> int:
        return self._eos_id

    def encode(self, text: str) -> list[int]:
        # No special tokens (a BOS) added: documents are joined by EOS, prompts are continued as given.
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        # EOS makes no text even when the file does not mark it special (as the byte tokenizer's EOS makes none).
        return str(self._tokenizer.decode([i for i in ids if i != self._eos_id], skip_special_tokens=True))

    def stream_decoder(self) -> StreamDecoder:
        return _PrefixStream(self.decode)


def _eos_from_config(path: Path) -> str | None:
    """The `eos_token` of a tokenizer_config.json beside the tokenizer (a string or {"content": ...})."""
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text()).get("eos_token")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from exc
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def load_tokenizer(path: str | None, eos_token: str | None = None) -> Tokenizer:
    """The tokenizer at `path`: a tokenizer.json file, or a directory holding one; None or "" gives bytes.

    Raises ValueError naming the path when it holds no tokenizer.json or the file cannot be read."""
    if not path:
        return ByteTokenizer()
    target = Path(path)
    if target.is_dir():
        target = target / TOKENIZER_FILE
    if not target.is_file():
        raise ValueError(f"{target}: no such tokenizer file")
    return HFTokenizer(target, eos_token)


def resolve_tokenizer_path(tokenizer: str, model_dir: str) -> str | None:
    """The settings' rule: an explicit tokenizer path, else the model directory's tokenizer.json if it has one,
    else None (bytes)."""
    if tokenizer:
        return tokenizer
    if model_dir and (Path(model_dir) / TOKENIZER_FILE).is_file():
        return str(Path(model_dir) / TOKENIZER_FILE)
    return None


def check_fits(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Raise ValueError when the tokenizer can produce ids the model (with `vocab_size` rows) cannot embed."""
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"tokenizer vocabulary ({tokenizer.vocab_size} ids) is larger than the model's vocab_size={vocab_size}"
        )
