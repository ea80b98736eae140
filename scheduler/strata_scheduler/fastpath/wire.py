"""The byte route's reading and writing of the extender wire format (see :mod:`strata_scheduler.protocol`).

:func:`split_extender_args` cuts a body Go wrote into the text before ``NodeNames`` and the array's text, so
the pod is decoded while the names are looked up without decoding (:mod:`.names`); :func:`filter_result_json`
writes the answer from per-node JSON fragments. Either gives exactly the bytes of the plain JSON route; any
body this reader does not recognise takes that route.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

IntArray = npt.NDArray[np.int64]

_NAMES_KEY = b',"NodeNames":['


@dataclass(frozen=True)
class SplitArgs:
    """An ``ExtenderArgs`` body cut before its last member, ``NodeNames``."""

    head: bytes
    """The body up to ``NodeNames``, closed with ``}``: a JSON object when the body is one."""
    names_json: bytes
    """The text between the brackets of the ``NodeNames`` array, not yet checked."""


def split_extender_args(body: bytes) -> SplitArgs | None:
    """Cut a body that ends in ``,"NodeNames":[...]}``; None for any other body.

    If ``head`` is a JSON object with at least one member and ``names_json`` is a valid array body, the body
    is the same object with ``NodeNames`` added last: nothing is assumed about a body that is not checked.
    """
    if not body.endswith(b"]}"):
        return None
    at = body.rfind(_NAMES_KEY)
    if at < 0:
        return None
    return SplitArgs(head=body[:at] + b"}", names_json=body[at + len(_NAMES_KEY) : -2])


def pod_of_head(head: bytes) -> dict[str, Any] | None:
    """The Pod of a split body, if its head is an object whose only members the plain reader acts on are
    ``Pod`` (a Pod object) and ``Nodes: null``; otherwise None, and the plain reader takes the body."""
    try:
        document = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict) or not document:
        return None
    fields = {str(key).lower(): value for key, value in document.items()}
    if "nodenames" in fields or fields.get("nodes") is not None:
        return None
    pod = fields.get("pod")
    return pod if isinstance(pod, dict) else None


def names_json(names: npt.NDArray[np.object_]) -> bytes:
    """A JSON array's text between its brackets, from each element's JSON text."""
    return b",".join(names.tolist())


def object_json(keys: npt.NDArray[np.object_], values: IntArray, texts: Sequence[bytes]) -> bytes:
    """``{k1:v1,k2:v2}`` from each key's ``"<name>":`` (``columns.key_json``) and the JSON text of each value,
    ``texts[values[i]]``; the keys must be distinct (a dict would merge repeats).

    Rejections come in long runs that share one sentence (every node of a GPU type the job does not accept), so
    each run is one ``bytes.join`` over its keys with the sentence as separator: no bytes object per entry.
    """
    if not len(keys):
        return b"{}"
    starts = np.flatnonzero(values[1:] != values[:-1]) + 1
    if len(starts) * 8 > len(keys):  # short runs: interleave keys and values
        ends = [text + b"," for text in texts]
        parts = np.empty(2 * len(keys), dtype=object)
        parts[0::2] = keys
        parts[1::2] = np.array(ends, dtype=object)[values]
        pieces = parts.tolist()
        pieces[-1] = pieces[-1][:-1]
        return b"".join((b"{", *pieces, b"}"))
    runs = []
    for start, end in zip((0, *starts.tolist()), (*starts.tolist(), len(keys)), strict=True):
        text = texts[int(values[start])]
        runs.append((text + b",").join(keys[start:end].tolist()) + text)
    return b"{" + b",".join(runs) + b"}"


def filter_result_json(passed_json: bytes, failed_json: bytes, unresolvable_json: bytes) -> bytes:
    """The bytes :func:`strata_scheduler.protocol.filter_result` writes for a request without ``Nodes`` and no
    error, from the JSON text of its parts (``passed_json`` as from :func:`names_json`; the maps as from
    :func:`object_json`)."""
    return b"".join(
        (
            b'{"Nodes":null,"NodeNames":[',
            passed_json,
            b'],"FailedNodes":',
            failed_json,
            b',"FailedAndUnresolvableNodes":',
            unresolvable_json,
            b',"Error":""}',
        )
    )
