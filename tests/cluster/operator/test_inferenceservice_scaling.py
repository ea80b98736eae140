"""An autoscaled InferenceService on the real control plane: the operator (a real process) follows the scaling
decisions of a router (a real process on loopback, in front of a stand-in replica, reached through the operator's
``--router-urls`` override since a process outside the cluster cannot resolve ``<name>.<ns>.svc``) and sizes the
replicas' Deployment up under load and down after it, with ``status.lastScale`` and an Event each time; an operator
SIGKILLed under load and restarted with the router gone keeps the count it scaled up to."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cluster_support import ClusterHandle, eventually
from operator_harness import OperatorProcess, Strata
from router_support import Process, Processes, wait_ready, wait_routable
from serving_builders import service_body
from test_inferenceservices import Services, cpu_pool

from strata_api.serving import SCALE_PATH, ScaleReport

pytestmark = pytest.mark.timeout(300)

NAME = "autoscaled"
ROUTER_FLAGS = (
    "--autoscale-mode", "reactive", "--autoscale-target-rps", "5",
    "--autoscale-min-replicas", "1", "--autoscale-max-replicas", "5",
    "--autoscale-interval-s", "0.5", "--autoscale-window-s", "2", "--autoscale-stabilisation-s", "0",
)  # fmt: skip
"""What the operator would set from the service's spec (its env), with short intervals for a test."""


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Process]:
    processes = Processes(tmp_path)
    try:
        replica = processes.fake_replica("replica", "--delay", "0.005", "--slots", "8")
        started = processes.router([replica.address], *ROUTER_FLAGS)

        async def ready() -> None:
            await wait_ready(replica)
            await wait_ready(started)
            await wait_routable(started, 1)

        asyncio.run(ready())
        yield started
    finally:
        processes.stop_all()


@pytest.fixture
def operator(crds: ClusterHandle, namespace: str, tmp_path: Path, router: Process) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        crds,
        tmp_path,
        (namespace,),
        "--standalone",
        "--router-urls",
        f"{namespace}/{NAME}={router.url}",
        "--scale-poll-interval-s",
        "0.5",
    ).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def services(crds: ClusterHandle, namespace: str, operator: OperatorProcess, strata: Strata) -> Iterator[Services]:
    # after `strata` and `operator`, so torn down before them: the services' own clean-up first, while the operator
    # still runs
    helper = Services(crds, namespace)
    yield helper
    helper.cleanup()


class Load(threading.Thread):
    """Requests to the router at a steady ``rate`` per second (sent on a fixed schedule, one at a time), until
    stopped. Paced, not as fast as the router answers: with the target of 5 per replica, 16 a second asks for 4
    replicas, inside the maximum of 5 on a fast machine and above 2 on a slow one (an unpaced loop made ~40 a second
    on a fast machine, which the maximum clamps: reason MaxReplicas, not ObservedLoad)."""

    def __init__(self, url: str, rate: float = 16.0) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.interval = 1.0 / rate
        self.stopping = threading.Event()
        self.sent = 0

    def run(self) -> None:
        due = time.monotonic()
        while not self.stopping.is_set():
            request = urllib.request.Request(
                self.url + "/v1/generate", data=b'{"prompt": "x"}', headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                response.read()
            self.sent += 1
            due = max(due + self.interval, time.monotonic() - self.interval)  # a slow answer is not made up in a burst
            self.stopping.wait(max(0.0, due - time.monotonic()))


def scaled_up_under_load(
    services: Services, strata: Strata, router: Process, while_loaded: Callable[[], None] = lambda: None
) -> dict[str, Any]:
    """The service made, ready at 1 replica, then loaded through the router until more than 2 replicas are
    desired and the Deployment has grown; ``while_loaded`` runs before the load stops. Returns that status."""
    pool = cpu_pool(strata, 8)
    autoscaling = {"metric": "rps", "target": 5, "mode": "reactive", "scaleDownStabilizationSeconds": 0}
    services.apply(service_body(NAME, pool, min_replicas=1, max_replicas=5, autoscaling=autoscaling))
    services.wait_ready(NAME, 1)
    ns = services.namespace
    load = Load(router.url)
    load.start()
    try:
        status = eventually(lambda: scaled_above(services, 2), 90, f"{NAME}: more than 2 replicas desired")
        eventually(
            lambda: services.apps.read_namespaced_deployment(NAME, ns).spec.replicas > 2, 30, "the Deployment grown"
        )
        while_loaded()
    finally:
        load.stopping.set()
        load.join(15)
    return status


def test_the_operator_scales_the_replicas_as_the_router_decides(
    services: Services, strata: Strata, router: Process
) -> None:
    def router_counts_what_the_operator_set() -> None:
        # the kwok replicas have no address the router can reach: it counts them as starting because the operator
        # tells it the count it set (GET /scale?applied=N), as HPA counts the Deployment's spec.replicas
        def counted() -> bool | None:
            grown = services.apps.read_namespaced_deployment(NAME, services.namespace).spec.replicas
            with urllib.request.urlopen(router.url + SCALE_PATH, timeout=10) as answer:
                report = ScaleReport.from_json(orjson.loads(answer.read()))
            return (grown > 2 and report.ready + report.starting == grown) or None

        eventually(counted, 30, "the router counting the replicas the operator set")

    status = scaled_up_under_load(services, strata, router, router_counts_what_the_operator_set)
    ns = services.namespace
    # status.lastScale is the router's latest decision: the one that grew the count (ObservedLoad), or one after it
    # that keeps the count, where the load is within the ratio rule's 10% of it (15 req/s or a little under on 3
    # replicas of 5, on a machine too busy for the load's 16 a second); either way with its inputs
    last = status["lastScale"]
    assert last["mode"] == "reactive"
    assert last["observedRate"] > 10
    assert last["requested"] == last["replicas"] == status["desiredReplicas"]
    said = {"ObservedLoad": f"needs {last['requested']}", "WithinTolerance": f"of {last['replicas']} replicas' target"}
    assert last["reason"] in said, last
    assert said[last["reason"]] in last["message"], last
    # the growth itself is an Event that names the decision that made it: the observed load and what it needs
    grown = re.compile(r"(\d+) -> (\d+) replicas: observed [\d.]+ req/s needs \2")
    eventually(lambda: any(grown.fullmatch(m) for m in scaled_up_messages(services)) or None, 30, "a ScaledUp Event")

    # the load stops: the router's window empties and it asks for the minimum; the operator follows (on the way
    # down the window's tail may first ask for 1 replica on what is left of the load: reason ObservedLoad)
    eventually(lambda: at_minimum(services), 60, f"{NAME}: scaled back to the minimum, reason MinReplicas")
    eventually(lambda: services.apps.read_namespaced_deployment(NAME, ns).spec.replicas == 1, 30, "1 replica")
    eventually(lambda: "ScaledDown" in services.events(NAME) or None, 30, "a ScaledDown Event")


def scaled_up_messages(services: Services) -> list[str]:
    selector = f"involvedObject.name={NAME}"
    events = services.core.list_namespaced_event(services.namespace, field_selector=selector).items
    return [e.message for e in events if e.reason == "ScaledUp"]


def scaled_above(services: Services, replicas: int) -> dict[str, Any] | None:
    """The status once its desired count exceeds ``replicas`` (the exact count follows the load the machine
    makes)."""
    status = services.status(NAME)
    desired = status.get("desiredReplicas")
    return status if isinstance(desired, int) and desired > replicas else None


def at_minimum(services: Services) -> dict[str, Any] | None:
    status = services.status(NAME)
    last = status.get("lastScale") or {}
    return status if status.get("desiredReplicas") == 1 and last.get("reason") == "MinReplicas" else None


def test_neither_a_killed_operator_nor_a_lost_router_drops_the_replicas_it_scaled_up(
    services: Services, strata: Strata, router: Process, operator: OperatorProcess
) -> None:
    scaled = scaled_up_under_load(services, strata, router, operator.kill)  # SIGKILL under load, no clean-up
    ns = services.namespace
    router.kill()  # and the decisions' source is gone: no router answers /scale
    replicas = services.apps.read_namespaced_deployment(NAME, ns).spec.replicas
    desired = services.status(NAME)["desiredReplicas"]
    assert replicas == desired >= scaled["desiredReplicas"]

    operator.start()
    # the new operator reconciles the service with no decision to read: it keeps the count it last applied, which
    # status holds, rather than falling back to replicas.min. That it did reconcile: it puts back a Service deleted
    # while it runs; the count is checked after that, and for many reconciles more (scale poll 0.5 s, resync 2 s)
    services.core.delete_namespaced_service(f"{NAME}-replicas", ns)
    eventually(
        lambda: (
            services.core.list_namespaced_service(ns, field_selector=f"metadata.name={NAME}-replicas").items or None
        ),
        60,
        "the new operator to put the replicas' Service back",
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert services.apps.read_namespaced_deployment(NAME, ns).spec.replicas == desired
        assert services.status(NAME)["desiredReplicas"] == desired
        time.sleep(0.5)
    assert operator.alive()
