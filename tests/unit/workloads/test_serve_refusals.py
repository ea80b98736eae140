"""The server process (``python -m strata_workloads.serve``) refuses what it will not serve with a JSON 4xx, and a
client that leaves mid-body or sends garbage costs no traceback: a compressed body gets 415, an oversized one 413,
one that does not arrive in time 408, in each route's error shape (OpenAI's on its paths, the unknown
``/v1/chat/completions`` among them); an unknown path 404 and a wrong method 405."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from router_support import Processes, exchange, refusal, seconds_until_closed, wait_ready

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

GENERATE = orjson.dumps({"prompt": "def ", "max_new_tokens": 2})
COMPLETION = orjson.dumps({"model": "debug", "prompt": "def ", "max_tokens": 2})
UNCOMPRESSED = "Content-Encoding 'gzip' is not supported: send the body uncompressed"
TOO_LARGE = "the body is larger than 17408 bytes"  # the default max_prompt_bytes' limit: 4 x 4096 + 1024
LATE = "the body did not arrive within 1 s"


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.stop_all()


async def test_what_it_will_not_serve_gets_a_json_4xx_and_the_server_keeps_serving(processes: Processes) -> None:
    server = processes.workload_server("serve", "--threads", "1", "--body-timeout-s", "1", "--idle-timeout-s", "1")
    await wait_ready(server, timeout_s=90)
    gzipped = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    cases = [
        ("/v1/generate", gzip.compress(GENERATE), gzipped, 415, UNCOMPRESSED),
        ("/v1/completions", gzip.compress(COMPLETION), gzipped, 415, UNCOMPRESSED),
        ("/v1/completions", b"not gzip", gzipped, 415, UNCOMPRESSED),
        ("/v1/generate", b" " * 50_000, {}, 413, TOO_LARGE),
        ("/v1/completions", b" " * 50_000, {}, 413, TOO_LARGE),
        ("/v1/chat/completions", COMPLETION, {}, 404, "there is no endpoint /v1/chat/completions"),
    ]
    async with aiohttp.ClientSession() as session:
        for path, data, headers, status, message in cases:
            async with session.post(server.url + path, data=data, headers=headers) as response:
                assert response.status == status, (path, await response.text())
                assert refusal(path, status, await response.json()) == (message, None)
        async with session.put(server.url + "/v1/completions", data=COMPLETION) as response:
            assert (response.status, response.headers["Allow"]) == (405, "POST")
            refused = refusal("/v1/completions", 405, await response.json())
            assert refused == ("PUT is not allowed on /v1/completions; it takes POST", None)
        async with session.head(server.url + "/v1/models") as response:
            assert response.status == 200

        # a body that stops coming: 408 after the timeout, not a request held open
        trickled = b'POST /v1/generate HTTP/1.1\r\nHost: serve\r\nContent-Length: 1000\r\n\r\n{"prompt"'
        status, body, seconds = await exchange(server.port, trickled)
        assert (status, orjson.loads(body)["error"]) == (408, LATE)
        assert 1 <= seconds < 5
        # a body declared over the limit: 413 before a byte of it is read, not a wait for a body that never comes
        announced = b"POST /v1/completions HTTP/1.1\r\nHost: serve\r\nContent-Length: 1000000000\r\n\r\n"
        status, body, _ = await exchange(server.port, announced)
        assert (status, refusal("/v1/completions", 413, orjson.loads(body))) == (413, (TOO_LARGE, None))
        # a head that never ends (a slow-loris client) is cut at the idle timeout, not held for aiohttp's hour
        assert 1 <= await seconds_until_closed(server.port, b"GET /v1/models HTTP/1.1\r\n") < 5
        # a request the parser refuses: aiohttp's 400, and one warning line in the log
        status, _, _ = await exchange(server.port, b"GET /v1/models HTTP/1.1\r\nContent-Length: x\r\n\r\n")
        assert status == 400

        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(trickled)
        await writer.drain()
        writer.close()
        await writer.wait_closed()

        async with session.post(server.url + "/v1/generate", data=GENERATE) as response:
            assert response.status == 200
            assert (await response.json())["tokens"] == 2
    log = server.log.read_text()
    assert "Traceback" not in log
    parser_records = [
        record
        for line in log.splitlines()
        if line.startswith("{") and (record := orjson.loads(line))["logger"] == "aiohttp.server"
    ]
    assert parser_records == [
        {
            "ts": parser_records[0]["ts"],
            "level": "warning",
            "logger": "aiohttp.server",
            "msg": "Error handling request from 127.0.0.1: Invalid character in Content-Length",
        }
    ]
