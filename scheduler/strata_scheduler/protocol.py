"""kube-scheduler's extender wire format (k8s.io/kube-scheduler/extender/v1), read and written without exceptions.

The Go types carry no JSON tags, so the field names on the wire are the Go field names: ``Pod``, ``Nodes``,
``NodeNames`` in ``ExtenderArgs``; ``Nodes``, ``NodeNames``, ``FailedNodes``, ``FailedAndUnresolvableNodes``,
``Error`` in ``ExtenderFilterResult``; ``[{"Host", "Score"}]`` for ``HostPriorityList``. Go's decoder matches
keys case-insensitively, so this reader does too.

With ``nodeCacheCapable: true`` kube-scheduler sends ``NodeNames`` only and reads ``NodeNames`` back. If a
scheduler is configured without it and sends full ``Nodes``, the names are taken from them and the filtered
``Nodes`` list is echoed back as well, so either configuration works.

This module reads a body as plain JSON and writes answers with orjson; :mod:`strata_scheduler.fastpath` reads
and writes the same format at the byte level, giving exactly these bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson


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
"""kube-scheduler's extender ``MaxExtenderPriority``: scores are 0..10."""
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
