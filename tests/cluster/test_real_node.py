"""The real node: a pod from the locally made image runs in a container to Completed and `kubectl logs` reads it,
Services resolve and route, GPU pods cannot land on it, and stop leaves the host exactly as it found it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_support import eventually

from strata_dev.cluster import ClusterError, ClusterSettings, LocalCluster
from strata_dev.node import CGROUP_FS, CONTAINER_LOG_LINKS, KERNEL_TUNABLES, NODE_ROOTS, SHIM_SOCKETS, sweep_abandoned
from strata_dev.node_config import NODE_NAME, POD_SUBNET, REAL_NODE_LABEL
from strata_dev.node_images import TEST_IMAGE, write_archive


@pytest.fixture(scope="module")
def real_cluster() -> Iterator[LocalCluster]:
    keep = os.environ.get("STRATA_KEEP_CLUSTER_LOGS") == "1"
    with LocalCluster(ClusterSettings(real_node=True, keep_workdir=keep)) as cluster:
        yield cluster


def a_pod(name: str, command: str, labels: dict[str, str] | None = None, **spec: Any) -> str:
    """A pod of the local test image pinned to the real node (JSON is YAML, for ``kubectl apply -f -``)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": {REAL_NODE_LABEL: "true"},
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "main", "image": TEST_IMAGE, "imagePullPolicy": "Never", "command": ["/bin/sh", "-c", command]}
            ],
            **spec,
        },
    }
    return json.dumps(pod)


def phase(cluster: LocalCluster, name: str) -> str:
    return str(cluster.kubectl_json("pod", name).get("status", {}).get("phase", ""))


def ready_endpoints(cluster: LocalCluster, service: str) -> set[str]:
    """The addresses a Service's EndpointSlices list as ready."""
    slices = cluster.kubectl_json("endpointslices", "-l", f"kubernetes.io/service-name={service}")["items"]
    return {
        address
        for piece in slices
        for endpoint in piece.get("endpoints") or ()
        if (endpoint.get("conditions") or {}).get("ready")
        for address in endpoint.get("addresses", ())
    }


def finished(cluster: LocalCluster, name: str) -> str | None:
    current = phase(cluster, name)
    return current if current in ("Succeeded", "Failed") else None


@pytest.mark.timeout(240)
def test_a_pod_runs_in_a_container_on_the_real_node_and_its_log_is_read(real_cluster: LocalCluster) -> None:
    node = real_cluster.kubectl_json("node", NODE_NAME)
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})
    assert node["metadata"]["labels"][REAL_NODE_LABEL] == "true"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert not any(key.endswith("/gpu") for key in node["status"]["allocatable"])

    marker = uuid.uuid4().hex
    real_cluster.kubectl("apply", "-f", "-", input=a_pod("hello", f"echo {marker} from $(hostname)"))
    assert eventually(lambda: finished(real_cluster, "hello"), 120, "the pod to finish") == "Succeeded"
    pod = real_cluster.kubectl_json("pod", "hello")
    assert pod["spec"]["nodeName"] == NODE_NAME
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert re.fullmatch(r"10\.245\.0\.\d+", pod["status"]["podIP"]), (pod["status"]["podIP"], POD_SUBNET)
    assert real_cluster.kubectl("logs", "hello").strip() == f"{marker} from hello"


@pytest.mark.timeout(180)
def test_an_image_archive_loaded_into_the_node_runs(real_cluster: LocalCluster, tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "loaded.tar", images={"strata.local/loaded:1": {"Cmd": ["echo", "loaded"]}})
    real_cluster.load_images(archive)
    body = json.loads(a_pod("loaded", "unused"))
    body["spec"]["containers"][0] |= {"image": "strata.local/loaded:1", "command": None}
    real_cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    assert eventually(lambda: finished(real_cluster, "loaded"), 120, "the pod to finish") == "Succeeded"
    assert real_cluster.kubectl("logs", "loaded").strip() == "loaded"


@pytest.mark.timeout(240)
def test_a_headless_service_resolves_and_a_cluster_ip_routes_from_another_pod(real_cluster: LocalCluster) -> None:
    served = uuid.uuid4().hex
    real_cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=a_pod(
            "web",
            f"mkdir -p /tmp/www && echo {served} > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
            labels={"app": "web"},
        ),
    )
    for name, cluster_ip in (("web-headless", "None"), ("web", None)):
        service: dict[str, Any] = {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}
        if cluster_ip:
            service["clusterIP"] = cluster_ip
        body = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": service}
        real_cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    eventually(lambda: phase(real_cluster, "web") == "Running", 120, "the web pod to run")
    web_ip = real_cluster.kubectl_json("pod", "web")["status"]["podIP"]
    cluster_ip = real_cluster.kubectl_json("service", "web")["spec"]["clusterIP"]
    eventually(lambda: web_ip in ready_endpoints(real_cluster, "web"), 60, "the web Service to list the pod ready")

    # busybox's nslookup has its own resolver; its wget is given the address (a static glibc cannot load NSS).
    # kube-proxy writes the ClusterIP's rules some time after the endpoint is ready (its iptables sync, slower on a
    # loaded machine), and a connection whose first SYN goes out before them keeps its conntrack entry, made
    # without the DNAT, for every retransmit: wget without a timeout then waits over two minutes (the cluster tier
    # once timed out so, the client still running, on a busy machine). So each try is a new connection with a 5 s
    # timeout (busybox's `timeout`: Debian's static busybox 1.35 segfaults on `wget -T`), after the Service lists the
    # pod ready; the ClusterIP must still answer within the pod's 120 s.
    client = (
        "nslookup web-headless.default.svc.cluster.local && nslookup web.default.svc.cluster.local"
        f" && for try in $(seq 15); do timeout 5 wget -O- http://{cluster_ip}:80/ && exit 0; sleep 1; done; exit 1"
    )
    real_cluster.kubectl("apply", "-f", "-", input=a_pod("client", client))
    try:
        ended = eventually(lambda: finished(real_cluster, "client"), 120, "the client pod to finish")
    except AssertionError as error:
        status = real_cluster.kubectl_json("pod", "client").get("status", {})
        log = real_cluster.kubectl("logs", "client", check=False)
        raise AssertionError(f"{error}; the client's status {status}; its log: {log}") from None
    assert ended == "Succeeded", real_cluster.kubectl("logs", "client", check=False)
    out = real_cluster.kubectl("logs", "client")
    headless, cluster_name = out.split("Name:")[1:3]
    assert f"Address: {web_ip}" in headless, out  # the headless Service's name is the pod's address
    assert f"Address: {cluster_ip}" in cluster_name, out
    assert served in out, out  # the ClusterIP routed through kube-proxy to the pod


@pytest.mark.timeout(180)
def test_a_pod_reaches_the_api_server_through_the_kubernetes_service(real_cluster: LocalCluster) -> None:
    # Plain HTTP to the TLS port: Go's server answers in clear text, which proves the route (Service ->
    # endpoint on the veth's host end -> forward -> API server) without busybox's limited TLS client.
    request = r'(printf "GET /version HTTP/1.0\r\n\r\n"; sleep 5)'  # busybox nc stops reading at end of input
    ask = f"{request} | nc $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT"
    real_cluster.kubectl("apply", "-f", "-", input=a_pod("asks-the-api", ask))
    assert eventually(lambda: finished(real_cluster, "asks-the-api"), 120, "the pod to finish") == "Succeeded"
    assert "Client sent an HTTP request to an HTTPS server" in real_cluster.kubectl("logs", "asks-the-api")


@pytest.mark.timeout(120)
def test_a_gpu_pod_cannot_land_on_the_real_node(real_cluster: LocalCluster) -> None:
    body = json.loads(a_pod("wants-a-gpu", "true"))
    body["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    real_cluster.kubectl("apply", "-f", "-", input=json.dumps(body))

    def unschedulable() -> bool:
        conditions = real_cluster.kubectl_json("pod", "wants-a-gpu").get("status", {}).get("conditions", [])
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions)

    eventually(unschedulable, 60, "the scheduler to refuse the GPU pod")
    assert not real_cluster.kubectl_json("pod", "wants-a-gpu")["spec"].get("nodeName")


@pytest.mark.timeout(60)
def test_a_node_component_that_dies_is_named_with_its_log(real_cluster: LocalCluster) -> None:
    # the last test on this cluster: it kills kube-proxy (then the module's teardown must still remove it all)
    assert real_cluster.node is not None
    proxy = real_cluster.node.components["kube-proxy"]
    proxy.process.kill()
    proxy.process.wait(10)
    assert real_cluster.dead_components() == ["node kube-proxy"]
    with pytest.raises(ClusterError) as failure:
        real_cluster.node.check_alive()
    assert f"node kube-proxy exited with code -9; log: {proxy.log}" in str(failure.value)
    assert proxy.log.name == "node-kube-proxy.log"


NODE_ITEM = re.compile(r"(?:strata-node-|strata-|stn)([0-9a-f]{6})")
"""A name or path of one local node: its namespace, veth, cgroup, folders, run folder."""
SHARED = ("sysctls", "shim sockets", "shared /run", "/run/netns", "container log links", "pod logs")
"""What every local node shares: only comparable when no other node (another session's) runs meanwhile."""


def host_state(workdir: Path, own: str | None = None) -> dict[str, Any]:
    """What the real node may touch on the host: namespaces, links, mounts, host iptables, cgroups, sysctls.

    Items of other local nodes (another session's tests may run one) are left out; ``own``'s are kept."""

    def out(*args: str) -> str:
        return subprocess.run(list(args), capture_output=True, text=True, check=True, timeout=30).stdout

    def mine(items: Iterable[str]) -> list[str]:
        return sorted(i for i in items if all(m.group(1) == own for m in NODE_ITEM.finditer(i)))

    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    watched = (str(workdir), "/run/netns/", str(CGROUP_FS), str(NODE_ROOTS / "strata-node-"))
    run = [p.name for p in Path("/run").iterdir() if p.name.startswith(("strata", "containerd"))]
    live_sockets = []
    for path in SHIM_SOCKETS.glob("*"):
        with socket.socket(socket.AF_UNIX) as probe, contextlib.suppress(OSError):
            probe.connect(str(path))
            live_sockets.append(path)
    return {
        "netns": mine(out("ip", "netns", "list").split()),
        "links": mine(line.split(":")[1].strip().split("@")[0] for line in out("ip", "-o", "link").splitlines()),
        "mounts": mine(m for m in mounts if m.startswith(watched)),
        "node folders": mine(str(p) for p in NODE_ROOTS.glob("strata-node-*")),
        "iptables": sorted(
            re.sub(r"\[\d+:\d+\]", "", line) for line in out("iptables-save").splitlines() if not line.startswith("#")
        ),
        "cgroups": mine(str(p) for h in CGROUP_FS.iterdir() if h.is_dir() for p in h.iterdir() if p.is_dir()),
        "node /run": mine(name for name in run if NODE_ITEM.search(name)),
        "sysctls": {name: (Path("/proc/sys") / name).read_text() for name in KERNEL_TUNABLES},
        "shim sockets": sorted(str(p) for p in SHIM_SOCKETS.glob("*") if p not in live_sockets),
        "container log links": sorted(str(p) for p in CONTAINER_LOG_LINKS.glob("*")),
        "pod logs": sorted(str(p) for p in Path("/var/log/pods").glob("*")),
        "shared /run": sorted(name for name in run if not NODE_ITEM.search(name)),
        "/run/netns": "/run/netns" in mounts,
        "others": sorted({m.group(1) for m in NODE_ITEM.finditer(" ".join(run))} - {own}),
    }


def left_as_found(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """What differs; what every node shares is compared only if no other node ran at either moment."""
    skip = {"others", *(SHARED if before["others"] or after["others"] else ())}
    return {key: (before[key], after[key]) for key in before if key not in skip and before[key] != after[key]}


def processes_of(workdir: Path, cgroup_root: str) -> list[str]:
    """Processes whose command line names the cluster's or the node's folder, or that sit in the node's cgroup."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                cgroup = (entry / "cgroup").read_text()
            except OSError:
                continue
            if str(workdir) in cmdline or cgroup_root in cmdline or cgroup_root in cgroup:
                found.append(f"{entry.name} {cmdline}")
    return found


@pytest.mark.timeout(240)
def test_stop_leaves_the_host_as_it_found_it(tmp_path: Path) -> None:
    workdir = tmp_path / "cluster"
    before = host_state(workdir)
    cluster = LocalCluster(ClusterSettings(workdir=workdir, real_node=True))
    try:
        cluster.start()
        assert cluster.node is not None
        cgroup_root, node_id = cluster.node.cgroup_root, cluster.node.id
        running = host_state(workdir, own=node_id)
        assert running["netns"] != before["netns"]  # it made its own namespace
        assert running["cgroups"] != before["cgroups"]  # and its own cgroups
        cluster.kubectl("apply", "-f", "-", input=a_pod("sleeper", "exec sleep 600"))  # a container left running
        eventually(lambda: phase(cluster, "sleeper") == "Running", 120, "the sleeper to run")
        assert processes_of(workdir, cgroup_root)
        mounts = host_state(workdir, own=node_id)["mounts"]
        assert [m for m in mounts if m.startswith(str(cluster.node.root))]  # rootfs, shm, pod namespaces
    finally:
        cluster.stop()
    assert processes_of(workdir, cgroup_root) == []
    assert left_as_found(before, host_state(workdir, own=node_id)) == {}
    assert not workdir.exists()


@pytest.mark.timeout(240)
def test_a_node_whose_launcher_was_killed_is_swept(tmp_path: Path) -> None:
    workdir, pod, ready = tmp_path / "cluster", tmp_path / "pod.json", tmp_path / "ready"
    before = host_state(workdir)
    pod.write_text(a_pod("sleeper", "exec sleep 600"))
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from strata_dev.cluster import ClusterError, ClusterSettings, LocalCluster
        cluster = LocalCluster(ClusterSettings(workdir=Path({str(workdir)!r}), keep_workdir=True, real_node=True))
        cluster.start()
        cluster.kubectl("apply", "-f", {str(pod)!r})
        while "Running" not in cluster.kubectl("get", "pod", "sleeper", "-o", "jsonpath={{.status.phase}}"):
            time.sleep(0.2)
        Path({str(ready)!r}).write_text(cluster.node.id)
        time.sleep(600)
    """)
    launcher = subprocess.Popen([sys.executable, "-c", script])
    try:
        eventually(lambda: ready.exists() and ready.read_text(), 180, "the launcher's node to run a pod")
    finally:
        launcher.send_signal(signal.SIGKILL)  # no stop runs: the container, its shim, the namespace outlive it
        launcher.wait()
    node_id = ready.read_text()
    eventually(lambda: processes_of(workdir, f"/strata-node-{node_id}"), 10, "the orphaned container")
    assert left_as_found(before, host_state(workdir, own=node_id))  # the container, namespace, cgroups are left

    assert sweep_abandoned() == [node_id]
    assert processes_of(workdir, f"/strata-node-{node_id}") == []
    assert left_as_found(before, host_state(workdir, own=node_id)) == {}
