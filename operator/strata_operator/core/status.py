"""Building status changes: a draft over the stored status that yields a merge patch and the events to post."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from strata_api import Phase, format_time, parse_time

PHASE_CONDITIONS = tuple(p.value for p in Phase)
"""Each phase has a condition of the same type, True while the job is in that phase."""
PREEMPTED = "Preempted"

NORMAL = "Normal"
WARNING = "Warning"


REPORTING_COMPONENT = "strata-operator"
"""Who posts the operator's Events (``source.component``): kopf's (``settings.posting``, set in ``main``) and the
ones posted once (:attr:`Event.once`)."""


def attempt_moment(attempt: int) -> str:
    """The moment key (:attr:`Event.once`) of what comes at most once in a TrainingJob's attempt."""
    return f"a{attempt}"


def generation_moment(generation: int) -> str:
    """The moment key (:attr:`Event.once`) of what comes at most once for a spec generation (a TrainingJob's
    suspend)."""
    return f"g{generation}"


def revision_moment(generation: int, revision: str) -> str:
    """The moment key (:attr:`Event.once`) of a rollout step of an InferenceService: a revision starting as a canary,
    promoted, rolled back or rolled to. A spec generation alone does not tell them apart, since a TrainingJob's newer
    checkpoint makes a new revision under the same generation (a revision does not come back within one)."""
    return f"g{generation}.{revision}"


def scaling_moment(last_scale: Mapping[str, Any]) -> str:
    """The moment key (:attr:`Event.once`) of a change of an InferenceService's replica count, made from the stored
    ``status.lastScale`` (every change of the count writes a new one, so the time of the one it moves from tells
    the change apart from every other): its time in epoch seconds, 0 where none is stored."""
    at = parse_time(last_scale.get("time"))
    return f"s{int(at.timestamp()) if at is not None else 0}"


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str
    once: str | None = field(default=None, compare=False)
    """The moment it tells of, where that moment comes only once and the status write records it
    (:func:`attempt_moment`, :func:`generation_moment`, :func:`revision_moment`, :func:`scaling_moment`): then it is
    posted under a name of its own (:func:`once_event_name`) before the write. An operator killed after the status
    write and before a posting it only queued would lose it (the next pass sees the moment recorded); one killed
    before the status write posts it again under the same name, which the API server refuses (409), so it is not
    duplicated either. None: a moment that can come again (a waiting reason, a condition's change), posted through
    kopf after the write."""


def once_event_name(name: str, uid: str, moment: str, reason: str) -> str:
    """The name of an Event posted once (:attr:`Event.once`): the object, its uid (an object of the same name made
    again is another), the moment and the reason."""
    return f"{name}.{uid[:8]}.{moment}.{reason.lower()}"


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
