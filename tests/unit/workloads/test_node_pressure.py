"""The node's pressure on the model server's ``/metrics``: Linux's PSI files read as the kernel writes them, a file
that is missing or garbled left out (never reported as an idle node), and the real server's gauge following the
files from one scrape to the next."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer

from strata_workloads.model import Transformer
from strata_workloads.presets import get_preset
from strata_workloads.pressure import PSI_DIR, read_node_pressure, some_avg10
from strata_workloads.serve import Server
from strata_workloads.settings import ServeSettings

pytestmark = pytest.mark.unit


def psi(some_avg10_percent: float | str, full: float = 0.0) -> str:
    """A PSI file's text as Linux writes it."""
    return (
        f"some avg10={some_avg10_percent} avg60=3.25 avg300=19.38 total=15020945026\n"
        f"full avg10={full:.2f} avg60=0.00 avg300=0.00 total=0\n"
    )


def test_the_some_avg10_share_is_read_from_a_psi_file() -> None:
    assert some_avg10(psi("2.42")) == pytest.approx(0.0242)
    assert some_avg10(psi("100.00", full=50.0)) == 1.0
    assert some_avg10(psi("0.00", full=80.0)) == 0.0  # "full" is not "some"
    assert some_avg10("full avg10=9.00 avg60=0.00 avg300=0.00 total=0\n") is None  # no "some" line
    assert some_avg10(psi("lots")) is None
    assert some_avg10(psi("-1")) is None
    assert some_avg10(psi("120")) is None
    assert some_avg10("some avg60=3.00 total=1\n") is None
    assert some_avg10("") is None


def test_a_resource_whose_file_is_missing_or_garbled_is_left_out(tmp_path: Path) -> None:
    (tmp_path / "cpu").write_text(psi("42.00"))
    (tmp_path / "memory").write_text(psi("7.50"))
    (tmp_path / "io").write_text(psi("99.00"))  # not a resource the server reports
    assert read_node_pressure(tmp_path) == {"cpu": pytest.approx(0.42), "memory": pytest.approx(0.075)}
    (tmp_path / "memory").unlink()
    assert read_node_pressure(tmp_path) == {"cpu": pytest.approx(0.42)}
    (tmp_path / "memory").mkdir()  # unreadable as a file
    (tmp_path / "cpu").write_bytes(b"\xff\xfe not text")
    assert read_node_pressure(tmp_path) == {}
    assert read_node_pressure(tmp_path / "absent") == {}


def gauges(page: str) -> dict[str, float]:
    return {
        match["resource"]: float(match["value"])
        for match in re.finditer(
            r'^strata_serve_node_pressure\{resource="(?P<resource>\w+)"\} (?P<value>\S+)$', page, re.M
        )
    }


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(get_preset("debug")).eval()


async def scrape(client: TestClient[Any, Any]) -> dict[str, float]:
    response = await client.get("/metrics")
    assert response.status == 200
    return gauges(await response.text())


async def test_the_servers_metrics_follow_the_nodes_psi_files_at_each_scrape(
    model: Transformer, tmp_path: Path
) -> None:
    (tmp_path / "cpu").write_text(psi("42.00"))
    (tmp_path / "memory").write_text(psi("7.50"))
    server = Server(model, ServeSettings(node_pressure_dir=str(tmp_path)))
    async with TestClient(TestServer(server.app())) as client:
        assert await scrape(client) == {"cpu": pytest.approx(0.42), "memory": pytest.approx(0.075)}
        (tmp_path / "cpu").write_text(psi("3.00"))
        (tmp_path / "memory").unlink()  # gone: not reported as it was at the last scrape
        assert await scrape(client) == {"cpu": pytest.approx(0.03)}


async def test_a_server_told_no_psi_directory_reports_no_pressure(model: Transformer) -> None:
    server = Server(model, ServeSettings(node_pressure_dir=""))
    async with TestClient(TestServer(server.app())) as client:
        assert await scrape(client) == {}


async def test_by_default_the_server_reports_what_this_kernel_publishes(model: Transformer) -> None:
    # On a kernel with PSI (Linux 4.20+, not booted with psi=0) both resources, each a share; on one without, none.
    server = Server(model, ServeSettings())
    async with TestClient(TestServer(server.app())) as client:
        reported = await scrape(client)
    assert reported.keys() == read_node_pressure(Path(PSI_DIR)).keys()
    assert all(0.0 <= share <= 1.0 for share in reported.values())
