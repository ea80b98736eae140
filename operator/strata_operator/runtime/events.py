"""Events posted once (:attr:`strata_operator.core.status.Event.once`): under a name of their own, before the
status write that records what they tell of, for a TrainingJob (``runtime.jobs``) and an InferenceService
(``runtime.serving``) alike. kopf posts the others from a queue after the write. And the Events read: why a
worker's or a replica's volumes do not come (:func:`with_volume_failures`)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar, cast
from urllib.parse import quote

import aiohttp
import kopf

from strata_operator.core.observed import WorkerPod, awaiting_volumes, volume_failure
from strata_operator.core.replicas import ReplicaPod
from strata_operator.core.status import Event, once_event_manifest, once_event_name
from strata_operator.runtime.kube import ApiError, Kube


def events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/events"


async def post_event_once(kube: Kube, involved: Mapping[str, Any], event: Event, name: str) -> None:
    """Post ``event`` about ``involved`` (its apiVersion, kind and metadata name, namespace, uid) as ``name``: an
    operator killed after the status write has posted it already, and one killed before posts it again under that
    name, which the API server refuses (409). Auxiliary, as kopf's own Events are: one refused for another reason is
    left out, never a reason to keep the status from being written."""
    manifest = once_event_manifest(involved, event, name, datetime.now(UTC))
    with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
        await kube.create(events_path(involved["metadata"]["namespace"]), manifest)


def post_event(involved: Mapping[str, Any], event: Event) -> None:
    """An Event about ``involved`` that kopf posts in the background, after the caller's write."""
    kopf.event(kopf.Body(cast(kopf.RawBody, involved)), type=event.type, reason=event.reason, message=event.message)


async def write_with_events(
    kube: Kube, involved: Mapping[str, Any], events: Sequence[Event], write: Callable[[], Awaitable[bool]]
) -> bool:
    """Post the Events of moments that come once (:attr:`Event.once`, :func:`post_event_once`), then ``write`` the
    status, then, if it was written, hand the others to kopf; what ``write`` answered."""
    meta = involved["metadata"]
    for event in events:
        if event.once is not None:
            await post_event_once(
                kube, involved, event, once_event_name(meta["name"], meta["uid"], event.once, event.reason)
            )
    if not await write():
        return False
    for event in events:
        if event.once is None:
            post_event(involved, event)
    return True


Starting = TypeVar("Starting", WorkerPod, ReplicaPod)


async def with_volume_failures(
    kube: Kube, namespace: str, pods: Iterable[Starting], now: datetime, grace_s: float
) -> list[Starting]:
    """``pods`` (workers or replicas in ``namespace``), those that
    :func:`~strata_operator.core.observed.awaiting_volumes` names with ``volume_failure``: the newest of their
    Warning Events about volumes, one LIST each. A pod whose Events say nothing of its volumes is left as it is, as is
    one whose Events the API server refuses or fails to list (the status then says what it said before)."""
    pods = list(pods)
    failures: dict[str, str | None] = {}
    for name in awaiting_volumes(pods, now, grace_s):
        selector = quote(f"involvedObject.kind=Pod,involvedObject.name={name},type=Warning")
        try:
            listed = await kube.request("GET", f"{events_path(namespace)}?fieldSelector={selector}")
        except (ApiError, aiohttp.ClientError, TimeoutError):
            continue
        failures[name] = volume_failure(listed.get("items") or (), now)
    return [replace(p, volume_failure=failures[p.name]) if failures.get(p.name) else p for p in pods]
