"""An operator SIGKILLed (no clean-up) at each moment of an InferenceService's canary rollout, and started again:
as it starts a canary, halfway through a promotion, halfway through a rollback, between the two deletes that
remove a canary, and right after the status write that records a start or a promotion. Each time the new operator
must finish what the spec asks and nothing else: the stable Deployment keeps its template and count, no count
drops below what the spec asks, the canary ends promoted or rolled back, the status says so, each Event exists
once, and no canary Deployment, canary Service or router canary setting is left behind (docs/inferenceservice.md,
"canary": "a restarted operator picks it up").

The two narrowest windows have tests of their own: a kill between the canary's two deletes (the Deployment gone, so
only the Service left says a canary ran), and a kill right after the status write (an Event kopf had only queued
would be lost, and the next pass finds the change recorded: the rollout's Events are posted before the write)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cluster_support import ClusterHandle, eventually
from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from operator_harness import OperatorProcess, Strata, kill_at_write
from serving_builders import service_body
from test_inferenceservices import Services, cpu_pool, deployment_revision, router_env

import strata_api as api

pytestmark = pytest.mark.timeout(300)

NAME = "llm"
STABLE = 4
"""replicas.min: the stable revision's count, whatever happens to the operator."""
PERCENT = 20
"""The canary's share: a canary of ceil(4 x 20 / 100) = 1 replica."""


@pytest.fixture
def services(crds: ClusterHandle, namespace: str, operator: OperatorProcess, strata: Strata) -> Iterator[Services]:
    helper = Services(crds, namespace)
    yield helper
    if not operator.alive():  # a failed probe may leave it killed; its clean-up needs an operator
        operator.start()
    helper.cleanup()


class DeploymentLog(threading.Thread):
    """Every change of the service's Deployments as the API server sends it, from a watch; ``arm`` SIGKILLs the
    operator at the first change a predicate matches, as close to that write as a process outside can be."""

    def __init__(self, services: Services, operator: OperatorProcess) -> None:
        super().__init__(daemon=True)
        self.services, self.operator = services, operator
        self.changes: list[tuple[str, str, int, str]] = []
        """(event type, Deployment name, spec.replicas, revision annotation), in order."""
        self.trigger: Callable[[str, str, int, str], bool] | None = None
        self.killed = threading.Event()
        self.stopping = threading.Event()
        listed = services.apps.list_namespaced_deployment(services.namespace, label_selector=self.selector)
        self.resource_version = listed.metadata.resource_version

    @property
    def selector(self) -> str:
        return f"{api.LABEL_INFERENCE_SERVICE}={NAME}"

    def arm(self, trigger: Callable[[str, str, int, str], bool]) -> None:
        self.killed.clear()
        self.trigger = trigger

    def run(self) -> None:
        while not self.stopping.is_set():
            stream = watch.Watch()
            for event in stream.stream(
                self.services.apps.list_namespaced_deployment,
                self.services.namespace,
                label_selector=self.selector,
                resource_version=self.resource_version,
                timeout_seconds=2,
            ):
                deployment = event["object"]
                self.resource_version = deployment.metadata.resource_version
                change = (
                    str(event["type"]),
                    str(deployment.metadata.name),
                    int(deployment.spec.replicas or 0),
                    str((deployment.metadata.annotations or {}).get(api.LABEL_REVISION, "")),
                )
                self.changes.append(change)
                if self.trigger is not None and self.trigger(*change):
                    self.trigger = None
                    self.operator.kill()
                    self.killed.set()

    def stop(self) -> None:
        self.stopping.set()
        self.join(10)


def kill_and_restart(
    operator: OperatorProcess,
    log: DeploymentLog,
    at_once: bool,
    at_write: Callable[[str, str, int, str], bool],
    change: Callable[[], None],
) -> None:
    """Make ``change`` and SIGKILL the operator: at once after it (``at_once``: the operator may have acted on it
    or not), else at the first Deployment write ``at_write`` matches; then start a new operator."""
    if not at_once:
        log.arm(at_write)
    change()
    if at_once:
        operator.kill()
    else:
        assert log.killed.wait(30), f"the operator never made the write the probe waits for; log: {log.changes}"
    assert not operator.alive()
    operator.start()


def converged(services: Services, stable: str, trial: str | None, reasons: Counter[str]) -> None:
    """Wait until the service runs exactly ``stable`` (4 replicas) and, when ``trial`` is set, a canary of 1 of it,
    with every Deployment, Service, router setting, status field and Event as the spec asks, then check it stays
    so."""
    ns = services.namespace
    canary = 1 if trial is not None else 0

    def seen() -> dict[str, Any]:
        status = services.status(NAME)
        stable_deployment = services.apps.read_namespaced_deployment(NAME, ns)
        try:
            trial_replicas: int | None = services.apps.read_namespaced_deployment(f"{NAME}-canary", ns).spec.replicas
        except ApiException as error:
            if error.status != 404:
                raise
            trial_replicas = None
        canary_services = services.core.list_namespaced_service(
            ns, field_selector=f"metadata.name={NAME}-canary-replicas"
        )
        ready = next((c for c in status.get("conditions", ()) if c["type"] == "Ready"), {})
        routers = router_env(services, NAME)
        return {
            "status": (
                status.get("revision"),
                status.get("stableRevision"),
                status.get("canaryRevision"),
                status.get("canaryReplicas"),
                status.get("desiredReplicas"),
                status.get("readyReplicas"),
                ready.get("status"),
            ),
            "stable": (deployment_revision(services, NAME), stable_deployment.spec.replicas),
            "canary": (deployment_revision(services, f"{NAME}-canary"), trial_replicas),
            "canary service": bool(canary_services.items),
            "routers": (
                routers.get("STRATA_ROUTER_CANARY_DNS") is not None,
                routers.get("STRATA_ROUTER_CANARY_PERCENT"),
            ),
            "pods": sorted(p.metadata.labels[api.LABEL_REVISION] for p in services.pods(NAME)),
            "events": Counter(r for r in services.events(NAME) if r.startswith("Canary") or r == "StableRestored"),
        }

    wanted = {
        "status": (
            trial or stable,
            stable,
            trial,
            1 if trial is not None else None,
            STABLE + canary,
            STABLE + canary,
            "True",
        ),
        "stable": (stable, STABLE),
        "canary": (trial, 1 if trial is not None else None),
        "canary service": trial is not None,
        "routers": (trial is not None, str(PERCENT) if trial is not None else None),
        "pods": sorted([stable] * STABLE + ([trial] if trial is not None else [])),
        "events": +reasons,
    }
    last: list[dict[str, Any]] = []

    def probe() -> bool | None:
        last[:] = [seen()]
        return last[0] == wanted or None

    try:
        eventually(probe, 60, f"the rollout to converge to {wanted}")
    except AssertionError as error:
        raise AssertionError(f"{error}; seen: {last[0] if last else None}") from None
    time.sleep(3)  # and stays so: no late rewrite, no Event posted again (resync 2 s)
    assert seen() == wanted


@pytest.mark.parametrize("at_once", [False, True], ids=["at-the-write", "right-after-the-spec-change"])
def test_an_operator_killed_at_each_moment_of_a_canary_loses_nothing(
    services: Services, strata: Strata, operator: OperatorProcess, at_once: bool
) -> None:
    pool = cpu_pool(strata, 8)
    services.apply(service_body(NAME, pool, min_replicas=STABLE, rollout={"canaryPercent": PERCENT}))
    old = services.wait_ready(NAME, STABLE)["revision"]
    reasons: Counter[str] = Counter()
    log = DeploymentLog(services, operator)
    log.start()
    try:
        # (a) a new revision starts a canary: killed as its Deployment is created (or just after the spec change)
        kill_and_restart(
            operator,
            log,
            at_once,
            lambda kind, name, _, __: kind == "ADDED" and name == f"{NAME}-canary",
            lambda: services.patch_spec(NAME, {"model": {"preset": "small"}}),
        )
        new = eventually(lambda: services.status(NAME).get("canaryRevision"), 60, "a canary revision")
        reasons["CanaryStarted"] += 1
        converged(services, old, new, reasons)

        # (b) promoted at 100: killed as the stable Deployment is rewritten to the new revision, before the canary goes
        kill_and_restart(
            operator,
            log,
            at_once,
            lambda kind, name, _, rev: kind == "MODIFIED" and name == NAME and rev == new,
            lambda: services.patch_spec(NAME, {"rollout": {"canaryPercent": 100}}),
        )
        reasons["CanaryPromoted"] += 1
        converged(services, new, None, reasons)

        # (c) another canary, rolled back: killed as the canary's Deployment is deleted, before its Service is
        services.patch_spec(NAME, {"rollout": {"canaryPercent": PERCENT}, "model": {"preset": "tiny"}})
        third = eventually(lambda: services.status(NAME).get("canaryRevision"), 60, "a third revision's canary")
        reasons["CanaryStarted"] += 1
        converged(services, new, third, reasons)
        kill_and_restart(
            operator,
            log,
            at_once,
            lambda kind, name, _, __: kind == "DELETED" and name == f"{NAME}-canary",
            lambda: services.patch_spec(NAME, {"model": {"preset": "small"}}),
        )
        reasons["CanaryRolledBack"] += 1
        converged(services, new, None, reasons)
    finally:
        log.stop()
    # the stable revision's count never dropped below the spec's, and the canary's never below its share
    stable_counts = [replicas for kind, name, replicas, _ in log.changes if name == NAME and kind != "DELETED"]
    trial_counts = [
        replicas for kind, name, replicas, _ in log.changes if name == f"{NAME}-canary" and kind != "DELETED"
    ]
    assert min(stable_counts, default=STABLE) >= STABLE, log.changes
    assert min(trial_counts, default=1) >= 1, log.changes
    assert operator.starts == 4


def test_a_canary_service_left_by_an_operator_killed_between_its_two_deletes_goes(
    services: Services, strata: Strata, operator: OperatorProcess
) -> None:
    """The state a kill between the canary's two deletes leaves, made exactly (the probe above hits it only when
    its SIGKILL lands in that window): the canary's Deployment gone, its Service, the routers' canary setting and
    the status's canaryRevision still there. The new operator must finish the rollback, not forget the Service."""
    pool = cpu_pool(strata, 8)
    services.apply(service_body(NAME, pool, min_replicas=STABLE, rollout={"canaryPercent": PERCENT}))
    old = services.wait_ready(NAME, STABLE)["revision"]
    services.patch_spec(NAME, {"model": {"preset": "small"}})
    new = eventually(lambda: services.status(NAME).get("canaryRevision"), 60, "a canary revision")
    reasons: Counter[str] = Counter(CanaryStarted=1)
    converged(services, old, new, reasons)

    operator.kill()
    services.patch_spec(NAME, {"model": {"preset": "debug"}})  # rolled back to the stable template
    services.apps.delete_namespaced_deployment(f"{NAME}-canary", services.namespace)  # the killed one's first delete
    operator.start()
    reasons["CanaryRolledBack"] += 1
    converged(services, old, None, reasons)


def kill_at_status_write(services: Services, operator: OperatorProcess, key: str, change: Callable[[], None]) -> None:
    """Make ``change`` and SIGKILL the operator as the service's status ``key`` is first written anew; then start a
    new operator."""
    before = services.status(NAME).get(key)
    kill_at_write(
        operator,
        services.custom,
        services.namespace,
        api.INFERENCE_SERVICES,
        NAME,
        lambda status: status.get(key) != before,
        change,
        timeout_s=30,
    )
    operator.start()


def test_an_operator_killed_right_after_a_rollout_status_write_still_posts_its_event_once(
    services: Services, strata: Strata, operator: OperatorProcess
) -> None:
    """Where a rollout stands is its status: once canaryRevision is written, no later pass tells of the start (or,
    once removed, of the promotion) again, so an Event still queued when the operator dies would never exist."""
    pool = cpu_pool(strata, 8)
    services.apply(service_body(NAME, pool, min_replicas=STABLE, rollout={"canaryPercent": PERCENT}))
    old = services.wait_ready(NAME, STABLE)["revision"]
    start = {"model": {"preset": "small"}}
    kill_at_status_write(services, operator, "canaryRevision", lambda: services.patch_spec(NAME, start))
    new = services.status(NAME)["canaryRevision"]
    converged(services, old, new, Counter(CanaryStarted=1))
    promote = {"rollout": {"canaryPercent": 100}}
    kill_at_status_write(services, operator, "stableRevision", lambda: services.patch_spec(NAME, promote))
    converged(services, new, None, Counter(CanaryStarted=1, CanaryPromoted=1))


def test_an_operator_killed_right_after_a_scaling_status_write_still_posts_its_event_once(
    services: Services, strata: Strata, operator: OperatorProcess
) -> None:
    """The new count in status is all a later pass sees of a change of it, so the ScaledUp Event is posted before
    the write: one kopf had only queued would die with the operator."""
    pool = cpu_pool(strata, 8)
    services.apply(service_body(NAME, pool, min_replicas=1))
    services.wait_ready(NAME, 1)
    kill_at_status_write(
        services, operator, "desiredReplicas", lambda: services.patch_spec(NAME, {"replicas": {"min": 2}})
    )
    services.wait_ready(NAME, 2)

    def scaled() -> Counter[str]:
        return Counter(r for r in services.events(NAME) if r.startswith("Scaled"))

    eventually(lambda: scaled() == Counter(ScaledUp=1) or None, 30, "one ScaledUp Event")
    time.sleep(3)  # and no second one (resync 2 s)
    assert scaled() == Counter(ScaledUp=1)
