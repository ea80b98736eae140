"""The launcher itself: it cleans up after itself, also when killed, and says clearly what failed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cluster_support import eventually

from strata_dev import binaries
from strata_dev.cluster import ClusterError, ClusterSettings, LocalCluster


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes: it holds no port and no file
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def test_stop_ends_every_component_and_removes_the_state() -> None:
    cluster = LocalCluster(ClusterSettings()).start()
    pids = [c.process.pid for c in cluster.components.values()]
    assert set(cluster.components) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
    assert "strata-admin" not in cluster.kubectl("get", "namespaces")  # kubectl works with the kubeconfig
    cluster.stop()
    assert not [pid for pid in pids if alive(pid)]
    assert not cluster.workdir.exists()


def test_a_killed_launcher_leaves_no_stray_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    script = textwrap.dedent(f"""
        import time
        from strata_dev.cluster import LocalCluster
        cluster = LocalCluster().start()
        open({str(pid_file)!r}, "w").write(" ".join(str(c.process.pid) for c in cluster.components.values()))
        time.sleep(600)
    """)
    launcher = subprocess.Popen([sys.executable, "-c", script])
    try:
        eventually(lambda: pid_file.exists() and pid_file.read_text(), timeout_s=120, what="the cluster to start")
        pids = [int(p) for p in pid_file.read_text().split()]
        assert all(alive(pid) for pid in pids)
    finally:
        launcher.send_signal(signal.SIGKILL)  # no cleanup code runs: only PR_SET_PDEATHSIG can save us
        launcher.wait()
    eventually(lambda: not [pid for pid in pids if alive(pid)], timeout_s=10, what="the components to die")


def test_a_port_in_use_is_one_clear_error_with_the_log_path() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cluster = LocalCluster(ClusterSettings(ports={"apiserver": port}, keep_workdir=True))
        with pytest.raises(ClusterError) as failed:
            cluster.start()
    first_line = str(failed.value).splitlines()[0]
    assert first_line.startswith("kube-apiserver exited with code")
    assert "kube-apiserver.log" in first_line
    assert "address already in use" in str(failed.value)
    assert not [c for c in cluster.components.values() if c.process.poll() is None]


def test_binaries_report_their_pinned_versions() -> None:
    found = binaries.versions(binaries.ensure(quiet=True))
    assert binaries.KUBERNETES_VERSION in found["kube-apiserver"]
    assert binaries.KUBERNETES_VERSION in found["kube-scheduler"]
    assert binaries.KUBERNETES_VERSION in found["kubectl"]
    assert binaries.ETCD_VERSION.lstrip("v") in found["etcd"]
    assert binaries.KWOK_VERSION.lstrip("v") in found["kwok"]
    assert binaries.HELM_VERSION in found["helm"]
