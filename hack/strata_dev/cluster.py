"""A real Kubernetes control plane as local processes: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake GPU nodes), all built from pinned Go modules by :mod:`strata_dev.binaries`.

Tests, benchmarks and ``make demo`` start clusters only through :class:`LocalCluster`::

    with LocalCluster(ClusterSettings()) as cluster:
        subprocess.run(["kubectl", "--kubeconfig", str(cluster.kubeconfig), "get", "nodes"])

Every run gets a fresh working folder and free loopback ports, so two runs never collide. Components run in
their own process groups and die with the launcher (``PR_SET_PDEATHSIG``); :meth:`LocalCluster.stop` ends
them all, also from ``atexit`` and on SIGTERM/SIGINT, and removes the working folder.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from strata_dev import binaries
from strata_dev.node import RealNode, preflight, sweep_abandoned
from strata_dev.node_config import NODE_NAME
from strata_dev.pki import PKI, make_pki

# re-exported: tests, the demo and the stack import these from here
from strata_dev.processes import ClusterError as ClusterError  # noqa: PLC0414
from strata_dev.processes import Component as Component  # noqa: PLC0414
from strata_dev.processes import free_port as free_port  # noqa: PLC0414
from strata_dev.processes import spawn as spawn  # noqa: PLC0414
from strata_dev.processes import terminate as terminate  # noqa: PLC0414

STAGES = Path(__file__).with_name("kwok-stages.yaml")
EXIT_CODE_ANNOTATION = "kwok.strata.dev/exit-code"
"""On a pod of a kwok node: the exit code its containers end with (0: Succeeded), as ``kwok-stages.yaml`` reads it;
kwok runs no containers, so this is how tests and the demo end a worker the way its process would."""
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
"""The ``kubernetes`` Service's address (the first of :data:`SERVICE_CIDR`), in the serving certificate."""
POD_CIDR = "10.244.0.0/16"


@dataclass
class ClusterSettings:
    """How to start a local cluster. Every field has a default that suits tests."""

    workdir: Path | None = None
    """Where state, certificates and logs go; default: a fresh folder under the system temp dir, removed on stop."""
    keep_workdir: bool = False
    """Keep the folder after stop (logs for a failed CI run); the folder is still fresh at every start."""
    scheduler_config: Path | None = None
    """A KubeSchedulerConfiguration for kube-scheduler; clientConnection and leader election are filled in."""
    start_timeout_s: float = 90.0
    """Longest wait for one component to become healthy; a cold etcd on a slow disk needs a few seconds."""
    api_qps: int = 200
    """Client QPS for controllers, scheduler and kwok; upstream defaults (20) throttle 1,000-node fleets."""
    ports: dict[str, int] = field(default_factory=dict)
    """Fixed ports by component (etcd, etcd-peer, apiserver, cm, scheduler, kwok); the rest are picked free."""
    profiling: bool = False
    """Serve the API server's Go profiles at ``/debug/pprof`` (benchmarks read where its CPU goes; off otherwise)."""
    real_node: bool = False
    """Add one real worker node (containerd, kubelet, kube-proxy, CoreDNS in a network namespace, see
    :mod:`strata_dev.node`) next to the kwok fleet; needs root and ``make node-deps``."""


class LocalCluster:
    """Start, health-check and stop the local control plane. Use as a context manager."""

    def __init__(self, settings: ClusterSettings | None = None, bin_dir: Path | None = None) -> None:
        self.settings = settings or ClusterSettings()
        self.bin_dir = bin_dir or binaries.ensure(quiet=True)
        self.components: dict[str, Component] = {}
        self.ports: dict[str, int] = {}
        self._owned_workdir = self.settings.workdir is None
        self.workdir = self.settings.workdir or Path(tempfile.mkdtemp(prefix="strata-cluster-"))
        self.token = secrets.token_hex(16)
        self.pki: PKI | None = None
        self.started_s: float | None = None
        self.node: RealNode | None = None
        self._advertise = "127.0.0.1"
        self._stopped = True

    # ----- paths -----
    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    def binary(self, name: str) -> str:
        return str(self.bin_dir / name)

    # ----- lifecycle -----
    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> LocalCluster:
        begin = time.monotonic()
        if self.workdir.exists() and not self._owned_workdir:
            shutil.rmtree(self.workdir)  # state from an earlier run must never leak into this one
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self._stopped = False
        atexit.register(self.stop)
        self._install_signal_handlers()
        try:
            extra_ips: tuple[str, ...] = ()
            if self.settings.real_node:
                preflight()
                sweep_abandoned()  # a node whose launcher was SIGKILLed holds containers, cgroups, a namespace
                self.node = RealNode(self.workdir / "logs", self.bin_dir, self.settings.start_timeout_s)
                host_ip, node_ip = self.node.claim_addresses()
                self._advertise = host_ip
                extra_ips = (host_ip, KUBERNETES_SERVICE_IP)  # the veth end, and what pods dial
            self.pki = make_pki(self.workdir / "pki", extra_ips)
            names = ("etcd", "etcd-peer", "apiserver", "cm", "scheduler", "kwok")
            self.ports = {n: self.settings.ports.get(n) or free_port() for n in names}
            self._write_access_files()
            self._start_etcd()
            self._start_apiserver()
            self._start_controller_manager()
            self.restart_scheduler(self.settings.scheduler_config)
            self._start_kwok()
            self._wait_for_default_namespace()
            if self.node is not None:
                self.node.start(host_ip, node_ip, self.ports["apiserver"], self._kubeconfig_for, self.pki.ca_cert,
                                self._real_node_ready)  # fmt: skip
        except BaseException:
            self.stop()
            raise
        self.started_s = time.monotonic() - begin
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.node is not None:
            self.node.stop()  # first: its kubelet still talks to the API server while containers are removed
            self.node = None
        for component in reversed(list(self.components.values())):
            terminate(component.process)
        self.components.clear()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if not self.settings.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous = signal.getsignal(sig)

            def handler(signum: int, frame: FrameType | None, previous: object = previous) -> None:
                self.stop()
                if callable(previous):
                    previous(signum, frame)
                else:
                    raise SystemExit(128 + signum)

            with contextlib.suppress(ValueError):  # not the main thread: atexit and PDEATHSIG still cover us
                signal.signal(sig, handler)

    # ----- components -----
    def _spawn(self, name: str, args: list[str]) -> Component:
        log = self.workdir / "logs" / f"{name}.log"
        process = spawn(args, log, cwd=self.workdir)
        component = Component(name, process, log)
        self.components[name] = component
        return component

    def _wait(self, component: Component, probe: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        while time.monotonic() < deadline:
            code = component.process.poll()
            if code is not None:
                raise ClusterError(
                    f"{component.name} exited with code {code} while starting; log: {component.log}\n    "
                    + component.tail()
                )
            with contextlib.suppress(OSError, ValueError, ssl.SSLError, urllib.error.URLError):
                if probe():
                    return
            time.sleep(0.1)
        raise ClusterError(
            f"{component.name} not {what} after {self.settings.start_timeout_s:.0f}s; log: {component.log}\n    "
            + component.tail()
        )

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        etcd = self._spawn(
            "etcd",
            [
                self.binary("etcd"),
                "--name=strata",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=strata={peer}",
                "--unsafe-no-fsync=true",  # a throw-away cluster: durability costs seconds per test
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
        )
        self._wait(etcd, lambda: _http_ok(f"{client}/health"), "healthy")

    def _start_apiserver(self) -> None:
        assert self.pki is not None
        port = self.ports["apiserver"]
        args = [
            self.binary("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1",
            f"--advertise-address={self._advertise}",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'pki'}",
            f"--tls-cert-file={self.pki.serving_cert}",
            f"--tls-private-key-file={self.pki.serving_key}",
            f"--client-ca-file={self.pki.ca_cert}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            f"--service-account-key-file={self.pki.sa_pub}",
            f"--service-account-signing-key-file={self.pki.sa_key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # the loopback address may not be published as an endpoint; the real node's veth end (forwarded to
            # loopback) is, so pods reach the API server through the ``kubernetes`` Service
            f"--endpoint-reconciler-type={'none' if self._advertise == '127.0.0.1' else 'lease'}",
            "--allow-privileged=true",
            f"--kubelet-client-certificate={self.pki.kubelet_client_cert}",
            f"--kubelet-client-key={self.pki.kubelet_client_key}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",  # the real node's name resolves nowhere
            f"--profiling={str(self.settings.profiling).lower()}",
            "--max-requests-inflight=2000",
            "--max-mutating-requests-inflight=1000",
            "--v=1",
        ]
        apiserver = self._spawn("kube-apiserver", args)
        self._wait(apiserver, lambda: self._api_get("/readyz") is not None, "ready")

    def _start_controller_manager(self) -> None:
        assert self.pki is not None
        cm = self._spawn(
            "kube-controller-manager",
            [
                self.binary("kube-controller-manager"),
                *self._component_access(self.ports["cm"]),
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.pki.sa_key}",
                f"--root-ca-file={self.pki.ca_cert}",
                f"--cluster-signing-cert-file={self.pki.ca_cert}",
                f"--cluster-signing-key-file={self.pki.ca_key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--leader-elect=false",
                f"--kube-api-qps={self.settings.api_qps}",
                f"--kube-api-burst={self.settings.api_qps * 2}",
                "--concurrent-gc-syncs=20",
                "--v=1",
            ],
        )
        self._wait(cm, lambda: _https_ok(f"https://127.0.0.1:{self.ports['cm']}/healthz"), "healthy")

    def restart_scheduler(self, config: Path | None) -> None:
        """(Re)start kube-scheduler from a KubeSchedulerConfiguration file (None: the default profile only)."""
        old = self.components.pop("kube-scheduler", None)
        if old is not None:
            terminate(old.process)
        self.ports["scheduler"] = self.settings.ports.get("scheduler") or free_port()
        path = self.workdir / "scheduler-config.yaml"
        path.write_text(scheduler_config(config, self.kubeconfig, self.settings.api_qps))
        args = kube_scheduler_args(
            self.bin_dir, self.kubeconfig, path, self.ports["scheduler"], self.workdir / "pki" / "components"
        )
        scheduler = self._spawn("kube-scheduler", [*args, "--v=1"])
        self._wait(scheduler, lambda: _https_ok(f"https://127.0.0.1:{self.ports['scheduler']}/healthz"), "healthy")

    def _start_kwok(self) -> None:
        kwok = self._spawn("kwok", kwok_args(self.bin_dir, self.kubeconfig, self.ports["kwok"]))
        self._wait(kwok, lambda: _http_ok(f"http://127.0.0.1:{self.ports['kwok']}/healthz"), "healthy")

    def _component_access(self, port: int) -> list[str]:
        return [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'pki' / 'components'}",
        ]

    def _write_access_files(self) -> None:
        assert self.pki is not None
        (self.workdir / "tokens.csv").write_text(f'{self.token},strata-admin,strata-admin,"system:masters"\n')
        (self.workdir / "pki" / "components").mkdir(exist_ok=True)
        self.kubeconfig.write_text(self._kubeconfig_for(f"https://127.0.0.1:{self.ports['apiserver']}"))
        self.kubeconfig.chmod(0o600)

    def _kubeconfig_for(self, server: str) -> str:
        assert self.pki is not None
        return kubeconfig_yaml(server, self.pki.ca_cert, self.token)

    def _real_node_ready(self) -> bool:
        node = self._api_get(f"/api/v1/nodes/{NODE_NAME}")
        status = node.get("status") if node else None
        conditions = status.get("conditions", []) if isinstance(status, dict) else []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def load_images(self, *archives: Path) -> None:
        """Import image tars (docker-archive or OCI) into the real node's containerd; nothing is ever pulled."""
        if self.node is None:
            raise ClusterError("this cluster has no real node (ClusterSettings(real_node=True)) to load images into")
        self.node.load_images(*archives)

    def dead_components(self) -> list[str]:
        """Names of the components (control plane and real node) whose process has exited."""
        found = [c.name for c in self.components.values() if c.process.poll() is not None]
        if self.node is not None:
            found += [c.name for c in self.node.components.values() if c.process.poll() is not None]
        return found

    def _wait_for_default_namespace(self) -> None:
        """Pods need the namespace's default ServiceAccount, made by the controller manager."""
        cm = self.components["kube-controller-manager"]
        self._wait(cm, lambda: self._api_get("/api/v1/namespaces/default/serviceaccounts/default") is not None,
                   "creating the default ServiceAccount")  # fmt: skip

    # ----- API access (stdlib only, for health checks) -----
    def _api_get(self, path: str) -> dict[str, object] | None:
        assert self.pki is not None
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        request = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                body = response.read()
        except urllib.error.HTTPError:
            return None
        try:
            parsed: dict[str, object] = json.loads(body)
            return parsed
        except ValueError:
            return {"text": body.decode(errors="replace")}

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return kubectl(self.bin_dir, self.kubeconfig, *args, check=check, input=input)

    def kubectl_json(self, *args: str) -> dict[str, Any]:
        return kubectl_json(self.bin_dir, self.kubeconfig, *args)

    def describe(self) -> str:
        lines = [f"cluster up in {self.started_s or 0:.1f}s; kubeconfig: {self.kubeconfig}"]
        lines += [f"  {c.name:24} pid {c.process.pid:>7}  log {c.log}" for c in self.components.values()]
        if self.node is not None:
            lines += [f"  {c.name:24} pid {c.process.pid:>7}  log {c.log}" for c in self.node.components.values()]
        return "\n".join(lines)


def kubectl(bin_dir: Path, kubeconfig: Path, *args: str, check: bool = True, input: str | None = None) -> str:
    """Run the pinned kubectl against ``kubeconfig``; with ``check``, a failure raises with kubectl's message."""
    proc = subprocess.run(
        [str(bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=120,
    )
    if check and proc.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def kubectl_json(bin_dir: Path, kubeconfig: Path, *args: str) -> dict[str, Any]:
    """``kubectl get ARGS -o json``, parsed."""
    out = kubectl(bin_dir, kubeconfig, "get", *args, "-o", "json")
    try:
        parsed: dict[str, Any] = json.loads(out)
    except ValueError:
        raise ClusterError(f"kubectl get {' '.join(args)}: not JSON") from None
    return parsed


def core_api(kubeconfig: Path) -> Any:
    """A kubernetes ``CoreV1Api`` for ``kubeconfig``'s cluster (the client library is imported only here: the
    launcher itself needs the standard library alone)."""
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))


def kubeconfig_yaml(server: str, ca_cert: Path, token: str) -> str:
    import base64

    ca = base64.b64encode(ca_cert.read_bytes()).decode()
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "strata-local", "cluster": {"server": server, "certificate-authority-data": ca}}],
            "users": [{"name": "strata-admin", "user": {"token": token}}],
            "contexts": [{"name": "strata-local", "context": {"cluster": "strata-local", "user": "strata-admin"}}],
            "current-context": "strata-local",
        },
        indent=1,
    )


def scheduler_config(base: Path | None, kubeconfig: Path, qps: int, leader_elect: bool = False) -> str:
    """A KubeSchedulerConfiguration from ``base`` (YAML or JSON) with this cluster's connection filled in.

    JSON is valid YAML, so the result needs no YAML library; ``base`` is parsed with PyYAML when present.
    """
    config: dict[str, object] = {"apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration"}
    if base is not None:
        import yaml  # only needed when extending the default configuration

        loaded = yaml.safe_load(base.read_text())
        if not isinstance(loaded, dict):
            raise ClusterError(f"{base}: not a KubeSchedulerConfiguration mapping")
        config.update(loaded)
    config["clientConnection"] = {"kubeconfig": str(kubeconfig), "qps": qps, "burst": qps * 2}
    if not leader_elect:  # one scheduler per cluster here: no lease to wait for
        config["leaderElection"] = {"leaderElect": False}
    return json.dumps(config, indent=1)


def kube_scheduler_args(bin_dir: Path, kubeconfig: Path, config: Path, port: int, cert_dir: Path) -> list[str]:
    """kube-scheduler from a rendered :func:`scheduler_config`, serving health on loopback ``port`` with a
    self-signed certificate it writes to ``cert_dir``."""
    return [
        str(bin_dir / "kube-scheduler"),
        f"--config={config}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={cert_dir}",
    ]


def run_kube_scheduler(
    bin_dir: Path, kubeconfig: Path, config: Path, log: Path, qps: int = 200, leader_elect: bool = False
) -> subprocess.Popen[bytes]:
    """Run one more kube-scheduler against any cluster (local or KUBECONFIG's), e.g. for a second profile.

    The caller stops it (``process.terminate()``); it dies with the calling process.
    """
    rendered = log.with_suffix(".config.json")
    rendered.write_text(scheduler_config(config, kubeconfig, qps, leader_elect))
    return spawn(kube_scheduler_args(bin_dir, kubeconfig, rendered, free_port(), log.parent), log)


def kwok_args(bin_dir: Path, kubeconfig: Path, server_port: int) -> list[str]:
    """kwok with Strata's stages, managing only nodes annotated as fake (so a real cluster's nodes are safe)."""
    key, value = KWOK_NODE_ANNOTATION
    return [
        str(bin_dir / "kwok"),
        f"--kubeconfig={kubeconfig}",
        f"--config={STAGES}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={key}={value}",
        "--node-lease-duration-seconds=40",
        f"--cidr={POD_CIDR}",
        "--node-ip=10.0.0.1",
        f"--server-address=127.0.0.1:{server_port}",
    ]


def run_kwok(bin_dir: Path, kubeconfig: Path, log: Path) -> subprocess.Popen[bytes]:
    """Run kwok against any cluster (e.g. a user's kind cluster) for the fake GPU fleet; the caller stops it."""
    return spawn(kwok_args(bin_dir, kubeconfig, free_port()), log)


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as response:
        return bool(response.status == 200)


def _https_ok(url: str) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # components serve health on self-signed certs made at start
    with urllib.request.urlopen(url, timeout=2, context=context) as response:
        return bool(response.status == 200)


def annotate_pods(core: Any, namespace: str, names: Iterable[str], annotations: Mapping[str, str]) -> None:
    """Merge ``annotations`` into each named pod: how tests and the demo act as a worker would on kwok nodes
    (``EXIT_CODE_ANNOTATION`` to end it, the progress annotation to report a checkpoint)."""
    patch = {"metadata": {"annotations": dict(annotations)}}
    for name in names:
        core.patch_namespaced_pod(name, namespace, patch, _content_type="application/merge-patch+json")
