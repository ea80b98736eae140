"""One real worker node next to the kwok fleet: containerd + runc + CNI, kubelet, kube-proxy and CoreDNS, in a
network namespace the launcher creates (as a kind node lives in its container).

Layout on the host (everything is removed by :meth:`RealNode.stop`):

- network namespace ``strata-<id>`` holding the node IP, the CNI bridge ``strata0`` and every pod address;
- a veth pair ``stn<id>h`` (host end, ``host_ip``) / ``stn<id>n`` (in the namespace, ``node_ip``) on a private /30
  that no address or route on the machine uses;
- a TCP forward from ``host_ip:<apiserver port>`` to the API server on 127.0.0.1 (the API server keeps listening
  on loopback only; the kubelet refuses a loopback node IP, and the namespace's loopback is its own);
- cgroup ``/strata-node-<id>`` in every hierarchy (kubelet's ``cgroupRoot``); the node's folder
  ``/var/lib/strata-node-<id>`` with containerd's state, kubelet's root and the config files
  (:mod:`strata_dev.node_config`); ``/run/strata-node-<id>`` with the sockets and the launcher's pid (for
  :func:`sweep_abandoned`); ``/run/netns`` itself if the node's ``ip netns add`` made it.

The components run in the host's mount namespace (``nsenter --net`` only), so kubelet and containerd see the
same volume mounts, and stop can find and unmount every one under the node's folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from strata_dev.node_config import (
    CNI_PLUGIN_DIR,
    NODE_NAME,
    REAL_NODE_LABEL,
    NodeLayout,
    cni_conflist,
    containerd_config,
    corefile,
    kube_proxy_config,
    kubelet_config,
)
from strata_dev.node_images import BUSYBOX, import_images, write_archive
from strata_dev.processes import ClusterError, Component, spawn, terminate

VETH_RANGE = ipaddress.ip_network("172.31.254.0/24")
"""Where the node's /30 veth networks come from; one free /30 per node, checked against the host's addresses."""
CGROUP_FS = Path("/sys/fs/cgroup")
NODE_ROOTS = Path("/var/lib")
"""Where each node's folder ``strata-node-<id>`` goes (removed by stop)."""
NETNS_DIR = Path("/run/netns")
SHIM_SOCKETS = Path("/run/containerd/s")
CONTAINER_LOG_LINKS = Path("/var/log/containers")
"""kubelet links each container's log here whatever its podLogsDir (a fixed path in kubelet)."""
"""Where containerd 1.6 puts its shims' sockets, whatever its configured state folder (not configurable)."""
KERNEL_TUNABLES = (
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
"""Host-wide sysctls kubelet sets at start (``protectKernelDefaults: false``); stop puts back what was there."""
TUNABLES_FILE = Path("/run/strata-node-sysctls.json")
"""The host's values of :data:`KERNEL_TUNABLES` while any local node runs; the last one to stop restores them."""
CAPABILITIES = {
    12: "CAP_NET_ADMIN (the namespace, the veth pair, iptables)",
    21: "CAP_SYS_ADMIN (mounts, cgroups, entering the namespace)",
}
"""Capability bit -> what the node needs it for; CAP_SYS_RESOURCE is not needed (``restrict_oom_score_adj``)."""
KWOK_ONLY_HINT = (
    "run the cluster kwok-only instead: REAL_NODE=0 make demo / REAL_NODE=0 make up "
    "(python -m strata_dev demo|up --no-real-node; ClusterSettings(real_node=False))"
)


def missing_capabilities(effective: int) -> list[str]:
    """What the node needs that the effective capability mask (``CapEff`` of /proc/self/status) lacks."""
    return [f"no {capability}" for bit, capability in CAPABILITIES.items() if not effective >> bit & 1]


def preflight() -> None:
    """Fail with the missing capability, cgroup or tool, before anything is created."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root (network namespaces, veths, cgroups and mounts need it)")
    status = Path("/proc/self/status").read_text()
    problems += missing_capabilities(
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), 16)
    )
    for tool in ("containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip", "iptables", "nsenter", "conntrack"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not on PATH (make node-deps)")
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        if not (CNI_PLUGIN_DIR / plugin).is_file():
            problems.append(f"CNI plugin {CNI_PLUGIN_DIR / plugin} missing (make node-deps)")
    if not BUSYBOX.is_file():
        problems.append(f"{BUSYBOX} missing (make node-deps)")
    for hierarchy in ("memory", "cpu", "pids", "cpuset"):
        if not (CGROUP_FS / hierarchy).is_dir() and not (CGROUP_FS / "cgroup.controllers").is_file():
            problems.append(f"cgroup hierarchy {CGROUP_FS / hierarchy} not mounted")
    if "overlay" not in Path("/proc/filesystems").read_text():
        problems.append("the overlay filesystem is not available (containerd's overlayfs snapshotter needs it)")
    if problems:
        raise ClusterError("this host cannot run the real node: " + "; ".join(problems) + f"\n    {KWOK_ONLY_HINT}")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(args)} failed: {proc.stderr.strip()}\n    {KWOK_ONLY_HINT}")
    return proc


def _used_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Every IPv4 network the host has an address or a route in (in its own network namespace)."""
    used = []
    for line in _run("ip", "-4", "-o", "addr", "show").stdout.splitlines():
        used.append(ipaddress.ip_interface(line.split()[3]).network)
    for line in _run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        if first[:1].isdigit():
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(first, strict=False))
    return used


def _free_veth_network() -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    used = _used_networks()
    for candidate in VETH_RANGE.subnets(new_prefix=30):
        if not any(candidate.overlaps(net) for net in used if net.prefixlen > 0):
            return candidate
    raise ClusterError(f"no free /30 left in {VETH_RANGE} for the real node's veth pair")


class ApiForward:
    """Forward TCP from ``listen`` (the veth's host end) to the API server on loopback, one thread per direction."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(listen, reuse_port=False)
        self.server.settimeout(0.5)
        self._closed = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="strata-node-api-forward", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        for sock in (src, dst):  # ends the other direction's pump too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._conns.discard(src)
        src.close()

    def close(self) -> None:
        self._closed.set()
        self.server.close()
        with self._lock:
            open_now = list(self._conns)
        for sock in open_now:
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(2)


class RealNode:
    """The node's network, cgroups, files and processes; :meth:`stop` removes all of it."""

    def __init__(self, logs: Path, bin_dir: Path, start_timeout_s: float = 90.0, node_id: str | None = None) -> None:
        self.logs = logs
        self.bin_dir = bin_dir
        self.start_timeout_s = start_timeout_s
        self.id = node_id or secrets.token_hex(3)
        self.root = NODE_ROOTS / f"strata-node-{self.id}"
        """containerd's root and state, kubelet's root, the config files: a short path on disk, since kubelet and
        containerd put unix sockets (at most 104 bytes) below it, and pods' volumes may be large."""
        self.run_dir = Path(f"/run/strata-node-{self.id}")
        """Sockets, runc's state, and ``owner`` (the launcher's pid) so a later launcher can sweep a node whose
        launcher died."""
        self.netns = f"strata-{self.id}"
        self.host_link, self.node_link = f"stn{self.id}h", f"stn{self.id}n"
        self.cgroup_root = f"/strata-node-{self.id}"
        self.components: dict[str, Component] = {}
        self.layout: NodeLayout | None = None
        self._forward: ApiForward | None = None
        self._holds_tunables = False
        self._made_netns_dir = False
        self._cgroups: list[Path] = []
        self._shim_sockets_before: set[Path] = set()
        self._made_run_containerd = False
        self._made_log_links_dir = False

    # ----- addresses (known before the API server's certificate is made) -----
    def claim_addresses(self) -> tuple[str, str]:
        """Create the namespace and the veth pair on a free /30; return (host_ip, node_ip)."""
        self.run_dir.mkdir(parents=True)
        (self.run_dir / "owner").write_text(str(os.getpid()))
        with _host_lock():  # two launchers must not pick the same /30
            self._made_netns_dir = not _is_mount_point(NETNS_DIR)  # `ip netns add` mounts it on first use
            if self._made_netns_dir:  # remembered for a sweep, should this launcher be killed
                (self.run_dir / "made-netns").touch()
            network = _free_veth_network()
            host_ip, node_ip = (str(h) for h in list(network.hosts())[:2])
            _run("ip", "netns", "add", self.netns)
            _run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", self.node_link)
            _run("ip", "link", "set", self.node_link, "netns", self.netns)
            _run("ip", "addr", "add", f"{host_ip}/30", "dev", self.host_link)
            _run("ip", "link", "set", self.host_link, "up")
        ns = ("ip", "netns", "exec", self.netns)
        _run(*ns, "ip", "addr", "add", f"{node_ip}/30", "dev", self.node_link)
        _run(*ns, "ip", "link", "set", self.node_link, "up")
        _run(*ns, "ip", "link", "set", "lo", "up")
        _run(*ns, "ip", "route", "add", "default", "via", host_ip)  # kubelet needs a default route to pick an IP
        _run(*ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        return host_ip, node_ip

    # ----- start -----
    def start(
        self,
        host_ip: str,
        node_ip: str,
        apiserver_port: int,
        kubeconfig_yaml: Callable[[str], str],
        client_ca: Path,
        node_ready: Callable[[], bool],
    ) -> None:
        """Start containerd, import the images, start kubelet, kube-proxy and CoreDNS, wait for the node Ready.

        ``kubeconfig_yaml(server)`` is the admin kubeconfig for ``server``; ``node_ready`` reads the Node.
        """
        self.layout = layout = NodeLayout(
            self.root, host_ip, node_ip, 30, apiserver_port, self.cgroup_root, self.run_dir
        )
        self._shim_sockets_before = _shim_sockets()
        self._made_run_containerd = not SHIM_SOCKETS.parent.exists()
        if self._made_run_containerd:  # remembered for a sweep, should this launcher be killed
            (self.run_dir / "made-run-containerd").touch()
        self._made_log_links_dir = not CONTAINER_LOG_LINKS.exists()
        if self._made_log_links_dir:
            (self.run_dir / "made-log-links").touch()
        self._forward = ApiForward((host_ip, apiserver_port), ("127.0.0.1", apiserver_port))
        self._make_cgroups()
        self._write_files(layout, kubeconfig_yaml, client_ca)
        self._hold_tunables()
        containerd = self._spawn("containerd", ["containerd", "--config", str(self.root / "containerd.toml")])
        self._wait(containerd, lambda: _ctr_ok(layout.containerd_socket), "serving")
        import_images(write_archive(self.root / "images.tar"), layout.containerd_socket, self.logs / "images.log")
        self._spawn("kubelet", self._kubelet_args(layout))
        self._spawn(
            "kube-proxy",
            [str(self.bin_dir / "kube-proxy"), f"--config={self.root / 'kube-proxy.json'}", "--v=1"],
        )
        if (self.bin_dir / "coredns").is_file():
            self._spawn("coredns", [str(self.bin_dir / "coredns"), "-conf", str(self.root / "Corefile")])
        self._wait(self.components["kubelet"], node_ready, "Ready")

    def _kubelet_args(self, layout: NodeLayout) -> list[str]:
        return [
            str(self.bin_dir / "kubelet"),
            f"--config={self.root / 'kubelet.yaml'}",
            f"--kubeconfig={layout.kubeconfig}",
            f"--root-dir={layout.kubelet_dir}",
            f"--cert-dir={layout.kubelet_dir / 'pki'}",
            f"--node-ip={layout.node_ip}",
            f"--hostname-override={NODE_NAME}",
            f"--node-labels={REAL_NODE_LABEL}=true",
            "--v=1",
        ]

    def _write_files(self, layout: NodeLayout, kubeconfig_yaml: Callable[[str], str], client_ca: Path) -> None:
        for folder in (layout.cni_conf_dir, layout.kubelet_dir, self.root / "containerd", layout.run_dir):
            folder.mkdir(parents=True, exist_ok=True)
        layout.kubeconfig.write_text(kubeconfig_yaml(layout.server))
        layout.kubeconfig.chmod(0o600)
        (self.root / "kubelet.yaml").write_text(kubelet_config(layout, client_ca))
        (self.root / "kube-proxy.json").write_text(kube_proxy_config(layout))
        (self.root / "containerd.toml").write_text(containerd_config(layout))
        (layout.cni_conf_dir / "10-strata.conflist").write_text(cni_conflist(layout))
        (self.root / "Corefile").write_text(corefile(layout))
        (self.root / "resolv.conf").write_text("# the node resolves nothing off the machine\n")

    def _make_cgroups(self) -> None:
        for hierarchy in sorted(p for p in CGROUP_FS.iterdir() if p.is_dir()):
            path = hierarchy / self.cgroup_root.lstrip("/")
            try:
                path.mkdir()
            except OSError as err:
                raise ClusterError(
                    f"cannot create cgroup {path} ({err.strerror}): the real node needs a writable cgroup "
                    f"hierarchy\n    {KWOK_ONLY_HINT}"
                ) from err
            self._cgroups.append(path)
            if hierarchy.name == "cpuset":  # a v1 cpuset starts empty; runc copies from the parent only below
                for name in ("cpuset.cpus", "cpuset.mems"):
                    (path / name).write_text((hierarchy / name).read_text())

    def _spawn(self, name: str, args: list[str]) -> Component:
        log = self.logs / f"node-{name}.log"
        process = spawn(["nsenter", f"--net=/run/netns/{self.netns}", *args], log, cwd=self.root)
        self.components[name] = component = Component(f"node {name}", process, log)
        return component

    def _wait(self, component: Component, probe: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(Exception):
                if probe():
                    return
            time.sleep(0.2)
        raise ClusterError(
            f"{component.name} not {what} after {self.start_timeout_s:.0f}s; log: {component.log}\n    "
            + component.tail()
        )

    def load_images(self, *archives: Path) -> None:
        """Import docker-archive or OCI tars into the node's containerd (as ``kind load image-archive`` does);
        pods then run them with ``imagePullPolicy: Never`` (or IfNotPresent with a tag other than latest)."""
        if self.layout is None:
            raise ClusterError("the real node is not started: nothing to load images into")
        for archive in archives:
            import_images(archive, self.layout.containerd_socket, self.logs / "images.log")

    def check_alive(self) -> None:
        """Raise naming the first component of the node that exited, with its log."""
        for component in self.components.values():
            code = component.process.poll()
            if code is not None:
                raise ClusterError(
                    f"{component.name} exited with code {code}; log: {component.log}\n    " + component.tail()
                )

    # ----- stop -----
    def stop(self) -> None:
        """Remove every process, container, mount, cgroup, link, namespace and file the node made.

        Every step runs even when one before it failed (a half-done stop would leave the rest behind); the
        failures are raised together at the end.
        """
        steps: list[tuple[str, Callable[[], object]]] = [
            ("stop kubelet, kube-proxy, CoreDNS", lambda: self._terminate("coredns", "kube-proxy", "kubelet")),
            ("kill the containers", self._kill_cgroup_processes),
            ("stop containerd", lambda: self._terminate("containerd")),
            ("kill the shims", self._kill_shims),
            ("unmount", lambda: self._unmount_under(self.root)),
            ("remove the cgroups", self._remove_cgroups),
            ("close the API forward", self._close_forward),
            ("remove the veth", lambda: _run("ip", "link", "del", self.host_link, check=False)),
            ("remove the namespace", self._remove_namespace),
            ("put back the sysctls", self._release_tunables),
            ("remove the shim sockets", self._remove_shim_sockets),
            ("remove the container log links", self._remove_log_links),
            ("remove the folders", self._remove_folders),
        ]
        failed = []
        for what, step in steps:
            try:
                step()
            except Exception as err:  # every step must get its chance; all failures are reported below
                failed.append(f"{what}: {err}")
        if failed:
            raise ClusterError(f"stopping the real node {self.netns} left work undone: " + "; ".join(failed))

    def _remove_namespace(self) -> None:
        _run("ip", "netns", "del", self.netns, check=False)
        with _host_lock():
            if self._made_netns_dir and NETNS_DIR.is_dir() and not any(NETNS_DIR.iterdir()):
                _run("umount", str(NETNS_DIR))  # the /run/netns mount `ip netns add` made for the first node
                NETNS_DIR.rmdir()

    def _terminate(self, *names: str) -> None:
        for name in names:
            if name in self.components:
                terminate(self.components.pop(name).process)

    def _close_forward(self) -> None:
        if self._forward is not None:
            self._forward.close()
            self._forward = None

    def _remove_folders(self) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def _hold_tunables(self) -> None:
        """Record the host's kernel tunables before the first local node's kubelet changes them (a second node
        would otherwise record the first one's kubelet's values)."""
        with _host_lock():
            if not TUNABLES_FILE.exists():
                TUNABLES_FILE.write_text(json.dumps({n: (Path("/proc/sys") / n).read_text() for n in KERNEL_TUNABLES}))
        self._holds_tunables = True

    def _release_tunables(self) -> None:
        """The last local node to stop puts the host's kernel tunables back."""
        if not self._holds_tunables:
            return
        self._holds_tunables = False
        with _host_lock():
            others = [
                p for p in Path("/run").glob("strata-node-*") if p.is_dir() and p.name != f"strata-node-{self.id}"
            ]
            if others or not TUNABLES_FILE.exists():
                return
            for name, value in json.loads(TUNABLES_FILE.read_text()).items():
                (Path("/proc/sys") / name).write_text(value)
            TUNABLES_FILE.unlink()

    def _remove_shim_sockets(self) -> None:
        """containerd 1.6 puts shim sockets in /run/containerd/s whatever its state folder; the ones this node's
        shims left (nobody listens any more) go, and the folders too when this node made them and they are empty."""
        for path in _shim_sockets() - self._shim_sockets_before:
            with socket.socket(socket.AF_UNIX) as probe, contextlib.suppress(OSError):
                probe.connect(str(path))
                continue  # someone still listens: another node's live shim
            path.unlink(missing_ok=True)
        if self._made_run_containerd:
            for folder in (SHIM_SOCKETS, SHIM_SOCKETS.parent):
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def _remove_log_links(self) -> None:
        """The links kubelet made in /var/log/containers to this node's pod logs (kubelet removes them only with
        their containers, which a stop ends outright), and the folder when this node made it and it is empty."""
        links = CONTAINER_LOG_LINKS.iterdir() if CONTAINER_LOG_LINKS.is_dir() else iter(())
        for link in links:
            if link.is_symlink() and Path(os.readlink(link)).is_relative_to(self.root):
                link.unlink(missing_ok=True)
        if self._made_log_links_dir:
            with contextlib.suppress(OSError):
                CONTAINER_LOG_LINKS.rmdir()

    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for path in self._cgroups:
            for folder in _cgroup_tree(path):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in (folder / "cgroup.procs").read_text().split())
        return pids

    def _kill_cgroup_processes(self) -> None:
        """The containers' processes (they outlive kubelet and containerd): SIGKILL until the cgroups are empty."""
        deadline = time.monotonic() + 10
        while (pids := self._cgroup_pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def _kill_shims(self) -> None:
        """containerd-shim-runc-v2 processes of this node's containerd (their command line names its socket)."""
        marker = str(self.run_dir).encode()
        killed = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if b"containerd-shim" in cmdline and marker in cmdline:
                    os.kill(int(entry.name), signal.SIGKILL)
                    killed.append(entry)
        deadline = time.monotonic() + 5  # gone, so their sockets no longer answer (see _remove_shim_sockets)
        while any((entry / "cmdline").exists() for entry in killed) and time.monotonic() < deadline:
            time.sleep(0.05)

    @staticmethod
    def _unmount_under(root: Path) -> None:
        prefix = str(root) + "/"
        for _ in range(3):
            points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
            mine = sorted({p for p in points if p.startswith(prefix)}, key=len, reverse=True)
            if not mine:
                return
            for point in mine:
                subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)

    def _remove_cgroups(self) -> None:
        deadline = time.monotonic() + 10
        for top in self._cgroups:
            while top.exists() and time.monotonic() < deadline:
                for folder in reversed(_cgroup_tree(top)):  # deepest first
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                with contextlib.suppress(OSError):
                    top.rmdir()
                if top.exists():
                    self._kill_cgroup_processes()
                    time.sleep(0.1)
        self._cgroups = [p for p in self._cgroups if p.exists()]


def sweep_abandoned() -> list[str]:
    """Remove what local nodes left whose launcher was killed outright (no stop ran: containers, shims, the
    namespace and cgroups outlive it); return their ids. Nodes whose launcher lives are left alone."""
    swept = []
    for run_dir in sorted(Path("/run").glob("strata-node-*")):
        try:
            owner = int((run_dir / "owner").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        node = RealNode(Path(tempfile.gettempdir()), Path(), node_id=run_dir.name.removeprefix("strata-node-"))
        node._cgroups = [h / node.cgroup_root.lstrip("/") for h in CGROUP_FS.iterdir() if h.is_dir()]
        node._cgroups = [path for path in node._cgroups if path.is_dir()]
        node._holds_tunables = True  # restore them if no other node runs
        node._made_netns_dir = (run_dir / "made-netns").exists()
        node._made_run_containerd = (run_dir / "made-run-containerd").exists()
        node._made_log_links_dir = (run_dir / "made-log-links").exists()
        node.stop()
        swept.append(node.id)
    return swept


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    """One local node at a time picks addresses and records or restores the host's tunables."""
    with (Path(tempfile.gettempdir()) / "strata-node.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _is_mount_point(path: Path) -> bool:
    return any(line.split()[4] == str(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def _cgroup_tree(top: Path) -> list[Path]:
    """``top`` and every cgroup below it, parents first; folders that vanish while walking are skipped."""
    return [Path(folder) for folder, _, _ in os.walk(top, onerror=lambda _: None)]


def _shim_sockets() -> set[Path]:
    return set(SHIM_SOCKETS.iterdir()) if SHIM_SOCKETS.is_dir() else set()


def _ctr_ok(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    proc = subprocess.run(["ctr", "--address", str(socket_path), "version"], capture_output=True, timeout=10)
    return proc.returncode == 0
