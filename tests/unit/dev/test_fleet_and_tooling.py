"""The fleet file, the node manifests and the launcher's pure parts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import strata_api as api
from strata_api.fleet import FleetError
from strata_dev import binaries
from strata_dev.cluster import kubeconfig_yaml, scheduler_config
from strata_dev.fleet import DEFAULT_FLEET, load_fleet, node_manifests


def test_default_fleet_has_every_pool_the_issue_names() -> None:
    fleet = load_fleet(DEFAULT_FLEET)
    kinds = {(p.gpu, p.capacity_type.value) for p in fleet.pools}
    assert {("H100", "reserved"), ("H100", "spot"), ("MI300X", "reserved"), ("MI300X", "spot")} <= kinds
    assert any(p.gpu == "none" for p in fleet.pools)


def test_nodes_carry_real_cluster_labels_taints_and_gpus() -> None:
    nodes = {n["metadata"]["name"]: n for n in node_manifests(load_fleet(DEFAULT_FLEET))}
    h100_spot = nodes["h100-spot-0000"]
    labels = h100_spot["metadata"]["labels"]
    assert api.gpu_type_of(labels) is api.GPUType.H100
    assert labels[api.NODE_INSTANCE_TYPE] == "p5.48xlarge"
    assert labels[api.NODE_CAPACITY_TYPE] == "spot"
    assert labels[api.NODE_ZONE] == "us-east-1b"
    assert h100_spot["status"]["allocatable"][api.NVIDIA_GPU] == "8"
    assert {(t["key"], t["effect"]) for t in h100_spot["spec"]["taints"]} == {
        (api.NVIDIA_GPU, "NoSchedule"),
        (api.TAINT_SPOT, "NoSchedule"),
    }
    mi300x = nodes["mi300x-reserved-0000"]
    assert api.gpu_type_of(mi300x["metadata"]["labels"]) is api.GPUType.MI300X
    assert mi300x["status"]["allocatable"][api.AMD_GPU] == "8"
    assert [t["key"] for t in mi300x["spec"]["taints"]] == [api.AMD_GPU]
    cpu = nodes["cpu-0000"]
    assert cpu["spec"]["taints"] == []
    assert api.NVIDIA_GPU not in cpu["status"]["allocatable"]
    assert all(n["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake" for n in nodes.values())


@pytest.mark.parametrize("total", [5, 37, 1000, 5000])
def test_scaling_keeps_every_pool_and_the_exact_total(total: int) -> None:
    fleet = load_fleet(DEFAULT_FLEET).scaled(total)
    assert fleet.size == total
    assert all(p.nodes >= 1 for p in fleet.pools)
    assert len({m["metadata"]["name"] for m in node_manifests(fleet)}) == total


def test_scaling_below_the_pool_count_is_refused() -> None:
    with pytest.raises(FleetError, match="at least"):
        load_fleet(DEFAULT_FLEET).scaled(2)


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ({"name": "x", "gpu": "A100"}, r"pools\[0\]\.gpu: 'A100' is not one of H100, MI300X, none"),
        ({"name": "x", "gpu": "H100", "capacityType": "preemptible"}, r"pools\[0\]\.capacityType: 'preemptible'"),
        ({"name": "x", "gpu": "H100", "capacityType": "spot", "nodes": -1}, r"pools\[0\]\.nodes: expected a whole"),
        ({"name": "x", "gpu": "H100", "capacityType": "spot"}, r"pools\[0\]\.nodes: .* got None"),
        ({"name": "x", "gpu": "H100", "capacityType": "spot", "nodes": 1, "zone": ""}, r"pools\[0\]\.zone: "),
    ],
)
def test_bad_fleet_files_name_the_pool_and_field(tmp_path: Path, pool: dict[str, object], message: str) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(json.dumps({"pools": [pool]}))
    with pytest.raises(FleetError, match=message):
        load_fleet(path)


def test_scheduler_config_fills_in_connection_and_keeps_profiles(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("profiles:\n- schedulerName: default-scheduler\n- schedulerName: strata-scheduler\n")
    rendered = json.loads(scheduler_config(base, tmp_path / "kubeconfig", qps=50))
    assert rendered["kind"] == "KubeSchedulerConfiguration"
    assert [p["schedulerName"] for p in rendered["profiles"]] == ["default-scheduler", "strata-scheduler"]
    assert rendered["clientConnection"] == {"kubeconfig": str(tmp_path / "kubeconfig"), "qps": 50, "burst": 100}
    assert rendered["leaderElection"] == {"leaderElect": False}


def test_kubeconfig_verifies_tls_against_the_ca(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n")
    config = json.loads(kubeconfig_yaml("https://127.0.0.1:6443", ca, "t0k"))
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:6443"
    assert "insecure-skip-tls-verify" not in cluster
    assert config["users"][0]["user"] == {"token": "t0k"}


def test_cache_key_names_every_version_and_changes_with_the_toolchain() -> None:
    key = binaries.cache_key("go1.26.8")
    for version in (binaries.KUBERNETES_VERSION, binaries.ETCD_VERSION, binaries.KWOK_VERSION, binaries.HELM_VERSION):
        assert version in key
    assert binaries.cache_key("go1.27.0") != key


def test_missing_go_toolchain_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("STRATA_BIN_DIR", raising=False)
    with pytest.raises(binaries.BuildError, match="Go toolchain not found on PATH"):
        binaries.ensure()


def test_explicit_bin_dir_missing_binaries_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "etcd").write_text("")
    monkeypatch.setenv("STRATA_BIN_DIR", str(tmp_path))
    with pytest.raises(binaries.BuildError, match="lacks kube-apiserver"):
        binaries.ensure()
