"""The extender verbs, from request bytes to response bytes, with no HTTP in sight.

The HTTP layer (:mod:`strata_scheduler.server`) and the latency benchmark both call these methods. Each verb
takes one route: decode (:func:`strata_scheduler.decoding.decode`: the pod and the row of each node, read by
the byte route or as plain JSON), then the one filter (:func:`strata_scheduler.filtering.filter_nodes`) or the
one score (:func:`strata_scheduler.scoring.score_rows`), then the answer, written from per-node fragments when
the byte route read the request and with orjson otherwise (the same bytes). Answers:

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from strata_api import GPUType
from strata_api.catalog import Catalog
from strata_api.nodes import NodeFacts
from strata_scheduler.columns import host_json
from strata_scheduler.decoding import NodeRequest, decode
from strata_scheduler.fastpath.route import ByteRoute
from strata_scheduler.fastpath.wire import filter_result_json, names_json, object_json
from strata_scheduler.filtering import FilterOutcome, GroupKey, PinnedGroup, filter_nodes, reserved_holdback
from strata_scheduler.forecast_board import ForecastBoard
from strata_scheduler.metrics import ExtenderMetrics
from strata_scheduler.protocol import BadRequest, filter_result, priority_list, priority_list_json
from strata_scheduler.scoring import Defaults, JobPlacement, KindCost, cost_per_unit_work, rank_kinds, score_rows
from strata_scheduler.state import ClusterState
from strata_scheduler.views import PodView, cost_class

log = logging.getLogger(__name__)

NOT_READY = b"the Strata extender's cache has not synced yet"
INTERNAL_ERROR = "Strata extender internal error; see its log"


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
        byte_fast_path: bool = True,
    ) -> None:
        self.state = state
        self.catalog = catalog
        self.board = board
        self.metrics = metrics
        self.defaults = defaults or Defaults()
        self.pins = Pins(pin_ttl_s)
        self.now = now
        self.route = ByteRoute() if byte_fast_path else None
        """The byte route (:mod:`strata_scheduler.fastpath`); None decodes every request as plain JSON."""

    def filter(self, body: bytes) -> tuple[int, bytes]:
        return self._serve("filter", body, self._filter)

    def prioritize(self, body: bytes) -> tuple[int, bytes]:
        return self._serve("prioritize", body, self._prioritize)

    def quote(self, body: bytes) -> tuple[int, bytes]:
        """Which node kind (GPU type x capacity type) a job should be admitted onto: every kind with a node the
        filter passes, cheapest unit of work first, right now (:func:`quote_answer`).

        A pod's GPU vendor is fixed by the resource it requests (``nvidia.com/gpu`` or ``amd.com/gpu``), so
        kube-scheduler can never weigh an H100 against an MI300X for one pod. That choice is made when the
        operator creates a gang for a job that accepts several types; this verb answers it with the same
        filter and cost formula the scheduling verbs use. Body: ``{"Pod": <pod template>}``.
        """
        return self._serve("quote", body, self._quote)

    def holdback(self) -> tuple[int, bytes]:
        """The reserved hold-back of every GPU type now (``GET /holdback``, :mod:`strata_api.holdback`): how many
        reserved GPUs of each type the filter keeps from low-priority pods, by the rule the filter applies
        (:func:`~strata_scheduler.filtering.reserved_keep`). The operator's admission reads it once per pass
        so that it admits a low-priority gang only where this extender will place every worker. 503 until the watch
        cache has synced (admission then behaves as without an extender)."""
        if not self.state.ready:
            return 503, NOT_READY
        hold = self.board.hold_back()
        with self.state.reading() as state:
            answer = reserved_holdback(state.reserved_capacity(), hold, state.high_priority)
        return 200, orjson.dumps(answer.to_json())

    def _serve(self, verb: str, body: bytes, answer: Callable[[NodeRequest], bytes]) -> tuple[int, bytes]:
        """Decode ``body`` and answer it, with the cache's lock held throughout (rows stay valid while it is)."""
        started = time.perf_counter()
        try:
            if not self.state.ready:
                return 503, NOT_READY
            with self.state.reading() as state:
                try:
                    request = self._decode(verb, body)
                except BadRequest as error:
                    self.metrics.bad_requests.labels(verb).inc()
                    return 400, str(error).encode()
                try:
                    return 200, answer(request)
                except Exception:
                    log.exception("extender %s failed; answering neutrally", verb)
                    self.metrics.internal_errors.labels(verb).inc()
                    args = request.as_args(state.columns)
                    if verb == "filter":
                        return 200, filter_result(args, [], {}, {}, error=INTERNAL_ERROR)
                    return 200, priority_list([(name, 0) for name in args.node_names])
        finally:
            self.metrics.latency.labels(verb).observe(time.perf_counter() - started)

    def _decode(self, verb: str, body: bytes) -> NodeRequest:
        """:func:`~strata_scheduler.decoding.decode`; should the byte route raise, the request is read as plain
        JSON (a bug there must not cost the answer)."""
        if self.route is not None:
            try:
                return decode(body, self.state.columns, self.route)
            except BadRequest:
                raise
            except Exception:
                log.exception("extender %s failed on its byte route; decoding as plain JSON", verb)
                self.metrics.internal_errors.labels(verb).inc()
        return decode(body, self.state.columns, None)

    def _filter(self, request: NodeRequest) -> bytes:
        state, pod = self.state, request.view
        if not request.ours or not pod.gpus:  # not ours, or nothing here concerns it: every node passes
            if request.args is not None:
                return filter_result(request.args, list(request.args.node_names), {}, {})
            assert self.route is not None
            passed = names_json(state.columns.name_json[request.rows])
            self.route.passed(pod.uid, passed, request.rows, state.columns.layout)
            return filter_result_json(passed, b"{}", b"{}")
        hold = self.board.hold_back()
        hour = self.now().hour
        names = request.args.node_names if request.args is not None else None

        def cheapest(candidates: list[str]) -> str:
            return self._cheapest(pod, candidates, hour)

        outcome = filter_nodes(pod, names, state, hold, self.pins.active(), cheapest, request.rows)
        if outcome.pin is not None:
            self.pins.pin(*outcome.pin)
        self._count(outcome)
        if request.args is not None:
            return filter_result(request.args, outcome.passed, outcome.failed, outcome.unresolvable)
        return self._filter_fragments(request, outcome)

    def _filter_fragments(self, request: NodeRequest, outcome: FilterOutcome) -> bytes:
        """The filter's answer joined from the columns' per-node JSON fragments (a request the byte route read:
        every node cached and distinct); remembers the rows passed for the prioritize call that follows."""
        columns, rows = self.state.columns, request.rows
        found, passed_rows = outcome.rejections, outcome.passed_rows
        assert found is not None
        assert passed_rows is not None
        assert self.route is not None
        passed = names_json(columns.name_json[passed_rows])
        texts = [orjson.dumps(text) for text in found.texts]
        failed = object_json(columns.key_json[rows[found.failed_at]], found.failed_text, texts)
        unresolvable = object_json(columns.key_json[rows[found.unresolvable_at]], found.unresolvable_text, texts)
        self.route.passed(request.view.uid, passed, passed_rows, columns.layout)
        return filter_result_json(passed, failed, unresolvable)

    def _count(self, outcome: FilterOutcome) -> None:
        for reason, count in outcome.rejected_by_reason.items():
            self.metrics.rejected.labels(reason).inc(count)

    def _prioritize(self, request: NodeRequest) -> bytes:
        columns, rows = self.state.columns, request.rows
        # Another scheduler's pod gets the neutral answer: every score 0, written like any other.
        scores = self._scores(request.view, rows) if request.ours else np.zeros(len(rows), dtype=np.int64)
        hosts = columns.host_json[rows]
        if request.args is not None:  # plain JSON may name nodes the cache does not know
            for position in np.flatnonzero(rows < 0).tolist():
                hosts[position] = host_json(request.args.node_names[position])
        return priority_list_json(hosts, scores)

    def _scores(self, pod: PodView, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Each node's score (call with the state's lock held)."""
        state = self.state
        job_nodes = dict(state.job_nodes.get(pod.job_key, {})) if pod.job_key else {}
        placement = JobPlacement(
            pods_per_node=job_nodes,
            zone_of={name: node.zone for name in job_nodes if (node := state.nodes.get(name))},
        )
        return score_rows(self.catalog, pod, state.columns, rows, placement, self.now().hour, self.defaults)

    def _quote(self, request: NodeRequest) -> bytes:
        pod = request.view
        hold = self.board.hold_back()
        state = self.state
        pins = self.pins.active()
        passed: list[NodeFacts] = []
        feasible: dict[GPUType, int] = {}
        for gpu in GPUType:
            if pod.contract.gpu_types and gpu.value not in pod.contract.gpu_types:
                continue
            as_type = replace(pod, gpu_requests={gpu.resource: max(pod.gpus, 1)})
            names = [name for name, node in state.nodes.items() if node.gpu_type == gpu.value]
            outcome = filter_nodes(as_type, names, state, hold, pins, min)
            feasible[gpu] = len(outcome.passed)
            passed.extend(state.nodes[name] for name in outcome.passed)
        return orjson.dumps(
            quote_answer(rank_kinds(self.catalog, pod, passed, self.now().hour, self.defaults), feasible)
        )

    def _cheapest(self, pod: PodView, names: list[str], hour: int) -> str:
        """The node a tensor-parallel group is placed on: lowest cost per unit of work, then name."""

        by_class: dict[tuple[object, ...], float] = {}  # nodes of one cost class cost the same

        def key(name: str) -> tuple[float, str]:
            node = self.state.nodes[name]
            node_class = cost_class(node)
            if node_class not in by_class:
                cost = cost_per_unit_work(self.catalog, pod, node, hour, self.defaults)
                by_class[node_class] = cost if cost is not None else float("inf")
            return (by_class[node_class], name)

        return min(names, key=key)


def quote_answer(kinds: Sequence[KindCost], feasible: Mapping[GPUType, int]) -> dict[str, Any]:
    """``POST /quote``'s answer from the ranked kinds (:func:`~strata_scheduler.scoring.rank_kinds`) and the nodes
    the filter passed per GPU type.

    ``kinds``: every node kind with a node the filter passed, cheapest per unit of work first (what admission
    takes the first fitting kind of); ``options``: one entry per GPU type, its cheapest kind, in the same order
    (what an operator that predates ``kinds`` reads); ``recommended``: the first option's type, or null."""
    cheapest = {kind.gpu_type: kind for kind in reversed(kinds)}  # each type's first kind
    options = [
        {**_kind_json(kind), "resource": kind.gpu_type.resource, "feasibleNodes": feasible.get(kind.gpu_type, 0)}
        for kind in kinds
        if cheapest[kind.gpu_type] is kind
    ]
    return {
        "recommended": options[0]["gpuType"] if options else None,
        "options": options,
        "kinds": [{**_kind_json(kind), "feasibleNodes": kind.nodes} for kind in kinds],
    }


def _kind_json(kind: KindCost) -> dict[str, Any]:
    """What the quote says of one kind, in the options and the kinds alike."""
    return {
        "gpuType": kind.gpu_type.value,
        "capacityType": kind.capacity_type,
        "costPerUnitWork": round(kind.cost, 6),
        "listCostPerUnitWork": round(kind.listed, 6),
        "node": kind.node,
    }
