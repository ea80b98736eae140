"""A columnar copy of the node cache, so the filter and the score are array operations instead of a loop per node.

:class:`~strata_scheduler.state.ClusterState` keeps one :class:`NodeColumns` beside its ``nodes`` dict and
updates both under its lock on every watch event (node added, changed or deleted; a pod bound or finished).
A request maps its node names to row numbers once (one dict lookup each, in C) and from then on gathers:

- ``alloc[row, r]`` and ``used[row, r]``: allocatable GPUs of resource ``r`` (``GPU_RESOURCES`` order) and the
  GPUs bound pods hold there;
- ``gpu_count[row]`` and ``used_own[row]``: the same for the node's own GPU resource (0 when it has none);
- ``type_class[row]``: an index into ``type_reps``, one node per distinct (GPU type, capacity type): every check
  that reads only those two labels runs once per class, not once per node;
- ``cost_class[row]``: an index into ``cost_reps``, one node per distinct :func:`~strata_scheduler.views.cost_class`:
  the cost formula runs once per class;
- ``zone[row]``: an index into ``zones``;
- ``host_json[row]``: ``{"Host":"<name>","Score":`` as bytes, the start of the node's prioritize entry;
  ``name_json[row]``: ``"<name>"``; ``key_json[row]``: ``"<name>":`` (an entry of the filter's
  ``FailedNodes`` maps, less its value): answers are joined from these instead of encoding a dict per node
  (the filter's by the byte route, :mod:`strata_scheduler.fastpath`);
- ``name_obj[row]``: the name itself, to gather names by row.

:meth:`NodeColumns.rows_json` finds the rows of a request's names from their JSON text
(:mod:`strata_scheduler.fastpath.names`; its table is built on first use, so never with the byte route off).

Class tables only grow (a class outlives its last node); they hold a few dozen entries in any real fleet.
Rows of deleted nodes are reused.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import orjson

from strata_api import GPU_RESOURCES
from strata_api.nodes import NodeFacts
from strata_scheduler.fastpath.names import NameTable
from strata_scheduler.views import cost_class

RESOURCE_INDEX = {resource: column for column, resource in enumerate(GPU_RESOURCES)}

IntArray = npt.NDArray[np.int64]
_TEXTS = ("host_json", "name_json", "key_json", "name_obj")
K = TypeVar("K", bound=Hashable)


def host_json(name: str) -> bytes:
    """The start of one ``HostPriorityList`` entry, up to the score."""
    return b'{"Host":' + orjson.dumps(name) + b',"Score":'


def key_json(name: str) -> bytes:
    """The key of one entry of a JSON object keyed by node name, with its colon."""
    return orjson.dumps(name) + b":"


class NodeColumns:
    def __init__(self, capacity: int = 64) -> None:
        self.index: dict[str, int] = {}
        """node name -> row."""
        self.layout = 0
        """Bumped whenever a name gets or loses a row: rows looked up under one layout stay valid while it lasts."""
        self.names: list[str | None] = []
        self._free_rows: list[int] = []
        self.type_reps: list[NodeFacts] = []
        self._type_codes: dict[tuple[str | None, str | None], int] = {}
        self.cost_reps: list[NodeFacts] = []
        self._cost_codes: dict[tuple[object, ...], int] = {}
        self.zones: list[str | None] = []
        self.zone_codes: dict[str | None, int] = {}
        self._table: NameTable | None = None
        """Built on first use, then kept in step with rows as names come and go."""
        self._allocate(max(capacity, 1))

    def _allocate(self, capacity: int) -> None:
        width = len(GPU_RESOURCES)
        self.alloc: IntArray = np.zeros((capacity, width), dtype=np.int64)
        self.used: IntArray = np.zeros((capacity, width), dtype=np.int64)
        self.gpu_count: IntArray = np.zeros(capacity, dtype=np.int64)
        self.used_own: IntArray = np.zeros(capacity, dtype=np.int64)
        self.own_resource: IntArray = np.full(capacity, -1, dtype=np.int64)
        self.type_class: IntArray = np.zeros(capacity, dtype=np.int64)
        self.cost_class: IntArray = np.zeros(capacity, dtype=np.int64)
        self.zone: IntArray = np.zeros(capacity, dtype=np.int64)
        self.host_json: npt.NDArray[np.object_] = np.full(capacity, b"", dtype=object)
        self.name_json: npt.NDArray[np.object_] = np.full(capacity, b"", dtype=object)
        self.key_json: npt.NDArray[np.object_] = np.full(capacity, b"", dtype=object)
        self.name_obj: npt.NDArray[np.object_] = np.full(capacity, "", dtype=object)

    def _grow(self) -> None:
        old = len(self.gpu_count)
        arrays = ("alloc", "used", "gpu_count", "used_own", "own_resource", "type_class", "cost_class", "zone")
        saved = {name: getattr(self, name) for name in (*arrays, *_TEXTS)}
        self._table = None  # sized for the old capacity
        self._allocate(old * 2)
        for name, values in saved.items():
            getattr(self, name)[:old] = values

    # --- updates (call with the state's lock held) ---
    def clear(self) -> None:
        self.layout += 1
        self.index.clear()
        self.names.clear()
        self._free_rows.clear()
        self._table = None
        self._allocate(len(self.gpu_count))

    def upsert(self, node: NodeFacts, used: Mapping[str, int] | None) -> None:
        row = self.index.get(node.name)
        if row is None:
            if self._free_rows:
                row = self._free_rows.pop()
                self.names[row] = node.name
            else:
                row = len(self.names)
                if row == len(self.gpu_count):
                    self._grow()
                self.names.append(node.name)
            self.index[node.name] = row
            self.layout += 1
            self.host_json[row] = host_json(node.name)
            self.name_json[row] = orjson.dumps(node.name)
            self.key_json[row] = key_json(node.name)
            self.name_obj[row] = node.name
            if self._table is not None and not self._table.add(row, node.name):
                self._table = None  # rebuilt on next use
        for resource, column in RESOURCE_INDEX.items():
            self.alloc[row, column] = node.allocatable_gpus.get(resource, 0)
        self.own_resource[row] = RESOURCE_INDEX.get(node.gpu_resource or "", -1)
        self.gpu_count[row] = node.gpu_count
        self.type_class[row] = self._code(self._type_codes, self.type_reps, (node.gpu_type, node.capacity_type), node)
        self.cost_class[row] = self._code(self._cost_codes, self.cost_reps, cost_class(node), node)
        if node.zone not in self.zone_codes:
            self.zone_codes[node.zone] = len(self.zones)
            self.zones.append(node.zone)
        self.zone[row] = self.zone_codes[node.zone]
        self.set_used(node.name, used)

    def delete(self, name: str) -> None:
        row = self.index.pop(name, None)
        if row is None:
            return
        self.layout += 1
        self.names[row] = None
        if self._table is not None:
            self._table.remove(row)
        for texts in (self.host_json, self.name_json, self.key_json):
            texts[row] = b""
        self.name_obj[row] = ""
        self.alloc[row] = 0
        self.used[row] = 0
        self.gpu_count[row] = self.used_own[row] = 0
        self.own_resource[row] = -1
        self._free_rows.append(row)

    def set_used(self, name: str, used: Mapping[str, int] | None) -> None:
        """GPUs held on node ``name`` by bound pods, by resource (a no-op for nodes not in the cache)."""
        row = self.index.get(name)
        if row is None:
            return
        for resource, column in RESOURCE_INDEX.items():
            self.used[row, column] = used.get(resource, 0) if used else 0
        own = self.own_resource[row]
        self.used_own[row] = self.used[row, own] if own >= 0 else 0

    @staticmethod
    def _code(codes: dict[K, int], reps: list[NodeFacts], key: K, node: NodeFacts) -> int:
        code = codes.get(key)
        if code is None:
            code = codes[key] = len(reps)
            reps.append(node)
        return code

    # --- reads ---
    def rows(self, names: Sequence[str]) -> IntArray:
        """Row of each name, -1 for names not in the cache."""
        return np.fromiter(map(self.index.get, names, itertools.repeat(-1)), dtype=np.int64, count=len(names))

    def rows_json(self, text: bytes) -> IntArray | None:
        """Rows of the names in ``text``, the JSON text between the brackets of a ``NodeNames`` array, without
        decoding it; None unless every name is a distinct cached node (see
        :class:`~strata_scheduler.fastpath.names.NameTable`)."""
        if self._table is None:
            self._table = NameTable(self.names, capacity=len(self.gpu_count))
        return self._table.rows(text)

    def rows_of(self, names: Iterable[str]) -> list[int]:
        """Rows of those of ``names`` that are in the cache."""
        return [row for name in names if (row := self.index.get(name)) is not None]
