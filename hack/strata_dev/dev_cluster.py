"""``make up`` / ``make down`` / ``make env``: one dev cluster with the fleet, kept running in the background.

:func:`up` starts a daemon (``python -m strata_dev _serve``) that runs :func:`serve` and holds the cluster until
:func:`down` sends it SIGTERM. Its state lives in :data:`DEV_DIR`: the daemon's pid and log, the kubeconfig, a link
to the pinned kubectl, and ``ready`` once the fleet is up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from strata_dev import binaries
from strata_dev.cluster import ClusterSettings
from strata_dev.fleet import Fleet, start_cluster_with_fleet
from strata_dev.node import preflight, sweep_abandoned
from strata_dev.node_images import import_images

DEV_DIR = binaries.cache_root() / "dev-cluster"
START_TIMEOUT_S = 600.0
"""Longest ``up`` waits for the daemon (a 1,000-node fleet takes minutes on two CPUs)."""
STOP_TIMEOUT_S = 30.0
"""Longest ``down`` waits for the daemon to stop its cluster before killing its process group."""


def up(fleet_file: str, nodes: int, real_node: bool = True) -> int:
    """Start the daemon unless one runs, wait until its cluster is ready, and say how to point kubectl at it.

    ``real_node``: add the real node (the default); a host that cannot run containers is told why before the
    daemon starts, and how to run kwok-only."""
    if (DEV_DIR / "pid").exists() and _alive(int((DEV_DIR / "pid").read_text())):
        print(f"a dev cluster is already running; {env_line()}")
        return 0
    if real_node:
        preflight()  # here, not only in the daemon: the reason reaches the terminal, not just the daemon's log
    DEV_DIR.mkdir(parents=True, exist_ok=True)
    (DEV_DIR / "ready").unlink(missing_ok=True)
    log = DEV_DIR / "daemon.log"
    argv = [sys.executable, "-m", "strata_dev", "_serve", "--fleet", fleet_file, "--nodes", str(nodes)]
    argv += ["--real-node" if real_node else "--no-real-node"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (DEV_DIR / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            print(f"error: the dev cluster did not start; log: {log}\n{log.read_text()[-2000:]}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    print(log.read_text().strip())
    print(f"dev cluster running (pid {proc.pid}). Point kubectl at it with:\n  {env_line()}\nStop it: make down")
    return 0


def serve(fleet: Fleet, real_node: bool = True) -> int:
    """The daemon behind :func:`up`: holds the cluster until SIGTERM (:func:`down`) or until a component dies."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    settings = ClusterSettings(workdir=DEV_DIR / "state", keep_workdir=True, real_node=real_node)
    cluster = start_cluster_with_fleet(settings, fleet)
    (DEV_DIR / "pid").write_text(str(os.getpid()))
    (DEV_DIR / "kubeconfig").write_bytes(cluster.kubeconfig.read_bytes())
    (DEV_DIR / "kubectl").unlink(missing_ok=True)
    (DEV_DIR / "kubectl").symlink_to(cluster.bin_dir / "kubectl")
    if cluster.node is not None and cluster.node.layout is not None:
        (DEV_DIR / "node-containerd").write_text(str(cluster.node.layout.containerd_socket))
    print(cluster.describe(), flush=True)
    (DEV_DIR / "ready").write_text("ok")
    try:
        while not stop.wait(1.0):
            dead = cluster.dead_components()
            if dead:
                print(f"error: {', '.join(dead)} died; stopping the dev cluster", flush=True)
                return 1
    finally:
        cluster.stop()
        for name in ("pid", "ready", "kubeconfig", "node-containerd"):
            (DEV_DIR / name).unlink(missing_ok=True)
    return 0


def down() -> int:
    """Stop the daemon (and with it the cluster), if one runs."""
    pid_file = DEV_DIR / "pid"
    if not pid_file.exists():
        print("no dev cluster is running")
        return 0
    pid = int(pid_file.read_text())
    if _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            sweep_abandoned()  # no stop ran: remove what its real node (if any) left on the host
    pid_file.unlink(missing_ok=True)
    print("dev cluster stopped")
    return 0


def load_images(archives: list[Path]) -> int:
    """Import image tars into the running dev cluster's real node (``make images`` writes docker-archives)."""
    socket_file = DEV_DIR / "node-containerd"
    if not socket_file.exists():
        print("error: no dev cluster with a real node is running: make up (without REAL_NODE=0)", file=sys.stderr)
        return 1
    for archive in archives:
        import_images(archive, Path(socket_file.read_text()), DEV_DIR / "load-images.log")
        print(f"loaded {archive}")
    return 0


def env_line() -> str:
    """The shell line that points kubectl (the pinned one, first on PATH) at the dev cluster."""
    return f"export KUBECONFIG={DEV_DIR / 'kubeconfig'} PATH={binaries.bin_dir()}:$PATH"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
