"""An InferenceService in real containers: the chart's operator makes the replicas' Deployment, the routers'
Deployment (python -m strata_serving.router, the serving image) and their Services; the kubelet runs the replica
(python -m strata_workloads.serve, ready only after warm-up); another pod's HTTP request to the service's URL goes
through a router, which found the replica by the headless Service's DNS name, and is answered by the model; the
router's autoscaler decides and the operator shows its decision in status.lastScale; a new autoscaling lead reaches
the running routers through their mounted ConfigMap, which the kubelet refreshes, with no router replaced; each
router deleted in turn under load loses no request (its shutdown delay outlasts the endpoint's removal). A service
scaled to zero holds a request in its router until the replica its autoscaler orders answers it, then goes back to
zero. A TrainingJob's checkpoint volume, written by its workers, is served by a service that names the job: the
replica mounts it read-only and loads the newest step on the job's preset. Replicas the kubelet cannot start (an
image it does not have, a volume it cannot mount) make the service's Ready say why in the kubelet's words. Replicas
whose server finds no usable checkpoint are stopped, with the reason, rather than left to crash-loop."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from cluster_support import eventually
from e2e_support import Strata, a_cpu_job, a_cpu_pool

import strata_api as api
from strata_api.serving import LABEL_ROUTER

T = TypeVar("T")

# A router answers /scale with 404 "no scaling decision yet" until its own first interval (15 s) is over; the test
# waits for the operator's lastScale, read from one router, and the Service may send the client's /scale to the
# other, started seconds later (or one restarted meanwhile), so the client asks again while that is the answer.
CLIENT = """
import json, sys, time, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1] + "/v1/generate", data=json.dumps(
    {"prompt": "def main():", "max_new_tokens": 8}).encode(), headers={"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=300) as answer:  # a service scaled to zero holds it for a replica
    headers = {k.lower(): v for k, v in answer.headers.items() if k.lower().startswith("x-strata-")}
    body = json.loads(answer.read())
deadline = time.monotonic() + 60
while True:
    try:
        with urllib.request.urlopen(sys.argv[1] + "/scale", timeout=10) as answer:
            scale = json.loads(answer.read())
        break
    except urllib.error.HTTPError as error:
        if error.code != 404 or b"no scaling decision yet" not in error.read() or time.monotonic() > deadline:
            raise
        time.sleep(1)
print(json.dumps({"headers": headers, "body": body, "scale": scale}))
"""

# Four threads, each asking /v1/models on a connection of its own per request (urllib does not keep one alive), for
# LOAD_S seconds from its first line: what a client of the service's URL sees while its routers are replaced.
LOAD_S = 60
LOAD = """
import json, sys, threading, time, urllib.request
url, seconds = sys.argv[1], float(sys.argv[2])
lock, answered, failed = threading.Lock(), [0], {}
print("load started", flush=True)
start = time.monotonic()
def ask():
    while time.monotonic() - start < seconds:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=10) as answer:
                answer.read()
            with lock:
                answered[0] += 1
        except Exception as error:  # every failure, by what it was
            kind = f"{type(error).__name__}: {getattr(error, 'reason', error)}"
            with lock:
                failed[kind] = failed.get(kind, 0) + 1
threads = [threading.Thread(target=ask) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"answered": answered[0], "failed": failed}))
"""


@pytest.fixture
def pool(strata: Strata) -> Iterator[str]:
    name = f"e2e-serve-{secrets.token_hex(3)}"
    strata.apply(a_cpu_pool(name))
    yield name
    strata.kubectl("delete", "resourcepool", name, "--wait=false", check=False)


def a_cpu_service(strata: Strata, name: str, namespace: str, pool: str) -> dict[str, Any]:
    resources: dict[str, Any] = {"gpuType": "CPU", "cpuPerReplica": "500m", "memoryPerReplica": "1Gi"}
    if strata.node_selector:
        resources["nodeSelector"] = strata.node_selector
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.INFERENCE_SERVICE,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "pool": pool,
            "workload": {"image": strata.workloads_image, "imagePullPolicy": "IfNotPresent"},
            "model": {"preset": "debug"},  # random weights: what is checked is the path of a request
            "replicas": {"min": 1, "max": 2},
            "resources": resources,
            # reactive: no forecaster to fit; one request now and then needs the one replica
            "autoscaling": {"metric": "rps", "target": 4, "mode": "reactive"},
        },
    }


def a_client_pod(
    strata: Strata, namespace: str, url: str, script: str = CLIENT, *args: str, name: str = "client"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            **({"nodeSelector": strata.node_selector} if strata.node_selector else {}),
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "client",
                    "image": strata.workloads_image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", script, url, *args],
                    "resources": {"limits": {"cpu": "200m", "memory": "256Mi"}},
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
        },
    }


def described(strata: Strata, namespace: str, probe: Callable[[], T | None], timeout_s: float, what: str) -> T:
    """:func:`eventually`, with the namespace described when it times out."""
    try:
        return eventually(probe, timeout_s, what)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{strata.describe(namespace)}") from None


def service_status(strata: Strata, namespace: str, name: str) -> dict[str, Any]:
    return strata.get("inferenceservice", name, "-n", namespace).get("status") or {}


def ready_status(strata: Strata, namespace: str, name: str) -> dict[str, Any]:
    """The service's status once its one replica is ready."""

    def ready() -> dict[str, Any] | None:
        status = service_status(strata, namespace, name)
        return status if status.get("readyReplicas") == 1 else None

    return described(strata, namespace, ready, 300, f"{name}'s replica to be ready")


def pod_result(strata: Strata, namespace: str, pod: str, timeout_s: float) -> dict[str, Any]:
    """The JSON last line a client pod printed, once it has succeeded (its log and the namespace when it failed)."""

    def finished() -> str | None:
        phase = strata.get("pod", pod, "-n", namespace).get("status", {}).get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = eventually(finished, timeout_s, f"pod {pod} to finish")
    out = strata.kubectl("logs", pod, "-n", namespace)
    assert phase == "Succeeded", f"{out}\n{strata.describe(namespace)}"
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def ask_through_the_router(strata: Strata, namespace: str, url: str) -> dict[str, Any]:
    """What the client pod (:data:`CLIENT`) printed: its answer from ``url``, the router's headers and ``/scale``."""
    strata.apply(a_client_pod(strata, namespace, url))
    return pod_result(strata, namespace, "client", 180)


@pytest.mark.timeout(1500)  # run alone, it also waits for the session: images, cluster, import, install
def test_a_cpu_service_answers_http_through_its_router_from_another_pod(
    strata: Strata, namespace: str, pool: str
) -> None:
    service = a_cpu_service(strata, "chat", namespace, pool)
    service["spec"]["model"] |= {"warmupRequests": 2, "batching": {"mode": "static"}}
    strata.apply(service)
    status = ready_status(strata, namespace, "chat")
    assert status["url"] == f"http://chat.{namespace}.svc:8000"
    # the replica served its two warm-up requests, batched statically, before it said ready
    out = strata.kubectl("logs", "deployment/chat", "-n", namespace)
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    ready = [record for record in records if record.get("msg") == "ready"]
    assert [(r["batching"], r["warmup_requests"]) for r in ready] == [("static", 2)], out[-2000:]

    def decided() -> dict[str, Any] | None:
        last: dict[str, Any] = service_status(strata, namespace, "chat").get("lastScale") or {}
        return last if "requested" in last else None  # only a decision read from the router names its ask

    last = described(strata, namespace, decided, 90, "the router's scaling decision in status.lastScale")
    assert last["mode"] == "reactive"
    assert last["requested"] == 1
    assert last["replicas"] == 1

    answer = ask_through_the_router(strata, namespace, status["url"])
    assert answer["body"]["tokens"] == 8
    assert isinstance(answer["body"]["text"], str)
    assert answer["headers"]["x-strata-attempts"] == "1"  # a router answered: it names the replica it chose
    assert answer["headers"]["x-strata-replica"].endswith(":8000")
    assert answer["scale"]["mode"] == "reactive"
    assert answer["scale"]["replicas"] == 1

    # The replica reports its node's pressure for the routers' health score: Linux's PSI as the container sees it.
    read = (
        "import os, urllib.request; print(os.path.exists('/proc/pressure/cpu')); "
        "print(urllib.request.urlopen('http://127.0.0.1:8000/metrics').read().decode())"
    )
    psi, _, page = strata.kubectl("exec", "deployment/chat", "-n", namespace, "--", "python", "-c", read).partition(
        "\n"
    )
    shares = dict(re.findall(r'^strata_serve_node_pressure\{resource="(\w+)"\} (\S+)$', page, re.MULTILINE))
    if psi == "True":  # a kernel with PSI, as this project's real node has: both resources, each a share
        assert shares.keys() == {"cpu", "memory"}, page
        assert all(0.0 <= float(share) <= 1.0 for share in shares.values()), page
    else:
        assert shares == {}, page

    # A new lead reaches the running routers through their mounted ConfigMap: the operator rewrites it, the kubelet
    # swaps the file in place (within its sync period, about a minute) and each router's next decision reads it;
    # no router is replaced (a new one would start without its request history).
    selector = f"{LABEL_ROUTER}=chat"
    routers = router_pods(strata, namespace, selector)
    assert routers, strata.describe(namespace)
    patch = {"spec": {"autoscaling": {"horizonSeconds": 105}}}
    strata.kubectl("patch", "inferenceservice", "chat", "-n", namespace, "--type=merge", "-p", json.dumps(patch))

    def every_router_read_it() -> bool:
        logs = strata.kubectl("logs", "-l", selector, "-n", namespace, "--tail=-1", "--prefix")
        told = {line.split("/")[1] for line in logs.splitlines() if "the lead is now 105 s" in line}
        return told >= set(routers)

    described(strata, namespace, every_router_read_it, 180, "every router to read the new lead from its ConfigMap")
    assert router_pods(strata, namespace, selector) == routers  # the same pods, none restarted

    # Each router deleted in turn under load (a node drain, a roll) loses no request: told to stop, a router answers
    # through its shutdown delay while the Service's endpoint goes from every node's proxy, then drains.
    strata.apply(a_client_pod(strata, namespace, status["url"], LOAD, str(LOAD_S), name="load"))
    eventually(lambda: "load started" in strata.kubectl("logs", "load", "-n", namespace, check=False), 120, "the load")
    for old in sorted(routers):
        strata.kubectl("delete", "pod", old, "-n", namespace, "--wait=false")

        def replaced(old: str = old) -> bool:
            ready = {
                pod["metadata"]["name"]
                for pod in strata.get("pods", "-l", selector, "-n", namespace)["items"]
                if any(c.get("ready") for c in pod.get("status", {}).get("containerStatuses", []))
            }
            return old not in ready and len(ready) == len(routers)

        eventually(replaced, 60, f"router {old} replaced by a ready one")

    load = strata.get("pod", "load", "-n", namespace).get("status", {}).get("phase")
    assert load == "Running", "the load ended before the last router was replaced: make LOAD_S longer"
    seen = pod_result(strata, namespace, "load", LOAD_S + 60)
    assert seen["failed"] == {}, seen
    assert seen["answered"] > 0, seen


def train_on_a_claim(
    strata: Strata, namespace: str, pool: str, name: str, *, steps: int, every: int, keep: int = 3
) -> None:
    """A CPU TrainingJob on the preset debug-dense (not the service's default, debug) that keeps its ``keep`` newest
    checkpoints on a claim of its own, one every ``every`` of its ``steps``."""
    claim = strata.checkpoint_claim(namespace)
    job = a_cpu_job(strata, name, pool, claim=claim, steps=steps, every=every, preset="debug-dense", keep=keep)
    strata.apply(job | {"metadata": {"name": name, "namespace": namespace}})


@pytest.mark.timeout(900)
def test_a_service_of_a_trained_job_serves_its_newest_checkpoint_on_the_jobs_preset_through_the_router(
    strata: Strata, namespace: str, pool: str
) -> None:
    # train on a preset other than the service's default (debug): built as debug, the checkpoint would not load
    train_on_a_claim(strata, namespace, pool, "tune", steps=20, every=10)
    trained = strata.wait_for_phase(namespace, "tune", (api.Phase.SUCCEEDED.value,), 480)
    step = trained["lastCheckpoint"]["step"]
    assert step == 20, trained

    service = a_cpu_service(strata, "tuned", namespace, pool)
    service["spec"]["model"] = {"trainingJob": "tune"}
    strata.apply(service)
    status = ready_status(strata, namespace, "tuned")
    model = next(c for c in status["conditions"] if c["type"] == "ModelAvailable")
    assert model["reason"] == "Checkpoint", model
    assert model["message"].endswith(f"on the job's preset debug-dense, step {step} by its status.lastCheckpoint")
    template = strata.get("deployment", "tuned", "-n", namespace)["spec"]["template"]
    assert template["metadata"]["annotations"]["strata.dev/checkpoint-step"] == str(step)  # the step it rolls to

    # the replica read what the workers wrote, on the job's volume: its log names the newest step folder
    out = strata.kubectl("logs", "deployment/tuned", "-n", namespace)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    loaded = [line["checkpoint"] for line in lines if line.get("msg") == "weights loaded"]
    assert loaded == [f"/checkpoints/step-{step:08d}"], out[-2000:]

    answer = ask_through_the_router(strata, namespace, status["url"])
    assert answer["body"]["tokens"] == 8
    assert answer["headers"]["x-strata-attempts"] == "1"


@pytest.mark.timeout(900)
def test_a_service_of_a_job_that_checkpoints_faster_than_a_replica_warms_up_is_ready_while_the_job_trains(
    strata: Strata, namespace: str, pool: str
) -> None:
    # a checkpoint every few seconds, a replica that takes far longer to load and warm up (a tenth of a CPU: about a
    # minute): one roll at a time, or each newer step would replace the replica still warming up and none would be
    # ready until the job stopped. Every checkpoint kept (80 of them): the replica's step is still there when it loads
    train_on_a_claim(strata, namespace, pool, "busy", steps=400, every=5, keep=100)

    def job_status() -> dict[str, Any]:
        return strata.get("trainingjob", "busy", "-n", namespace).get("status") or {}

    def checkpointed() -> int | None:
        step = (job_status().get("lastCheckpoint") or {}).get("step")
        return step if isinstance(step, int) else None

    first = described(strata, namespace, checkpointed, 300, "the job's first checkpoint")
    service = a_cpu_service(strata, "follows", namespace, pool)
    service["spec"]["model"] = {"trainingJob": "busy"}
    service["spec"]["replicas"] = {"min": 1, "max": 1}
    service["spec"]["resources"]["cpuPerReplica"] = "100m"
    strata.apply(service)

    def step_of(obj: dict[str, Any]) -> str | None:
        return ((obj.get("metadata") or {}).get("annotations") or {}).get("strata.dev/checkpoint-step")

    def started_on() -> str | None:
        found = strata.kubectl("get", "deployment", "follows", "-n", namespace, "-o", "name", check=False)
        return step_of(strata.get("deployment", "follows", "-n", namespace)["spec"]["template"]) if found else None

    started = described(strata, namespace, started_on, 60, "the replicas' Deployment")

    def ready_while_training() -> tuple[int, list[tuple[str, str | None]]] | None:
        status, job = service_status(strata, namespace, "follows"), job_status()
        assert job.get("phase") == api.Phase.RUNNING.value, f"the job ended before the service was ready: {job}"
        if status.get("readyReplicas") != 1:
            return None
        pods = strata.get("pods", "-n", namespace, "-l", f"{api.LABEL_INFERENCE_SERVICE}=follows")["items"]
        ready = [p for p in pods if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get(
            "conditions", ()))]  # fmt: skip
        return (job["lastCheckpoint"]["step"], [(p["metadata"]["name"], step_of(p)) for p in ready]) if ready else None

    step, ready = described(strata, namespace, ready_while_training, 300, "a ready replica while the job trains")
    # the replica started on the step of the service's creation is the one that turned ready, though the job
    # checkpointed meanwhile: no newer step replaced it while it warmed up
    assert step > first, (first, step)
    assert [on for _, on in ready] == [started], (first, started, step, ready)
    # and it serves that step, though newer ones were on the volume when it loaded (STRATA_SERVE_STEP)
    out = strata.kubectl("logs", ready[0][0], "-n", namespace)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    loaded = [line["checkpoint"] for line in lines if line.get("msg") == "weights loaded"]
    assert started is not None
    assert loaded == [f"/checkpoints/step-{int(started):08d}"], (started, step, out[-2000:])

    # the job goes on, the replicas follow it one roll at a time, and end on its last step
    done = strata.wait_for_phase(namespace, "busy", (api.Phase.SUCCEEDED.value,), 600)
    last = done["lastCheckpoint"]["step"]

    def on_the_last_step() -> dict[str, Any] | None:
        template = strata.get("deployment", "follows", "-n", namespace)["spec"]["template"]
        status = service_status(strata, namespace, "follows")
        at_last = template["metadata"]["annotations"].get("strata.dev/checkpoint-step") == str(last)
        return status if at_last and status.get("readyReplicas") == 1 else None

    status = described(strata, namespace, on_the_last_step, 300, f"the replica ready on step {last}")
    model = next(c for c in status["conditions"] if c["type"] == "ModelAvailable")
    assert model["message"].endswith(f"step {last} by its status.lastCheckpoint"), model
    rolls = strata.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=follows,reason=Rolling", "-o", "name"
    ).split()
    assert rolls, "no Rolling Event"


@pytest.mark.timeout(900)
def test_a_service_scaled_to_zero_holds_a_request_until_its_first_replica_answers_then_scales_to_zero_again(
    strata: Strata, namespace: str, pool: str
) -> None:
    service = a_cpu_service(strata, "idle", namespace, pool)
    service["spec"]["replicas"] = {"min": 0, "max": 1}
    service["spec"]["autoscaling"]["scaleDownStabilizationSeconds"] = 0
    strata.apply(service)

    def at_zero_with_a_router() -> dict[str, Any] | None:
        status = service_status(strata, namespace, "idle")
        out = strata.kubectl("get", "deployment", "idle-router", "-n", namespace, "-o", "json", check=False)
        routers = json.loads(out) if out.lstrip().startswith("{") else {}  # not made yet
        ready_routers = (routers.get("status") or {}).get("readyReplicas") or 0
        return status if status.get("desiredReplicas") == 0 and ready_routers > 0 else None

    status = described(strata, namespace, at_zero_with_a_router, 180, "no replica and a ready router")
    assert strata.get("deployment", "idle", "-n", namespace)["spec"]["replicas"] == 0

    # the router holds the request; its autoscaler, counting it, asks for a replica; the operator starts one, and
    # the request is answered once that replica has warmed up
    answer = ask_through_the_router(strata, namespace, status["url"])
    assert answer["body"]["tokens"] == 8
    assert answer["headers"]["x-strata-attempts"] == "1"
    scaled = strata.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=idle,reason=ScaledUp",
        "-o", "jsonpath={.items[*].message}",
    )  # fmt: skip
    assert scaled.startswith("0 -> 1 replicas"), scaled

    def back_at_zero() -> dict[str, Any] | None:
        status = service_status(strata, namespace, "idle")
        return status if status.get("desiredReplicas") == 0 else None

    idle = described(strata, namespace, back_at_zero, 240, "the service scaled to zero again once no request came")
    assert idle["lastScale"]["replicas"] == 0, idle["lastScale"]
    eventually(
        lambda: strata.get("deployment", "idle", "-n", namespace)["spec"]["replicas"] == 0 or None, 60, "0 replicas"
    )


@pytest.mark.timeout(300)
def test_replicas_of_an_image_the_node_cannot_have_make_ready_say_so_in_the_kubelets_words(
    strata: Strata, namespace: str, pool: str
) -> None:
    service = a_cpu_service(strata, "typo", namespace, pool)
    service["spec"]["workload"] = {"image": "strata.local/no-such-image:1", "imagePullPolicy": "Never"}
    strata.apply(service)

    def ready() -> dict[str, Any] | None:
        body = strata.get(f"{api.INFERENCE_SERVICES}.{api.GROUP}", "typo", "-n", namespace)
        found = [c for c in (body.get("status") or {}).get("conditions") or () if c["type"] == "Ready"]
        return found[0] if found and found[0]["reason"] == "ReplicasCannotStart" else None

    condition = eventually(ready, 120, "Ready False with ReplicasCannotStart")
    assert condition["status"] == "False"
    assert condition["message"].startswith("0 of 1 replicas ready: the kubelet cannot start replica typo-"), condition
    assert "ErrImageNeverPull" in condition["message"], condition["message"]


@pytest.mark.timeout(300)
def test_replicas_whose_volume_cannot_be_mounted_make_ready_say_so_in_the_kubelets_words(
    strata: Strata, namespace: str, pool: str
) -> None:
    # the scheduler places the replica, the kubelet cannot mount its volume and says so only in a FailedMount Event
    with strata.claim_of_a_missing_folder(namespace) as claim:
        service = a_cpu_service(strata, "nowhere", namespace, pool)
        service["spec"]["model"] |= {"path": "/checkpoints", "persistentVolumeClaim": claim}
        strata.apply(service)

        def ready() -> dict[str, Any] | None:
            conditions = service_status(strata, namespace, "nowhere").get("conditions") or ()
            ready = [c for c in conditions if c["type"] == "Ready"]
            return ready[0] if ready and ready[0]["reason"] == "ReplicasCannotStart" else None

        condition = described(strata, namespace, ready, 150, "Ready False with ReplicasCannotStart")
    assert condition["status"] == "False"
    message = condition["message"]
    assert message.startswith("0 of 1 replicas ready: the volumes of replica nowhere-"), message
    assert "cannot be mounted: FailedMount: " in message, message
    assert "is not a directory" in message, message  # the kubelet's own words on the hostPath folder


@pytest.mark.timeout(600)
def test_replicas_whose_server_finds_no_checkpoint_are_stopped_not_left_to_crash_loop(
    strata: Strata, namespace: str, pool: str
) -> None:
    # an empty checkpoint folder: the real server exits 3 (no usable checkpoint); a restart would read the same bytes
    claim = strata.checkpoint_claim(namespace)
    service = a_cpu_service(strata, "empty", namespace, pool)
    service["spec"]["model"] |= {"path": "/checkpoints", "persistentVolumeClaim": claim}
    strata.apply(service)

    def stopped() -> dict[str, Any] | None:
        status = service_status(strata, namespace, "empty")
        return status if "modelBackoff" in status else None

    status = described(strata, namespace, stopped, 240, "status.modelBackoff")
    model = next(c for c in status["conditions"] if c["type"] == "ModelAvailable")
    assert (model["status"], model["reason"]) == ("False", "NoUsableCheckpoint"), model
    assert "exited with code 3" in model["message"], model
    assert "its replicas are stopped rather than left to crash-loop" in model["message"], model
    assert (status["modelBackoff"]["tries"], status["modelBackoff"]["reason"]) == (1, "NoUsableCheckpoint")
    deployment = strata.get("deployment", "empty", "-n", namespace)
    assert deployment["spec"]["replicas"] == 0

    def gone() -> bool | None:
        return not strata.get("pods", "-l", f"{api.LABEL_INFERENCE_SERVICE}=empty", "-n", namespace)["items"] or None

    described(strata, namespace, gone, 60, "the refused replica gone")
    events = strata.get("events", "-n", namespace, "--field-selector", "involvedObject.name=empty")["items"]
    assert any(e["reason"] == "NoUsableCheckpoint" and e["type"] == "Warning" for e in events), events


def router_pods(strata: Strata, namespace: str, selector: str) -> dict[str, tuple[str, int]]:
    """The router pods by name: their uid and their containers' restarts."""
    pods = strata.get("pods", "-l", selector, "-n", namespace)["items"]
    return {
        pod["metadata"]["name"]: (
            pod["metadata"]["uid"],
            sum(c.get("restartCount", 0) for c in pod.get("status", {}).get("containerStatuses", [])),
        )
        for pod in pods
    }
