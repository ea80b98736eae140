"""The HTTP/1.1 the server speaks, on raw sockets: what kube-scheduler, probes and curl send, and what it refuses.

kube-scheduler keeps one connection open and sends Content-Length bodies; curl sends ``Expect: 100-continue``
for larger bodies; anything the server does not take gets a status and a closed connection, never a hang or a
dead server.
"""

from __future__ import annotations

import gzip
import socket
from collections.abc import Iterator

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scheduler_builders import a_node, a_pod, an_extender
from test_http import LiveServer

from strata_scheduler.settings import Settings

pytestmark = pytest.mark.unit

FILTER_BODY = orjson.dumps({"Pod": a_pod().gpus(8).build(), "Nodes": None, "NodeNames": ["h100", "ghost"]})


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    live = LiveServer(an_extender(a_node("h100").h100().spot()))
    yield live
    live.close()


def connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def post(path: str, body: bytes, headers: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n%s" % (path.encode(), len(body), headers, body)


def read_response(sock: socket.socket, data: bytearray) -> tuple[int, dict[bytes, bytes], bytes]:
    """One response from ``sock`` (``data``: bytes already read past the previous one)."""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError(f"closed before a response; got {bytes(data)!r}")
        data += chunk
    end = data.index(b"\r\n\r\n")
    status_line, *lines = bytes(data[:end]).split(b"\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines)}
    length = int(headers.get(b"content-length", b"0"))
    del data[: end + 4]
    while len(data) < length:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("closed inside a body")
        data += chunk
    body = bytes(data[:length])
    del data[:length]
    return int(status_line.split()[1]), headers, body


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_one_connection_serves_many_requests_even_pipelined(server: LiveServer) -> None:
    with connect(server) as sock:
        data = bytearray()
        for _ in range(3):
            sock.sendall(post("/filter", FILTER_BODY))
            status, headers, body = read_response(sock, data)
            assert (status, headers[b"content-type"]) == (200, b"application/json")
            assert orjson.loads(body)["NodeNames"] == ["h100"]
        sock.sendall(
            post("/filter", FILTER_BODY)
            + post("/prioritize", FILTER_BODY)
            + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert read_response(sock, data)[0] == 200
        assert orjson.loads(read_response(sock, data)[2])[0]["Host"] == "h100"
        assert read_response(sock, data)[::2] == (200, b"ok")


def test_a_body_may_arrive_in_pieces_and_after_100_continue(server: LiveServer) -> None:
    with connect(server) as sock:
        request = post("/filter", FILTER_BODY, b"Expect: 100-continue\r\n")
        head_end = request.index(b"\r\n\r\n") + 4
        sock.sendall(request[:head_end])
        data = bytearray()
        assert read_response(sock, data)[0] == 100
        for start in range(head_end, len(request), 7):
            sock.sendall(request[start : start + 7])
        assert read_response(sock, data)[0] == 200


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /filter HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
    ],
)
def test_unknown_routes_and_methods_get_a_status_and_the_connection_stays(
    server: LiveServer, request_bytes: bytes, status: int
) -> None:
    with connect(server) as sock:
        data = bytearray()
        sock.sendall(request_bytes)
        assert read_response(sock, data)[0] == status
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock, data)[::2] == (200, b"ok")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /filter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 501),
        (b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 12x\r\n\r\n", 400),
        (b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 505),
        (b"GET\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n folded: header\r\n\r\n", 400),
        (b"POST /filter HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\n\r\n", 417),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"y" * (Settings().max_head_bytes + 10), 431),
    ],
)
def test_what_it_does_not_take_gets_a_status_and_a_closed_connection(
    server: LiveServer, request_bytes: bytes, status: int
) -> None:
    with connect(server) as sock:
        sock.sendall(request_bytes)
        got, headers, _ = read_response(sock, bytearray())
        assert (got, headers.get(b"connection")) == (status, b"close")
        assert closed(sock)
    assert server.request("GET", "/healthz") == (200, b"ok")


@pytest.mark.parametrize("body", [gzip.compress(FILTER_BODY), b"\x1f\x8b not gzip"])
def test_a_gzip_body_is_refused_by_name_not_read_as_json(server: LiveServer, body: bytes) -> None:
    with connect(server) as sock:
        sock.sendall(post("/filter", body, b"Content-Encoding: gzip\r\n"))
        status, headers, message = read_response(sock, bytearray())
        assert (status, headers.get(b"connection")) == (415, b"close")
        assert message == b"Content-Encoding gzip is not served; send the body uncoded"
        assert closed(sock)
    assert server.request("GET", "/healthz") == (200, b"ok")


def test_connection_close_and_http_1_0_close_after_the_answer(server: LiveServer) -> None:
    for request_bytes in (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /healthz HTTP/1.0\r\n\r\n",
    ):
        with connect(server) as sock:
            sock.sendall(request_bytes)
            assert read_response(sock, bytearray())[::2] == (200, b"ok")
            assert closed(sock)
    with connect(server) as sock:  # HTTP/1.0 with keep-alive asked for stays open
        data = bytearray()
        sock.sendall(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" * 2)
        assert read_response(sock, data)[0] == read_response(sock, data)[0] == 200


def test_closing_the_server_closes_the_connections_clients_keep() -> None:
    live = LiveServer(an_extender(a_node("h100").h100().spot()))
    try:
        with connect(live) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock, bytearray())[0] == 200
            live._call(live.server.close())
            assert closed(sock)
    finally:
        live._call(live.client.close())
        live.loop.call_soon_threadsafe(live.loop.stop)
        live.thread.join(timeout=10)
        live.loop.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    garbage=st.one_of(
        st.binary(max_size=300),
        st.builds(
            # with a Host header, so that the parse goes past the Host rule to the headers drawn
            lambda line, headers, body: line + b"\r\n" + b"\r\n".join([b"Host: x", *headers]) + b"\r\n\r\n" + body,
            st.sampled_from([b"POST /filter HTTP/1.1", b"GET /readyz HTTP/1.0", b"POST /quote HTTP/1.1", b"X Y Z"]),
            st.lists(
                st.sampled_from([b"Content-Length: 5", b"Content-Length: -1", b"Connection: close", b"Expect: x", b":"])
                | st.binary(max_size=20),
                max_size=4,
            ),
            st.binary(max_size=40),
        ),
    )
)
def test_fuzz_raw_requests_never_break_the_server(server: LiveServer, garbage: bytes) -> None:
    with connect(server) as sock:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(1 << 16):
            pass
    assert server.request("GET", "/healthz") == (200, b"ok")
