"""What the server does to clients that abuse a connection, and what it keeps doing for kube-scheduler meanwhile.

One header-size rule however the bytes arrive; heads with bare CR/LF or NUL, and HTTP/1.1 without Host, refused;
slow and silent connections timed out; past the connection cap, the connections kube-scheduler keeps stay served
and a new client still gets in; event-loop errors (accept() failing when file handles run out) logged a bounded
number of times.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scheduler_builders import a_node, an_extender
from test_http import LiveServer
from test_server import FILTER_BODY, closed, connect, post, read_response

from strata_scheduler.server import LoopErrors
from strata_scheduler.settings import Settings

pytestmark = pytest.mark.unit

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def a_server(**limits: float) -> LiveServer:
    return LiveServer(an_extender(a_node("h100").h100().spot()), Settings(**limits))  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[LiveServer]:
    live = a_server()
    yield live
    live.close()


def answer_to(server: LiveServer, request: bytes) -> tuple[int, bool]:
    """The status the request gets in one write, and whether the server closed the connection after it."""
    with connect(server) as sock:
        sock.sendall(request)
        status, headers, _ = read_response(sock, bytearray())
        return status, headers.get(b"connection") == b"close" and closed(sock)


@pytest.mark.parametrize("size", [64 * 1024 + 1, 80 * 1024, 100 * 1024])
def test_a_head_over_64_kib_gets_431_even_when_it_arrives_whole_in_one_read(server: LiveServer, size: int) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
    request = head + b"y" * (size - len(head)) + b"\r\n\r\n"
    assert request.index(b"\r\n\r\n") == size
    assert answer_to(server, request) == (431, True)


def test_a_head_of_exactly_the_limit_is_served(server: LiveServer) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: "
    assert answer_to(server, head + b"y" * (64 * 1024 - len(head)) + b"\r\n\r\n") == (200, False)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\nX-Smuggled: 1\r\n\r\n",  # bare LF inside the head
        b"GET /healthz HTTP/1.1\r\nHost: x\rX-Smuggled: 1\r\n\r\n",  # bare CR
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Name: a\0b\r\n\r\n",  # NUL in a value
        b"GET /healthz HTTP/1.1\nHost: x\r\n\r\n",  # bare LF after the request line
        b"GET /healthz HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",  # two Hosts
    ],
)
def test_bare_line_feeds_nuls_and_a_missing_host_get_400(server: LiveServer, request_bytes: bytes) -> None:
    assert answer_to(server, request_bytes) == (400, True)


@pytest.mark.parametrize(
    "chunks",
    [
        [b"GET /healthz HTTP/1.1\nHost: x\n\n"],  # a head with bare LFs only never reaches CRLF CRLF
        [b"GET /healthz HTTP/1.1\r", b"\nHost: x\n"],  # a CRLF split across reads, then a bare LF
        [b"GET /healthz HTTP/1.1\r\nHost: ", b"a\0"],  # a NUL in an unfinished head
    ],
)
def test_an_unfinished_head_with_a_bare_line_feed_or_nul_gets_400_at_once(chunks: list[bytes]) -> None:
    live = a_server(request_timeout_s=30.0)
    try:
        with connect(live) as sock:
            started = time.monotonic()
            for chunk in chunks:
                sock.sendall(chunk)
                time.sleep(0.05)
            status, _, _ = read_response(sock, bytearray())
            assert (status, closed(sock)) == (400, True)
            assert time.monotonic() - started < 5.0, "refused at once, not at the request timeout"
    finally:
        live.close()


def test_a_crlf_split_across_reads_is_not_a_bare_line_feed(server: LiveServer) -> None:
    with connect(server) as sock:
        for chunk in (b"GET /healthz HTTP/1.1\r", b"\nHost: x\r", b"\n\r", b"\n"):
            sock.sendall(chunk)
            time.sleep(0.05)
        status, _, _ = read_response(sock, bytearray())
        assert status == 200


def test_http_1_0_needs_no_host(server: LiveServer) -> None:
    assert answer_to(server, b"GET /healthz HTTP/1.0\r\n\r\n") == (200, True)


def test_an_unfinished_request_gets_408_and_a_silent_connection_is_closed() -> None:
    live = a_server(request_timeout_s=0.4, idle_timeout_s=30.0)
    try:
        with connect(live) as slow, connect(live) as silent:
            slow.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            started = time.monotonic()
            status, headers, body = read_response(slow, bytearray())
            assert (status, headers[b"connection"]) == (408, b"close")
            assert b"did not arrive within 0.4 s" in body
            assert closed(slow)
            assert closed(silent)
            assert 0.3 < time.monotonic() - started < 5
        with connect(live) as sock:  # the server itself is fine
            sock.sendall(HEALTHZ)
            assert read_response(sock, bytearray())[0] == 200
    finally:
        live.close()


def test_an_idle_keep_alive_connection_lives_past_the_request_timeout_and_closes_at_the_idle_timeout() -> None:
    live = a_server(request_timeout_s=0.3, idle_timeout_s=1.5)
    try:
        with connect(live) as sock:
            data = bytearray()
            sock.sendall(HEALTHZ)
            assert read_response(sock, data)[0] == 200
            time.sleep(0.8)  # idle longer than a request may take: still open
            sock.sendall(HEALTHZ)
            assert read_response(sock, data)[0] == 200
            started = time.monotonic()
            assert closed(sock)
            assert 1.0 < time.monotonic() - started < 5
    finally:
        live.close()


def test_past_the_cap_kept_connections_stay_served_and_a_new_client_gets_in() -> None:
    live = a_server(max_connections=4)
    try:
        with connect(live) as scheduler:
            data = bytearray()
            scheduler.sendall(post("/filter", FILTER_BODY))  # kube-scheduler: connected before the flood
            assert read_response(scheduler, data)[0] == 200
            flood = [connect(live) for _ in range(20)]  # silent and unfinished connections
            for index, sock in enumerate(flood):
                if index % 2:
                    sock.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\n")
            time.sleep(0.2)
            assert len(live.server.connections) <= 4
            for _ in range(3):  # the connection kube-scheduler keeps is served throughout
                scheduler.sendall(post("/filter", FILTER_BODY))
                assert read_response(scheduler, data)[0] == 200
            with connect(live) as restarted:  # a restarted kube-scheduler's new connection gets in
                restarted.sendall(post("/filter", FILTER_BODY))
                assert read_response(restarted, bytearray())[0] == 200
            assert sum(closed(sock) for sock in flood[:10]) == 10  # the oldest made room
            for sock in flood:
                sock.close()
        dropped = live.extender.metrics.connections_dropped.labels("over_cap")._value.get()
        assert dropped >= 17
    finally:
        live.close()


def test_when_every_connection_is_busy_a_new_one_gets_503() -> None:
    live = a_server(max_connections=2)
    try:
        busy = [connect(live) for _ in range(2)]
        for sock in busy:  # each has had a request answered and has the next one half sent
            sock.sendall(HEALTHZ)
            assert read_response(sock, bytearray())[0] == 200
            sock.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{")
        time.sleep(0.1)
        with connect(live) as extra:
            status, headers, _ = read_response(extra, bytearray())
            assert (status, headers[b"connection"]) == (503, b"close")
        for sock in busy:
            sock.sendall(b'"x": 12 }')  # both finish their request: served, never dropped
            assert read_response(sock, bytearray())[0] == 400  # not ExtenderArgs, but answered
            sock.close()
    finally:
        live.close()


def test_loop_errors_are_logged_once_per_interval_with_the_count_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    errors = LoopErrors(10.0, clock=lambda: now[0])
    error = OSError(24, "Too many open files")
    with caplog.at_level(logging.ERROR, logger="strata_scheduler.server"):
        for _ in range(1000):
            errors(None, {"message": "socket.accept() out of system resource", "exception": error})
        now[0] = 10.5
        errors(None, {"message": "socket.accept() out of system resource", "exception": error})
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "999 more like it not logged in the last 10 s" in messages[1]


RUN_WITH_FEW_FILE_HANDLES = """
import asyncio, logging, resource, sys
sys.path[:0] = sys.argv[1].split(":")
from scheduler_builders import a_node, an_extender
from strata_scheduler.server import ExtenderServer
from strata_scheduler.settings import Settings
logging.basicConfig(level=logging.INFO)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

async def main():
    server = await ExtenderServer(an_extender(a_node("h100").h100().spot()), Settings(max_connections=1000)).start(
        "127.0.0.1", 0
    )
    print(server.port, flush=True)
    await asyncio.sleep(float(sys.argv[2]))

asyncio.run(main())
"""


def test_running_out_of_file_handles_logs_a_few_lines_not_megabytes(tmp_path: Path) -> None:
    """A cap set above the process's file handles (here 64): accept() fails on every new connection."""
    seconds = 4.0
    path = ":".join([str(Path(__file__).parent), *sys.path])
    process = subprocess.Popen(
        [sys.executable, "-c", RUN_WITH_FEW_FILE_HANDLES, path, str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        assert process.stdout is not None
        port = int(process.stdout.readline())
        clients = []
        for _ in range(200):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            clients.append(sock)
        _, stderr = process.communicate(timeout=seconds + 30)
    finally:
        process.kill()
        for sock in clients:
            sock.close()
    assert process.returncode == 0, stderr.decode()[-2000:]
    reports = stderr.count(b"out of system resource")
    assert 1 <= reports <= 2, stderr.decode()[-3000:]
    assert len(stderr) < 20_000
