"""The server process's access log (``python -m strata_workloads.serve``): every request is a line but the probes
answered 2xx, which the kubelet sends every few seconds and which would otherwise bury the lines that matter."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from router_support import Processes, wait_ready

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

PROBES = ("GET /healthz ", "GET /readyz ")


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.stop_all()


async def test_probes_answered_ok_leave_no_access_line_and_everything_else_does(processes: Processes) -> None:
    server = processes.workload_server("serve", "--threads", "1", "--drain-seconds", "3")
    await wait_ready(server, timeout_s=90)
    async with aiohttp.ClientSession() as session:
        for path, status in [("/healthz", 200), ("/readyz", 200)] * 3 + [("/v1/models", 200), ("/nope", 404)]:
            async with session.get(server.url + path) as response:
                assert response.status == status, path
        server.terminate()  # draining: /readyz turns 503, a failing probe, which is logged
        for _ in range(100):
            async with session.get(server.url + "/readyz") as response:
                if response.status == 503:
                    break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"/readyz never said 503 while draining:\n{server.log_tail()}")
    server.popen.wait(30)
    records = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    access = [(r["first_request_line"], r["response_status"]) for r in records if r["logger"] == "aiohttp.access"]
    assert not [(line, status) for line, status in access if line.startswith(PROBES) and status == 200], access
    assert ("GET /v1/models HTTP/1.1", 200) in access
    assert ("GET /nope HTTP/1.1", 404) in access
    assert ("GET /readyz HTTP/1.1", 503) in access
