"""Admission's side of the scheduler extender's reserved hold-back (pure; no I/O).

The extender keeps reserved GPUs of each type free for forecast high-priority demand: it refuses a pod whose
priority is below its high-priority line a reserved node when placing it would leave fewer than ``keepFree``
reserved GPUs of that type free (:mod:`strata_api.holdback`). Admission that did not know this admitted a
low-priority gang onto reserved GPUs the extender then refused: one worker ran on spot, the other stayed Pending
until the gang was requeued, and the next pass admitted it the same way again. :class:`ReservedHold` places gangs
on admission's :class:`~strata_operator.core.room.Room` as the extender will: a held-back gang (its pool's
priority below the line) gets a held type's reserved GPUs only above what must stay free, and its other capacity
types first; every other gang as before. Without an answer from the extender there is no hold, and admission
places exactly as it did without one.

During a pass the hold moves as the extender's will: GPUs a high-priority gang takes on reserved nodes of a type
are what it will hold there once bound, and the extender keeps that much less free for the forecast then.
"""

from __future__ import annotations

from collections.abc import Iterable

from strata_api import CapacityType, GPUType
from strata_api.holdback import ReservedHoldBack
from strata_operator.core.room import Room

RESERVED = CapacityType.RESERVED.value


class ReservedHold:
    """The extender's hold during one admission pass; ``None`` holds nothing back."""

    def __init__(self, hold: ReservedHoldBack | None) -> None:
        self.hold = hold
        self.keep: dict[str, int] = (
            {gpu: h.keep_free for gpu, h in hold.by_gpu_type.items() if h.keep_free > 0} if hold else {}
        )
        """Reserved GPUs of each type that held-back gangs must leave free now."""

    def copy(self) -> ReservedHold:
        """The same hold with its own ``keep``, for a trial on a copy of the room (:meth:`take` lowers it)."""
        other = ReservedHold(None)
        other.hold, other.keep = self.hold, dict(self.keep)
        return other

    def holds_back(self, priority: int) -> bool:
        """Whether gangs of pools of this priority are held back from reserved GPUs."""
        return self.hold is not None and self.hold.holds_back(priority)

    def budget(self, room: Room, gpu_type: GPUType, capacity: Iterable[str], priority: int) -> int | None:
        """Reserved GPUs of ``gpu_type`` a gang of this priority may still take in ``room``; None: no limit."""
        keep = self.keep.get(gpu_type.value, 0)
        if keep <= 0 or RESERVED not in capacity or not self.holds_back(priority):
            return None
        return max(0, room.free_gpus(gpu_type, RESERVED) - keep)

    def reach(self, room: Room, gpu_type: GPUType, capacity: Iterable[str], priority: int) -> frozenset[str]:
        """The capacity types a gang of this priority can count on for ``gpu_type`` (a waiting gang reserves
        nodes among them): all of ``capacity``, less reserved while the hold keeps the gang off it and others
        remain."""
        capacity = frozenset(capacity)
        elsewhere = capacity - {RESERVED}
        return elsewhere if elsewhere and self.budget(room, gpu_type, capacity, priority) is not None else capacity

    def fits(
        self, room: Room, gpu_type: GPUType, capacity: Iterable[str], group_gpus: int, groups: int, priority: int
    ) -> bool:
        """Whether ``groups`` groups of ``group_gpus`` GPUs (each on one node) fit, the hold respected."""
        capacity = frozenset(capacity)
        budget = self.budget(room, gpu_type, capacity, priority)
        if budget is None:
            return room.slots(gpu_type, capacity, group_gpus) >= groups
        elsewhere = room.slots(gpu_type, capacity - {RESERVED}, group_gpus)
        on_reserved = min(room.slots(gpu_type, (RESERVED,), group_gpus), budget // group_gpus)
        return elsewhere + on_reserved >= groups

    def kept_out(
        self, room: Room, gpu_type: GPUType, capacity: Iterable[str], group_gpus: int, groups: int, priority: int
    ) -> bool:
        """Whether the hold is what keeps the gang out of ``room`` now: it would fit if the held GPUs were its."""
        capacity = frozenset(capacity)
        held = self.budget(room, gpu_type, capacity, priority) is not None
        return held and room.slots(gpu_type, capacity, group_gpus) >= groups

    def take(
        self, room: Room, gpu_type: GPUType, capacity: Iterable[str], group_gpus: int, groups: int, priority: int
    ) -> dict[str, int]:
        """Place up to ``groups`` groups as the extender will (see :meth:`Room.take`); GPUs taken per node.

        A held-back gang takes its other capacity types first and a held type's reserved GPUs only within its
        budget; a gang that is not held back may take reserved GPUs the forecast holds, and the extender keeps
        that many fewer free once its pods are bound."""
        capacity = frozenset(capacity)
        budget = self.budget(room, gpu_type, capacity, priority)
        if budget is None:
            taken = room.take(gpu_type, capacity, group_gpus, groups)
            self._lower_keep(room, gpu_type, taken, priority)
            return taken
        taken = room.take(gpu_type, capacity - {RESERVED}, group_gpus, groups)
        left = groups - sum(taken.values()) // group_gpus
        if left > 0:
            taken.update(room.take(gpu_type, (RESERVED,), group_gpus, min(left, budget // group_gpus)))
        return taken

    def take_on(self, room: Room, node: str, gpus: int, priority: int) -> None:
        """Count ``gpus`` of ``node`` taken by a gang of this priority that was planned there (rule 10): no fill
        order and no budget, the node is the gang's; the hold is lowered as :meth:`take` lowers it."""
        room.put(node, room.free[node] - gpus)
        gpu_type = room.kind[node][0]
        if gpu_type is not None:
            self._lower_keep(room, gpu_type, {node: gpus}, priority)

    def _lower_keep(self, room: Room, gpu_type: GPUType, taken: dict[str, int], priority: int) -> None:
        """A gang the hold does not hold back, taking reserved GPUs, lowers what the extender keeps free there."""
        if not self.holds_back(priority) and gpu_type.value in self.keep:
            on_reserved = sum(gpus for name, gpus in taken.items() if room.kind[name][1] == RESERVED)
            self.keep[gpu_type.value] = max(0, self.keep[gpu_type.value] - on_reserved)

    def why(self, room: Room, gpu_type: GPUType) -> str:
        """What holds ``gpu_type``'s reserved GPUs back now, in the extender's words (its refusal of a reserved node
        starts the same way)."""
        hold = self.hold.by_gpu_type.get(gpu_type.value) if self.hold else None
        if self.hold is None or hold is None:
            return f"no reserved {gpu_type} GPUs are held back"
        return (
            f"reserved {gpu_type} GPUs are held for forecast high-priority demand (up to {hold.upper:.0f} GPUs in "
            f"{self.hold.minutes} min, {self.hold.band} band): {self.keep.get(gpu_type.value, 0)} of the "
            f"{room.free_gpus(gpu_type, RESERVED)} free must stay free"
        )
