"""A small asynchronous Kubernetes client for the few calls the operator makes, on kopf's own credentials.

kopf already holds the connection (server, CA, token or client certificate) from its login; this client reuses
it over one aiohttp session, so creating thousands of pods needs neither threads nor model deserialisation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf
import orjson

MERGE_PATCH = "application/merge-patch+json"
IN_FLIGHT = 64
"""Calls on the wire at once (the connection pool's size): as many as the benchmark's plain client uses."""


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status


class Conflict(ApiError):
    """The object changed since we read it (HTTP 409 on update): read again, then decide again."""


class Kube:
    """Calls of the operator; every method is idempotent (AlreadyExists and NotFound are outcomes, not errors)."""

    def __init__(self, info: kopf.ConnectionInfo, timeout_s: float = 30.0) -> None:
        self._server = info.server.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": "strata-operator"}
        if info.token:
            self._headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        self._auth = aiohttp.BasicAuth(info.username, info.password or "") if info.username else None
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

    async def close(self) -> None:
        for session in (self._session, self._watch_session):
            if session is not None:
                await session.close()
        self._session = self._watch_session = None

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
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, auth=self._auth, timeout=self._timeout
            )
        async with self._slots:
            data = None if body is None else orjson.dumps(body)
            headers = {"Content-Type": content_type} if data is not None else None
            async with self._session.request(method, self._server + path, data=data, headers=headers) as response:
                raw = await response.read()
        if response.status >= 400:
            error = Conflict if response.status == 409 else ApiError
            raise error(response.status, method, path, _message(raw.decode(errors="replace")))
        return raw

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

    async def watch_lines(self, path: str, resource_version: str, timeout_s: int) -> AsyncIterator[bytes]:
        """The raw event lines of one watch from ``resource_version`` (bookmarks on), until the server ends it."""
        if self._watch_session is None:
            self._watch_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
                headers=self._headers,
                auth=self._auth,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30.0, sock_read=timeout_s + 30.0),
            )
        query = f"?watch=1&allowWatchBookmarks=true&timeoutSeconds={timeout_s}&resourceVersion={resource_version}"
        async with self._watch_session.get(self._server + path + query) as response:
            if response.status >= 400:
                raw = await response.read()
                raise ApiError(response.status, "WATCH", path, _message(raw.decode(errors="replace")))
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


def pod_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/pods" + (f"/{name}" if name else "")


def service_path(namespace: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{namespace}/services" + (f"/{name}" if name else "")


def custom_path(group: str, version: str, plural: str, name: str, namespace: str | None = None) -> str:
    scope = f"/namespaces/{namespace}" if namespace else ""
    return f"/apis/{group}/{version}{scope}/{plural}/{name}"


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
