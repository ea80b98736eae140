"""A real kube-scheduler calls the extender over mutual TLS, configured only with what its extender config offers
(``enableHTTPS``, ``tlsConfig.caFile/certFile/keyFile``), and the extender's decision shows in the placement."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from cluster_support import ClusterHandle, eventually
from scheduler_builders import a_pod
from scheduler_cluster import TestFleet, bound_node, capacity_of

from strata_api.catalog import DEFAULT_CATALOG, load_catalog
from strata_dev.cluster import free_port, run_kube_scheduler
from strata_dev.pki import make_pki
from strata_scheduler.service import ExtenderService, Parts
from strata_scheduler.settings import Settings

pytestmark = pytest.mark.cluster

SHIPPED_CONFIG = Path(__file__).resolve().parents[3] / "scheduler" / "config" / "kube-scheduler-config.yaml"


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
    service = ExtenderService(settings, load_catalog(DEFAULT_CATALOG), Parts(record=False, forecast=False)).start()
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config["extenders"][0].update(
        urlPrefix=f"https://127.0.0.1:{settings.port}",
        enableHTTPS=True,
        tlsConfig={
            "caFile": str(pki.ca_cert),
            "certFile": str(pki.kubelet_client_cert),
            "keyFile": str(pki.kubelet_client_key),
        },
    )
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
