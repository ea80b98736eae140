"""Pure builders for an InferenceService's router, and the reading of its scaling decisions. No I/O.

Every service gets a router (``python -m strata_serving.router``, the light ``serving`` image): a Deployment of
``router_replicas`` pods spread over nodes and zones, behind the service's main Service ``<name>`` (the URL in
status), and the replicas behind a headless Service ``<name>-replicas`` whose DNS name the router resolves (no RBAC
needed). The headless Service publishes replicas that are not ready yet too, so the router knows which are
starting: its autoscaler counts them, and its probes keep them out of the rotation until ``/readyz`` says 200.

The router sees every request, so it runs the autoscaler (``spec.autoscaling``, request rate only) and answers its
last decision at ``GET /scale``; the operator reads it (:func:`wanted_replicas`), clamps it to the pool's quota
(:func:`strata_operator.core.serving.allot`) and applies it.

The autoscaler's lead (:func:`startup_lead`) follows the replicas' measured start-up, which is known only once
replicas have started and changes with each revision. It reaches the routers through a ConfigMap ``<name>-router``
(:func:`build_router_config`) mounted into their pods, never through their pod template: the kubelet refreshes a
mounted ConfigMap's files in place, and the router re-reads the file at each decision
(:class:`strata_serving.scaler.LeadFile`), so a new measurement replaces no router pod (a replaced router would
lose its request history, the forecasts' input, and answer no decision for its first interval). The routers need
no API access for it (they have none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import strata_api as api
from strata_api import InferenceService
from strata_api.serving import LABEL_ROUTER, SCALE_APPLIED_PARAM, SCALE_PATH, ScaleReport
from strata_operator.core.canary import RolloutPlan, canary_dns
from strata_operator.core.pods import CONTAINER_SECURITY_CONTEXT, pod_security_context
from strata_operator.core.serving import DRAIN_SECONDS, SERVE_PORT, owned_labels, owner_reference, revision, url
from strata_operator.settings import OperatorSettings

ROUTER_CONTAINER = "router"
ROUTER_COMMAND = ("python", "-m", "strata_serving.router")
ROUTER_PORT = 8080
"""The router's port (``RouterSettings.port``, set explicitly); the main Service maps the replicas' port to it, so
the service's URL is the same with or without a router in front."""
ROUTER_ENV_PREFIX = "STRATA_ROUTER_"
"""The router reads ``STRATA_ROUTER_<FIELD>`` (strata_serving.router_settings.RouterSettings); tests/unit/operator
checks that every variable set here names one of its fields."""
ROUTER_SHUTDOWN_DELAY_S = 5
"""``RouterSettings.shutdown_delay_s``: a router told to stop keeps answering this long, while its endpoint's
removal reaches every node's proxy (within a second or two on a healthy cluster), before it closes its port."""
ROUTER_TERMINATION_GRACE_S = ROUTER_SHUTDOWN_DELAY_S + DRAIN_SECONDS + 5
"""The delay, then the requests in flight through the router (``RouterSettings.drain_s``, the replicas' drain), and
a margin: the kubelet never kills a router that is still answering."""
SCALE_FROM_ZERO_HOLD_S = 300
"""``RouterSettings.hold_s`` for a service whose ``replicas.min`` is 0: a request that finds no replica waits this
long for the first one the autoscaler orders (Knative's default request timeout, 300 s, bounds its activator's)."""
ROUTER_SUFFIX = "-router"
REPLICAS_SUFFIX = "-replicas"
DEFAULT_STARTUP_S = 60
"""The router's lead when ``spec.autoscaling.horizonSeconds`` is unset and no start-up time is measured yet."""
STARTUP_STEP_S = 15
"""A measured start-up becomes the router's lead rounded up to a multiple of this: the router's decision
interval (``RouterSettings.autoscale_interval_s``, 15 s), below which a finer lead changes no decision. In steps,
a start-up that wobbles by a second writes no new ConfigMap."""
LEAD_KEY = "autoscale-startup-s"
"""The key of the router's ConfigMap that holds the lead in seconds, and so the file's name in the mount."""
LEAD_MOUNT = "/etc/strata/router"
"""Where the router's ConfigMap is mounted in the router pods (read-only)."""
LEAD_FILE = f"{LEAD_MOUNT}/{LEAD_KEY}"
"""The file the router re-reads at each decision (``RouterSettings.autoscale_startup_file``)."""


def router_name(service: InferenceService) -> str:
    return service.name + ROUTER_SUFFIX


def replicas_service_name(service: InferenceService) -> str:
    return service.name + REPLICAS_SUFFIX


def router_selector(service: InferenceService) -> dict[str, str]:
    """Labels of the router's pods; not the replicas' (:func:`strata_operator.core.serving.selector`), so that
    neither Deployment, budget nor Service ever selects the other's pods."""
    return {LABEL_ROUTER: service.name, api.LABEL_MANAGED_BY: api.MANAGED_BY}


def owned_metadata(service: InferenceService, name: str) -> dict[str, Any]:
    """Metadata of an object the service owns: its labels (the operator's watches select on them and find the
    service by its label), its owner reference (garbage collection)."""
    return {
        "name": name,
        "namespace": service.namespace,
        "labels": owned_labels(service),
        "ownerReferences": [owner_reference(service)],
    }


def autoscaled(service: InferenceService) -> bool:
    """Whether the router decides the replica count: ``spec.autoscaling`` (on any of its metrics: the router's
    autoscaler sizes by request rate, requests in flight or p99 latency), with room between ``replicas.min`` and
    ``max``."""
    return service.spec.autoscaling is not None and service.spec.max_replicas > service.spec.min_replicas


def startup_lead(service: InferenceService, measured_s: float | None) -> int:
    """The autoscaler's start-up lead, in seconds: ``spec.autoscaling.horizonSeconds`` when set, else the measured
    replica start-up (``status.startupSeconds``) rounded up to a :data:`STARTUP_STEP_S` step (at least one), else
    :data:`DEFAULT_STARTUP_S`."""
    scaling = service.spec.autoscaling
    if scaling is not None and scaling.horizon_seconds:
        return int(scaling.horizon_seconds)
    if measured_s is None:
        return DEFAULT_STARTUP_S
    return max(1, math.ceil(measured_s / STARTUP_STEP_S)) * STARTUP_STEP_S


def router_env(
    service: InferenceService, settings: OperatorSettings, rollout: RolloutPlan | None = None
) -> dict[str, str]:
    """The router's settings (``STRATA_ROUTER_<FIELD>``): where the replicas are (and a canary's, with its share
    of the requests, while ``rollout`` splits them), how it stops, how long a request waits for a replica when
    ``replicas.min`` is 0, and the autoscaler's policy. Not its lead: the router reads
    that from :data:`LEAD_FILE` (:func:`build_router_config`) at its first decision and each one after, so neither a
    measurement nor a change of ``spec.autoscaling.horizonSeconds`` changes the pod template."""
    spec = service.spec
    env = {
        "PORT": str(ROUTER_PORT),
        "REPLICAS_DNS": f"{replicas_service_name(service)}.{service.namespace}.svc:{SERVE_PORT}",
        "REPLICA_CONCURRENCY": str(spec.model.max_batch),  # the server batches this many at once
        "SHUTDOWN_DELAY_S": str(ROUTER_SHUTDOWN_DELAY_S),
        "DRAIN_S": str(DRAIN_SECONDS),  # a request through the router takes as long as at the replica
    }
    if spec.min_replicas == 0:  # scaled to zero now and then: hold a request for the first replica
        env["HOLD_S"] = str(SCALE_FROM_ZERO_HOLD_S)
    if rollout is not None and rollout.splitting:
        env.update(CANARY_DNS=canary_dns(service), CANARY_PERCENT=str(rollout.percent))
    scaling = spec.autoscaling
    if scaling is not None and autoscaled(service):
        env.update(
            AUTOSCALE_MODE=scaling.mode,
            AUTOSCALE_METRIC=scaling.metric,
            AUTOSCALE_TARGET=repr(scaling.target),
            AUTOSCALE_MIN_REPLICAS=str(spec.min_replicas),
            AUTOSCALE_MAX_REPLICAS=str(spec.max_replicas),
            AUTOSCALE_STARTUP_FILE=LEAD_FILE,
            AUTOSCALE_STABILISATION_S=str(scaling.scale_down_stabilization_seconds),
            AUTOSCALE_PEERS=str(settings.router_replicas),
        )
    return {ROUTER_ENV_PREFIX + k: v for k, v in env.items()}


def build_router_config(service: InferenceService, measured_startup_s: float | None) -> dict[str, Any]:
    """The router's ConfigMap ``<name>-router``: the autoscaler's lead (:func:`startup_lead` of
    ``measured_startup_s``, the replicas' ``status.startupSeconds``) under :data:`LEAD_KEY`, which the router pods
    mount at :data:`LEAD_MOUNT`."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owned_metadata(service, router_name(service)),
        "data": {LEAD_KEY: str(startup_lead(service, measured_startup_s))},
    }


def build_router_deployment(
    service: InferenceService, settings: OperatorSettings, rollout: RolloutPlan | None = None
) -> dict[str, Any]:
    """The router's Deployment: ``router_replicas`` pods spread over nodes and zones, ready once they have
    discovered the replicas, given the time to stop gracefully (:data:`ROUTER_TERMINATION_GRACE_S`), with a writable
    ``/tmp`` (Prophet's fits write there) on a read-only root and the router's ConfigMap (:func:`build_router_config`)
    at :data:`LEAD_MOUNT`; ``rollout``: a canary's split, which the routers make. The ConfigMap is optional to the
    pod: a router that starts before it exists runs on its environment's lead until the file appears."""
    labels = router_selector(service)
    container: dict[str, Any] = {
        "name": ROUTER_CONTAINER,
        "image": settings.router_image,
        "imagePullPolicy": service.spec.image_pull_policy,
        "command": list(ROUTER_COMMAND),
        "env": [{"name": k, "value": v} for k, v in router_env(service, settings, rollout).items()],
        "ports": [{"name": "http", "containerPort": ROUTER_PORT}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10, "failureThreshold": 6},
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": {**CONTAINER_SECURITY_CONTEXT, "readOnlyRootFilesystem": True},
        "volumeMounts": [
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "lead", "mountPath": LEAD_MOUNT, "readOnly": True},
        ],
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the router calls no Kubernetes API: replicas come from DNS
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": ROUTER_TERMINATION_GRACE_S,
        "securityContext": pod_security_context(settings),
        **({"nodeSelector": settings.router_nodes} if settings.router_nodes else {}),
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": key,
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": labels},
            }
            for key in ("kubernetes.io/hostname", api.NODE_ZONE)
        ],
        "containers": [container],
        "volumes": [
            {"name": "tmp", "emptyDir": {}},
            {"name": "lead", "configMap": {"name": router_name(service), "optional": True}},
        ],
    }
    template = {"metadata": {"labels": dict(labels)}, "spec": pod_spec}
    meta = owned_metadata(service, router_name(service))
    meta["annotations"] = {api.LABEL_REVISION: revision(template)}  # what the operator compares to repair drift
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": settings.router_replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": template,
        },
    }


def build_front_service(service: InferenceService) -> dict[str, Any]:
    """The service's main Service ``<name>`` (``status.url``), in front of its routers."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owned_metadata(service, service.name),
        "spec": {
            "type": "ClusterIP",
            "selector": router_selector(service),
            "ports": [{"name": "http", "port": SERVE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def build_router_budget(service: InferenceService) -> dict[str, Any]:
    """A node drain takes at most one router at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": owned_metadata(service, router_name(service)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": router_selector(service)}},
    }


def scale_url(service: InferenceService, settings: OperatorSettings, applied: int) -> str:
    """Where the operator reads the router's decisions (the main Service's in-cluster name, or the override),
    telling it the ``applied`` replicas (every revision's Deployment's ``spec.replicas``, ``SCALE_APPLIED_PARAM``)."""
    return f"{settings.router_url(service.key, url(service))}{SCALE_PATH}?{SCALE_APPLIED_PARAM}={applied}"


def wanted_replicas(service: InferenceService, report: ScaleReport | None, stored: Mapping[str, Any]) -> int:
    """How many replicas the service asks its pool for: the router's latest decision (``report``), else the last
    one applied (``status.lastScale.requested``, so a router that is away or restarting changes nothing), else
    ``replicas.min``; always within ``replicas.min`` and ``max``."""
    spec = service.spec
    if not autoscaled(service):
        return spec.min_replicas
    asked: Any = report.replicas if report is not None else (stored.get("lastScale") or {}).get("requested")
    if not isinstance(asked, int):
        return spec.min_replicas
    return min(max(asked, spec.min_replicas), spec.max_replicas)
