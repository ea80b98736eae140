"""Node names -> cache rows, read straight from the JSON text of a request's ``NodeNames`` array.

kube-scheduler sends up to every node name in the cluster with each call (5,000 names, ~90 KiB at 5,000
nodes). Decoding them into Python strings and looking each one up in a dict costs a few hundred nanoseconds a
name: the largest part of a filter call. This table does the look-up on the bytes instead, as array
operations: the quotes of the array text give each name's bounds; a hash of each name's bytes, read as 8-byte
words, is looked up in an open-addressing table of the cached names. No string is decoded.

A hash match is only a candidate. The answer is used only if the cached names of the candidate rows, written
back as JSON array text, equal the request's text byte for byte; that proves every name matched exactly (and
that the text was a valid array of plain strings). Anything else (a name not in the cache, a name with escapes
or non-ASCII bytes, a repeated name, text that is not a plain array) gives ``None``, and the caller decodes
the request the ordinary way. The table is rebuilt when nodes come or go (``NodeColumns.layout``), not when a
node's status changes: about a millisecond at 5,000 nodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

_EMPTY = -1
_GONE = -2
_QUOTE = ord('"')
_COMMA = ord(",")
_MIX = np.uint64(0x9E3779B97F4A7C15)
_SHIFT_32 = np.uint64(32)
_SHIFT_29 = np.uint64(29)
_MAX_NAME = 253
"""The longest node name Kubernetes allows; longer ones (never seen) take the ordinary path."""
_MAX_WORDS = -(-_MAX_NAME // 8)
_OFFSETS = np.arange(_MAX_WORDS, dtype=np.int64) * 8
_MULTIPLIERS = (
    np.random.default_rng(20261128).integers(0, 2**63, _MAX_WORDS, dtype=np.uint64) << np.uint64(1)
) | np.uint64(1)
"""Odd constants: a name's words are mixed as sum(word_k x multiplier_k) before the final scramble."""


def plain(name: str) -> bool:
    """Whether a name's JSON text is the name itself in quotes: printable ASCII without ``"`` or ``\\``."""
    return len(name) <= _MAX_NAME and name.isascii() and name.isprintable() and '"' not in name and "\\" not in name


class NameTable:
    """The cached names by hash; kept in step with the columns' rows by :meth:`add` and :meth:`remove`."""

    def __init__(self, names: Sequence[str | None], capacity: int = 0) -> None:
        """``names[row]``: the node at each row of the columns (None: a free row); rows up to ``capacity`` can be
        added later."""
        encoded = {row: name.encode() for row, name in enumerate(names) if name is not None and plain(name)}
        rows = np.array(list(encoded), dtype=np.int64)
        longest = max(map(len, encoded.values()), default=0)
        self.words = max(1, -(-longest // 8))
        """8-byte words read per name: enough to cover the longest cached name."""
        capacity = max(capacity, len(names))
        self._length = np.full(capacity, -1, dtype=np.int64)
        """Length of the name at each row in bytes; -1 where no name (or one that is not plain) is cached."""
        self._word = np.zeros((self.words, capacity), dtype=np.uint64)
        """Word k of the name at each row (see ``_words``)."""
        size = 1 << max(4, (4 * len(rows)).bit_length())  # a quarter full or less: few second probes
        self._mask = size - 1
        self._shift = np.uint64(64 - (size.bit_length() - 1))
        self._row = np.full(size, _EMPTY, dtype=np.int64)
        """Row of the name in each slot; _EMPTY, or _GONE where a removed name was (probes walk past it)."""
        self._hash = np.zeros(size, dtype=np.uint64)
        self._occupied = len(rows)
        """Slots not _EMPTY; past half the table, :meth:`add` asks for a rebuild."""
        if encoded:
            text = b'"' + b'","'.join(encoded.values()) + b'"'
            starts, lengths = _bounds(text) or (np.empty(0, dtype=np.int64),) * 2
            assert len(starts) == len(rows)
            words = self._words(text, starts, lengths)
            self._length[rows] = lengths
            self._word[:, rows] = words
            self._insert(rows, _hash(words, lengths))

    def add(self, row: int, name: str) -> bool:
        """Enter the name now at ``row``; False if the table has no room for it and must be rebuilt."""
        if not plain(name):
            if row < len(self._length):
                self._length[row] = -1
                return True
            return False
        text = b'"' + name.encode() + b'"'
        starts, lengths = np.array([1]), np.array([len(text) - 2])
        if row >= len(self._length) or lengths[0] > 8 * self.words or 2 * (self._occupied + 1) > len(self._row):
            return False
        words = self._words(text, starts, lengths)
        hashed = _hash(words, lengths)
        slot = int(hashed[0] >> self._shift)
        while self._row[slot] >= 0:
            slot = (slot + 1) & self._mask
        if self._row[slot] == _EMPTY:
            self._occupied += 1
        self._row[slot], self._hash[slot] = row, hashed[0]
        self._length[row] = lengths[0]
        self._word[:, row] = words[:, 0]
        return True

    def remove(self, row: int) -> None:
        """Forget the name at ``row`` (a no-op if none is entered there)."""
        if row >= len(self._length) or self._length[row] < 0:
            return
        slot = int(_hash(self._word[:, [row]], self._length[[row]])[0] >> self._shift)
        while self._row[slot] != row:
            slot = (slot + 1) & self._mask
        self._row[slot] = _GONE
        self._length[row] = -1

    def rows(self, text: bytes) -> IntArray | None:
        """Rows of the names in ``text`` (what is between a JSON array's brackets), in order; None unless
        ``text`` is exactly the JSON text of distinct, cached, plain names."""
        if not text:
            return np.empty(0, dtype=np.int64)
        bounds = _bounds(text)
        if bounds is None:
            return None
        starts, lengths = bounds
        if len(starts) > 1 and not (np.frombuffer(text, dtype=np.uint8)[starts[1:] - 2] == _COMMA).all():
            return None
        words = self._words(text, starts, lengths)
        rows = self._find(_hash(words, lengths))
        if (rows < 0).any():  # _EMPTY: a name not in the cache
            return None
        # Equal length and equal words (which cover every byte of a name) mean an equal name.
        if not (self._length[rows] == lengths).all() or not (self._word[:, rows] == words).all():
            return None
        seen = np.zeros(len(self._length), dtype=np.bool_)
        seen[rows] = True
        if np.count_nonzero(seen) != len(rows):  # a name sent twice: the ordinary path keeps dict semantics
            return None
        return rows

    def _words(self, text: bytes, starts: IntArray, lengths: IntArray) -> U64:
        """Each name as ``self.words`` little-endian 8-byte words: row k holds word k of every name.

        Word k starts at byte min(8k, length - 8) of the name, so once a name is 8 bytes long every read stays
        inside it (the last word overlaps the one before; later ones repeat it) and the words cover all of it.
        A shorter name is its first word masked to its length (then repeated).
        """
        padded = text + bytes(8)
        word_at = np.ndarray(shape=(len(padded) - 7,), dtype="V8", buffer=padded, strides=(1,))
        offsets = np.minimum(_OFFSETS[: self.words, None], np.maximum(lengths - 8, 0))
        words: U64 = word_at[starts + offsets].view("<u8")
        short = np.flatnonzero(lengths < 8)
        if len(short):
            keep = (np.uint64(1) << (lengths[short].astype(np.uint64) * np.uint64(8))) - np.uint64(1)
            words[:, short] &= keep
        return words

    def _insert(self, rows: IntArray, hashes: U64) -> None:
        slots = (hashes >> self._shift).astype(np.int64)
        waiting = np.arange(len(rows))
        while len(waiting):
            slot = slots[waiting]
            empty = self._row[slot] < 0
            taken, first = np.unique(slot[empty], return_index=True)
            placed = waiting[empty][first]
            self._row[taken] = rows[placed]
            self._hash[taken] = hashes[placed]
            done = np.zeros(len(rows), dtype=np.bool_)
            done[placed] = True
            waiting = waiting[~done[waiting]]
            slots[waiting] = (slots[waiting] + 1) & self._mask

    def _find(self, hashes: U64) -> IntArray:
        """The row whose name hashes to each of ``hashes`` (the first such in probe order), -1 if none."""
        slots = (hashes >> self._shift).astype(np.int64)
        found = self._row[slots]
        miss = np.flatnonzero((found == _GONE) | ((found >= 0) & (self._hash[slots] != hashes)))
        while len(miss):  # collisions: walk on to the next slot until a match or an empty slot
            slots[miss] = (slots[miss] + 1) & self._mask
            row = self._row[slots[miss]]
            found[miss] = row
            miss = miss[(row == _GONE) | ((row >= 0) & (self._hash[slots[miss]] != hashes[miss]))]
        return found


def _hash(words: U64, lengths: IntArray) -> U64:
    value: U64 = lengths.astype(np.uint64)
    for word, multiplier in zip(words, _MULTIPLIERS.tolist(), strict=False):
        value += word * np.uint64(multiplier)
    value ^= value >> _SHIFT_32
    value *= _MIX
    value ^= value >> _SHIFT_29
    return value


def _bounds(text: bytes) -> tuple[IntArray, IntArray] | None:
    """Start and length of each quoted name in ``text``, if its quotes pair up as ``"a","b"`` would."""
    quotes = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == _QUOTE)
    if not len(quotes) or len(quotes) % 2 or quotes[0] != 0 or quotes[-1] != len(text) - 1:
        return None
    starts = quotes[0::2] + 1
    ends = quotes[1::2]
    if len(starts) > 1 and not (starts[1:] - ends[:-1] == 3).all():
        return None
    return starts, ends - starts
