"""The server process (``python -m strata_workloads.serve``) refuses bodies it cannot read with a JSON 4xx, and a
client that leaves mid-body costs no traceback: a compressed body gets 415, an oversized one 413, in each route's
error shape."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from router_support import Processes, wait_ready

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

GENERATE = orjson.dumps({"prompt": "def ", "max_new_tokens": 2})
COMPLETION = orjson.dumps({"model": "debug", "prompt": "def ", "max_tokens": 2})
UNCOMPRESSED = "Content-Encoding 'gzip' is not supported: send the body uncompressed"
TOO_LARGE = "body is larger than 17408 bytes"  # the default max_prompt_bytes' limit: 4 x 4096 + 1024


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.stop_all()


def error_message(path: str, body: dict[str, object]) -> object:
    """The message of either error shape: OpenAI's on /v1/completions, the server's own elsewhere."""
    error = body["error"]
    return error["message"] if path == "/v1/completions" and isinstance(error, dict) else error


async def test_compressed_and_oversized_bodies_get_a_json_4xx_and_the_server_keeps_serving(
    processes: Processes,
) -> None:
    server = processes.workload_server("serve", "--threads", "1")
    await wait_ready(server, timeout_s=90)
    gzipped = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    cases = [
        ("/v1/generate", gzip.compress(GENERATE), gzipped, 415, UNCOMPRESSED),
        ("/v1/completions", gzip.compress(COMPLETION), gzipped, 415, UNCOMPRESSED),
        ("/v1/completions", b"not gzip", gzipped, 415, UNCOMPRESSED),
        ("/v1/generate", b" " * 50_000, {}, 413, TOO_LARGE),
        ("/v1/completions", b" " * 50_000, {}, 413, TOO_LARGE),
    ]
    async with aiohttp.ClientSession() as session:
        for path, data, headers, status, message in cases:
            async with session.post(server.url + path, data=data, headers=headers) as response:
                assert response.status == status, (path, await response.text())
                assert error_message(path, await response.json()) == message
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b'POST /v1/generate HTTP/1.1\r\nHost: serve\r\nContent-Length: 1000\r\n\r\n{"prompt"')
        await writer.drain()
        writer.close()
        await writer.wait_closed()

        async with session.post(server.url + "/v1/generate", data=GENERATE) as response:
            assert response.status == 200
            assert (await response.json())["tokens"] == 2
    assert "Traceback" not in server.log.read_text()
