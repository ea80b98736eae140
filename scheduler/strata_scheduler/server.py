"""The thin HTTP layer: routes to the extender verbs, probes, /metrics and /forecast.

Routes:

- ``POST /filter``, ``POST /prioritize``: the extender verbs (see :mod:`strata_scheduler.extender` for every
  answer they give);
- ``POST /quote``: for a pod template, the GPU type whose unit of work is cheapest now (see
  :meth:`~strata_scheduler.extender.Extender.quote`); for the operator when a job accepts several types;
- ``GET /healthz``: 200 while the process serves; ``GET /readyz``: 200 once the watch cache has synced, else 503;
- ``GET /metrics``: Prometheus text format;
- ``GET /forecast``: the latest forecasts as JSON (``{"forecasts": [...], "error": ...}``);
- ``GET /holdback``: the reserved GPUs of each type held back from low-priority pods now (see
  :meth:`~strata_scheduler.extender.Extender.holdback`); for the operator's admission.

Why not a web framework: kube-scheduler waits on every call, and at 5,000 nodes aiohttp's per-request work
(request and response objects, routing, header handling, the body read through a stream) took about 30% of
the server's CPU for a filter plus prioritize pair, measured side by side with this module's first draft
(docs/scheduler.md, "Figures"). Every answer here is bytes computed in one synchronous call, so the server is
an :class:`asyncio.Protocol` that speaks the part of HTTP/1.1 its clients use: kube-scheduler (Go net/http:
Content-Length bodies, keep-alive), kubelet probes, Prometheus, curl. Requests on a connection are answered in
order (pipelining works); ``Expect: 100-continue`` is honoured. What it does not take gets a status and the
connection is closed: a malformed request line or header 400 (a bare CR or LF, or a NUL, anywhere in the head
included, and an HTTP/1.1 request without exactly one Host header, as RFC 9112 says), a head over
``Settings.max_head_bytes`` 431 however its bytes arrive, a body over the size limit 413, a body with a
Content-Encoding other than identity 415, a chunked request body 501 (kube-scheduler always sends Content-Length
and an uncoded body), an HTTP version other than 1.0 and 1.1 505, a request that does not arrive within
``Settings.request_timeout_s`` 408. Unknown paths get 404, other methods 405.

Connections are bounded (:class:`~strata_scheduler.settings.Settings`: ``request_timeout_s``,
``idle_timeout_s``, ``max_connections``): a connection idle past its timeout is closed, and past the cap the
oldest connection without an answered request (else the longest idle) makes room for the new one, so a flood
of silent or slow connections can neither keep kube-scheduler out nor close the connections it keeps.
Event-loop errors are logged at most once per ``Settings.error_log_interval_s`` each. With
``Settings.tls_cert_file`` the server speaks HTTPS, and with ``tls_client_ca_file`` it takes only clients with
a certificate from that CA on the verbs (mutual TLS: what kube-scheduler's extender ``tlsConfig`` can present;
probes and /metrics need none, as kubelet presents none).

The verbs run inline on the event loop: they are pure CPU work of a millisecond or two under one lock, and a
thread hop would cost more than it saves.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from strata_api.holdback import HOLDBACK_PATH
from strata_scheduler.extender import Extender
from strata_scheduler.settings import Settings

log = logging.getLogger(__name__)

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"

Answer = tuple[int, bytes, bytes]
"""Status, content type, body."""

_REASONS = {
    100: b"Continue",
    200: b"OK",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    415: b"Unsupported Media Type",
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


def _holdback(extender: Extender, body: bytes) -> Answer:
    status, payload = extender.holdback()
    return status, JSON if status == 200 else TEXT, payload


ROUTES: dict[bytes, tuple[bytes, Callable[[Extender, bytes], Answer]]] = {
    b"/filter": (b"POST", _verb(Extender.filter)),
    b"/prioritize": (b"POST", _verb(Extender.prioritize)),
    b"/quote": (b"POST", _verb(Extender.quote)),
    b"/healthz": (b"GET", _healthz),
    b"/readyz": (b"GET", _readyz),
    b"/metrics": (b"GET", _metrics),
    b"/forecast": (b"GET", _forecast),
    HOLDBACK_PATH.encode(): (b"GET", _holdback),
}


VERBS = frozenset({b"/filter", b"/prioritize", b"/quote"})
"""The routes that need a client certificate when ``Settings.tls_client_ca_file`` is set; probes, /metrics and
/forecast do not (kubelet's HTTPS probes and most scrapers present none)."""


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


BARE_LINE_END = "a bare CR or LF, or a NUL, in the request head"


def bare_line_end_or_nul(head_so_far: bytearray, scanned: int) -> bool:
    """Whether the bytes of an unfinished head past ``scanned`` (those already looked at are not read again, so a
    head trickled byte by byte costs linear time) hold a NUL or a LF without its CR."""
    start = max(scanned - 1, 0)  # one byte back: the CR of a CRLF split across two reads
    with memoryview(head_so_far) as view:
        fresh = bytes(view[start:])
    new_line_feeds = fresh[1:].count(b"\n") if scanned else fresh.count(b"\n")
    return b"\0" in fresh or new_line_feeds != fresh.count(b"\r\n")


def parse_head(raw: bytes) -> Head:
    """The request line and headers (without the blank line that ends them)."""
    if b"\0" in raw or raw.count(b"\n") != raw.count(b"\r\n") or raw.count(b"\r") != raw.count(b"\r\n"):
        raise Refused(400, BARE_LINE_END)
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
    hosts = 0
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
        elif name == b"content-encoding" and value.lower() not in (b"", b"identity"):
            # read as it is, a gzip body failed as "not valid UTF-8: surrogates not allowed"
            coding = value.decode(errors="replace")
            raise Refused(415, f"Content-Encoding {coding} is not served; send the body uncoded")
        elif name == b"connection":
            tokens = {token.strip().lower() for token in value.split(b",")}
            keep_alive = b"close" not in tokens and (keep_alive or b"keep-alive" in tokens)
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise Refused(417, "only Expect: 100-continue is served")
            expect_continue = True
        elif name == b"host":
            hosts += 1
    if hosts > 1 or (hosts == 0 and version == b"HTTP/1.1"):
        raise Refused(400, "an HTTP/1.1 request needs exactly one Host header")
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


class LoopErrors:
    """The event loop's exception handler: each distinct message logged at most once per ``interval_s``, with the
    number of repeats left out since. When file handles run out, asyncio reports every failed accept() (with a
    traceback); unthrottled, that filled the log with 42 MB in 30 s."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.last: dict[str, tuple[float, int]] = {}
        """Message -> (when it was last logged, repeats not logged since)."""

    def __call__(self, loop: asyncio.AbstractEventLoop | None, context: dict[str, Any]) -> None:
        message = str(context.get("message") or "unhandled error in the event loop")
        now = self.clock()
        logged, held = self.last.get(message, (-math.inf, 0))
        if now - logged < self.interval_s:
            self.last[message] = (logged, held + 1)
            return
        if len(self.last) > 1000:  # messages are a handful of fixed strings; bound the dict anyway
            self.last.clear()
        self.last[message] = (now, 0)
        error = context.get("exception")
        repeats = f" ({held} more like it not logged in the last {self.interval_s:g} s)" if held else ""
        log.error("%s%s: %r", message, repeats, error, exc_info=error if isinstance(error, BaseException) else None)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context from ``settings`` (None: plain HTTP); mutual TLS with ``tls_client_ca_file``."""
    if settings.tls_cert_file is None:
        if settings.tls_key_file is not None or settings.tls_client_ca_file is not None:
            raise ValueError("tls_key_file and tls_client_ca_file need tls_cert_file (HTTPS) as well")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file is not None:
        context.load_verify_locations(cafile=settings.tls_client_ca_file)
        # A certificate a client presents must verify, or the handshake fails; a client may present none, and is
        # then served the probes and /metrics only (see VERBS).
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


class ExtenderServer:
    """The extender on one listening socket; :meth:`close` also closes the connections kube-scheduler keeps."""

    def __init__(self, extender: Extender, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        self.extender = extender
        self.settings = settings
        self.max_body_bytes = settings.max_body_bytes
        self.max_head_bytes = settings.max_head_bytes
        self.connections: set[Connection] = set()
        self.unanswered: dict[Connection, None] = {}
        """Connections that have had no request answered yet, oldest first: the first to go past the cap."""
        self.errors = LoopErrors(settings.error_log_interval_s)
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, host: str, port: int) -> ExtenderServer:
        loop = self._loop = asyncio.get_running_loop()
        loop.set_exception_handler(self.errors)
        context = tls_context(self.settings)
        handshake = self.settings.request_timeout_s if context else None  # a TLS handshake is part of a request
        self._server = await loop.create_server(
            lambda: Connection(self), host, port, ssl=context, ssl_handshake_timeout=handshake
        )
        self._sweep()
        return self

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _sweep(self) -> None:
        """Close the connections past their deadline; runs a few times per shortest timeout (at most 1 s apart)."""
        assert self._loop is not None
        now = self._loop.time()
        for connection in [c for c in self.connections if c.deadline <= now]:
            connection.timed_out()
        every = min(1.0, self.settings.request_timeout_s / 4, self.settings.idle_timeout_s / 4)
        self._sweeper = self._loop.call_later(every, self._sweep)

    def admit(self, connection: Connection) -> bool:
        """Take a new connection, making room past the cap; False when every connection is busy."""
        if len(self.connections) >= self.settings.max_connections:
            victim = next(iter(self.unanswered), None)
            if victim is None:
                idle = [c for c in self.connections if c.idle]
                victim = min(idle, key=lambda c: c.deadline) if idle else None
            if victim is None:
                self.extender.metrics.connections_dropped.labels("over_cap_all_busy").inc()
                return False
            self.extender.metrics.connections_dropped.labels("over_cap").inc()
            victim.drop()
        self.connections.add(connection)
        self.unanswered[connection] = None
        return True

    def forget(self, connection: Connection) -> None:
        self.connections.discard(connection)
        self.unanswered.pop(connection, None)

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                connection.close()
            await self._server.wait_closed()
            self._server = None

    def answer(self, head: Head, body: bytes, certified: bool = False) -> Answer:
        """The answer to one request; ``certified``: its connection presented a client certificate from
        ``Settings.tls_client_ca_file`` (needed for :data:`VERBS` when that is set)."""
        route = ROUTES.get(head.path)
        if route is None:
            return 404, TEXT, b"no such route: " + head.path
        method, handler = route
        if head.method != method:
            return 405, TEXT, b"%s takes %s" % (head.path, method)
        if not certified and self.settings.tls_client_ca_file is not None and head.path in VERBS:
            return 403, TEXT, b"%s needs a client certificate from the extender's client CA" % head.path
        try:
            return handler(self.extender, body)
        except Exception as error:  # the verbs catch their own; this is for /metrics and /forecast
            self.errors(
                self._loop, {"message": f"answering {head.path.decode(errors='replace')} failed", "exception": error}
            )
            return 500, TEXT, b"internal error; see the extender's log"


class Connection(asyncio.Protocol):
    """One client connection: requests are parsed from the bytes as they arrive and answered in order.

    Its ``deadline`` (event-loop time) is when the server closes it: ``request_timeout_s`` after a request's first
    byte (or after connecting, or once an answer waits for the client to read it), ``idle_timeout_s`` after an
    answer when nothing more has arrived.
    """

    def __init__(self, server: ExtenderServer) -> None:
        self.server = server
        self.buffer = bytearray()
        self.head: Head | None = None
        self.head_scanned = 0
        """How many bytes of an unfinished head :func:`bare_line_end_or_nul` has already looked at."""
        """The request whose body is still arriving."""
        self.transport: asyncio.Transport | None = None
        self.writing_paused = False
        self.deadline = math.inf
        self.certified = False
        """The client presented a certificate that verified against ``Settings.tls_client_ca_file``."""

    @property
    def idle(self) -> bool:
        """Between requests, with nothing unanswered and nothing waiting to be written."""
        return self.head is None and not self.buffer and not self.writing_paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # answers are one write each
        self.certified = bool(transport.get_extra_info("peercert"))
        if not self.server.admit(self):
            transport.write(response(503, TEXT, b"every connection is busy; try again", keep_alive=False))
            transport.close()
            return
        self.deadline = self.server.now() + self.server.settings.request_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.forget(self)
        self.buffer.clear()

    def pause_writing(self) -> None:
        # A client that sends requests without reading answers is not read from until it catches up.
        self.writing_paused = True
        self.deadline = self.server.now() + self.server.settings.request_timeout_s
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self._serve()

    def data_received(self, data: bytes) -> None:
        if not self.buffer and self.head is None:  # the first bytes of a request: its time starts now
            self.deadline = self.server.now() + self.server.settings.request_timeout_s
        self.buffer += data
        self._serve()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def drop(self) -> None:
        """Close at once, unanswered (to make room past the connection cap)."""
        self.server.forget(self)
        if self.transport is not None:
            self.transport.abort()

    def timed_out(self) -> None:
        self.server.forget(self)
        if self.transport is None or self.transport.is_closing():
            return
        dropped = self.server.extender.metrics.connections_dropped
        if self.idle:
            dropped.labels("idle_timeout").inc()
            self.transport.close()
        elif self.writing_paused:
            dropped.labels("request_timeout").inc()
            self.transport.abort()
        else:
            dropped.labels("request_timeout").inc()
            timeout = self.server.settings.request_timeout_s
            self._refuse(Refused(408, f"the request did not arrive within {timeout:g} s"))

    def _serve(self) -> None:
        transport = self.transport
        assert transport is not None
        server = self.server
        while not self.writing_paused and not transport.is_closing():
            if self.head is None:
                limit = server.max_head_bytes
                end = self.buffer.find(b"\r\n\r\n", 0, limit + 4)
                if end < 0:
                    if len(self.buffer) >= limit + 4:  # the head, however it ends, is over the limit
                        self._refuse(Refused(431, f"request head over {limit} bytes"))
                    elif bare_line_end_or_nul(self.buffer, self.head_scanned):
                        # a head that ends with bare LFs never reaches CRLF CRLF: refuse it now, not at the timeout
                        self._refuse(Refused(400, BARE_LINE_END))
                    self.head_scanned = len(self.buffer)
                    return
                self.head_scanned = 0
                try:
                    head = parse_head(bytes(self.buffer[:end]))
                except Refused as refused:
                    self._refuse(refused)
                    return
                del self.buffer[: end + 4]
                if head.length > server.max_body_bytes:
                    self._refuse(Refused(413, f"request body over {server.max_body_bytes} bytes"))
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
            status, content_type, payload = server.answer(head, body, self.certified)
            transport.write(response(status, content_type, payload, head.keep_alive))
            server.unanswered.pop(self, None)
            if not head.keep_alive:
                transport.close()
                return
            settings = server.settings
            self.deadline = server.now() + (settings.request_timeout_s if self.buffer else settings.idle_timeout_s)

    def _refuse(self, refused: Refused) -> None:
        assert self.transport is not None
        self.transport.write(response(refused.status, TEXT, str(refused).encode(), keep_alive=False))
        self.transport.close()
        self.buffer.clear()
