"""The operator's view of pods and nodes: its own lean list-and-watch caches, not kopf's.

Pods and nodes are the bulk of what the operator sees (at 500 jobs of 8 workers: 4,000 pods, each changing five
or more times as it is created, ungated, bound and started, and every node's heartbeat), yet it needs only a few
fields of each. Through kopf every one of those events was decoded by the standard json module, wrapped, run
through kopf's change detection and three handlers: most of the operator's CPU when gangs start at scale. Here
one watch per kind decodes each event with orjson straight into the small summaries of
:mod:`strata_operator.core.observed`, keeps them in indices shaped like kopf's (key -> the values of the objects under
it, so admission and the job daemons read them the same way), and wakes the daemon of a job whose pod changed.

Each loop lists (in pages), then watches from the list's resourceVersion, and every later watch from the last
resourceVersion it saw (bookmarks included): a watch the server ends, or a connection that drops, resumes where
it stopped, after a backoff when it failed. Only an expired resourceVersion (410 Gone) lists again, replacing the
whole index at once, so readers never see half a list; a re-list of 4,000 pods is what a lost connection must not
cost. Admission and the job daemons wait for :attr:`ClusterCache.synced`: a pass over an empty pod index would
count every GPU free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import orjson

import strata_api as api
from strata_api.nodes import gpus_held
from strata_api.serving import LABEL_ROUTER
from strata_operator.core.observed import Node, WorkerPod
from strata_operator.core.replicas import ReplicaPod
from strata_operator.core.router import ROUTER_CONTAINER
from strata_operator.core.serving import CONTAINER
from strata_operator.runtime.kube import ApiError, Kube

T = TypeVar("T")
log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 300
"""Server-side timeout of one watch; the loop continues from the last resourceVersion it saw."""
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
"""Pause after a failed list or watch, doubled per failure in a row (the client already retried the call)."""


class Expired(Exception):
    """The server no longer holds the resourceVersion a watch asked for (410 Gone): only a new list can go on."""


class Index(Mapping[str, Collection[T]], Generic[T]):
    """key -> values, from a function of each object's body (like a kopf index): ``extract(body)`` returns the
    object's entries, or None / {} when it has none."""

    def __init__(self, extract: Callable[[Mapping[str, Any]], Mapping[str, T] | None]) -> None:
        self._extract = extract
        self._by_key: dict[str, dict[str, T]] = {}
        self._keys_of: dict[str, tuple[str, ...]] = {}
        """Object uid -> the keys its entries sit under (to take them out when it changes or goes)."""

    def upsert(self, uid: str, body: Mapping[str, Any]) -> tuple[str, ...]:
        """Put in the object's entries (replacing its old ones); the keys it sat or now sits under."""
        before = self.remove(uid)
        entries = self._extract(body) or {}
        for key, value in entries.items():
            self._by_key.setdefault(key, {})[uid] = value
        if entries:
            self._keys_of[uid] = tuple(entries)
        return before + tuple(entries)

    def remove(self, uid: str) -> tuple[str, ...]:
        keys = self._keys_of.pop(uid, ())
        for key in keys:
            bucket = self._by_key.get(key)
            if bucket is not None:
                bucket.pop(uid, None)
                if not bucket:
                    del self._by_key[key]
        return keys

    def empty(self) -> Index[T]:
        """A new, empty index with the same function, to fill from a list and then :meth:`take`."""
        return Index(self._extract)

    def take(self, fresh: Index[T]) -> set[str]:
        """Become ``fresh`` at once (readers never see half a list); every key that was or is present."""
        touched = set(self._by_key) | set(fresh._by_key)
        self._by_key, self._keys_of = fresh._by_key, fresh._keys_of
        return touched

    def __getitem__(self, key: str) -> Collection[T]:
        return self._by_key[key].values()

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._by_key))

    def __len__(self) -> int:
        return len(self._by_key)


class Informer:
    """One list-and-watch loop over a collection path, feeding indices; ``changed`` hears every key touched."""

    def __init__(
        self,
        kube: Kube,
        path: str,
        indices: Sequence[Index[Any]],
        changed: Callable[[Collection[str]], None] = lambda keys: None,
    ) -> None:
        self.kube, self.path, self.indices, self.changed = kube, path, indices, changed
        self.synced = asyncio.Event()
        self.resource_version: str | None = None
        """Where the next watch starts: the last version listed or seen; None until listed (or after a 410)."""

    async def run(self) -> None:
        backoff = RETRY_MIN_S
        while True:
            try:
                if self.resource_version is None:
                    await self._list()
                    backoff = RETRY_MIN_S
                while True:
                    before, started = self.resource_version, time.monotonic()
                    await self._watch()  # the server ended it: go on from where it stopped
                    if self.resource_version != before:
                        backoff = RETRY_MIN_S
                    elif time.monotonic() - started < RETRY_MIN_S:  # ended at once, bringing nothing: no hot loop
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, RETRY_MAX_S)
            except asyncio.CancelledError:
                raise
            except Expired as expired:
                log.info(f"{self.path}: {expired}; listing again")
                self.resource_version = None
                continue  # at once: nothing is wrong with the server
            except Exception as error:  # the list, or the connection of a watch, failed
                where = "listing again" if self.resource_version is None else f"watching from {self.resource_version}"
                log.warning(f"{self.path}: list/watch failed ({error!r}); {where} in {backoff:.1f}s")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX_S)

    async def _list(self) -> None:
        """Fill every index from a fresh list (page by page) and swap it in; watches go on from its version."""
        fresh = [index.empty() for index in self.indices]
        version = ""
        async for page in self.kube.list_pages(self.path):  # page by page: only summaries outlive a page
            for body in page.get("items") or ():
                for index in fresh:
                    index.upsert(_uid(body), body)
            version = str((page.get("metadata") or {}).get("resourceVersion", ""))
        touched: set[str] = set()
        for index, filled in zip(self.indices, fresh, strict=True):
            touched |= index.take(filled)
        self.resource_version = version
        self.synced.set()
        self.changed(touched)

    async def _watch(self) -> None:
        """Follow one watch from :attr:`resource_version`, advancing it with every event; :class:`Expired` when the
        server no longer has that version (410 Gone, as an answer or as an ERROR event)."""
        assert self.resource_version is not None
        lines = self.kube.watch_lines(self.path, self.resource_version, WATCH_TIMEOUT_S)
        try:
            async with contextlib.aclosing(lines):  # leaving early closes the watch's connection now, not at GC
                async for line in lines:
                    event = orjson.loads(line)
                    kind, body = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        code, message = body.get("code"), body.get("message")
                        if code == 410:
                            raise Expired(f"resourceVersion {self.resource_version} expired ({message})")
                        raise ApiError(int(code or 500), "WATCH", self.path, str(message))
                    version = (body.get("metadata") or {}).get("resourceVersion")
                    if kind == "BOOKMARK":
                        self.resource_version = str(version or self.resource_version)
                        continue
                    uid, touched = _uid(body), list[str]()
                    for index in self.indices:
                        touched.extend(index.remove(uid) if kind == "DELETED" else index.upsert(uid, body))
                    self.resource_version = str(version or self.resource_version)  # after the event is in
                    if touched:
                        self.changed(touched)
        except ApiError as error:
            if error.status == 410:
                raise Expired(f"resourceVersion {self.resource_version} expired ({error})") from None
            raise


class ClusterCache:
    """Worker pods by job, InferenceService replicas and routers by service, nodes by name, and GPUs held per node
    (by any bound, unfinished pod). The replicas and routers come from the same pod watch: no extra list or
    watch."""

    def __init__(self, kube: Kube, namespaces: Sequence[str], wake: Callable[[str], None]) -> None:
        self.worker_pods: Index[WorkerPod] = Index(worker_pod_entry)
        self.replica_pods: Index[ReplicaPod] = Index(replica_pod_entry)
        self.router_pods: Index[ReplicaPod] = Index(router_pod_entry)
        self.gpu_usage: Index[int] = Index(gpu_usage_entry)
        self.nodes: Index[Node] = Index(node_entry)

        def wake_jobs(keys: Collection[str]) -> None:
            for key in keys:
                # gpu_usage keys are node names; job keys (and replica_pods' service keys, whose daemons the
                # Deployment's status wakes instead: a job of the same name wakes for nothing) have a namespace
                if "/" in key:
                    wake(key)

        pod_paths = [f"/api/v1/namespaces/{ns}/pods" for ns in namespaces] or ["/api/v1/pods"]
        pod_indices: list[Index[Any]] = [self.worker_pods, self.replica_pods, self.router_pods, self.gpu_usage]
        self.informers = [Informer(kube, p, pod_indices, wake_jobs) for p in pod_paths]
        self.informers.append(Informer(kube, "/api/v1/nodes", [self.nodes]))
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(i.run(), name=f"watch {i.path}") for i in self.informers]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.informers)

    async def wait_synced(self) -> None:
        await asyncio.gather(*(i.synced.wait() for i in self.informers))


def worker_pod_entry(body: Mapping[str, Any]) -> dict[str, WorkerPod] | None:
    """Strata's worker pods by ``<namespace>/<job>``."""
    meta = body.get("metadata") or {}
    labels = meta.get("labels") or {}
    job = labels.get(api.LABEL_JOB)
    if not job or labels.get(api.LABEL_MANAGED_BY) != api.MANAGED_BY:
        return None
    return {f"{meta.get('namespace')}/{job}": WorkerPod.from_body(body)}


def _service_pod_entry(label: str, container: str) -> Callable[[Mapping[str, Any]], dict[str, ReplicaPod] | None]:
    """An index entry of a Strata-managed pod of an InferenceService, by ``<namespace>/<service>`` (the value of
    ``label``), read with ``container`` as its main one (what holds it up)."""

    def entry(body: Mapping[str, Any]) -> dict[str, ReplicaPod] | None:
        meta = body.get("metadata") or {}
        labels = meta.get("labels") or {}
        service = labels.get(label)
        if not service or labels.get(api.LABEL_MANAGED_BY) != api.MANAGED_BY:
            return None
        return {f"{meta.get('namespace')}/{service}": ReplicaPod.from_body(body, container)}

    return entry


replica_pod_entry = _service_pod_entry(api.LABEL_INFERENCE_SERVICE, CONTAINER)
"""InferenceServices' replica pods (router pods carry another label)."""
router_pod_entry = _service_pod_entry(LABEL_ROUTER, ROUTER_CONTAINER)
"""InferenceServices' router pods, read as replicas are."""


def gpu_usage_entry(body: Mapping[str, Any]) -> dict[str, int] | None:
    """GPUs held on a node by a bound, unfinished pod, Strata's or anyone's."""
    node = (body.get("spec") or {}).get("nodeName")
    gpus = gpus_held(body) if node else 0
    return {str(node): gpus} if gpus > 0 else None


def node_entry(body: Mapping[str, Any]) -> dict[str, Node]:
    return {str((body.get("metadata") or {}).get("name", "")): Node.from_body(body)}


def _uid(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")
