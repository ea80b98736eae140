"""kube-scheduler's extender wire format (k8s.io/kube-scheduler/extender/v1), read and written without exceptions.

The Go types carry no JSON tags, so the field names on the wire are the Go field names: ``Pod``, ``Nodes``,
``NodeNames`` in ``ExtenderArgs``; ``Nodes``, ``NodeNames``, ``FailedNodes``, ``FailedAndUnresolvableNodes``,
``Error`` in ``ExtenderFilterResult``; ``[{"Host", "Score"}]`` for ``HostPriorityList``. Go's decoder matches
keys case-insensitively, so this reader does too.

With ``nodeCacheCapable: true`` kube-scheduler sends ``NodeNames`` only and reads ``NodeNames`` back. If a
scheduler is configured without it and sends full ``Nodes``, the names are taken from them and the filtered
``Nodes`` list is echoed back as well, so either configuration works.

The fast path: Go writes ``ExtenderArgs`` in field order, ``{"Pod":{...},"Nodes":null,"NodeNames":[...]}``.
:func:`split_extender_args` cuts such a body into the text before ``NodeNames`` and the array's text, so the
pod (a few KiB) is decoded while the names (~90 KiB at 5,000 nodes) are looked up without decoding (see
:mod:`strata_scheduler.names`); :func:`filter_result_json` writes the answer from per-node JSON fragments.
Either gives exactly the bytes of the ordinary path; any body the fast path does not recognise takes the
ordinary one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

IntArray = npt.NDArray[np.int64]


class BadRequest(ValueError):
    """The request cannot be understood; the HTTP layer answers 400 with this message."""


@dataclass(frozen=True)
class ExtenderArgs:
    pod: Mapping[str, Any]
    node_names: list[str]
    nodes: dict[str, Mapping[str, Any]] | None
    """Full node objects by name, only when kube-scheduler sent them (``nodeCacheCapable: false``)."""


def parse_extender_args(body: bytes) -> ExtenderArgs:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"request body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise BadRequest("ExtenderArgs must be a JSON object with Pod and NodeNames")
    fields = {str(key).lower(): value for key, value in document.items()}
    pod = fields.get("pod")
    if not isinstance(pod, dict):
        raise BadRequest("ExtenderArgs.Pod must be a Pod object")
    names = fields.get("nodenames")
    nodes = _nodes_by_name(fields.get("nodes"))
    if names is None:
        return ExtenderArgs(pod=pod, node_names=list(nodes or {}), nodes=nodes)
    if not isinstance(names, list) or not set(map(type, names)) <= {str}:
        raise BadRequest("ExtenderArgs.NodeNames must be a list of node names")
    return ExtenderArgs(pod=pod, node_names=names, nodes=nodes)


def _nodes_by_name(value: Any) -> dict[str, Mapping[str, Any]] | None:
    if value is None:
        return None
    items = value.get("items") if isinstance(value, dict) else None
    if not isinstance(items, list):
        raise BadRequest("ExtenderArgs.Nodes must be a NodeList with items")
    result: dict[str, Mapping[str, Any]] = {}
    for item in items:
        metadata = item.get("metadata") if isinstance(item, dict) else None
        name = metadata.get("name") if isinstance(metadata, dict) else None
        if not isinstance(name, str):
            raise BadRequest("every node in ExtenderArgs.Nodes needs metadata.name")
        result[name] = item
    return result


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
    """The Pod of a split body, if its head is an object whose only members the ordinary reader acts on are
    ``Pod`` (a Pod object) and ``Nodes: null``; otherwise None, and the ordinary reader takes the body."""
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
    """The bytes :func:`filter_result` writes for a request without ``Nodes`` and no error, from the JSON text
    of its parts (``passed_json`` as from :func:`names_json`; the maps as from :func:`object_json`)."""
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


def filter_result(
    args: ExtenderArgs, passed: list[str], failed: Mapping[str, str], unresolvable: Mapping[str, str], error: str = ""
) -> bytes:
    nodes = None
    if args.nodes is not None:
        nodes = {"items": [args.nodes[name] for name in passed if name in args.nodes]}
    return orjson.dumps(
        {
            "Nodes": nodes,
            "NodeNames": passed,
            "FailedNodes": dict(failed),
            "FailedAndUnresolvableNodes": dict(unresolvable),
            "Error": error,
        }
    )


def priority_list(scores: list[tuple[str, int]]) -> bytes:
    return orjson.dumps([{"Host": host, "Score": score} for host, score in scores])


MAX_SCORE = 10
_SCORE_TAILS = np.array([b"%d}," % score for score in range(MAX_SCORE + 1)], dtype=object)


def priority_list_json(hosts: npt.NDArray[np.object_], scores: npt.NDArray[np.int64]) -> bytes:
    """The bytes :func:`priority_list` writes, from each entry's ``{"Host":<name>,"Score":`` prefix
    (:func:`strata_scheduler.columns.host_json`) and scores 0..10, without a dict or a bytes object per node."""
    if not len(scores):
        return b"[]"
    if scores.min() < 0 or scores.max() > MAX_SCORE:
        names = [orjson.loads(host[len(b'{"Host":') : -len(b',"Score":')]) for host in hosts.tolist()]
        return priority_list(list(zip(names, scores.tolist(), strict=True)))
    parts = np.empty(2 * len(scores), dtype=object)
    parts[0::2] = hosts
    parts[1::2] = _SCORE_TAILS[scores]
    pieces = parts.tolist()
    pieces[-1] = pieces[-1][:-1]
    return b"".join((b"[", *pieces, b"]"))
