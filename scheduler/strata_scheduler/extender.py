"""The two extender verbs, from request bytes to response bytes, with no HTTP in sight.

The HTTP layer (:mod:`strata_scheduler.server`) and the latency benchmark both call these methods. Answers:

- 200 with the neutral answer (every node passes, every score 0) for pods whose ``spec.schedulerName`` names
  another scheduler: kube-scheduler shares extenders across all profiles of a process, and only Strata's
  pods are this extender's business;
- 200 with the protocol's result for every well-formed request, including pods without Strata's annotations
  (they are treated as accepting any GPU type and capacity type), node names the cache does not know
  (filter: rejected with a reason; prioritize: score 0) and pods that request no GPUs (filter passes every
  node; prioritize scores 0 everywhere);
- 400 with a message for malformed or truncated JSON and for JSON that is not ``ExtenderArgs``
  (413 for bodies over the size limit comes from the HTTP layer);
- 503 until the watch cache has synced, so kube-scheduler retries rather than placing on a half-known cluster;
- should a bug raise anyway, it is logged and counted in ``strata_extender_internal_errors_total``, and the
  answer is the protocol's own error channel for filter (200 with ``Error`` set; kube-scheduler reports it on
  the pod) and the neutral all-zero list for prioritize. Never a 5xx from an exception.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from strata_api import SCHEDULER_NAME, GPUType
from strata_scheduler.catalog import Catalog
from strata_scheduler.columns import host_json
from strata_scheduler.filtering import FilterOutcome, GroupKey, PinnedGroup, filter_nodes
from strata_scheduler.forecasts import ForecastBoard
from strata_scheduler.metrics import ExtenderMetrics
from strata_scheduler.model import PodView, pod_view
from strata_scheduler.protocol import (
    BadRequest,
    ExtenderArgs,
    filter_result,
    filter_result_json,
    names_json,
    object_json,
    parse_extender_args,
    pod_of_head,
    priority_list,
    priority_list_json,
    split_extender_args,
)
from strata_scheduler.scoring import Defaults, JobPlacement, cost_per_unit_work, score_rows
from strata_scheduler.state import ClusterState

log = logging.getLogger(__name__)

NOT_READY = b"the Strata extender's cache has not synced yet"


@dataclass
class Pins:
    """Tensor-parallel groups placed by recent filter calls (see :func:`~strata_scheduler.filtering.filter_nodes`)."""

    ttl_s: float
    clock: Callable[[], float] = time.monotonic
    _pins: dict[GroupKey, tuple[PinnedGroup, float]] = field(default_factory=dict)

    def active(self) -> dict[GroupKey, PinnedGroup]:
        now = self.clock()
        for key in [key for key, (_, expiry) in self._pins.items() if expiry <= now]:
            del self._pins[key]
        return {key: pin for key, (pin, _) in self._pins.items()}

    def pin(self, group: GroupKey, pin: PinnedGroup) -> None:
        """Remember (or refresh) a placement; it lapses ``ttl_s`` after the group's last filter call."""
        self._pins[group] = (pin, self.clock() + self.ttl_s)


class Extender:
    def __init__(
        self,
        state: ClusterState,
        catalog: Catalog,
        board: ForecastBoard,
        metrics: ExtenderMetrics,
        defaults: Defaults | None = None,
        pin_ttl_s: float = 30.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.state = state
        self.catalog = catalog
        self.board = board
        self.metrics = metrics
        self.defaults = defaults or Defaults()
        self.pins = Pins(pin_ttl_s)
        self.now = now
        self._passed: tuple[str, bytes, npt.NDArray[np.int64], int] | None = None
        """(pod uid, JSON text of the nodes the last filter passed, their rows, columns layout): kube-scheduler
        sends exactly those nodes to prioritize next, whose rows then need no second look-up."""
        self._pod_memo: tuple[bytes, dict[str, Any], PodView] | None = None
        """(head of the last split request, its pod, the pod's view): prioritize sends the pod filter sent."""

    def filter(self, body: bytes) -> tuple[int, bytes]:
        return self._serve("filter", body, self._filter, self._filter_split)

    def prioritize(self, body: bytes) -> tuple[int, bytes]:
        return self._serve("prioritize", body, self._prioritize, self._prioritize_split)

    def quote(self, body: bytes) -> tuple[int, bytes]:
        """Which GPU type a job should be created for: the cheapest unit of work per accepted type, right now.

        A pod's GPU vendor is fixed by the resource it requests (``nvidia.com/gpu`` or ``amd.com/gpu``), so
        kube-scheduler can never weigh an H100 against an MI300X for one pod. That choice is made when the
        operator creates a gang for a job that accepts several types; this verb answers it with the same
        filter and cost formula the scheduling verbs use. Body: ``{"Pod": <pod template>}``.
        """
        return self._serve("quote", body, self._quote)

    def _serve(
        self,
        verb: str,
        body: bytes,
        handler: Callable[[ExtenderArgs], bytes],
        split: Callable[[bytes], bytes | None] | None = None,
    ) -> tuple[int, bytes]:
        """Answer with ``split`` (the fast path; None when it does not apply) or else ``handler``."""
        started = time.perf_counter()
        try:
            if not self.state.ready:
                return 503, NOT_READY
            if split is not None:
                try:
                    answer = split(body)
                except Exception:
                    log.exception("extender %s failed on its fast path; answering the ordinary way", verb)
                    self.metrics.internal_errors.labels(verb).inc()
                    answer = None
                if answer is not None:
                    return 200, answer
            try:
                args = parse_extender_args(body)
            except BadRequest as error:
                self.metrics.bad_requests.labels(verb).inc()
                return 400, str(error).encode()
            try:
                return 200, handler(args)
            except Exception:
                log.exception("extender %s failed; answering neutrally", verb)
                self.metrics.internal_errors.labels(verb).inc()
                if verb == "filter":
                    return 200, filter_result(args, [], {}, {}, error="Strata extender internal error; see its log")
                return 200, priority_list([(name, 0) for name in args.node_names])
        finally:
            self.metrics.latency.labels(verb).observe(time.perf_counter() - started)

    def _filter(self, args: ExtenderArgs) -> bytes:
        if not _ours(args.pod):
            return filter_result(args, list(args.node_names), {}, {})
        pod = pod_view(args.pod)
        hold = self.board.hold_back()
        hour = self.now().hour
        with self.state.reading() as state:
            outcome = filter_nodes(
                pod, args.node_names, state, hold, self.pins.active(), lambda names: self._cheapest(pod, names, hour)
            )
            if outcome.pin is not None:
                self.pins.pin(*outcome.pin)
        self._count(outcome)
        return filter_result(args, outcome.passed, outcome.failed, outcome.unresolvable)

    def _filter_split(self, body: bytes) -> bytes | None:
        """:meth:`_filter` for a body :func:`split_extender_args` can cut whose names are all cached, without
        decoding the names or building a dict per node; None for any other request."""
        split = split_extender_args(body)
        parsed = self._pod(split.head) if split is not None else None
        if split is None or parsed is None or not _ours(parsed[0]) or not parsed[1].gpus:
            return None
        pod = parsed[1]
        hold = self.board.hold_back()
        hour = self.now().hour
        with self.state.reading() as state:
            columns = state.columns
            rows = columns.rows_json(split.names_json)
            if rows is None:
                return None

            def cheapest(names: list[str]) -> str:
                return self._cheapest(pod, names, hour)

            outcome = filter_nodes(pod, None, state, hold, self.pins.active(), cheapest, rows)
            if outcome.pin is not None:
                self.pins.pin(*outcome.pin)
            found, passed_rows = outcome.rejections, outcome.passed_rows
            assert found is not None
            assert passed_rows is not None
            passed = names_json(columns.name_json[passed_rows])
            texts = [orjson.dumps(text) for text in found.texts]
            failed = object_json(columns.key_json[rows[found.failed_at]], found.failed_text, texts)
            unresolvable = object_json(columns.key_json[rows[found.unresolvable_at]], found.unresolvable_text, texts)
            if pod.uid:
                self._passed = (pod.uid, passed, passed_rows, columns.layout)
        self._count(outcome)
        return filter_result_json(passed, failed, unresolvable)

    def _pod(self, head: bytes) -> tuple[dict[str, Any], PodView] | None:
        """The pod of a split request and its view, decoded once for a filter and the prioritize after it."""
        memo = self._pod_memo
        if memo is not None and memo[0] == head:
            return memo[1], memo[2]
        pod = pod_of_head(head)
        if pod is None:
            return None
        view = pod_view(pod)
        self._pod_memo = (head, pod, view)
        return pod, view

    def _count(self, outcome: FilterOutcome) -> None:
        for reason, count in outcome.rejected_by_reason.items():
            self.metrics.rejected.labels(reason).inc(count)

    def _quote(self, args: ExtenderArgs) -> bytes:
        pod = pod_view(args.pod)
        hour = self.now().hour
        hold = self.board.hold_back()
        options = []
        with self.state.reading() as state:
            for gpu in GPUType:
                if pod.contract.gpu_types and gpu.value not in pod.contract.gpu_types:
                    continue
                as_type = replace(pod, gpu_requests={gpu.resource: max(pod.gpus, 1)})
                names = [name for name, node in state.nodes.items() if node.gpu_type == gpu.value]
                outcome = filter_nodes(as_type, names, state, hold, self.pins.active(), min)
                costs = [
                    (cost, name)
                    for name in outcome.passed
                    if (cost := cost_per_unit_work(self.catalog, as_type, state.nodes[name], hour, self.defaults))
                    is not None
                ]
                if costs:
                    cost, name = min(costs)
                    node = state.nodes[name]
                    options.append(
                        {
                            "gpuType": gpu.value,
                            "resource": gpu.resource,
                            "costPerUnitWork": round(cost, 6),
                            "node": name,
                            "capacityType": node.capacity_type,
                            "feasibleNodes": len(outcome.passed),
                        }
                    )
        options.sort(key=lambda option: (option["costPerUnitWork"], option["gpuType"]))
        return orjson.dumps({"recommended": options[0]["gpuType"] if options else None, "options": options})

    def _cheapest(self, pod: PodView, names: list[str], hour: int) -> str:
        """The node a tensor-parallel group is placed on: lowest cost per unit of work, then name."""

        by_class: dict[tuple[object, ...], float] = {}  # nodes of one cost class cost the same

        def key(name: str) -> tuple[float, str]:
            node = self.state.nodes[name]
            if node.cost_class not in by_class:
                cost = cost_per_unit_work(self.catalog, pod, node, hour, self.defaults)
                by_class[node.cost_class] = cost if cost is not None else float("inf")
            return (by_class[node.cost_class], name)

        return min(names, key=key)

    def _rows_passed(self, uid: str, names_json: bytes, layout: int) -> npt.NDArray[np.int64] | None:
        """The rows the last (split) filter call found for ``names_json``, if it was this pod's, passed exactly
        these nodes and no node has come or gone since."""
        passed = self._passed
        if passed is None or passed[0] != uid or passed[3] != layout or passed[1] != names_json:
            return None
        return passed[2]

    def _prioritize(self, args: ExtenderArgs) -> bytes:
        if not _ours(args.pod):
            return priority_list([(name, 0) for name in args.node_names])
        pod = pod_view(args.pod)
        with self.state.reading() as state:
            columns = state.columns
            rows = columns.rows(args.node_names)
            hosts, scores = self._scores(pod, rows)
        unknown = np.flatnonzero(rows < 0).tolist()
        for position in unknown:
            hosts[position] = host_json(args.node_names[position])
        return priority_list_json(hosts, scores)

    def _prioritize_split(self, body: bytes) -> bytes | None:
        """:meth:`_prioritize` for a body :func:`split_extender_args` can cut whose names are all cached (the
        nodes the filter call before it passed, usually), without decoding the names; else None."""
        split = split_extender_args(body)
        parsed = self._pod(split.head) if split is not None else None
        if split is None or parsed is None or not _ours(parsed[0]):
            return None
        pod = parsed[1]
        with self.state.reading() as state:
            rows = self._rows_passed(pod.uid, split.names_json, state.columns.layout)
            if rows is None:
                rows = state.columns.rows_json(split.names_json)
            if rows is None:
                return None
            hosts, scores = self._scores(pod, rows)
        return priority_list_json(hosts, scores)

    def _scores(
        self, pod: PodView, rows: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.object_], npt.NDArray[np.int64]]:
        """Each node's score and the start of its answer entry (call with the state's lock held)."""
        state = self.state
        job_nodes = dict(state.job_nodes.get(pod.job_key, {})) if pod.job_key else {}
        placement = JobPlacement(
            pods_per_node=job_nodes,
            zone_of={name: node.zone for name in job_nodes if (node := state.nodes.get(name))},
        )
        columns = state.columns
        scores = score_rows(self.catalog, pod, columns, rows, placement, self.now().hour, self.defaults)
        return columns.host_json[rows], scores


def _ours(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec")
    name = spec.get("schedulerName") if isinstance(spec, Mapping) else None
    return not isinstance(name, str) or name in ("", SCHEDULER_NAME)
