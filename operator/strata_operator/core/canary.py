"""Canary rollouts of an InferenceService (``spec.rollout.canaryPercent``, as KServe's canaryTrafficPercent): pure
decisions and builders. No I/O.

When the pod template's revision changes and ``canaryPercent`` is 1..99, the old revision keeps running as the
stable Deployment ``<name>`` (its template untouched; the operator keeps only its count) and the new revision runs
as the Deployment ``<name>-canary`` of ``ceil(total x percent / 100)`` replicas (at least 1), behind its own
headless Service ``<name>-canary-replicas``; the routers get ``--canary-dns`` and ``--canary-percent`` and send
that share of the requests to it (docs/router.md, "Canary"). The canary's replicas count against the pool like
any replica: the service asks its pool for the stable count plus the canary's.

- **Promotion**: ``canaryPercent`` 0 or 100, no split, so the spec's revision is the one that runs: the stable
  Deployment rolls to the new template (within ``maxSurge``/``maxUnavailable``) and the canary's Deployment and
  Service go. KServe promotes on 100 or on removing the field; 0 here is the field's default, "no canary", so it
  promotes too (KServe's 0 keeps the new revision deployed with no traffic, a state this API does not have).
- **Rollback**: the spec's template returns to the stable revision's: the canary goes, the stable was never
  touched.
- A template changed again during a canary replaces the canary's template (a new canary revision).
- **The stable revision is kept** while the canary runs: the spec holds the canary's template by then, so the
  stable one's lives on the canary's Deployment (annotation ``strata.dev/stable-deployment``: the stable
  Deployment's spec as the API server returned it, taken once when the canary starts). A stable Deployment whose
  pod template was edited by hand is put back from it, and one deleted by hand is recreated from it, with a
  ``StableRestored`` Event; without it the deleted stable would come back from the spec, and the canary would
  silently become the stable revision. Why there and not in a ControllerRevision (StatefulSets' and DaemonSets'
  way): it is needed exactly as long as the canary's Deployment exists, which the operator already owns and may
  write, so no other kind, watch or permission is added. If both Deployments are deleted by hand, what was kept
  goes with them and the spec's template becomes the stable one (the state before this rule).

Where a rollout stands lives in the cluster, the stable Deployment's revision annotation, whether the canary
Deployment exists and what it keeps, so a restarted operator picks a canary up halfway.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import strata_api as api
from strata_api import InferenceService
from strata_operator.core.serving import (
    KEPT_STABLE,
    SERVE_PORT,
    KeptStable,
    ObservedDeployment,
    owned_labels,
    owner_reference,
    selector,
)
from strata_operator.core.status import NORMAL, WARNING, Event, StatusDraft, revision_moment


class Reason:
    CANARY_STARTED = "CanaryStarted"
    CANARY_PROMOTED = "CanaryPromoted"
    CANARY_ROLLED_BACK = "CanaryRolledBack"
    STABLE_RESTORED = "StableRestored"
    ROLLING = "Rolling"


@dataclass(frozen=True)
class RolloutPlan:
    """What runs after this pass: the stable Deployment's revision, and the canary's while requests are split."""

    stable_revision: str
    canary_revision: str | None = None
    """The new revision on trial, while the split lasts; None: no canary runs."""
    percent: int = 0
    """Share of requests the routers send to the canary (``canaryPercent``), while it runs."""
    remove_canary: bool = False
    """A canary's Deployment or Service is there and is not wanted any more (promoted or rolled back)."""

    @property
    def splitting(self) -> bool:
        return self.canary_revision is not None


def plan_rollout(
    service: InferenceService,
    revision: str,
    stable: ObservedDeployment | None,
    canary: ObservedDeployment | None,
    canary_service: bool = False,
) -> RolloutPlan:
    """The rollout for the spec's template ``revision``, given what runs (the stable and canary Deployments, and
    whether the canary's headless Service is there).

    The stable revision is the stable Deployment's, or, when it was deleted by hand during a canary, the one the
    canary's Deployment keeps. A new service runs the spec's revision as its stable. A revision other than the
    stable's with ``canaryPercent`` 1..99 runs as the canary. Anything else makes the spec's revision the stable one
    and removes a canary that is there: its Deployment, or its Service alone, which an operator killed between the
    two deletes leaves behind (the Deployment, gone by then, no longer says that a canary ran)."""
    percent = service.spec.rollout.canary_percent
    running = stable.revision if stable is not None else None
    if running is None and canary is not None and canary.kept is not None:
        running = canary.kept.revision
    if running is not None and running != revision and 0 < percent < 100:
        return RolloutPlan(running, revision, percent)
    return RolloutPlan(revision, remove_canary=canary is not None or canary_service)


def kept_stable(
    plan: RolloutPlan, stable: ObservedDeployment | None, canary: ObservedDeployment | None
) -> KeptStable | None:
    """What the canary's Deployment keeps of the stable one while ``plan`` splits: what it keeps already, for the
    stable revision; else the stable Deployment as it runs now (taken once, when the canary starts); None when
    neither is there (both deleted by hand) or no canary runs."""
    if not plan.splitting:
        return None
    if canary is not None and canary.kept is not None and canary.kept.revision == plan.stable_revision:
        return canary.kept
    if stable is not None and stable.revision == plan.stable_revision and stable.spec is not None:
        return KeptStable(stable.revision, {k: v for k, v in stable.spec.items() if k != "replicas"})
    return None


def build_stable_deployment(service: InferenceService, kept: KeptStable, replicas: int) -> dict[str, Any]:
    """The stable Deployment as the canary keeps it, with ``replicas``: what the operator puts back when the one
    there was edited or deleted by hand during the canary."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": service.name,
            "namespace": service.namespace,
            "labels": owned_labels(service),
            "ownerReferences": [owner_reference(service)],
            "annotations": {api.LABEL_REVISION: kept.revision},
        },
        "spec": {**kept.spec, "replicas": replicas},
    }


def stable_tampered(kept: KeptStable, stable: ObservedDeployment | None) -> bool:
    """Whether the stable Deployment must be put back from what the canary keeps: it is gone, or its pod template
    is not the kept one (both as the API server returned them, so its defaults compare equal)."""
    return stable is None or stable.spec is None or stable.spec.get("template") != kept.spec.get("template")


def keeping(canary_deployment: dict[str, Any], kept: KeptStable | None) -> dict[str, Any]:
    """The canary's Deployment manifest with what it keeps of the stable one (unchanged when nothing is kept)."""
    if kept is not None:
        canary_deployment["metadata"].setdefault("annotations", {})[KEPT_STABLE] = kept.annotation()
    return canary_deployment


def canary_replicas(total: int, percent: int) -> int:
    """The canary's size for ``total`` stable replicas: ``ceil(total x percent / 100)``, at least 1 (a canary of
    0 replicas would get no requests to judge it by); 0 when the service runs none."""
    return 0 if total <= 0 else max(1, math.ceil(total * percent / 100))


def asked(wanted: int, plan: RolloutPlan | None) -> int:
    """What the service asks its pool for: ``wanted`` stable replicas, plus the canary's while one runs."""
    if plan is None or not plan.splitting:
        return wanted
    return wanted + canary_replicas(wanted, plan.percent)


def split(granted: int, wanted: int, plan: RolloutPlan | None) -> tuple[int, int]:
    """The pool's grant as (stable, canary) replicas: the stable revision first, since it serves the requests the
    canary does not; the canary gets what is left of its share."""
    stable = min(wanted, granted)
    return stable, (granted - stable if plan is not None and plan.splitting else 0)


def canary_service_name(service: InferenceService) -> str:
    return service.name + "-canary-replicas"


def canary_dns(service: InferenceService) -> str:
    """What the routers resolve to the canary's replicas (``--canary-dns``)."""
    return f"{canary_service_name(service)}.{service.namespace}.svc:{SERVE_PORT}"


def canary_selector(service: InferenceService) -> dict[str, str]:
    return {**selector(service), api.LABEL_CANARY: "true"}


def build_canary_service(service: InferenceService) -> dict[str, Any]:
    """The canary's headless Service: its replicas only, starting ones too (as ``<name>-replicas`` publishes the
    stable's). The stable's Service selects every replica, the canary's among them; the router counts an address
    in both lists as the canary's."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": canary_service_name(service),
            "namespace": service.namespace,
            "labels": owned_labels(service),
            "ownerReferences": [owner_reference(service)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": canary_selector(service),
            "ports": [{"name": "http", "port": SERVE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def rollout_status(
    draft: StatusDraft,
    plan: RolloutPlan,
    canary: ObservedDeployment | None,
    canary_count: int,
    generation: int,
    restored: str | None = None,
    serving: str = "",
) -> None:
    """Record the rollout in the status draft (``stableRevision``; ``canaryRevision``, ``canaryReplicas`` and
    ``canaryReadyReplicas`` while a canary runs, removed after) with an Event when a canary starts, is promoted or
    is rolled back, and when the stable replicas roll to a new revision with no canary (``Rolling``; ``serving``:
    what the new revision serves, the ModelAvailable message). Each is posted once for the revision and the spec
    ``generation`` that made it (:attr:`~strata_operator.core.status.Event.once`, :func:`revision_moment`: where a
    rollout stands is the status, so an Event lost to an operator killed after the status write would never be
    posted again; a TrainingJob's newer checkpoint is a new revision under the same generation). Also when the
    stable Deployment was put back (``restored``: how it had changed)."""
    before = draft.stored.get("canaryRevision")
    stable_before = draft.stored.get("stableRevision")
    draft.set("stableRevision", plan.stable_revision)
    if restored is not None:
        message = (
            f"the stable Deployment (revision {plan.stable_revision}) was {restored} during the canary; put back as "
            "it ran"
        )
        draft.events.append(Event(WARNING, Reason.STABLE_RESTORED, message))
    if plan.splitting:
        assert plan.canary_revision is not None
        draft.set("canaryRevision", plan.canary_revision)
        draft.set("canaryReplicas", canary_count)
        draft.set("canaryReadyReplicas", canary.ready if canary is not None else 0)
        if before != plan.canary_revision:
            draft.events.append(
                Event(
                    NORMAL,
                    Reason.CANARY_STARTED,
                    f"revision {plan.canary_revision} runs as a canary of {canary_count} replicas taking "
                    f"{plan.percent}% of the requests; revision {plan.stable_revision} stays the stable one"
                    + (f" (it replaces canary revision {before})" if before else "")
                    + (f"; it serves {serving}" if serving else ""),
                    once=revision_moment(generation, plan.canary_revision),
                )
            )
        return
    for key in ("canaryRevision", "canaryReplicas", "canaryReadyReplicas"):
        if key in draft.stored:
            draft.set(key, None)
    once = revision_moment(generation, plan.stable_revision)
    if not isinstance(before, str):
        if isinstance(stable_before, str) and stable_before != plan.stable_revision:
            message = (
                f"revision {stable_before} -> {plan.stable_revision}: the replicas roll to it within "
                "spec.rollout.maxSurge and maxUnavailable" + (f"; it serves {serving}" if serving else "")
            )
            draft.events.append(Event(NORMAL, Reason.ROLLING, message, once=once))
        return
    if before == plan.stable_revision:
        message = f"revision {before} promoted: the stable replicas roll to it and the canary's go"
        draft.events.append(Event(NORMAL, Reason.CANARY_PROMOTED, message, once=once))
    else:
        message = (
            f"canary revision {before} rolled back: its replicas go and the stable ones run revision "
            f"{plan.stable_revision}"
        )
        draft.events.append(Event(NORMAL, Reason.CANARY_ROLLED_BACK, message, once=revision_moment(generation, before)))


def stored_ask(service: InferenceService, status: Mapping[str, Any], wanted: int) -> int:
    """What another service of the pool asks for, as its stored status says: ``wanted`` stable replicas, plus its
    canary's while ``status.canaryRevision`` says one runs."""
    if not isinstance(status.get("canaryRevision"), str):
        return wanted
    return wanted + canary_replicas(wanted, service.spec.rollout.canary_percent)
