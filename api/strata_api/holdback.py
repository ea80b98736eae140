"""The scheduler extender's reserved hold-back, as the operator's admission reads it (``GET /holdback``).

The extender keeps reserved GPUs of each type free for the upper band of forecast high-priority demand: it refuses
a low-priority pod (priority below :attr:`ReservedHoldBack.high_priority`) a reserved node when placing it would
leave fewer than :attr:`TypeHold.keep_free` reserved GPUs of that type free (its filter's ``reserved_holdback``
check). Admission reads the same figures once per pass and offers low-priority gangs only the reserved GPUs above
that line, so it never admits a gang the extender will then half place. The extender computes the answer with the
function its filter uses; both sides import this module, so the answer's shape exists once. Standard library only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

HOLDBACK_PATH = "/holdback"
"""The extender's route (``GET``) answering :meth:`ReservedHoldBack.to_json`."""


@dataclass(frozen=True)
class TypeHold:
    """The hold on the reserved GPUs of one type, now."""

    keep_free: int
    """Reserved GPUs of this type a low-priority pod may not take: the forecast upper band edge (at most every
    reserved GPU of the type) less what high-priority pods already hold there."""
    reserved: int
    """Allocatable GPUs of this type on reserved nodes."""
    used: int
    """Of those, GPUs held by pods bound there (anyone's)."""
    upper: float
    """The forecast's upper band edge of high-priority demand for this type, in GPUs."""

    @property
    def open_to_low_priority(self) -> int:
        """Reserved GPUs of this type a low-priority pod may still take."""
        return max(0, self.reserved - self.used - self.keep_free)


@dataclass(frozen=True)
class ReservedHoldBack:
    """The extender's hold-back on reserved GPUs, by GPU type (only types with a forecast and reserved nodes)."""

    high_priority: int
    """Pods with ``strata.dev/priority`` (their pool's priority) at or above this are never held back."""
    minutes: int = 15
    """How far ahead the forecast looks."""
    band: str = "80%"
    """Nominal coverage of the forecast band whose upper edge is held."""
    by_gpu_type: Mapping[str, TypeHold] = field(default_factory=dict)

    def holds_back(self, priority: int) -> bool:
        """Whether pods of this priority are held back from reserved GPUs."""
        return priority < self.high_priority

    def keep_free(self, gpu_type: str) -> int:
        hold = self.by_gpu_type.get(gpu_type)
        return hold.keep_free if hold is not None else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "highPriority": self.high_priority,
            "minutes": self.minutes,
            "band": self.band,
            "gpuTypes": {
                str(gpu): {"keepFree": h.keep_free, "reserved": h.reserved, "used": h.used, "upper": round(h.upper, 3)}
                for gpu, h in sorted(self.by_gpu_type.items())
            },
        }

    @classmethod
    def from_json(cls, answer: Any) -> ReservedHoldBack | None:
        """Read an answer leniently: None when it is not a hold-back at all (the caller then behaves as without an
        extender); a GPU type whose entry is malformed is left out (nothing held for it)."""
        if not isinstance(answer, dict) or not isinstance(answer.get("gpuTypes"), dict):
            return None
        high = answer.get("highPriority")
        if not isinstance(high, int) or isinstance(high, bool):
            return None
        minutes, band = answer.get("minutes"), answer.get("band")
        holds = {}
        for gpu, entry in answer["gpuTypes"].items():
            hold = _type_hold(entry)
            if isinstance(gpu, str) and hold is not None:
                holds[gpu] = hold
        return cls(
            high_priority=high,
            minutes=minutes if isinstance(minutes, int) and not isinstance(minutes, bool) else 15,
            band=band if isinstance(band, str) else "80%",
            by_gpu_type=holds,
        )


def _type_hold(entry: Any) -> TypeHold | None:
    if not isinstance(entry, dict):
        return None
    keep_free, reserved, used = (_count(entry.get(key)) for key in ("keepFree", "reserved", "used"))
    upper = entry.get("upper")
    if keep_free is None or reserved is None or used is None:
        return None
    if not isinstance(upper, int | float) or isinstance(upper, bool) or not math.isfinite(upper):
        return None
    return TypeHold(keep_free=keep_free, reserved=reserved, used=used, upper=float(upper))


def _count(value: Any) -> int | None:
    """A GPU count from JSON: a non-negative int32 (anything else, bools included, is not one)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31 else None
