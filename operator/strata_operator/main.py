"""Start-up: settings from flags and environment, handler registration, and kopf with peering."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

import kopf

from strata_api.catalog import CatalogError
from strata_operator.core.status import REPORTING_COMPONENT
from strata_operator.handlers import inferenceservice, resourcepool, trainingjob
from strata_operator.runtime.kube import Kube, RetryPolicy, with_kubeconfig_token_file
from strata_operator.runtime.quoter import Quoter
from strata_operator.runtime.serving import ServingState
from strata_operator.runtime.shared import Runtime
from strata_operator.runtime.watches import ClusterCache
from strata_operator.settings import OperatorSettings

PREFIX = "strata.dev"
WATCHED_ONLY = frozenset({"Pod", "Node", "Deployment", "Service", "PodDisruptionBudget"})
"""Kinds kopf never reconciles here: the operator watches pods and nodes in :mod:`strata_operator.runtime.watches`,
and kopf only indexes what InferenceServices own."""


def build_registry(settings: OperatorSettings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    trainingjob.register(registry)
    resourcepool.register(registry, settings.admission_interval_s)
    inferenceservice.register(registry)
    kopf.on.startup(registry=registry)(configure)
    kopf.on.login(registry=registry)(login)
    kopf.on.cleanup(registry=registry)(close)
    return registry


async def configure(settings: kopf.OperatorSettings, memo: Any, logger: Any, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    settings.persistence.finalizer = trainingjob.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = LeanDiffBaseStorage(prefix=PREFIX, key="last-handled-configuration")
    settings.posting.reporting_component = REPORTING_COMPONENT
    settings.watching.server_timeout = 300
    policy = RetryPolicy(attempts=runtime.settings.api_attempts, budget_s=runtime.settings.api_retry_budget_s)
    retries = runtime.metrics.api_retries
    # the client logs in again (as kopf does) when the server refuses its token: service-account tokens rotate
    runtime.kube = Kube(lambda: login(settings), policy=policy, on_retry=lambda reason: retries.labels(reason).inc())
    runtime.quoter = Quoter(runtime.settings)
    runtime.cache = ClusterCache(runtime.kube, runtime.settings.namespaces, runtime.wake)
    runtime.cache.start()
    await runtime.cache.wait_synced()  # no admission or reconcile from half-listed pods and nodes
    if not runtime.settings.standalone:
        await ensure_peering(runtime.kube, runtime.settings)
    runtime.metrics.serve(runtime.settings.metrics_port)
    logger.info(f"strata-operator started: {runtime.settings}")


async def ensure_peering(kube: Kube, settings: OperatorSettings) -> None:
    """Create the kopf peering object(s) replicas elect through, if absent (kopf needs them to exist)."""
    name = settings.peering_name
    if not settings.namespaces:
        body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
        await kube.create("/apis/kopf.dev/v1/clusterkopfpeerings", body)
        return
    for namespace in settings.namespaces:
        body = {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": name, "namespace": namespace}}
        await kube.create(f"/apis/kopf.dev/v1/namespaces/{namespace}/kopfpeerings", body)


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's essence of an object, without deep-copying what the essence drops anyway.

    kopf builds the essence of every event by deep-copying the whole body, managedFields and status included, then
    deleting them: at 500 jobs that copy was the operator's largest CPU cost. The essence is the same when those
    stanzas are left out of the copy in the first place; and pods and nodes, which Strata only indexes and
    watches, need none (kopf uses it to detect changes for on.create/on.update handlers and daemons).
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        if body.get("kind") in WATCHED_ONLY:
            return {}  # no change or daemon handlers: kopf computes a diff of these and never uses it
        if extra_fields:  # a handler follows status fields: kopf's own way
            return super().build(body=body, extra_fields=extra_fields)
        meta = body.get("metadata", {})
        lean = {k: v for k, v in body.items() if k not in ("metadata", "status")}
        lean["metadata"] = {k: meta[k] for k in ("name", "namespace", "uid", "labels", "annotations") if k in meta}
        return super().build(body=kopf.Body(cast(kopf.RawBody, lean)), extra_fields=None)


def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """In a pod: its service account; elsewhere: KUBECONFIG (or ~/.kube/config), its user's ``tokenFile`` included.

    Token files are read at each call: kopf calls this again after a 401, and so does the operator's own client
    (:class:`~strata_operator.runtime.kube.Kube`), so a rotated token is picked up without a restart.
    """
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise kopf.PermanentError("no Kubernetes credentials: set KUBECONFIG or run in a pod with a service account")
    return with_kubeconfig_token_file(info)


async def close(memo: Any, **_: Any) -> None:
    runtime: Runtime = memo.runtime
    if runtime.cache is not None:
        await runtime.cache.stop()
    if runtime.kube is not None:
        await runtime.kube.close()
    if runtime.quoter is not None:
        await runtime.quoter.close()


def main(argv: Sequence[str] | None = None) -> None:
    settings = OperatorSettings.from_args(argv)  # a value that does not parse: a usage error naming it, exit 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings.prices  # noqa: B018  (read the catalog now: a bad one stops start-up with its message)
    except CatalogError as error:
        raise SystemExit(f"strata-operator: {error}") from None
    kopf.run(
        registry=build_registry(settings),
        memo=kopf.Memo(runtime=Runtime(settings), serving=ServingState()),
        standalone=settings.standalone,
        priority=settings.priority,
        peering_name=None if settings.standalone else settings.peering_name,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=liveness_endpoint(settings),
    )


def liveness_endpoint(settings: OperatorSettings) -> str | None:
    """kopf's health endpoint on every interface of the pod (the kubelet probes the pod's address), or none."""
    return f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
