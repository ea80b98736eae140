"""The server's access log: every request is a line but the polls answered 2xx (the kubelet's probes, each router's
``/readyz`` and ``/metrics`` twice a second), which would otherwise bury the lines that matter (``python -m
strata_workloads.serve``, and the same runner in process)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import torch
from aiohttp import web
from router_support import Process, Processes, free_port, wait_ready

from strata_workloads.model import Transformer
from strata_workloads.presets import get_preset
from strata_workloads.serve import Server, app_runner
from strata_workloads.settings import ServeSettings

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

POLLS = ("GET /healthz ", "GET /readyz ", "GET /metrics ")


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.stop_all()


async def access_lines(server: Process) -> list[tuple[str, int]]:
    """The process's access lines once its last request's is written (a line follows the response it logs)."""
    for _ in range(250):
        records = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
        access = [(r["first_request_line"], r["response_status"]) for r in records if r["logger"] == "aiohttp.access"]
        if ("GET /nope HTTP/1.1", 404) in access:
            return access
        await asyncio.sleep(0.02)
    raise AssertionError(f"no access line for the last request:\n{server.log_tail()}")


async def test_the_server_process_logs_no_poll_answered_ok_and_every_other_request(processes: Processes) -> None:
    server = processes.workload_server("serve", "--threads", "1")
    await wait_ready(server, timeout_s=90)
    async with aiohttp.ClientSession() as session:
        polls = [("/healthz", 200), ("/readyz", 200), ("/metrics", 200)] * 3
        for path, status in [*polls, ("/v1/models", 200), ("/nope", 404)]:
            async with session.get(server.url + path) as response:
                assert response.status == status, path
    access = await access_lines(server)
    assert not [(line, status) for line, status in access if line.startswith(POLLS) and status == 200], access
    assert ("GET /v1/models HTTP/1.1", 200) in access
    assert ("GET /nope HTTP/1.1", 404) in access


async def test_a_failing_probe_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(0)
    server = Server(Transformer(get_preset("debug")).eval(), ServeSettings())
    server.draining = True  # as after SIGTERM: /readyz says 503 so that the Service sends it nothing new
    runner = app_runner(server)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with caplog.at_level(logging.INFO, logger="aiohttp.access"):
            async with aiohttp.ClientSession() as session:
                for path, status in [("/healthz", 200), ("/readyz", 503)]:
                    async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                        assert response.status == status, path
            for _ in range(250):  # a line follows the response it logs
                if any(r.name == "aiohttp.access" for r in caplog.records):
                    break
                await asyncio.sleep(0.02)
    finally:
        await runner.cleanup()
    access = [(r.first_request_line, r.response_status) for r in caplog.records if r.name == "aiohttp.access"]  # type: ignore[attr-defined]
    assert access == [("GET /readyz HTTP/1.1", 503)]
