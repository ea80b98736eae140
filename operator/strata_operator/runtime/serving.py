"""InferenceServices as the operator holds them in memory, and the API calls that apply what
:mod:`strata_operator.core.serving` builds: the Deployment, the Service, the PodDisruptionBudget, the router's
ConfigMap and the status."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

import strata_api as api
from strata_api import InferenceService
from strata_api.serving import ScaleReport
from strata_operator.core.pods import controller_of, left_by_earlier
from strata_operator.core.serving import held_by_another, spec_patch
from strata_operator.core.status import Event
from strata_operator.runtime.events import write_with_events
from strata_operator.runtime.kube import Kube, custom_path


@dataclass(frozen=True)
class ServiceEntry:
    """An InferenceService as the index holds it: the typed view, its raw status and its resourceVersion."""

    service: InferenceService
    status: Mapping[str, Any]
    resource_version: str

    @property
    def status_path(self) -> str:
        s = self.service
        return custom_path(api.GROUP, api.VERSION, api.INFERENCE_SERVICES, s.name, s.namespace) + "/status"


@dataclass
class ServingState:
    """What the InferenceService daemons share (in kopf's memo): each one's wake-up, by service key."""

    wakeups: dict[str, asyncio.Event] = field(default_factory=dict)

    def wake(self, key: str) -> None:
        event = self.wakeups.get(key)
        if event is not None:
            event.set()


def deployments_path(namespace: str, name: str = "") -> str:
    return f"/apis/apps/v1/namespaces/{namespace}/deployments" + (f"/{name}" if name else "")


def disruption_budgets_path(namespace: str, name: str = "") -> str:
    return f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets" + (f"/{name}" if name else "")


def services_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/services" + (f"/{name}" if name else "")


def config_maps_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps" + (f"/{name}" if name else "")


class NameTaken(Exception):
    """An object a service needs has a name another holds (:func:`strata_operator.core.serving.held_by_another`):
    the message says which and what to do."""


async def _ours_to_write(kube: Kube, path: str, manifest: Mapping[str, Any]) -> bool:
    """After a create found the name taken: whether the object there is the service's to write. Not when it is
    gone since or on its way out (deleted, or left by an earlier service of the same name for the garbage
    collector): a later pass creates it. :class:`NameTaken` when another holds it."""
    existing = await kube.read(path)
    owner = controller_of(manifest)
    assert owner is not None  # every object the operator makes for a service names it as controller
    if existing is None or left_by_earlier(existing, owner):
        return False
    why = held_by_another(existing, manifest)
    if why is not None:
        raise NameTaken(why)
    return True


async def put_deployment(kube: Kube, deployment: Mapping[str, Any]) -> None:
    """Create the Deployment, or replace the one there (its template and size; the selector never changes): a
    replace, not a merge, so that a field dropped from the spec (a node selector, a volume) goes too. One that is
    not the service's is left alone (:class:`NameTaken`)."""
    meta = deployment["metadata"]
    if await kube.create(deployments_path(meta["namespace"]), deployment):
        return
    path = deployments_path(meta["namespace"], meta["name"])
    if await _ours_to_write(kube, path, deployment):
        await kube.request("PUT", path, deployment)


async def ensure(
    kube: Kube,
    collection: str,
    manifest: Mapping[str, Any],
    observed_spec: Mapping[str, Any] | None = None,
    part: str = "spec",
) -> None:
    """Create an object, or merge its spec (``part``; a ConfigMap's ``data``) into the one there (a Service's or a
    budget's spec has no list the operator ever shortens; a selector key it dropped is removed). One that is not
    the service's is left alone (:class:`NameTaken`)."""
    if await kube.create(collection, manifest):
        return
    path = f"{collection}/{manifest['metadata']['name']}"
    if await _ours_to_write(kube, path, manifest):
        await kube.merge_patch(path, {part: spec_patch(manifest, observed_spec, part)})


async def read_scale(url: str, timeout_s: float) -> ScaleReport | None:
    """The router's last scaling decision (``GET /scale``); None when it has none yet, cannot be reached or
    answers something else (the replica count then stays as it is)."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.get(url) as response,
        ):
            if response.status != 200:
                return None
            return ScaleReport.from_json(orjson.loads(await response.read()))
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError, AttributeError):
        return None


async def write_status(kube: Kube, entry: ServiceEntry, patch: Mapping[str, Any], events: list[Event]) -> bool:
    """Write a status change if the service is still what we read; False when it changed meanwhile or is gone.

    The Events posted once (:attr:`Event.once`) go first, each under its own name (409 when a killed operator
    posted it already), then the status, then the others through kopf's queue. An Event is auxiliary: one the API
    server refuses for another reason is left out (as kopf leaves its own out), never a reason to keep the status
    from being written."""
    s = entry.service
    ref = {
        "apiVersion": api.API_VERSION,
        "kind": api.INFERENCE_SERVICE,
        "metadata": {"name": s.name, "namespace": s.namespace, "uid": s.uid},
    }

    async def write() -> bool:
        return not patch or await kube.patch_status_if_unchanged(entry.status_path, entry.resource_version, patch)

    return await write_with_events(kube, ref, events, write)
