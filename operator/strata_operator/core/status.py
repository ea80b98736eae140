"""Building status changes: a draft over the stored status that yields a merge patch and the events to post."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from strata_api import Phase, format_time

PHASE_CONDITIONS = tuple(p.value for p in Phase)
"""Each phase has a condition of the same type, True while the job is in that phase."""
PREEMPTED = "Preempted"

NORMAL = "Normal"
WARNING = "Warning"


REPORTING_COMPONENT = "strata-operator"
"""Who posts the operator's Events (``source.component``): kopf's (``settings.posting``, set in ``main``) and the
ones posted once (:attr:`Event.once`)."""


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str
    once: bool = field(default=False, compare=False)
    """Posted exactly once for the change of spec it tells of: under a name of its own (:func:`once_event_name`),
    before the status write that records the change. An operator killed after the status write and before a
    posting it only queued would lose it (the next pass sees the change recorded); one killed before the status
    write posts it again under the same name, which the API server refuses (409), so it is not duplicated either.
    A TrainingJob's Events are posted the same way when its write is a moment that comes once
    (:func:`strata_operator.core.lifecycle.once_per`, named by :func:`once_event_name` or
    :func:`attempt_event_name`)."""


def once_event_name(name: str, uid: str, generation: int, reason: str) -> str:
    """The name of an Event posted once (:attr:`Event.once`): the object, its uid (a service of the same name made
    again is another), the generation of the spec whose change it tells of, and its reason."""
    return f"{name}.{uid[:8]}.g{generation}.{reason.lower()}"


def attempt_event_name(name: str, uid: str, attempt: int, reason: str) -> str:
    """The name of a TrainingJob's Event posted once (:attr:`Event.once`) for a moment of its ``attempt`` (admitted,
    running, its GPUs taken back, finished: each comes at most once an attempt, see
    :func:`strata_operator.core.lifecycle.once_per`), told by ``reason``."""
    return f"{name}.{uid[:8]}.a{attempt}.{reason.lower()}"


def once_event_manifest(
    involved: Mapping[str, Any], event: Event, name: str, now: datetime, component: str = REPORTING_COMPONENT
) -> dict[str, Any]:
    """A core/v1 Event about ``involved`` (its apiVersion, kind, name, namespace and uid), named ``name``."""
    meta = involved["metadata"]
    at = format_time(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": meta["namespace"]},
        "type": event.type,
        "reason": event.reason,
        "message": event.message,
        "involvedObject": {
            "apiVersion": involved["apiVersion"],
            "kind": involved["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "source": {"component": component},
        "reportingComponent": component,
        "count": 1,
        "firstTimestamp": at,
        "lastTimestamp": at,
    }


@dataclass
class StatusDraft:
    """Changes to one object's status. ``patch()`` gives only what changed, for a JSON merge patch."""

    stored: Mapping[str, Any]
    now: datetime
    changes: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        if key in self.changes:
            value = self.changes[key]
            return default if value is None else value
        return self.stored.get(key, default)

    def set(self, key: str, value: Any) -> None:
        if self.stored.get(key) == value and key not in self.changes:
            return
        self.changes[key] = value

    @property
    def phase(self) -> Phase | None:
        value = self.get("phase")
        return Phase(value) if value else None

    def transition(
        self, phase: Phase, reason: str, message: str, event_type: str = NORMAL, *, event: bool = True
    ) -> None:
        """Enter ``phase`` (or restate why we are in it): status, the phase conditions, and (unless ``event`` is
        False: a moment the same write's next transition tells) an Event."""
        changed = self.phase != phase or self.get("reason") != reason
        self.set("phase", phase.value)
        self.set("reason", reason)
        self.set("message", message)
        for kind in PHASE_CONDITIONS:
            if kind == phase.value:
                self.condition(kind, "True", reason, message)
            elif self._condition(kind) is not None:
                self.condition(kind, "False", reason, f"the job is {phase.value}")
        if changed and event:
            self.events.append(Event(event_type, reason, message))

    def condition(self, kind: str, status: str, reason: str, message: str) -> None:
        """Set one condition; its lastTransitionTime moves only when its status changes (metav1.Condition)."""
        conditions = [dict(c) for c in self.get("conditions", [])]
        old = next((c for c in conditions if c.get("type") == kind), None)
        since = old["lastTransitionTime"] if old and old.get("status") == status else format_time(self.now)
        new = {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": since}
        if old == new:
            return
        conditions = [c for c in conditions if c.get("type") != kind] + [new]
        conditions.sort(key=lambda c: PHASE_CONDITIONS.index(c["type"]) if c["type"] in PHASE_CONDITIONS else 99)
        self.set("conditions", conditions)

    def _condition(self, kind: str) -> Mapping[str, Any] | None:
        return next((c for c in self.get("conditions", []) if c.get("type") == kind), None)

    def patch(self) -> dict[str, Any]:
        return dict(self.changes)
