"""The operator's connection to the API server when it is not a clean, unlimited one: credentials that rotate and
are revoked, an API server that throttles the operator (API Priority and Fairness), and watch connections that
drop. The operator runs with exactly the chart's RBAC, as its ServiceAccount, from a token file the test controls
(a bound token from the TokenRequest API, revoked by deleting the Secret it is bound to, as the API server
enforces)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import os
import re
import secrets
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from cluster_support import ClusterHandle, eventually
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from operator_harness import OperatorProcess, Strata
from operator_manifests import a_job

import strata_api as api
from strata_dev.binaries import KUBERNETES_VERSION
from strata_dev.cluster import free_port
from strata_operator.runtime.kube import Kube, RetryReason, pod_path
from strata_operator.runtime.watches import Index, Informer, worker_pod_entry

CHART = Path(__file__).resolve().parents[3] / "charts" / "strata"
APF = "flowcontrol.apiserver.k8s.io"


class OperatorIdentity:
    """The chart's operator ServiceAccount and RBAC in a test namespace, and a token file for it that the test
    rotates: each token is bound to a Secret of its own, and deleting that Secret revokes it."""

    def __init__(self, cluster: ClusterHandle, namespace: str, folder: Path) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.release = f"cred-{secrets.token_hex(3)}"
        self.account = f"{self.release}-operator"
        self.core = cluster.core()
        self.token_file = folder / "token"
        self.kubeconfig = folder / "kubeconfig"
        self.ca_file = folder / "ca.crt"
        self.server = ""
        self.issued: list[tuple[str, str]] = []
        """(Secret name, token) of every token issued, oldest first."""

    def install(self) -> OperatorIdentity:
        helm = [str(self.cluster.bin_dir / "helm"), "template", self.release, str(CHART), "-n", self.namespace,
                "--kube-version", KUBERNETES_VERSION, "--show-only", "templates/operator.yaml"]  # fmt: skip
        proc = subprocess.run(helm, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"helm template: {proc.stderr}"
        rendered = proc.stdout
        kinds = {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
        documents = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in kinds]
        assert {d["kind"] for d in documents} == kinds, "the chart's operator identity changed shape"
        self.cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(documents))
        admin = yaml.safe_load(self.cluster.kubeconfig.read_text())
        context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
        cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
        self.server = str(cluster["cluster"]["server"])
        self.ca_file.write_bytes(base64.b64decode(cluster["cluster"]["certificate-authority-data"]))
        self.kubeconfig.write_text(
            yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "clusters": [cluster],
                "users": [{"name": "operator", "user": {"tokenFile": str(self.token_file)}}],
                "contexts": [{"name": "operator", "context": {"cluster": cluster["name"], "user": "operator"}}],
                "current-context": "operator",
            })
        )  # fmt: skip
        self.rotate()
        return self

    def uninstall(self) -> None:
        for kind in ("clusterrolebinding", "clusterrole"):
            self.cluster.kubectl("delete", kind, self.account, "--ignore-not-found", "--wait=false")

    def rotate(self) -> str:
        """A new token, bound to a new Secret, written over the token file at once (as the kubelet swaps a
        projected token); the old token keeps working until :meth:`revoke`."""
        name = f"{self.release}-token-{len(self.issued) + 1}"
        secret = self.core.create_namespaced_secret(self.namespace, {"metadata": {"name": name}, "type": "Opaque"})
        bound = {"kind": "Secret", "apiVersion": "v1", "name": name, "uid": secret.metadata.uid}
        request = {"spec": {"expirationSeconds": 3600, "boundObjectRef": bound}}
        token = self.core.create_namespaced_service_account_token(self.account, self.namespace, request).status.token
        staged = self.token_file.with_suffix(".new")
        staged.write_text(token)
        os.replace(staged, self.token_file)
        self.issued.append((name, token))
        return str(token)

    def revoke(self, index: int) -> None:
        """Delete the Secret token ``index`` is bound to, and wait until the API server refuses that token (it may
        serve it from its authentication cache for a few seconds)."""
        name, token = self.issued[index]
        self.core.delete_namespaced_secret(name, self.namespace)
        eventually(lambda: self.refused(token), 60, f"the API server to refuse the token bound to {name}")

    def refused(self, token: str) -> bool:
        """Whether the API server answers 401 to a request that carries exactly ``token``."""
        configuration = client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.ca_file)
        configuration.api_key = {"BearerToken": token}
        configuration.api_key_prefix = {"BearerToken": "Bearer"}
        try:
            with client.ApiClient(configuration) as api_client:
                client.CoreV1Api(api_client).list_namespaced_pod(self.namespace, limit=1)
        except ApiException as error:
            return error.status == 401
        return False


@pytest.fixture
def identity(crds: ClusterHandle, namespace: str, tmp_path: Path) -> Iterator[OperatorIdentity]:
    created = OperatorIdentity(crds, namespace, tmp_path).install()
    yield created
    created.uninstall()


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def operator_as_its_account(
    identity: OperatorIdentity, namespace: str, tmp_path: Path, metrics_port: int
) -> Iterator[OperatorProcess]:
    flags = ("--standalone", "--metrics-port", str(metrics_port))
    process = OperatorProcess(identity.cluster, tmp_path, (namespace,), *flags, kubeconfig=identity.kubeconfig)
    process.start()
    yield process
    process.stop()


def api_retries(port: int) -> dict[str, float]:
    """The operator's ``strata_operator_api_retries_total`` by reason, from its metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    pattern = r'^strata_operator_api_retries_total\{reason="(\w+)"\} (\S+)$'
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.MULTILINE)}


def retries_when_up(port: int) -> dict[str, float] | None:
    with contextlib.suppress(OSError):
        return api_retries(port) or {"none yet": 0.0}
    return None


def assert_one_clean_gang_each(strata: Strata, jobs: list[str], workers: int) -> None:
    """Every job ran once: exactly its workers, of its first attempt, no restart (nothing lost, nothing doubled)."""
    for job in jobs:
        pods = strata.pods(job)
        assert [p.metadata.name for p in pods] == [f"{job}-worker-{i}" for i in range(workers)], job
        assert {p.metadata.labels[api.LABEL_ATTEMPT] for p in pods} == {"1"}, job
        assert strata.status(job).get("restarts", 0) == 0, job


def test_rotated_and_revoked_tokens_lose_no_job_and_double_no_pod(
    identity: OperatorIdentity, operator_as_its_account: OperatorProcess, strata: Strata, metrics_port: int
) -> None:
    pool = strata.pool("team")
    before = ["before-a", "before-b"]
    for job in before:
        strata.submit(a_job(job, pool, data=1))
    for job in before:
        strata.wait_phase(job, "Running")
    eventually(lambda: retries_when_up(metrics_port), 30, "the operator's metrics endpoint")

    identity.rotate()
    identity.revoke(0)  # every connection the operator opened with the first token is now refused
    strata.exit_workers("before-a", 0)
    strata.submit(a_job("after", pool, data=2))  # new pods, Service, account, Role: all written on the new token
    strata.wait_phase("before-a", "Succeeded")
    strata.wait_phase("after", "Running", timeout_s=90)

    identity.rotate()  # and again, while the operator is busy
    identity.revoke(1)
    for job in ("before-b", "after"):
        strata.exit_workers(job, 0)
    for job in ("before-b", "after"):
        strata.wait_phase(job, "Succeeded", timeout_s=90)

    assert_one_clean_gang_each(strata, before, workers=1)
    assert_one_clean_gang_each(strata, ["after"], workers=2)
    assert operator_as_its_account.alive()
    assert api_retries(metrics_port).get(RetryReason.UNAUTHORIZED, 0) >= 2  # its client logged in after each revoke
    log = operator_as_its_account.log()
    assert "Re-authentication has finished." in log  # kopf's own client too, through the same login (tokenFile)
    assert "Ran out of valid credentials" not in log
    assert "HTTP 401" not in log  # no call of the operator failed for a stale token


@pytest.fixture
def throttled(identity: OperatorIdentity) -> Iterator[str]:
    """API Priority and Fairness puts every request of the operator's account into a priority level of one seat
    and a queue of two: whatever else arrives meanwhile is answered 429 with a Retry-After. A ballast level with a
    huge share (lending all of it to the other levels) is what makes one share one seat out of the server's
    thousands; nothing routes to it."""
    name = identity.release
    levels = [
        {"apiVersion": f"{APF}/v1", "kind": "PriorityLevelConfiguration", "metadata": {"name": f"{name}-ballast"},
         "spec": {"type": "Limited", "limited": {"nominalConcurrencyShares": 5000, "lendablePercent": 100,
                                                 "limitResponse": {"type": "Reject"}}}},
        {"apiVersion": f"{APF}/v1", "kind": "PriorityLevelConfiguration", "metadata": {"name": name},
         "spec": {"type": "Limited", "limited": {
             "nominalConcurrencyShares": 1, "lendablePercent": 0, "borrowingLimitPercent": 0,
             "limitResponse": {"type": "Queue", "queuing": {"queues": 1, "handSize": 1, "queueLengthLimit": 2}}}}},
        {"apiVersion": f"{APF}/v1", "kind": "FlowSchema", "metadata": {"name": name},
         "spec": {"priorityLevelConfiguration": {"name": name}, "matchingPrecedence": 800,
                  "distinguisherMethod": {"type": "ByUser"},
                  "rules": [{"subjects": [{"kind": "ServiceAccount", "serviceAccount": {
                                "name": identity.account, "namespace": identity.namespace}}],
                             "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                                                "clusterScope": True, "namespaces": ["*"]}],
                             "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}]}]}},
    ]  # fmt: skip
    cluster = identity.cluster
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(levels))
    eventually(lambda: seats(cluster, name) == 1, 30, f"priority level {name} to have one seat")
    try:
        yield name
    finally:
        for kind, object_name in (("flowschema", name), ("prioritylevelconfiguration", name),
                                  ("prioritylevelconfiguration", f"{name}-ballast")):  # fmt: skip
            cluster.kubectl("delete", f"{kind}.{APF}", object_name, "--ignore-not-found")


def seats(cluster: ClusterHandle, level: str) -> int | None:
    metrics = cluster.kubectl("get", "--raw", "/metrics")
    match = re.search(
        rf'^apiserver_flowcontrol_current_limit_seats\{{priority_level="{level}"\}} (\S+)$', metrics, re.M
    )
    return int(float(match[1])) if match else None


def rejected(cluster: ClusterHandle, level: str) -> float:
    """Requests of ``level`` the API server answered 429 (``apiserver_flowcontrol_rejected_requests_total``)."""
    metrics = cluster.kubectl("get", "--raw", "/metrics")
    pattern = rf'^apiserver_flowcontrol_rejected_requests_total\{{[^}}]*priority_level="{level}"[^}}]*\}} (\S+)$'
    return sum(float(m[1]) for m in re.finditer(pattern, metrics, re.M))


def test_a_throttled_operator_still_runs_every_job_once(
    identity: OperatorIdentity,
    throttled: str,
    operator_as_its_account: OperatorProcess,
    strata: Strata,
    metrics_port: int,
) -> None:
    # the operator started under throttling: its lists, watches and kopf's own start-up were throttled too
    pool = strata.pool("team")
    jobs = [f"busy-{i}" for i in range(6)]
    for job in jobs:  # 6 gangs of 2 workers at once: 12 pods, 6 of every other object, and their status writes
        strata.submit(a_job(job, pool, data=2, tensor=2, gpus_per_worker=2))
    for job in jobs:
        strata.wait_phase(job, "Running", timeout_s=180)
    for job in jobs:
        strata.exit_workers(job, 0)
    for job in jobs:
        strata.wait_phase(job, "Succeeded", timeout_s=120)

    assert_one_clean_gang_each(strata, jobs, workers=2)
    assert rejected(identity.cluster, throttled) > 0, "the API server never throttled the operator"
    assert api_retries(metrics_port).get(RetryReason.THROTTLED, 0) >= 1  # its client waited and went on
    assert operator_as_its_account.alive()
    assert "HTTP 429" not in operator_as_its_account.log()  # no call failed for being throttled


class ObservedKube(Kube):
    """The operator's client, noting which lists and watches an informer asks for (the calls go through)."""

    def __init__(self, info: kopf.ConnectionInfo) -> None:
        super().__init__(info)
        self.lists = 0
        self.watched_from: list[str] = []

    async def list_pages(self, path: str, page_size: int = 500) -> Any:
        self.lists += 1
        async with contextlib.aclosing(super().list_pages(path, page_size)) as pages:
            async for page in pages:
                yield page

    async def watch_lines(self, path: str, resource_version: str, timeout_s: int) -> Any:
        self.watched_from.append(resource_version)
        async with contextlib.aclosing(super().watch_lines(path, resource_version, timeout_s)) as lines:
            async for line in lines:
                yield line


class CuttableProxy:
    """A loopback TCP relay to the API server whose open connections the test can cut (a dropped network path:
    the TLS session dies mid-stream, the server keeps running)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: list[asyncio.StreamWriter] = []
        self.relays: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def cut(self) -> list[asyncio.StreamWriter]:
        """Drop every open connection; the writers dropped."""
        cut, self.writers = self.writers, []
        for writer in cut:
            writer.transport.abort()
        return cut

    async def stop(self) -> None:
        """Stop listening, end every relay and wait until all their sockets are closed (none left to the loop)."""
        if self.server is not None:
            self.server.close()
        for relay in self.relays:
            relay.cancel()
        await asyncio.gather(*self.relays, return_exceptions=True)
        await asyncio.gather(*(writer.wait_closed() for writer in self.cut()), return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        self.relays.add(relay)
        relay.add_done_callback(self.relays.discard)
        self.writers.append(writer)
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers.append(upstream_writer)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


def a_worker_pod(name: str) -> dict[str, Any]:
    labels = {api.LABEL_JOB: "resumed", api.LABEL_MANAGED_BY: api.MANAGED_BY, api.LABEL_WORKER_INDEX: "0",
              api.LABEL_ATTEMPT: "1"}  # fmt: skip
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "w", "image": "registry.invalid/x"}],
                     "schedulingGates": [{"name": "strata.dev/test-never-scheduled"}]}}  # fmt: skip


def admin_login(cluster: ClusterHandle) -> kopf.ConnectionInfo:
    """What the operator's login finds in the cluster admin's kubeconfig."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KUBECONFIG", str(cluster.kubeconfig))
        admin = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert admin is not None
    return admin


@contextlib.asynccontextmanager
async def informer_through_a_proxy(
    cluster: ClusterHandle, path: str, index: Index[Any]
) -> AsyncIterator[tuple[Informer, ObservedKube, CuttableProxy, asyncio.Event]]:
    """An informer of the operator over ``path``, as the cluster admin, through a proxy the test can cut; also the
    event its change callback sets."""
    admin = admin_login(cluster)
    proxy = CuttableProxy(int(admin.server.rsplit(":", 1)[1]))
    kube = ObservedKube(dataclasses.replace(admin, server=f"https://127.0.0.1:{await proxy.start()}"))
    changed = asyncio.Event()
    informer = Informer(kube, path, [index], lambda keys: changed.set())
    task = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 30)
        yield informer, kube, proxy, changed
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await kube.close()
        await proxy.stop()


async def until(changed: asyncio.Event, what: str, probe: Any, timeout_s: float = 30) -> None:
    """Wait until ``probe()`` holds, looking again at each change the informer reports."""
    try:
        async with asyncio.timeout(timeout_s):
            while not probe():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}") from None


async def test_a_dropped_watch_resumes_from_its_last_version_without_listing_again(
    crds: ClusterHandle, namespace: str
) -> None:
    pods: Index[Any] = Index(worker_pod_entry)
    core = crds.core()
    key = f"{namespace}/resumed"
    async with informer_through_a_proxy(crds, pod_path(namespace), pods) as (
        informer, kube, proxy, changed
    ):  # fmt: skip
        await asyncio.to_thread(core.create_namespaced_pod, namespace, a_worker_pod("resumed-worker-0"))
        await until(changed, "the first pod seen", lambda: len(pods.get(key, ())) == 1)
        seen = int(informer.resource_version or 0)

        proxy.cut()  # the watch's connection drops; a pod appears while it is down
        await asyncio.to_thread(core.create_namespaced_pod, namespace, a_worker_pod("resumed-worker-1"))
        await until(changed, "the pod created while the watch was down", lambda: len(pods.get(key, ())) == 2)
        assert kube.lists == 1  # no re-list of the whole collection for a dropped connection
        assert len(kube.watched_from) >= 2
        assert int(kube.watched_from[1]) >= seen  # the next watch went on from where the last one stopped
        assert sorted(p.name for p in pods[key]) == ["resumed-worker-0", "resumed-worker-1"]


def open_sockets_to(port: int) -> set[str]:
    """This process's open TCP sockets to loopback ``port``, by inode (Linux: its descriptors against the kernel's
    table)."""
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if (target := os.readlink(f"/proc/self/fd/{fd}")).startswith("socket:["):
                mine.add(target[len("socket:[") : -1])
    rows = [line.split() for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]]
    return {row[9] for row in rows if int(row[2].rsplit(":", 1)[1], 16) == port and row[9] in mine}


@pytest.mark.parametrize("leave", ["closed", "cancelled"])
def test_a_watch_left_mid_stream_has_its_socket_closed_when_the_client_is_closed(
    crds: ClusterHandle, namespace: str, leave: str
) -> None:
    """The operator's shutdown: its informers leave their watches mid-stream (closed on a 410, cancelled on a
    stop), the client is closed, and the event loop closes right after. A socket still open then is leaked (and
    warned about when collected, in a test in whichever test runs next), so none may be open once close returns."""
    admin = admin_login(crds)
    port = int(admin.server.rsplit(":", 1)[1])
    others = open_sockets_to(port)  # the test's own client's

    async def watch_then_leave() -> set[str]:
        kube = Kube(admin)
        lines = kube.watch_lines(f"/api/v1/namespaces/{namespace}/configmaps", "0", 60)
        streaming = asyncio.Event()

        async def follow() -> None:  # as an informer does: closes the stream when it leaves it
            async with contextlib.aclosing(lines):
                async for _ in lines:
                    streaming.set()
                    if leave == "closed":
                        return

        following = asyncio.create_task(follow())
        try:
            await asyncio.wait_for(streaming.wait(), 30)
            if leave == "cancelled":
                assert len(open_sockets_to(port) - others) == 1  # the watch's
                following.cancel()
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await following
            await kube.close()
        return open_sockets_to(port) - others

    assert asyncio.run(watch_then_leave()) == set()


def configmap_entry(body: Mapping[str, Any]) -> dict[str, str]:
    meta = body.get("metadata") or {}
    return {str(meta.get("name")): str((meta.get("labels") or {}).get("round", ""))}


@pytest.mark.timeout(600)
async def test_a_watch_whose_version_expired_while_away_lists_again(crds: ClusterHandle, namespace: str) -> None:
    """Away (its loop stopped) until the API server's watch cache no longer holds the last version it saw: the
    informer's next watch gets 410 Gone, and it lists again and ends with what the server has now."""
    core = crds.core()
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "churn", "labels": {"round": "0"}}})
    kube = ObservedKube(admin_login(crds))
    maps: Index[str] = Index(configmap_entry)
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    changed = asyncio.Event()
    informer = Informer(kube, path, [maps], lambda keys: changed.set())
    away = asyncio.create_task(informer.run())
    try:
        await asyncio.wait_for(informer.synced.wait(), 30)
    finally:
        away.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await away
    left_at = informer.resource_version

    def churn_until_expired() -> bool:
        """Update a ConfigMap until the server's watch cache has dropped ``left_at``. The cache drops its oldest
        event only when its buffer is full and that event is older than 75 s (a fresher full buffer grows), so: a
        slow churn for 75 s, then faster and faster until the buffer, whatever its size, is full."""
        started, round_, batch = time.monotonic(), 0, 1
        while time.monotonic() - started < 400:
            for _ in range(batch):
                round_ += 1
                core.patch_namespaced_config_map("churn", namespace, {"metadata": {"labels": {"round": str(round_)}}})
            query = f"{path}?watch=1&resourceVersion={left_at}&timeoutSeconds=1"
            if '"code":410' in crds.kubectl("get", "--raw", query):
                core.create_namespaced_config_map(namespace, {"metadata": {"name": "made-while-away"}})
                return True
            if time.monotonic() - started > 75:
                batch = min(batch * 2, 256)
            time.sleep(0.5)
        return False

    assert await asyncio.to_thread(churn_until_expired), f"resourceVersion {left_at} never expired"
    back = asyncio.create_task(informer.run())  # the loop goes on from the version it last saw
    try:
        await until(changed, "the informer to list again", lambda: "made-while-away" in maps, timeout_s=60)
        assert kube.lists == 2  # the watch from the expired version was refused, and only then it listed again
        assert int(informer.resource_version or 0) > int(left_at or 0)
    finally:
        back.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await back
        await kube.close()
