"""A real kube-scheduler calls the extender over mutual TLS, configured only with what its extender config offers
(``enableHTTPS``, ``tlsConfig.caFile/certFile/keyFile``), and the extender's decision shows in the placement."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster_support import ClusterHandle, eventually
from scheduler_builders import a_pod
from scheduler_cluster import TestFleet, bound_node, capacity_of

from strata_api.catalog import DEFAULT_CATALOG, load_catalog
from strata_dev.cluster import free_port, run_kube_scheduler
from strata_dev.paths import SCHEDULER_CONFIG
from strata_dev.pki import make_pki
from strata_scheduler.service import ExtenderService, Parts
from strata_scheduler.settings import Settings, parse_settings

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[3] / "charts" / "strata"


def test_kube_scheduler_places_through_an_extender_that_requires_its_client_certificate(
    cluster: ClusterHandle, namespace: str, test_fleet: Callable[..., TestFleet], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    settings = Settings(
        port=free_port(),
        kubeconfig=str(cluster.kubeconfig),
        store=tmp_path / "demand.sqlite",
        tls_cert_file=pki.serving_cert,
        tls_key_file=pki.serving_key,
        tls_client_ca_file=pki.ca_cert,
    )
    config = yaml.safe_load(SCHEDULER_CONFIG.read_text())
    config["extenders"][0].update(
        urlPrefix=f"https://127.0.0.1:{settings.port}",
        enableHTTPS=True,
        tlsConfig={
            "caFile": str(pki.ca_cert),
            "certFile": str(pki.kubelet_client_cert),
            "keyFile": str(pki.kubelet_client_key),
        },
    )
    placed_through(cluster, namespace, test_fleet, tmp_path, settings, config)


def placed_through(
    cluster: ClusterHandle,
    namespace: str,
    test_fleet: Callable[..., TestFleet],
    tmp_path: Path,
    settings: Settings,
    config: dict[str, Any],
) -> None:
    """Run the extender with ``settings`` and a kube-scheduler with ``config``; a pod only the extender can place
    right (capacity type reserved) lands on the reserved node."""
    service = ExtenderService(settings, load_catalog(DEFAULT_CATALOG), Parts(record=False, forecast=False)).start()
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    process = run_kube_scheduler(cluster.bin_dir, cluster.kubeconfig, path, tmp_path / "kube-scheduler.log")
    try:
        eventually(lambda: service.state.ready, 60, "the extender's watch cache to sync")
        fleet = test_fleet(("H100", "spot", "us-east-1a"), ("H100", "reserved", "us-east-1b"))
        # Only the extender knows capacity types: the pod lands on reserved because the filter said so, over TLS.
        pod = a_pod("reserved-only").gpus(8).capacity_types("reserved").checkpoint_every(1800)
        node = bound_node(cluster, namespace, fleet.create(cluster, namespace, pod))
        assert capacity_of(cluster, node) == "reserved"
        assert service.extender.metrics.latency.labels("filter")._sum.get() > 0  # it was asked, over HTTPS
    finally:
        process.terminate()
        process.wait(10)
        service.stop()


def test_the_charts_tls_values_give_a_kube_scheduler_and_extender_that_work_together(
    cluster: ClusterHandle, namespace: str, test_fleet: Callable[..., TestFleet], tmp_path: Path
) -> None:
    """``extender.tls.secretName`` and ``scheduler.extenderClientSecretName``, rendered by helm, with the Secrets'
    mount paths swapped for real files: the extender's flags and kube-scheduler's extender config as shipped."""
    proc = subprocess.run(
        [str(cluster.bin_dir / "helm"), "template", "rel", str(CHART), "-n", "default", "--kube-version", "1.36.3",
         "--set", "extender.tls.secretName=extender-tls", "--set", "scheduler.extenderClientSecretName=client-tls"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    objects = {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(proc.stdout) if doc}
    extender = objects[("Deployment", "rel-extender")]["spec"]["template"]["spec"]
    scheduler = objects[("Deployment", "rel-scheduler")]["spec"]["template"]["spec"]
    for probe in ("readinessProbe", "livenessProbe"):  # kubelet presents no certificate: probes need none
        assert extender["containers"][0][probe]["httpGet"]["scheme"] == "HTTPS"
    pki = make_pki(tmp_path / "pki")
    mounts = {  # each Secret's mount path -> the files of that Secret here
        mount_of(extender, "extender-tls"): {
            "tls.crt": pki.serving_cert, "tls.key": pki.serving_key, "ca.crt": pki.ca_cert
        },
        mount_of(scheduler, "client-tls"): {
            "tls.crt": pki.kubelet_client_cert, "tls.key": pki.kubelet_client_key, "ca.crt": pki.ca_cert
        },
    }  # fmt: skip

    def local(path: str) -> str:
        folder, _, name = path.rpartition("/")
        return str(mounts[folder][name])

    flags = [arg for arg in extender["containers"][0]["args"] if arg.startswith("--tls-")]
    assert len(flags) == 3
    port = free_port()
    settings = parse_settings(
        [*(f"{flag.split('=')[0]}={local(flag.split('=')[1])}" for flag in flags), f"--port={port}",
         f"--kubeconfig={cluster.kubeconfig}", f"--store={tmp_path / 'demand.sqlite'}"]
    )  # fmt: skip
    config = yaml.safe_load(objects[("ConfigMap", "rel-scheduler-config")]["data"]["config.yaml"])
    call = config["extenders"][0]
    assert call["enableHTTPS"] is True
    assert call["urlPrefix"].startswith("https://rel-extender.default.svc:")
    call["urlPrefix"] = f"https://127.0.0.1:{port}"  # the serving certificate here is for loopback
    call["tlsConfig"] = {key: local(path) for key, path in call["tlsConfig"].items()}
    placed_through(cluster, namespace, test_fleet, tmp_path, settings, config)


def mount_of(pod_spec: dict[str, Any], secret: str) -> str:
    (volume,) = [v["name"] for v in pod_spec["volumes"] if v.get("secret", {}).get("secretName") == secret]
    (path,) = [m["mountPath"] for m in pod_spec["containers"][0]["volumeMounts"] if m["name"] == volume]
    return str(path)
