"""The one decode step of the filter and prioritize verbs: a request body -> the pod and the row of each node.

Two ways lead here and both end in a :class:`NodeRequest`, which the one filter
(:func:`strata_scheduler.filtering.filter_nodes`) and the one score (:func:`strata_scheduler.scoring.score_rows`)
take whichever way it came:

- the byte route (:mod:`strata_scheduler.fastpath`, on unless ``Settings.byte_fast_path`` is off): a body as
  Go writes it, whose node names are all cached, distinct and plain; the names are looked up from their text;
- plain JSON (:func:`strata_scheduler.protocol.parse_extender_args`): every other body, and every body when the
  byte route is off; malformed bodies raise :class:`~strata_scheduler.protocol.BadRequest` here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from strata_api import SCHEDULER_NAME
from strata_scheduler.columns import NodeColumns
from strata_scheduler.fastpath.route import ByteRoute
from strata_scheduler.protocol import ExtenderArgs, parse_extender_args
from strata_scheduler.views import PodView, pod_view

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class NodeRequest:
    """An ``ExtenderArgs`` body, decoded for the verbs."""

    pod: Mapping[str, Any]
    view: PodView
    rows: IntArray
    """Row of each requested node in the columns, in request order; -1 for a node not in the cache."""
    args: ExtenderArgs | None
    """The plain JSON decode (names as sent, full Node objects if any); None when the byte route read the
    body: its names are then exactly the cached names at ``rows``, all distinct."""
    names_json: bytes = b""
    """The byte route: the text between the brackets of ``NodeNames``."""

    @property
    def ours(self) -> bool:
        """Whether the pod is Strata's to place: kube-scheduler shares extenders across all profiles."""
        spec = self.pod.get("spec")
        name = spec.get("schedulerName") if isinstance(spec, Mapping) else None
        return not isinstance(name, str) or name in ("", SCHEDULER_NAME)

    def as_args(self, columns: NodeColumns) -> ExtenderArgs:
        """The request as the plain JSON reader gives it (call with the state's lock held, as decoded)."""
        if self.args is not None:
            return self.args
        names: list[str] = columns.name_obj[self.rows].tolist()
        return ExtenderArgs(pod=self.pod, node_names=names, nodes=None)


def decode(body: bytes, columns: NodeColumns, route: ByteRoute | None) -> NodeRequest:
    """Decode ``body`` by the byte route if it can, else as plain JSON; call with the state's lock held, and
    use the rows under the same hold (rows of deleted nodes are reused)."""
    cut = route.cut(body) if route is not None else None
    if route is not None and cut is not None:
        rows = route.rows_passed(cut.view.uid, cut.names_json, columns.layout)
        if rows is None:
            rows = columns.rows_json(cut.names_json)
        if rows is not None:
            return NodeRequest(cut.pod, cut.view, rows, None, cut.names_json)
    args = parse_extender_args(body)
    return NodeRequest(args.pod, pod_view(args.pod), columns.rows(args.node_names), args)
