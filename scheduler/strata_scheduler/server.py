"""The thin HTTP layer: routes to the extender verbs, probes, /metrics and /forecast.

Routes:

- ``POST /filter``, ``POST /prioritize``: the extender verbs (see :mod:`strata_scheduler.extender` for every
  answer they give);
- ``POST /quote``: for a pod template, the GPU type whose unit of work is cheapest now (see
  :meth:`~strata_scheduler.extender.Extender.quote`); for the operator when a job accepts several types;
- ``GET /healthz``: 200 while the process serves; ``GET /readyz``: 200 once the watch cache has synced, else 503;
- ``GET /metrics``: Prometheus text format;
- ``GET /forecast``: the latest forecasts as JSON (``{"forecasts": [...], "error": ...}``).

Why not a web framework: kube-scheduler waits on every call, and at 5,000 nodes aiohttp's per-request work
(request and response objects, routing, header handling, the body read through a stream) took about 30% of
the server's CPU for a filter plus prioritize pair, measured side by side with this module's first draft
(docs/scheduler.md, "Figures"). Every answer here is bytes computed in one synchronous call, so the server is
an :class:`asyncio.Protocol` that speaks the part of HTTP/1.1 its clients use: kube-scheduler (Go net/http:
Content-Length bodies, keep-alive), kubelet probes, Prometheus, curl. Requests on a connection are answered in
order (pipelining works); ``Expect: 100-continue`` is honoured. What it does not take gets a status and the
connection is closed: a malformed request line or header 400, a header block over 64 KiB 431, a body over the
size limit 413, a chunked request body 501 (kube-scheduler always sends Content-Length), an HTTP version other
than 1.0 and 1.1 505. Unknown paths get 404, other methods 405.

The verbs run inline on the event loop: they are pure CPU work of a millisecond or two under one lock, and a
thread hop would cost more than it saves.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from strata_scheduler.extender import Extender

log = logging.getLogger(__name__)

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"
MAX_HEAD = 64 * 1024
"""Bytes of request line and headers; Go's client sends a few hundred."""

Answer = tuple[int, bytes, bytes]
"""Status, content type, body."""

_REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    417: b"Expectation Failed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}


def _verb(call: Callable[[Extender, bytes], tuple[int, bytes]]) -> Callable[[Extender, bytes], Answer]:
    def answer(extender: Extender, body: bytes) -> Answer:
        status, payload = call(extender, body)
        return status, JSON if status == 200 else TEXT, payload

    return answer


def _healthz(extender: Extender, body: bytes) -> Answer:
    return 200, TEXT, b"ok"


def _readyz(extender: Extender, body: bytes) -> Answer:
    state = extender.state
    if state.ready:
        return 200, TEXT, b"ok"
    missing = sorted({"nodes", "pods"} - state.synced)
    return 503, TEXT, f"watch cache not synced yet: {', '.join(missing)}".encode()


def _metrics(extender: Extender, body: bytes) -> Answer:
    return 200, CONTENT_TYPE_LATEST.encode(), generate_latest(extender.metrics.registry)


def _forecast(extender: Extender, body: bytes) -> Answer:
    board = extender.board
    forecasts = sorted(board.latest().values(), key=lambda f: (f.gpu_type, f.priority))
    return 200, JSON, orjson.dumps({"forecasts": [f.to_json() for f in forecasts], "error": board.last_error})


ROUTES: dict[bytes, tuple[bytes, Callable[[Extender, bytes], Answer]]] = {
    b"/filter": (b"POST", _verb(Extender.filter)),
    b"/prioritize": (b"POST", _verb(Extender.prioritize)),
    b"/quote": (b"POST", _verb(Extender.quote)),
    b"/healthz": (b"GET", _healthz),
    b"/readyz": (b"GET", _readyz),
    b"/metrics": (b"GET", _metrics),
    b"/forecast": (b"GET", _forecast),
}


class Refused(Exception):
    """A request this server does not take: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Head:
    method: bytes
    path: bytes
    length: int
    keep_alive: bool
    expect_continue: bool


def parse_head(raw: bytes) -> Head:
    """The request line and headers (without the blank line that ends them)."""
    request_line, *lines = raw.split(b"\r\n")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[0].isalpha():
        raise Refused(400, "malformed request line")
    method, target, version = parts
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise Refused(505, "only HTTP/1.1 and HTTP/1.0 are served")
    length: int | None = None
    keep_alive = version == b"HTTP/1.1"
    expect_continue = False
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise Refused(400, "malformed header line")
        name, value = name.lower(), value.strip()
        if name == b"content-length":
            if not value.isdigit() or len(value) > 18 or (length is not None and int(value) != length):
                raise Refused(400, "Content-Length must be one number")
            length = int(value)
        elif name == b"transfer-encoding":
            raise Refused(501, "chunked request bodies are not served; send Content-Length")
        elif name == b"connection":
            tokens = {token.strip().lower() for token in value.split(b",")}
            keep_alive = b"close" not in tokens and (keep_alive or b"keep-alive" in tokens)
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise Refused(417, "only Expect: 100-continue is served")
            expect_continue = True
    return Head(method, target.split(b"?", 1)[0], length or 0, keep_alive, expect_continue)


def response(status: int, content_type: bytes, body: bytes, keep_alive: bool = True) -> bytes:
    head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
        status,
        _REASONS.get(status, b"Unknown"),
        content_type,
        len(body),
        b"" if keep_alive else b"Connection: close\r\n",
    )
    return head + body


class ExtenderServer:
    """The extender on one listening socket; :meth:`close` also closes the connections kube-scheduler keeps."""

    def __init__(self, extender: Extender, max_body_bytes: int = 16 * 1024 * 1024) -> None:
        self.extender = extender
        self.max_body_bytes = max_body_bytes
        self.connections: set[Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> ExtenderServer:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: Connection(self), host, port)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                connection.close()
            await self._server.wait_closed()
            self._server = None

    def answer(self, head: Head, body: bytes) -> Answer:
        route = ROUTES.get(head.path)
        if route is None:
            return 404, TEXT, b"no such route: " + head.path
        method, handler = route
        if head.method != method:
            return 405, TEXT, b"%s takes %s" % (head.path, method)
        try:
            return handler(self.extender, body)
        except Exception:  # the verbs catch their own; this is for /metrics and /forecast
            log.exception("answering %s failed", head.path.decode(errors="replace"))
            return 500, TEXT, b"internal error; see the extender's log"


class Connection(asyncio.Protocol):
    """One client connection: requests are parsed from the bytes as they arrive and answered in order."""

    def __init__(self, server: ExtenderServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.head: Head | None = None
        """The request whose body is still arriving."""
        self.transport: asyncio.Transport | None = None
        self.writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # answers are one write each
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.buffer.clear()

    def pause_writing(self) -> None:
        # A client that sends requests without reading answers is not read from until it catches up.
        self.writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self._serve()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._serve()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _serve(self) -> None:
        transport = self.transport
        assert transport is not None
        while not self.writing_paused and not transport.is_closing():
            if self.head is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEAD:
                        self._refuse(Refused(431, "request head over 64 KiB"))
                    return
                try:
                    head = parse_head(bytes(self.buffer[:end]))
                except Refused as refused:
                    self._refuse(refused)
                    return
                del self.buffer[: end + 4]
                if head.length > self.server.max_body_bytes:
                    self._refuse(Refused(413, f"request body over {self.server.max_body_bytes} bytes"))
                    return
                if head.expect_continue and len(self.buffer) < head.length:
                    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.head = head
            head = self.head
            if len(self.buffer) < head.length:
                return
            with memoryview(self.buffer) as view:
                body = bytes(view[: head.length])
            del self.buffer[: head.length]
            self.head = None
            status, content_type, payload = self.server.answer(head, body)
            transport.write(response(status, content_type, payload, head.keep_alive))
            if not head.keep_alive:
                transport.close()

    def _refuse(self, refused: Refused) -> None:
        assert self.transport is not None
        self.transport.write(response(refused.status, TEXT, str(refused).encode(), keep_alive=False))
        self.transport.close()
        self.buffer.clear()
