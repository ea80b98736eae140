"""A small asynchronous Kubernetes client for the few calls the operator makes, on kopf's own credentials.

kopf already holds the connection (server, CA, token or client certificate) from its login; this client reuses
it over one aiohttp session, so creating thousands of pods needs neither threads nor model deserialisation.

The API server may refuse a call for a while, and a call must neither fail a reconcile for it nor wait forever:

- 401: bound service-account tokens rotate (the kubelet rewrites the token file long before the old token
  expires, and a token bound to a deleted object stops working at once). The client logs in again (the same login
  kopf uses, which reads the token file afresh) and retries the call once.
- 429 (API Priority and Fairness rejecting the operator's flow): it waits the server's ``Retry-After``, then
  retries; 500/502/503/504 and dropped or refused connections: it backs off exponentially with jitter.
- Both are bounded by :class:`RetryPolicy` (tries and seconds per call); past that the error reaches the caller,
  whose loop retries later. Every retry is counted by reason (``strata_operator_api_retries_total``).

Every call here is idempotent by name (a create that was retried after its answer was lost gets AlreadyExists),
so retrying a POST whose fate is unknown is safe.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import os
import random
import ssl
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import kopf
import orjson
import yaml

from strata_operator.core.backoff import doubling_s

T = TypeVar("T")
log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
IN_FLIGHT = 64
"""Calls on the wire at once (the connection pool's size): as many as the benchmark's plain client uses."""


RETRIED_SERVER_ERRORS = frozenset({500, 502, 503, 504})
"""Answers that say "not now" rather than "no": an API server restarting, overloaded, or behind a proxy."""


class RetryReason:
    """Why a call was sent again: the label values of ``strata_operator_api_retries_total``."""

    UNAUTHORIZED = "unauthorized"
    THROTTLED = "throttled"
    SERVER_ERROR = "server_error"
    CONNECTION = "connection"


@dataclass(frozen=True)
class RetryPolicy:
    """How long one call rides out an API server that throttles, fails or is away. Every wait is bounded, so a
    reconcile never blocks forever: past ``attempts`` tries or ``budget_s`` seconds the error reaches the caller."""

    attempts: int = 8
    """Tries per call on 429, 5xx and connection errors (a 401 adds one try after a new login). Default 8."""
    budget_s: float = 60.0
    """Seconds from a call's first try after which no further try starts (a wait that would end past it is not
    begun). A call therefore ends within this plus one try's socket timeouts. Default 60 s, about how long a
    restarting API server is away."""
    backoff_base_s: float = 0.2
    """First backoff after a 5xx or a connection error, doubled per try. Default 0.2 s."""
    backoff_max_s: float = 10.0
    """Longest single wait, a server's Retry-After included (a huge one must not park a reconcile). Default 10 s."""


def retry_delay(policy: RetryPolicy, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
    """Seconds to wait before try ``attempt + 1``.

    With the server's Retry-After: that, plus up to a quarter more (throttled callers must not return in
    lockstep), at most ``backoff_max_s``. Without: ``d = min(backoff_max_s, backoff_base_s * 2^(attempt-1))``,
    then a uniform pick in ``[d/2, d]`` ("equal jitter": never zero, never synchronised).
    """
    if retry_after_s is not None:
        return min(policy.backoff_max_s, max(0.0, retry_after_s) * (1.0 + 0.25 * rng.random()))
    ceiling = doubling_s(policy.backoff_base_s, policy.backoff_max_s, attempt)
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header in seconds: delta-seconds (what API Priority and Fairness sends) or an HTTP date;
    None when absent or not understood."""
    if not value:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(value))
    with contextlib.suppress(TypeError, ValueError, IndexError):
        moment = parsedate_to_datetime(value).timestamp()
        return max(0.0, moment - (time.time() if now is None else now))
    return None


NOT_PERMANENT_CLIENT_ERRORS = frozenset({401, 408, 409, 429})
"""4xx answers that a later try may not get: credentials (a new login), a request timeout, a name taken or an object
changed (an outcome, or read again), throttling."""


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        self.message = message
        """The API server's own message (for a refused object, which field and why)."""
        self.retry_after_s = retry_after_s
        """The server's Retry-After (seconds), if it sent one."""

    @property
    def permanent(self) -> bool:
        """The server refused the request itself (422 invalid, 400 malformed, 403 forbidden, ...): sending it again
        gets the same answer."""
        return 400 <= self.status < 500 and self.status not in NOT_PERMANENT_CLIENT_ERRORS


class Conflict(ApiError):
    """The object changed since we read it (HTTP 409 on update): read again, then decide again."""


Login = Callable[[], kopf.ConnectionInfo]
"""Credentials as of now (kopf's login: reads the service-account token file, or the kubeconfig, afresh)."""


class Kube:
    """Calls of the operator; every method is idempotent (AlreadyExists and NotFound are outcomes, not errors).

    ``credentials`` is a login to call again when the server answers 401 (a fixed ConnectionInfo never changes).
    Only the Authorization header is taken from a new login; server and TLS settings stay those of the first.
    """

    def __init__(
        self,
        credentials: kopf.ConnectionInfo | Login,
        timeout_s: float = 30.0,
        policy: RetryPolicy | None = None,
        on_retry: Callable[[str], None] = lambda reason: None,
    ) -> None:
        info = credentials if isinstance(credentials, kopf.ConnectionInfo) else credentials()
        self._login: Login = (lambda: info) if isinstance(credentials, kopf.ConnectionInfo) else credentials
        self._server = info.server.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": "strata-operator"}
        self._authorization = info.as_http_headers()
        """Sent with each call, not set on the sessions: a new login replaces it without new connections."""
        self._relogin = asyncio.Lock()
        self.policy = policy or RetryPolicy()
        self._on_retry = on_retry
        self._rng = random.Random()
        self._ssl = _ssl_context(info)
        # per call on the wire, not in the connection pool's queue: at 500 jobs thousands of calls wait for one of
        # the 64 connections, and a total timeout would fail (and retry) the very calls that are merely queued
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._watch_session: aiohttp.ClientSession | None = None
        """Watches hold their connection for minutes: they get their own pool, never one of the 64 call slots."""
        self._slots = asyncio.Semaphore(IN_FLIGHT)
        """Calls wait here, before their body is encoded: 4,000 queued pod creations would otherwise each hold a
        request object and an encoded body in aiohttp's pool queue (tens of MiB at 500 jobs)."""
        self._dropping: set[asyncio.Future[None]] = set()
        """Watch connections dropped mid-stream whose sockets are not closed yet (:meth:`close` waits for them)."""

    async def close(self) -> None:
        """Close both pools and wait until every socket is closed, a dropped watch's too, so that the event loop
        may close right after (a socket still open then is leaked, and warned about)."""
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()
        self._session = self._watch_session = None
        await asyncio.gather(*self._dropping, return_exceptions=True)

    async def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        text = await self._send(method, path, body, content_type)
        result: dict[str, Any] = orjson.loads(text) if text else {}
        return result

    async def _send(self, method: str, path: str, body: Any, content_type: str = "application/json") -> bytes:
        """One call; the raw answer (callers that only need success skip decoding a whole pod)."""
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=IN_FLIGHT)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=self._timeout)
        session = self._session

        async def once() -> bytes:
            async with self._slots:  # not held while a retry waits: other calls go on meanwhile
                data = None if body is None else orjson.dumps(body)
                headers = dict(self._authorization)
                if data is not None:
                    headers["Content-Type"] = content_type
                async with session.request(method, self._server + path, data=data, headers=headers) as response:
                    raw = await response.read()
            if response.status >= 400:
                raise _api_error(response, method, path, raw)
            return raw

        return await self._retrying(once, method, path)

    async def _retrying(self, call: Callable[[], Awaitable[T]], method: str, path: str) -> T:
        """``call()``, again after a 401 (once, with a new login), a 429, a 5xx or a lost connection, within
        :attr:`policy`; any other answer, or the last failure, reaches the caller."""
        started = time.monotonic()
        logged_in_again = False
        attempt = 0
        while True:
            attempt += 1
            authorization = self._authorization
            retry_after: float | None = None
            try:
                return await call()
            except ApiError as error:
                if error.status == 401 and not logged_in_again:
                    logged_in_again = True
                    await self._login_again(authorization)
                    self._on_retry(RetryReason.UNAUTHORIZED)
                    attempt -= 1  # a new login is not a try of the server's patience
                    continue
                if error.status == 429:
                    reason, retry_after = RetryReason.THROTTLED, error.retry_after_s
                elif error.status in RETRIED_SERVER_ERRORS:
                    reason, retry_after = RetryReason.SERVER_ERROR, error.retry_after_s
                else:
                    raise
                failure: Exception = error
            except (aiohttp.ClientConnectionError, TimeoutError) as error:
                reason, failure = RetryReason.CONNECTION, error
            delay = retry_delay(self.policy, attempt, retry_after, self._rng)
            if attempt >= self.policy.attempts or time.monotonic() - started + delay > self.policy.budget_s:
                raise failure
            log.debug(f"{method} {path}: {failure!r}; try {attempt + 1} in {delay:.2f}s")
            self._on_retry(reason)
            await asyncio.sleep(delay)

    async def _login_again(self, rejected: Mapping[str, str]) -> None:
        """New credentials after a 401 on ``rejected``; one login for the many calls that were refused at once."""
        async with self._relogin:
            if self._authorization is not rejected:
                return  # another call logged in again while this one waited
            info = await asyncio.to_thread(self._login)
            self._authorization = info.as_http_headers()
            log.info("the API server refused the operator's credentials (401): logged in again")

    async def create(self, path: str, body: Mapping[str, Any]) -> bool:
        """POST; False when an object of that name already exists."""
        return await self._post(path, body) is not None

    async def create_returning(self, path: str, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """POST; the object as the API server stored it (uid, defaults, what webhooks added), None when an object
        of that name already exists."""
        raw = await self._post(path, body)
        created: dict[str, Any] | None = None if raw is None else orjson.loads(raw)
        return created

    async def _post(self, path: str, body: Mapping[str, Any]) -> bytes | None:
        """POST; the raw answer, None on 409 (the name is taken)."""
        try:
            return await self._send("POST", path, body)
        except Conflict:
            return None

    async def read(self, path: str) -> dict[str, Any] | None:
        """GET; None when the object is not there (404)."""
        try:
            return await self.request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise

    async def delete(self, path: str, grace_s: int | None = None) -> bool:
        """DELETE with the object's own grace period (or ``grace_s``); False when it is already gone."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_s is not None:
            options["gracePeriodSeconds"] = grace_s
        try:
            await self._send("DELETE", path, options)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> None:
        await self._send("PATCH", path, patch, MERGE_PATCH)

    async def patch_status_if_unchanged(self, path: str, resource_version: str, status: Mapping[str, Any]) -> bool:
        """Merge ``status`` into the object's status only if it is still at ``resource_version``; False when it
        changed meanwhile (409) or is gone (404): the caller reads it again instead of writing over a newer one."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": dict(status)}
        try:
            await self.merge_patch(path, body)
        except Conflict:
            return False
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def list_pages(self, path: str, page_size: int = 500) -> AsyncIterator[dict[str, Any]]:
        """A collection in pages (each a decoded List document): a list of 5,000 pods never sits in memory whole."""
        token = ""
        while True:
            query = f"?limit={page_size}" + (f"&continue={quote(token)}" if token else "")
            page = await self.request("GET", path + query)
            yield page
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                return

    async def watch_lines(self, path: str, resource_version: str, timeout_s: int) -> AsyncGenerator[bytes, None]:
        """The raw event lines of one watch from ``resource_version`` (bookmarks on), until the server ends it."""
        if self._watch_session is None:
            self._watch_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30.0, sock_read=timeout_s + 30.0),
            )
        session = self._watch_session
        query = f"?watch=1&allowWatchBookmarks=true&timeoutSeconds={timeout_s}&resourceVersion={resource_version}"

        async def start() -> aiohttp.ClientResponse:
            response = await session.get(self._server + path + query, headers=self._authorization)
            if response.status >= 400:
                raw = await response.read()
                response.release()
                raise _api_error(response, "WATCH", path, raw)
            return response

        # opening the watch is retried like a call; a stream that breaks later is the caller's to resume
        async with await self._retrying(start, "WATCH", path) as response:
            try:
                pending = b""
                # events can be longer than aiohttp's line limit (a node lists its images): split chunks ourselves
                async for chunk in response.content.iter_any():
                    pending += chunk
                    if b"\n" not in chunk:
                        continue
                    *complete, pending = pending.split(b"\n")
                    for line in complete:
                        if line:
                            yield line
            except BaseException:  # left mid-stream: closed by the caller, cancelled, or the stream broke
                self._drop(response)
                raise

    def _drop(self, response: aiohttp.ClientResponse) -> None:
        """Drop a watch's connection at once. Released unread, aiohttp would close it with a TLS goodbye that
        waits for the server's reply, a round trip nobody awaits: an event loop closed before it ends leaks the
        socket. Dropped, the socket closes at the loop's next turn, and :meth:`close` waits for that."""
        connection = response.connection
        if connection is None or connection.protocol is None:
            return  # released already: nothing left open
        closed = connection.protocol.closed
        connection.protocol.abort()
        if closed is not None and not closed.done():
            self._dropping.add(closed)
            closed.add_done_callback(self._dropping.discard)


def pod_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/pods" + (f"/{name}" if name else "")


def service_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/services" + (f"/{name}" if name else "")


def custom_path(group: str, version: str, plural: str, name: str, namespace: str | None = None) -> str:
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"/apis/{group}/{version}{scope}/{plural}/{name}"


def _api_error(response: aiohttp.ClientResponse, method: str, path: str, raw: bytes) -> ApiError:
    error = Conflict if response.status == 409 else ApiError
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return error(response.status, method, path, _message(raw.decode(errors="replace")), retry_after)


def with_kubeconfig_token_file(
    info: kopf.ConnectionInfo, environ: Mapping[str, str] | None = None
) -> kopf.ConnectionInfo:
    """``info`` with the token of the kubeconfig user's ``tokenFile``, read now, when kopf's login found no token.

    kubectl and client-go read ``tokenFile`` afresh as it rotates; kopf's minimal kubeconfig login ignores it. A
    kubeconfig that names a projected or TokenRequest token by file must work the same for the operator.
    """
    if info.token or info.username or info.certificate_path or info.certificate_data:
        return info
    env = os.environ if environ is None else environ
    paths = [os.path.expanduser(p.strip()) for p in (env.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep)]
    current: str | None = None
    contexts: dict[str, Any] = {}
    users: dict[str, Any] = {}
    for path in (p for p in paths if p and os.path.exists(p)):
        config = yaml.safe_load(Path(path).read_text()) or {}
        current = current or config.get("current-context")
        for item in config.get("contexts") or ():
            contexts.setdefault(item["name"], item.get("context") or {})
        for item in config.get("users") or ():
            users.setdefault(item["name"], item.get("user") or {})
    user = users.get(str((contexts.get(str(current)) or {}).get("user")), {})
    token_file = user.get("tokenFile")
    if not token_file:
        return info
    token = Path(os.path.expanduser(str(token_file))).read_text().strip()
    return dataclasses.replace(info, token=token or None)


def _message(text: str) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(orjson.loads(text).get("message", text))
    return text[:500]


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return False
    if info.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        cadata = _pem(info.ca_data)
        context = ssl.create_default_context(cafile=info.ca_path, cadata=cadata.decode() if cadata else None)
    cert = info.certificate_path or _to_file(_pem(info.certificate_data))
    key = info.private_key_path or _to_file(_pem(info.private_key_data))
    if cert:
        context.load_cert_chain(cert, key)
    return context


def _pem(data: bytes | str | None) -> bytes | None:
    """kubeconfig's ``*-data`` fields are base64 of PEM; kopf passes them on as they are."""
    if not data:
        return None
    raw = data.encode() if isinstance(data, str) else data
    return raw if b"-----BEGIN" in raw else base64.b64decode(raw)


def _to_file(data: bytes | str | None) -> str | None:
    """ssl reads client certificates from files only; kubeconfigs may embed them."""
    if not data:
        return None
    with tempfile.NamedTemporaryFile("wb", prefix="strata-operator-", suffix=".pem", delete=False) as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    Path(handle.name).chmod(0o600)
    return handle.name
