"""What the byte route remembers between a filter call and the prioritize call after it.

kube-scheduler sends prioritize the same pod text as the filter call before it and exactly the nodes that
filter passed. So the pod is decoded once for both (keyed by the text before ``NodeNames``), and prioritize
reuses the filter's rows when the names' text is byte for byte what the filter passed, for the same pod, with
no node come or gone since (``NodeColumns.layout``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from strata_scheduler.fastpath.wire import pod_of_head, split_extender_args
from strata_scheduler.views import PodView, pod_view

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class CutArgs:
    """A body the byte route can read: its pod, decoded, and its names' JSON text, not yet looked up."""

    pod: Mapping[str, Any]
    view: PodView
    names_json: bytes


class ByteRoute:
    def __init__(self) -> None:
        self._pod_memo: tuple[bytes, dict[str, Any], PodView] | None = None
        """(head of the last body read, its pod, the pod's view)."""
        self._passed: tuple[str, bytes, IntArray, int] | None = None
        """(pod uid, JSON text of the nodes the last filter passed, their rows, columns layout)."""

    def cut(self, body: bytes) -> CutArgs | None:
        """The pod and the names' text of a body Go wrote (see :func:`.wire.split_extender_args`); else None."""
        split = split_extender_args(body)
        if split is None:
            return None
        memo = self._pod_memo
        if memo is not None and memo[0] == split.head:
            return CutArgs(memo[1], memo[2], split.names_json)
        pod = pod_of_head(split.head)
        if pod is None:
            return None
        view = pod_view(pod)
        self._pod_memo = (split.head, pod, view)
        return CutArgs(pod, view, split.names_json)

    def passed(self, uid: str, names_json: bytes, rows: IntArray, layout: int) -> None:
        """Remember the rows of the nodes a filter call passed (their names' text ``names_json``)."""
        if uid:
            self._passed = (uid, names_json, rows, layout)

    def rows_passed(self, uid: str, names_json: bytes, layout: int) -> IntArray | None:
        """The rows the last filter call passed, if it was this pod's, passed exactly these nodes and the
        columns' layout is the same."""
        passed = self._passed
        if passed is None or passed[0] != uid or passed[3] != layout or passed[1] != names_json:
            return None
        return passed[2]
