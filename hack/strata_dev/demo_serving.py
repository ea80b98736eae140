"""``make demo``'s last chapter, on the real node: the example InferenceService serves what ``cpu-tiny`` trained.

``cpu-tiny`` keeps its checkpoints on the claim the example service reads (``examples/inferenceservices/
cpu-debug.yaml``: ``spec.model.persistentVolumeClaim``), a volume on a folder of the host bound to it in advance (the
local cluster has no provisioner). Once the job has Succeeded the demo applies the example as a user would, with
what the local node needs (the image it holds, never pulled; the node selected; a CPU share per replica that lets
``replicas.max`` fit its 2 CPUs), and follows the service until its replicas, warmed up on the job's newest
checkpoint, are ready behind its router. Then it asks the model through the router, sends a steady load above what
``replicas.min`` is meant to take, and prints each scaling decision the router makes and the operator writes to
``status.lastScale``, until the replica it added is ready. Last, still under the load, it deletes one replica (as a
reclaimed node would) and follows its replacement: every request is answered by the others meanwhile.

The operator runs on the host, outside the cluster's network, so it cannot read ``<name>.<namespace>.svc`` (an
operator the chart installs does): the demo starts it with ``--router-urls`` naming a loopback port it chooses
beforehand, and forwards that port to the service's router with ``kubectl port-forward`` once the router exists;
the demo's own requests take the same way in. One router (``--router-replicas=1``): a port-forward reaches one pod,
and a router counts its share of the requests times the routers it has as peers.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import yaml

import strata_api as api
from strata_dev.cluster import ClusterError, LocalCluster
from strata_dev.node_config import REAL_NODE_LABEL
from strata_dev.paths import EXAMPLES
from strata_dev.volumes import host_path_claim

SERVICE = EXAMPLES / "inferenceservices" / "cpu-debug.yaml"
"""The example the demo applies once ``cpu-tiny`` has Succeeded."""
REPLICA_CPU = "400m"
"""Each replica's CPU share on the real node: ``replicas.max`` (4) of them and the router's 100m fit its 2 CPUs."""
LOAD_RPS = 11.0
"""Requests a second the demo sends: above ``replicas.min`` (2) times the example's target (4 req/s each) by more
than the autoscaler's 10% tolerance, so the router asks for a third replica."""
SENDERS = 8
"""Connections the load is sent over, each keeping its own (a completion of a few tokens takes well under
``SENDERS / LOAD_RPS`` seconds)."""
READY_TIMEOUT_S = 300.0
"""Longest the demo waits for the replicas to load the checkpoint and warm up, and for the one the load adds."""
POLL_S = 1.0


def operator_args(namespace: str, port: int, router_image: str) -> list[str]:
    """The demo operator's flags for the service in ``namespace``: its router from ``router_image`` (the serving
    image the node holds) on the real node, one of them, and its decisions read at ``http://127.0.0.1:<port>`` (the
    port-forward to it)."""
    service = example_service()["metadata"]["name"]
    return [
        f"--router-image={router_image}",
        "--router-replicas=1",
        f"--router-node-selector={REAL_NODE_LABEL}=true",
        f"--router-urls={namespace}/{service}=http://127.0.0.1:{port}",
    ]


def example_service() -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(SERVICE.read_text())
    return manifest


def checkpoint_claim(cluster: LocalCluster, namespace: str) -> str:
    """The claim the example service reads, on a folder of the host under the cluster's work folder (the real node
    shares the host's files), bound in advance: its name, for ``cpu-tiny``'s ``spec.checkpoint``."""
    claim = str(example_service()["spec"]["model"]["persistentVolumeClaim"])
    folder = cluster.workdir / "volumes" / f"{namespace}-{claim}"
    folder.mkdir(parents=True)
    folder.chmod(0o777)  # the workers and the replicas run as a user of their own; a hostPath volume keeps the mode
    for manifest in host_path_claim(namespace, claim, str(folder)):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    return claim


def service_manifest(image: str) -> dict[str, Any]:
    """The example InferenceService on the real node: ``image`` (which the node holds) never pulled, the node
    selected, :data:`REPLICA_CPU` a replica."""
    service = example_service()
    service["spec"]["workload"].update(image=image, imagePullPolicy="Never")
    service["spec"]["resources"].update(nodeSelector={REAL_NODE_LABEL: "true"}, cpuPerReplica=REPLICA_CPU)
    return service


class PortForward:
    """``kubectl port-forward`` from ``127.0.0.1:<port>`` to a Service's port, for as long as the context lasts."""

    def __init__(self, cluster: LocalCluster, namespace: str, service: str, port: int, service_port: int) -> None:
        self.log = cluster.workdir / "logs" / f"port-forward-{service}.log"
        args = [str(cluster.bin_dir / "kubectl"), f"--kubeconfig={cluster.kubeconfig}", "-n", namespace,
                "port-forward", f"service/{service}", f"{port}:{service_port}"]  # fmt: skip
        self.port = port
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def wait(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while "Forwarding from" not in self.log.read_text(errors="replace"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ClusterError(f"kubectl port-forward did not start: {self.log.read_text(errors='replace')}")
            time.sleep(0.2)

    def close(self) -> None:
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        if self.process.poll() is None:
            self.process.kill()


def request(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, str], Any]:
    """One request through the port-forward: status, ``x-strata-*`` headers, JSON body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        payload = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        headers = {k.lower(): v for k, v in response.getheaders() if k.lower().startswith("x-strata-")}
        return response.status, headers, json.loads(response.read() or b"null")
    finally:
        connection.close()


@dataclass
class Load:
    """:data:`LOAD_RPS` completions a second over :data:`SENDERS` kept connections, paced from one clock (an open
    loop: a slow answer does not slow the arrivals while a sender is free), until :meth:`stop`."""

    port: int
    model: str
    answered: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    _tickets: queue.Queue[bool] = field(default_factory=queue.Queue)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stopping: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._send, daemon=True) for _ in range(SENDERS)]
        self._threads.append(threading.Thread(target=self._pace, daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def _pace(self) -> None:
        begin, sent = time.monotonic(), 0
        while not self._stopping.is_set():
            self._tickets.put(True)
            sent += 1
            self._stopping.wait(max(0.0, begin + sent / LOAD_RPS - time.monotonic()))
        for _ in range(SENDERS):
            self._tickets.put(False)

    def _send(self) -> None:
        body = json.dumps({"model": self.model, "prompt": "def main():", "max_tokens": 4}).encode()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while self._tickets.get():
            try:
                connection.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
                response = connection.getresponse()
                response.read()
                outcome = "ok" if response.status == 200 else f"HTTP {response.status}"
            except (OSError, http.client.HTTPException) as error:
                outcome = type(error).__name__
                connection.close()  # the next request opens a new one
            with self._lock:
                if outcome == "ok":
                    self.answered += 1
                else:
                    self.failed[outcome] = self.failed.get(outcome, 0) + 1
        connection.close()

    def progress(self) -> str:
        """What was answered and what failed so far, by what."""
        with self._lock:
            failed = ", ".join(f"{count} {kind}" for kind, count in sorted(self.failed.items())) or "none failed"
            return f"{self.answered} answered, {failed}"

    def stop(self) -> str:
        """Stop sending; what was answered and what failed, by what."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(60)
        return self.progress()


class ServiceView:
    """The service's status as the demo polls it: each change of its replicas, its Ready condition and its last
    scaling decision printed as it changes, with the seconds since the view began."""

    def __init__(self, cluster: LocalCluster, namespace: str, name: str) -> None:
        self.cluster, self.namespace, self.name = cluster, namespace, name
        self.started = time.monotonic()
        self.status: dict[str, Any] = {}
        self._said: dict[str, str] = {}
        """What was printed last of the replicas and of the scaling decision."""

    def follow(self, done: Callable[[dict[str, Any]], bool], timeout_s: float, what: str) -> dict[str, Any]:
        """Poll until ``done(status)`` holds; the service's status and pods on a timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._poll()
            if done(self.status):
                return self.status
            if time.monotonic() > deadline:
                pods = self.cluster.kubectl("get", "pods", "-n", self.namespace, "-o", "wide", check=False)
                raise ClusterError(f"{self.name}: no {what} within {timeout_s:.0f}s: {json.dumps(self.status)}\n{pods}")
            time.sleep(POLL_S)

    def _poll(self) -> None:
        found = self.cluster.kubectl_json("inferenceservice", self.name, "-n", self.namespace)
        self.status = found.get("status") or {}
        if not self.status:
            return  # the operator has not written one yet
        ready = condition(self.status, "Ready")
        self._say(
            "replicas",
            f"replicas {self.status.get('readyReplicas', 0)} ready of {self.status.get('desiredReplicas', '-')}, "
            f"Ready {ready.get('status', '-')} {ready.get('reason', '')}: {ready.get('message', '')}",
        )
        if self.status.get("lastScale"):
            self._say("scale", scaling_decision(self.status["lastScale"]))

    def _say(self, what: str, line: str) -> None:
        if self._said.get(what) != line:
            self._said[what] = line
            print(f"  {time.monotonic() - self.started:5.1f}s  {self.name:12} {line}", flush=True)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    """The service's condition of type ``kind``; empty when it has none yet."""
    found: dict[str, Any] = next((c for c in status.get("conditions", []) if c.get("type") == kind), {})
    return found


def scaling_decision(scale: dict[str, Any]) -> str:
    """``status.lastScale`` in a line: the count applied and why, with the router's ask and what it saw when it
    made one (the operator's own decisions, such as ``MinReplicas`` before the router has decided, carry none)."""
    line = f"scaling decision: {scale.get('replicas')} replicas, {scale.get('reason')}"
    if scale.get("requested") is not None:
        line += f" ({scale['requested']} asked by the router, {scale.get('mode')}"
        if scale.get("observedRate") is not None:
            line += f", {scale['observedRate']:.1f} req/s observed"
        line += ")"
    return f"{line}: {scale['message']}" if scale.get("message") else line


def loaded_checkpoints(log: str) -> list[str]:
    """The checkpoint folders a replica's JSON log says it loaded (``{"msg": "weights loaded", "checkpoint": ...}``)."""
    found = []
    for line in log.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("msg") == "weights loaded" and record.get("checkpoint"):
                found.append(str(record["checkpoint"]))
    return found


def is_ready(status: dict[str, Any]) -> bool:
    """Replicas and routers ready: the service answers at its URL."""
    return condition(status, "Ready").get("status") == "True"


def ready_count(status: dict[str, Any]) -> int:
    return int(status.get("readyReplicas") or 0)


def serve_what_it_trained(cluster: LocalCluster, namespace: str, image: str, port: int) -> None:
    """Apply the example service in ``namespace`` on ``cpu-tiny``'s checkpoints there, follow it until ready, ask the
    model through its router (forwarded from ``port``), then load it until the router's autoscaler has added a
    replica and that replica is ready, then delete one replica under the load and follow its replacement."""
    service = service_manifest(image)
    name, least = service["metadata"]["name"], int(service["spec"]["replicas"]["min"])
    claim = service["spec"]["model"]["persistentVolumeClaim"]
    print(f"\nServing what it trained: {SERVICE.relative_to(EXAMPLES.parent)} on claim {claim}", flush=True)
    print(cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(service)).strip(), flush=True)
    view = ServiceView(cluster, namespace, name)
    status = view.follow(is_ready, READY_TIMEOUT_S, "Ready condition")
    print(cluster.kubectl("get", "inferenceservice", name, "-n", namespace, "-o", "wide"))
    model = condition(status, "ModelAvailable")
    print(f"{name}: {model.get('message', 'the model')}; it answers at {status.get('url')} inside the cluster")
    log = cluster.kubectl("logs", f"deployment/{name}", "-n", namespace, check=False)
    for loaded in loaded_checkpoints(log):
        print(f"  a replica loaded {loaded} (its log)")
    forward = PortForward(cluster, namespace, name, port, urlsplit(str(status["url"])).port or 80)
    try:
        forward.wait()
        served = ask_once(port)
        print(f"\na steady {LOAD_RPS:.0f} requests a second for {name}: above {least} replicas at the target "
              f"{service['spec']['autoscaling']['target']} req/s each", flush=True)  # fmt: skip
        load = Load(port, served).start()
        try:
            scaled = view.follow(lambda s: ready_count(s) > least, READY_TIMEOUT_S, "replica added under load")
            print(f"  so far: {load.progress()}", flush=True)
            replace_a_replica_under_load(cluster, view, ready_count(scaled))
        finally:
            print(f"  load stopped: {load.stop()}", flush=True)
    finally:
        forward.close()
    print(cluster.kubectl("get", "inferenceservice", name, "-n", namespace, "-o", "wide"))
    print(cluster.kubectl("get", "pods", "-n", namespace, "-o", "wide"))
    involved = f"involvedObject.kind=InferenceService,involvedObject.name={name}"
    print(cluster.kubectl("get", "events", "-n", namespace, f"--field-selector={involved}", "--sort-by=.lastTimestamp"))


def replace_a_replica_under_load(cluster: LocalCluster, view: ServiceView, ready: int) -> None:
    """Delete one of the service's ``ready`` replicas, as a reclaimed node or an eviction would, while the load runs:
    it drains (its readiness turns 503, then its requests in flight finish) while the router sends the rest to the
    others, and its Deployment starts another; wait until that one is ready and the deleted one gone."""
    selector = f"{api.LABEL_INFERENCE_SERVICE}={view.name}"
    victim = replica_names(cluster, view.namespace, selector)[0]
    print(f"\ndeleting replica {victim} under the load: the router fails over to the others", flush=True)
    cluster.kubectl("delete", "pod", victim, "-n", view.namespace, "--wait=false")

    def replaced(status: dict[str, Any]) -> bool:
        return ready_count(status) >= ready and victim not in replica_names(cluster, view.namespace, selector)

    view.follow(replaced, READY_TIMEOUT_S, f"replacement of {victim}")


def replica_names(cluster: LocalCluster, namespace: str, selector: str) -> list[str]:
    return sorted(
        pod["metadata"]["name"] for pod in cluster.kubectl_json("pods", "-n", namespace, "-l", selector)["items"]
    )


def ask_once(port: int) -> str:
    """One completion through the router, printed with the replica that answered; the served model's name."""
    served = request(port, "GET", "/v1/models")[2]["data"][0]["id"]
    code, headers, body = request(
        port, "POST", "/v1/completions", {"model": served, "prompt": "def main():", "max_tokens": 12}
    )
    if code != 200:
        raise ClusterError(f"POST /v1/completions through the router answered {code}: {body}")
    text = body["choices"][0]["text"]
    print(
        f"POST /v1/completions through the router (model {served}): {text!r}, answered by replica "
        f"{headers.get('x-strata-replica')} in {headers.get('x-strata-attempts')} attempt(s)",
        flush=True,
    )
    return str(served)
