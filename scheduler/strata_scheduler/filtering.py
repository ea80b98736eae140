"""Which nodes a pod may use, and for every other node one sentence a user can read in the pod's events.

Checks, in order (the first failure is the reason given):

1. the node is in the cache (``unknown_node``);
2. its GPU type is one the job and its ResourcePool accept (``gpu_type``, unresolvable);
3. its capacity type is one the job and its pool allow (``capacity_type``, unresolvable);
4. its allocatable GPUs of the pod's resource cover the request at all (``gpu_allocatable``, unresolvable: a
   CPU node, another vendor's node, or one with fewer GPUs than the pod, or than its tensor-parallel group,
   needs); then it has enough free GPUs, counting every pod already bound there (``free_gpus``);
5. a tensor-parallel group never spans nodes (``tp_group``): once a pod of the group is bound, the rest go to
   its node; before that, the node must fit the whole group, and when the group has several pods the filter
   picks one node for it (the cheapest; see :func:`filter_nodes`) so pods scheduled one after the other
   cannot drift apart while the first binding is still in flight;
6. low-priority or deferrable pods may use a reserved node only if enough reserved GPUs of that type stay
   free for the upper band of forecast high-priority demand (``reserved_holdback``).

"Unresolvable" failures go into ``FailedAndUnresolvableNodes`` so kube-scheduler does not try to preempt pods
there: evicting anyone would not change the node's GPU type, capacity type or allocatable GPUs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from strata_api.holdback import ReservedHoldBack, TypeHold
from strata_api.nodes import NodeFacts
from strata_scheduler.columns import RESOURCE_INDEX
from strata_scheduler.state import ClusterState, ReservedCapacity
from strata_scheduler.views import PodView

IntArray = npt.NDArray[np.int64]

REASONS = (
    "unknown_node",
    "gpu_type",
    "capacity_type",
    "gpu_allocatable",
    "free_gpus",
    "tp_group",
    "reserved_holdback",
)
UNRESOLVABLE = frozenset({"gpu_type", "capacity_type", "gpu_allocatable", "tp_group"})


@dataclass(frozen=True)
class HoldBack:
    """Forecast high-priority GPU demand by GPU type: the upper end of its band, ``minutes`` ahead."""

    upper_by_gpu_type: Mapping[str, float]
    minutes: int = 15
    band: str = "80%"


GroupKey = tuple[str, str, str]
"""(namespace, job, tensor-parallel group index)."""


@dataclass(frozen=True)
class PinnedGroup:
    """A tensor-parallel group a recent filter call placed on ``node``; its unbound GPUs are kept for it there."""

    node: str
    group_gpus: int
    pod_gpus: int


@dataclass(frozen=True)
class Rejections:
    """The array filter's rejections, as positions in the request (in answer order) and sentence numbers.

    The byte route writes its answer from these without building a dict per node (see
    :func:`strata_scheduler.fastpath.wire.filter_result_json`); ``FilterOutcome.failed`` and ``.unresolvable``
    are built from them on demand.
    """

    names_at: Callable[[IntArray], list[str]]
    """The request's node names at some positions (from the columns on the byte route: call it with the state's
    lock held, as the filter ran)."""
    failed_at: IntArray
    failed_text: IntArray
    unresolvable_at: IntArray
    unresolvable_text: IntArray
    texts: list[str]
    """The distinct sentences; ``*_text`` index into it."""


class FilterOutcome:
    def __init__(self) -> None:
        self._passed: list[str] | None = []
        self.passed_at: IntArray | None = None
        """Positions of the passed nodes in the request; their names are read on demand."""
        self.rejected_by_reason: dict[str, int] = {}
        self.pin: tuple[GroupKey, PinnedGroup] | None = None
        """A tensor-parallel group this call placed (or confirmed) on a node; the caller remembers it briefly."""
        self.passed_rows: IntArray | None = None
        """Rows of ``passed`` in ``state.columns``, for the prioritize call that follows."""
        self.rejections: Rejections | None = None
        """The rejections; None for a pod without GPUs (nothing is rejected)."""
        self._failed: dict[str, str] = {}
        self._unresolvable: dict[str, str] = {}

    @property
    def passed(self) -> list[str]:
        """The nodes that passed, in request order."""
        if self._passed is None:
            assert self.rejections is not None
            assert self.passed_at is not None
            self._passed = self.rejections.names_at(self.passed_at)
        return self._passed

    @passed.setter
    def passed(self, names: list[str]) -> None:
        self._passed = names

    def pass_at(self, positions: IntArray) -> None:
        """The nodes at these positions of the request passed; their names are read when asked for."""
        self.passed_at = positions
        self._passed = None

    @property
    def failed(self) -> dict[str, str]:
        """Node -> reason, for ``FailedNodes``."""
        self._settle_dicts()
        return self._failed

    @property
    def unresolvable(self) -> dict[str, str]:
        """Node -> reason, for ``FailedAndUnresolvableNodes``."""
        self._settle_dicts()
        return self._unresolvable

    def _settle_dicts(self) -> None:
        found = self.rejections
        if found is None or self._failed or self._unresolvable:
            return
        texts = np.array(found.texts, dtype=object)
        for into, at, text in (
            (self._failed, found.failed_at, found.failed_text),
            (self._unresolvable, found.unresolvable_at, found.unresolvable_text),
        ):
            into.update(zip(found.names_at(at), texts[text].tolist(), strict=True))


UNKNOWN_NODE = "node is not in the Strata extender's cache yet; it will retry"
_CODE = {reason: code for code, reason in enumerate(REASONS, start=1)}
"""Reason -> its code in the per-node reason array (0: still passing)."""
_UNRESOLVABLE_CODE = np.array([reason in UNRESOLVABLE for reason in ("", *REASONS)])
"""Reason code -> whether it goes to ``FailedAndUnresolvableNodes``."""


@dataclass(frozen=True)
class FilterRequest:
    """What the filter derives from one pod before looking at any node."""

    resource: str
    gpu_types: frozenset[str] | None
    capacity_types: frozenset[str] | None
    group: GroupKey | None
    group_home: str | None
    group_gpus: int
    kept: dict[str, int]
    reserved: Mapping[str, ReservedCapacity]

    @classmethod
    def of(
        cls, pod: PodView, state: ClusterState, hold: HoldBack, pins: Mapping[GroupKey, PinnedGroup]
    ) -> FilterRequest:
        pool = state.pools.get(pod.pool or "")
        group = pod.tp_group_key
        group_nodes = state.tp_groups.get(group) if group else None
        own_pin = pins.get(group) if group else None
        low_priority = pod.contract.priority < state.high_priority or pod.contract.deferrable
        return cls(
            resource=next(iter(pod.gpu_requests)),
            gpu_types=_allowed(pod.contract.gpu_types, pool.gpu_types if pool else frozenset()),
            capacity_types=_allowed(pod.contract.capacity_types, pool.capacity_types if pool else frozenset()),
            group=group,
            group_home=min(group_nodes) if group_nodes else (own_pin.node if own_pin else None),
            group_gpus=max(pod.contract.tp_size, pod.gpus),
            kept=_kept(pins, state, group, pod.job_key),
            reserved=state.reserved_capacity() if low_priority and hold.upper_by_gpu_type else {},
        )


def filter_nodes(
    pod: PodView,
    node_names: Sequence[str] | None,
    state: ClusterState,
    hold: HoldBack,
    pins: Mapping[GroupKey, PinnedGroup],
    cheapest: Callable[[list[str]], str],
    rows: IntArray | None = None,
) -> FilterOutcome:
    """Filter ``node_names`` for ``pod``; call with ``state.lock`` held.

    ``pins`` are groups recent calls placed: each sends its own pods to its node, and keeps the GPUs its pods
    not yet seen bound will need there away from everyone else (pods of one group are scheduled one after the
    other, and their bindings reach the watch cache a moment later). ``cheapest`` picks the node for a group
    being placed now from the nodes that pass every other check. ``rows``: the names' rows in
    ``state.columns``, when the caller has them already (see ``NodeColumns.rows_json``); ``node_names`` may
    then be None, and names are read from the columns only where needed.

    The checks run as array operations on ``state.columns`` (one row per node); those that read only a node's
    GPU type and capacity type run once per distinct pair, and each distinct reason sentence is written once.
    Verdicts, sentences and their order are those of the per-node definition the tests hold
    (``filter_nodes_reference`` in ``tests/unit/scheduler/scheduler_reference.py``).
    """
    outcome = FilterOutcome()
    columns = state.columns
    if node_names is None:
        assert rows is not None
        given_rows = rows

        def names_at(at: IntArray) -> list[str]:
            names: list[str] = columns.name_obj[given_rows[at]].tolist()
            return names

    else:
        listed = list(node_names)
        named = np.array(listed, dtype=object)
        rows = columns.rows(listed) if rows is None else rows

        def names_at(at: IntArray) -> list[str]:
            names: list[str] = named[at].tolist()
            return names

    if not pod.gpus:
        # Not a GPU pod: nothing here concerns it (kube-scheduler does not even call us for such pods).
        outcome.passed = names_at(np.arange(len(rows)))
        return outcome
    r = FilterRequest.of(pod, state, hold, pins)
    resource, gpu_types, capacity_types, kept, reserved = r.resource, r.gpu_types, r.capacity_types, r.kept, r.reserved
    group, group_home, group_gpus = r.group, r.group_home, r.group_gpus

    known = rows >= 0
    reason = np.where(known, 0, _CODE["unknown_node"]).astype(np.int64)
    texts: list[str] = []
    text = np.zeros(len(rows), dtype=np.int64)
    """Per node: its sentence, an index into ``texts``."""
    pending = known.copy()
    if not pending.all():
        text[~known] = _add(texts, UNKNOWN_NODE)

    def settle(hit: npt.NDArray[np.bool_], code: int | IntArray, ids: int | IntArray) -> None:
        reason[hit] = code
        text[hit] = ids
        pending[hit] = False

    # 2, 3 and 6 read only the node's (GPU type, capacity type): decide them once per pair present.
    type_class = columns.type_class[rows]
    classes = max(len(columns.type_reps), 1)  # unknown rows gather class 0 too; they are masked
    type_code = np.zeros(classes, dtype=np.int64)
    held_code = np.zeros(classes, dtype=np.int64)
    type_text = np.zeros(classes, dtype=np.int64)
    held_text = np.zeros(classes, dtype=np.int64)
    for code in np.flatnonzero(np.bincount(type_class[known], minlength=classes)).tolist():
        representative = columns.type_reps[code]
        mismatch = type_mismatch(representative, gpu_types, capacity_types)
        if mismatch:
            type_code[code], type_text[code] = _CODE[mismatch[0]], _add(texts, mismatch[1])
        elif held := held_back(representative, pod, reserved, hold):
            held_code[code], held_text[code] = _CODE["reserved_holdback"], _add(texts, held)
    codes = type_code[type_class]
    hit = pending & (codes != 0)
    if hit.any():
        settle(hit, codes[hit], type_text[type_class[hit]])

    column = RESOURCE_INDEX[resource]
    total = columns.alloc[rows, column]
    free = total - columns.used[rows, column]
    kept_here = np.zeros(len(rows), dtype=np.int64)
    for name, count in kept.items():
        row = columns.index.get(name)
        if row is not None:
            kept_here[rows == row] = count
    free = np.maximum(free - kept_here, 0)  # a gang's kept GPUs may include some a leaving pod still holds
    needed, never_fits = allocatable_need(pod, resource, group, group_home, group_gpus)
    hit = pending & (total < needed)
    if hit.any():
        settle(hit, _CODE["gpu_allocatable"], _render(texts, never_fits, total[hit]))
    hit = pending & (free < pod.gpus)
    if hit.any():

        def no_room(free: int, total: int, kept: int) -> str:
            note = f" ({kept} kept for a gang being placed there)" if kept else ""
            return f"pod needs {pod.gpus} {resource}, node has {free} free of {total}{note}"

        settle(hit, _CODE["free_gpus"], _render(texts, no_room, free[hit], total[hit], kept_here[hit]))
    if group is not None and group_home is not None:
        hit = pending & (rows != columns.index.get(group_home, -2))
        if hit.any():
            spans = f"{group_label(group)} runs on node {group_home}; it never spans nodes"
            settle(hit, _CODE["tp_group"], _add(texts, spans))
    elif group is not None:
        hit = pending & (free < group_gpus)
        if hit.any():

            def no_room_for_group(free: int) -> str:
                return f"{group_label(group)} needs {group_gpus} GPUs on one node, node has {free} free"

            settle(hit, _CODE["free_gpus"], _render(texts, no_room_for_group, free[hit]))
    codes = held_code[type_class]
    hit = pending & (codes != 0)
    if hit.any():
        settle(hit, codes[hit], held_text[type_class[hit]])

    passed_at = np.flatnonzero(pending)
    outcome.passed_rows = rows[passed_at]
    unresolvable = _UNRESOLVABLE_CODE[reason]
    failed_at = np.flatnonzero(~pending & ~unresolvable)
    unresolvable_at = np.flatnonzero(unresolvable)
    unresolvable_text = text[unresolvable_at]
    counts = np.bincount(reason, minlength=len(REASONS) + 1).tolist()
    outcome.rejected_by_reason = {REASONS[code - 1]: counts[code] for code in range(1, len(counts)) if counts[code]}
    if group is not None and group_gpus > pod.gpus and len(passed_at):
        candidates = names_at(passed_at)
        chosen = group_home if group_home in candidates else cheapest(candidates)
        others = passed_at[rows[passed_at] != columns.index[chosen]]
        if len(others):
            placing = _add(texts, f"{group_label(group)} is being placed on node {chosen}")
            unresolvable_at = np.concatenate((unresolvable_at, others))
            unresolvable_text = np.concatenate((unresolvable_text, np.full(len(others), placing, dtype=np.int64)))
            outcome.rejected_by_reason["tp_group"] = outcome.rejected_by_reason.get("tp_group", 0) + len(others)
        outcome.pin = (group, PinnedGroup(chosen, group_gpus, pod.gpus))
        outcome.passed = [chosen]
        outcome.passed_rows = columns.rows([chosen])
    else:
        outcome.pass_at(passed_at)
    outcome.rejections = Rejections(names_at, failed_at, text[failed_at], unresolvable_at, unresolvable_text, texts)
    return outcome


def _add(texts: list[str], text: str) -> int:
    """Append a sentence; its index."""
    texts.append(text)
    return len(texts) - 1


def _render(texts: list[str], text: Callable[..., str], *values: IntArray) -> IntArray:
    """``text(*row)`` for each row of ``values``, each distinct row written once and appended to ``texts``;
    the index of each row's sentence."""
    base = len(texts)
    if len(values[0]) <= 64:
        memo: dict[tuple[int, ...], int] = {}
        ids = []
        for row in zip(*(column.tolist() for column in values), strict=True):
            if row not in memo:
                memo[row] = _add(texts, text(*row))
            ids.append(memo[row])
        return np.array(ids, dtype=np.int64)
    # One int64 key per row from each column's rank among its distinct values: the keys sort as the rows do,
    # and a 1-D unique is an order of magnitude cheaper than ``np.unique(..., axis=0)`` (which sorts records).
    key = np.zeros(len(values[0]), dtype=np.int64)
    for column in values:
        distinct, rank = np.unique(column, return_inverse=True)
        key = key * len(distinct) + rank.reshape(-1)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    texts.extend(text(*(int(column[at]) for column in values)) for at in first.tolist())
    return base + inverse.reshape(-1)


def _kept(
    pins: Mapping[GroupKey, PinnedGroup], state: ClusterState, group: GroupKey | None, job: tuple[str, str] | None
) -> dict[str, int]:
    """GPUs per node kept from a pod of ``group`` and ``job``: for pinned groups and for gangs admission emptied a
    node for, other than its own."""
    kept = _kept_for_pinned_groups(pins, state, exclude=group)
    for node, gpus in _kept_for_planned_nodes(state, exclude=job).items():
        kept[node] = kept.get(node, 0) + gpus
    return kept


def _kept_for_planned_nodes(state: ClusterState, exclude: tuple[str, str] | None) -> dict[str, int]:
    """GPUs per node that gangs (other than ``exclude``) with pods not yet bound still need on the node admission
    emptied for them (rule 10): what admission counted for the gang there, less its pods bound there."""
    planned: dict[tuple[str, str], tuple[str, int, int]] = {}
    for pod in state.awaiting_planned_node.values():
        if pod.job_key != exclude and pod.job_key is not None and pod.contract.planned_node is not None:
            planned[pod.job_key] = (pod.contract.planned_node.name, pod.contract.planned_node.gpus, pod.gpus)
    kept: dict[str, int] = {}
    for job, (node, gpus, pod_gpus) in planned.items():
        bound = state.job_nodes[job][node] * pod_gpus if job in state.job_nodes else 0
        if gpus > bound:
            kept[node] = kept.get(node, 0) + gpus - bound
    return kept


def _kept_for_pinned_groups(
    pins: Mapping[GroupKey, PinnedGroup], state: ClusterState, exclude: GroupKey | None
) -> dict[str, int]:
    """GPUs per node that pinned groups (other than ``exclude``) still need for pods not yet bound."""
    kept: dict[str, int] = {}
    for key, pin in pins.items():
        if key == exclude:
            continue
        bound_pods = state.tp_groups[key][pin.node] if key in state.tp_groups else 0
        missing = max(0, pin.group_gpus - bound_pods * pin.pod_gpus)
        kept[pin.node] = kept.get(pin.node, 0) + missing
    return kept


def _allowed(job: frozenset[str], pool: frozenset[str]) -> frozenset[str] | None:
    """The intersection of two allow-lists where empty means "any"; None means any at all."""
    if job and pool:
        return job & pool
    return job or pool or None


def type_mismatch(
    node: NodeFacts, gpu_types: frozenset[str] | None, capacity_types: frozenset[str] | None
) -> tuple[str, str] | None:
    """(reason, sentence) when the node's GPU type or capacity type is not allowed (checks 2 and 3); else None."""
    if gpu_types is not None and node.gpu_type not in gpu_types:
        have = node.gpu_type or "no GPU type label"
        return "gpu_type", f"job accepts GPU types {','.join(sorted(gpu_types)) or 'none'}, node has {have}"
    if capacity_types is not None and node.capacity_type not in capacity_types:
        have = f"node is {node.capacity_type}" if node.capacity_type else "node has no karpenter.sh/capacity-type label"
        allowed = ",".join(sorted(capacity_types)) or "none"
        return "capacity_type", f"job and pool allow capacity types {allowed}, {have}"
    return None


def allocatable_need(
    pod: PodView, resource: str, group: GroupKey | None, group_home: str | None, group_gpus: int
) -> tuple[int, Callable[[int], str]]:
    """GPUs of ``resource`` a node must have allocatable at all (the pod's, or its tensor-parallel group's while
    the group has no node yet: a group never spans nodes), and the sentence for a node with ``total`` fewer
    (check 4; no eviction changes a node's allocatable, so these nodes are unresolvable)."""
    if group is not None and group_home is None and group_gpus > pod.gpus:
        label = group_label(group)
        return group_gpus, lambda total: f"{label} needs {group_gpus} GPUs on one node, node has {total} allocatable"
    return pod.gpus, lambda total: f"pod needs {pod.gpus} {resource}, node has {total} allocatable"


def held_back(node: NodeFacts, pod: PodView, reserved: Mapping[str, ReservedCapacity], hold: HoldBack) -> str | None:
    """The sentence when placing ``pod`` on a reserved node would eat into the forecast hold (check 6); else None."""
    if node.capacity_type != "reserved" or node.gpu_type is None or node.gpu_type not in reserved:
        return None
    capacity = reserved[node.gpu_type]
    upper = hold.upper_by_gpu_type.get(node.gpu_type)
    keep = reserved_keep(capacity, upper)
    if upper is None or keep is None:
        return None
    left = capacity.total - capacity.used - pod.gpus
    if left >= keep:
        return None
    return (
        f"reserved {node.gpu_type} GPUs are held for forecast high-priority demand (up to {upper:.0f} GPUs in "
        f"{hold.minutes} min, {hold.band} band): {keep} must stay free, this pod would leave {max(left, 0)}"
    )


def reserved_keep(capacity: ReservedCapacity, upper: float | None) -> int | None:
    """Reserved GPUs of one type a low-priority pod must leave free: the forecast upper band edge of
    high-priority demand (at most every reserved GPU of the type) less what high-priority pods hold there already;
    None when no forecast holds any (no finite upper edge). The one rule behind check 6 and ``GET /holdback``."""
    if upper is None or not math.isfinite(upper):
        return None
    return max(0, min(capacity.total, math.ceil(upper)) - capacity.used_high)


def reserved_holdback(reserved: Mapping[str, ReservedCapacity], hold: HoldBack, high_priority: int) -> ReservedHoldBack:
    """The hold of check 6 for every reserved GPU type, as the operator's admission reads it (``GET /holdback``):
    a gang admitted only onto what this leaves open is one the filter places whole."""
    holds = {}
    for gpu_type, capacity in reserved.items():
        upper = hold.upper_by_gpu_type.get(gpu_type)
        keep = reserved_keep(capacity, upper)
        if upper is not None and keep is not None:
            holds[gpu_type] = TypeHold(keep_free=keep, reserved=capacity.total, used=capacity.used, upper=upper)
    return ReservedHoldBack(high_priority=high_priority, minutes=hold.minutes, band=hold.band, by_gpu_type=holds)


def group_label(group: tuple[str, str, str]) -> str:
    """How a tensor-parallel group is named in a sentence."""
    namespace, job, index = group
    return f"tensor-parallel group {index.split('@')[0]} of job {namespace}/{job}"
