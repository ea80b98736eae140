"""List-and-watch loops that keep :class:`~strata_scheduler.state.ClusterState` current, one thread per kind.

The loops read raw JSON (``_preload_content=False``) and parse it with orjson: the client's typed models cost
tens of milliseconds per thousand nodes to build and the cache keeps only a few fields anyway. Each loop lists,
marks its kind synced, then watches from the list's resourceVersion; an expired watch (410 Gone) re-lists.
ResourcePools and TrainingJobs are optional: while their CRD is absent (404) the loop counts them as synced
(empty) and looks again every ``crd_retry_s``, so the extender works before and after the operator installs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from strata_api import GROUP, RESOURCE_POOLS, TRAINING_JOBS, VERSION
from strata_scheduler.state import ClusterState

log = logging.getLogger(__name__)

WATCH_TIMEOUT_S = 60
"""Server-side watch timeout; the loop re-watches from the last resourceVersion, and notices ``stop`` this often."""


@dataclass(frozen=True)
class Kind:
    name: str
    list_call: Callable[..., Any]
    replace: Callable[[list[Mapping[str, Any]]], None]
    upsert: Callable[[Mapping[str, Any]], None]
    delete: Callable[[Mapping[str, Any]], None]
    optional: bool = False


def api_client(kubeconfig: str | None) -> client.ApiClient:
    if kubeconfig:
        configured: client.ApiClient = config.new_client_from_config(config_file=kubeconfig)
        return configured
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def kinds(api: client.ApiClient, state: ClusterState, watch_crds: bool = True) -> list[Kind]:
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)

    def custom_list(plural: str) -> Callable[..., Any]:
        return lambda **kw: custom.list_cluster_custom_object(GROUP, VERSION, plural, **kw)

    result = [
        Kind("nodes", core.list_node, state.replace_nodes, state.upsert_node, lambda o: state.delete_node(_name(o))),
        Kind(
            "pods",
            core.list_pod_for_all_namespaces,
            state.replace_pods,
            state.upsert_pod,
            lambda o: state.delete_pod(str(_meta(o).get("uid", ""))),
        ),
    ]
    if watch_crds:
        result += [
            Kind(
                "resourcepools",
                custom_list(RESOURCE_POOLS),
                state.replace_pools,
                state.upsert_pool,
                lambda o: state.delete_pool(_name(o)),
                optional=True,
            ),
            Kind(
                "trainingjobs",
                custom_list(TRAINING_JOBS),
                state.replace_jobs,
                state.upsert_job,
                lambda o: state.delete_job(str(_meta(o).get("namespace", "")), _name(o)),
                optional=True,
            ),
        ]
    return result


class Watcher(threading.Thread):
    def __init__(self, kind: Kind, state: ClusterState, stop: threading.Event, crd_retry_s: float = 30.0) -> None:
        super().__init__(name=f"watch-{kind.name}", daemon=True)
        self.kind = kind
        self.state = state
        self.stop = stop
        self.crd_retry_s = crd_retry_s

    def run(self) -> None:
        backoff = 0.5
        while not self.stop.is_set():
            try:
                version: str | None = self._list()
                backoff = 0.5
                while version is not None and not self.stop.is_set():
                    version = self._watch(version)
            except ApiException as error:
                if self.stop.is_set():
                    return
                if error.status == 404 and self.kind.optional:
                    log.info("%s: CRD not installed; looking again in %.0fs", self.kind.name, self.crd_retry_s)
                    self.kind.replace([])
                    self.state.mark_synced(self.kind.name)
                    self.stop.wait(self.crd_retry_s)
                    continue
                log.warning("%s: API error %s; re-listing in %.1fs", self.kind.name, error.status, backoff)
            except Exception:
                if self.stop.is_set():
                    return  # the connection was cut because we are stopping
                log.exception("%s: watch failed; re-listing in %.1fs", self.kind.name, backoff)
            self.stop.wait(backoff)
            backoff = min(backoff * 2, 30.0)

    def _list(self) -> str:
        response = self.kind.list_call(_preload_content=False)
        document = orjson.loads(response.data)
        self.kind.replace(document.get("items") or [])
        self.state.mark_synced(self.kind.name)
        return str(_meta(document).get("resourceVersion", ""))

    def _watch(self, version: str) -> str | None:
        """Follow one watch; the resourceVersion to continue from, or None to re-list."""
        response = self.kind.list_call(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_TIMEOUT_S,
            _preload_content=False,
        )
        try:
            for line in _lines(response):
                event = orjson.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    log.info("%s: watch ended (%s); re-listing", self.kind.name, obj.get("message"))
                    return None
                version = str(_meta(obj).get("resourceVersion", version))
                if kind in ("ADDED", "MODIFIED"):
                    self.kind.upsert(obj)
                elif kind == "DELETED":
                    self.kind.delete(obj)
        finally:
            response.release_conn()
        return version


def _lines(response: Any) -> Iterator[bytes]:
    pending = b""
    for chunk in response.stream(64 * 1024, decode_content=True):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def _name(obj: Mapping[str, Any]) -> str:
    return str(_meta(obj).get("name", ""))


def start_watchers(
    api: client.ApiClient, state: ClusterState, stop: threading.Event, watch_crds: bool = True
) -> list[Watcher]:
    watchers = [Watcher(kind, state, stop) for kind in kinds(api, state, watch_crds)]
    for watcher in watchers:
        watcher.start()
    return watchers
