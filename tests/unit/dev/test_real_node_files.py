"""What the launcher writes for the real node (configuration files, the image archive) and what it says when the
host cannot run it. The cluster tier (tests/cluster/test_real_node.py) runs the node itself."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from strata_dev.node import missing_capabilities, preflight
from strata_dev.node_config import (
    NODE_NAME,
    PAUSE_IMAGE,
    NodeLayout,
    cni_conflist,
    containerd_config,
    kube_proxy_config,
    kubelet_config,
)
from strata_dev.node_images import TEST_IMAGE, write_archive
from strata_dev.processes import ClusterError


def a_layout(tmp_path: Path) -> NodeLayout:
    return NodeLayout(
        tmp_path / "node", "172.31.254.1", "172.31.254.2", 30, 6443, "/strata-node-abc123", Path("/run/x")
    )


def test_kubelet_runs_on_this_kind_of_host_with_the_node_ip_and_cluster_dns(tmp_path: Path) -> None:
    config = yaml.safe_load(kubelet_config(a_layout(tmp_path), tmp_path / "ca.crt"))
    assert config["failCgroupV1"] is False  # cgroup v1 host
    assert config["cgroupDriver"] == "cgroupfs"
    assert config["failSwapOn"] is False
    assert config["cgroupRoot"] == "/strata-node-abc123"
    assert config["clusterDNS"] == ["172.31.254.2"]
    assert config["containerRuntimeEndpoint"] == "unix:///run/x/containerd.sock"
    assert config["authentication"]["anonymous"]["enabled"] is False
    # containers' logs in the node's folder: another local node's kubelet removes log folders it does not know
    assert config["podLogsDir"] == str(tmp_path / "node" / "pod-logs")


def test_containerd_uses_the_local_pause_image_and_cannot_raise_oom_scores(tmp_path: Path) -> None:
    text = containerd_config(a_layout(tmp_path))
    assert f'sandbox_image = "{PAUSE_IMAGE}"' in text
    assert "restrict_oom_score_adj = true" in text
    assert "netns_mounts_under_state_dir = true" in text  # pod namespaces never land in the host's /run/netns
    assert f'root = "{tmp_path / "node" / "containerd" / "root"}"' in text


def test_kube_proxy_leaves_the_host_wide_conntrack_settings_alone(tmp_path: Path) -> None:
    config = yaml.safe_load(kube_proxy_config(a_layout(tmp_path)))
    assert config["hostnameOverride"] == NODE_NAME
    assert config["conntrack"]["maxPerCore"] == 0
    assert config["conntrack"]["tcpEstablishedTimeout"] == "0s"


def test_pod_addresses_come_from_the_bridge_with_ipam_state_in_the_node_folder(tmp_path: Path) -> None:
    bridge = json.loads(cni_conflist(a_layout(tmp_path)))["plugins"][0]
    assert bridge["type"] == "bridge"
    assert bridge["ipam"]["dataDir"].startswith(str(tmp_path / "node"))


def test_the_image_archive_holds_both_images_on_one_layer_with_its_digest(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF stand-in")
    with tarfile.open(write_archive(tmp_path / "images.tar", busybox)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        layer = tar.extractfile("layer.tar").read()  # type: ignore[union-attr]
        configs = [json.load(tar.extractfile(entry["Config"])) for entry in manifest]  # type: ignore[arg-type]
    assert sorted(tag for entry in manifest for tag in entry["RepoTags"]) == sorted([PAUSE_IMAGE, TEST_IMAGE])
    assert {c["rootfs"]["diff_ids"][0] for c in configs} == {"sha256:" + hashlib.sha256(layer).hexdigest()}


def test_a_missing_busybox_names_the_make_target(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match="make node-deps"):
        write_archive(tmp_path / "images.tar", tmp_path / "no-busybox")


def test_a_host_without_the_runtime_is_told_what_is_missing_and_how_to_run_kwok_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # none of the node's tools on PATH
    with pytest.raises(ClusterError) as failure:
        preflight()
    message = str(failure.value)
    assert "containerd not on PATH (make node-deps)" in message
    assert "runc not on PATH" in message
    assert "kwok-only" in message


def test_a_missing_capability_is_named_with_what_it_is_for() -> None:
    assert missing_capabilities(0) == [
        "no CAP_NET_ADMIN (the namespace, the veth pair, iptables)",
        "no CAP_SYS_ADMIN (mounts, cgroups, entering the namespace)",
    ]
    assert missing_capabilities((1 << 12) | (1 << 21)) == []
