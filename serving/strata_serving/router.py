"""The router of one InferenceService: ``python -m strata_serving.router --replica host:port ...``.

A thin aiohttp shell over :mod:`strata_serving.routing` (the replica table and the choice) and
:mod:`strata_serving.retries` (what may be retried, the budget). It forwards each endpoint of
:data:`~strata_serving.retries.ENDPOINTS` to the replica the table picks, retries on another replica where the
rules and the budget allow, and passes streamed bodies (server-sent events) through chunk by chunk. In the
background it asks its :class:`~strata_serving.discovery.ReplicaSource` for the replicas every ``dns_interval_s``
(and the canary revision's source, when there is one: ``canary_percent`` of the requests go there) and probes
each one's ``/readyz`` and ``/metrics`` every ``probe_interval_s``.

Its own endpoints: ``/healthz`` (alive), ``/readyz`` (replicas discovered and probed once; 503 ``draining`` after
SIGTERM), ``/metrics``, and with
an ``autoscale_mode`` ``/scale``: the autoscaler's last decision (:mod:`strata_serving.scaler`; the operator polls
it and sizes the replicas' Deployment). When no replica can take a request it answers 503 with a reason naming why
(none discovered, all ejected, all draining, none ready yet), after holding the request up to ``hold_s`` for one (a
service scaled to zero). Every forwarded answer carries ``x-strata-attempts`` (how many replicas were tried) and
``x-strata-replica`` (the one that answered). Its own refusals take the shape of the path's API
(``strata_api.serving.refusal_body``): OpenAI's error on ``/v1/completions``, ``/v1/models`` and any other ``/v1/``
path but Strata's own two, whose refusals are ``{"error": ..., "reason": ...}``, as are ``/scale``'s.

On SIGTERM it keeps answering for ``shutdown_delay_s`` (its ``/readyz`` 503 meanwhile), the time the cluster takes
to stop sending it new connections, then closes its port and gives the requests in flight up to ``drain_s`` to
finish: a router that closed its port at once would refuse the connections a client's proxy still sends it until
the endpoint's removal reaches every node (the race Kubernetes' preStop sleep exists for, done in the process so
that it needs no sleep binary in the image and no kubelet feature). A second signal ends the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from strata_api.serving import (
    SCALE_APPLIED_PARAM,
    SCALE_PATH,
    MalformedRequestLog,
    coded_body_refusal,
    large_body_refusal,
    late_body_refusal,
    refusal_body,
    unrouted_refusal,
)
from strata_serving.discovery import (
    ReplicaSource,
    canary_source_from,
    node_pressure_from_metrics,
    queue_depth_from_metrics,
    readiness_from_probe,
    source_from,
)
from strata_serving.forecasters import ForecastSettings
from strata_serving.refit_worker import RefitWorker
from strata_serving.retries import ENDPOINTS, Endpoint, RetryBudget, may_retry
from strata_serving.router_settings import RouterSettings, load_router_settings
from strata_serving.routing import Outcome, Policy, Replica, ReplicaTable, outcome_of_status
from strata_serving.scaler import LeadFile, LiveScaler, starting_replicas, usable_candidates

HOLD_POLL_S = 0.05
"""How often a held request looks for a replica again (:meth:`Router._held`): the table changes at most every
probe interval (0.5 s), so a tenth of it adds little wait and little work."""

log = logging.getLogger("strata_serving.router")

ATTEMPTS_HEADER = "x-strata-attempts"
REPLICA_HEADER = "x-strata-replica"
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "date",
        "server",
    }
)
"""Headers that describe one connection, not the message: never copied from one side to the other."""


class RouterMetrics:
    """The router's Prometheus series. ``strata_router_requests_total`` counts each client request once (by the
    replica that answered, ``none`` when the router answered itself): its rate is the service's request rate."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "strata_router_requests", "Client requests by answering replica and code", ["replica", "code"], registry=r
        )
        self.attempts = Counter(
            "strata_router_attempts", "Attempts at replicas by outcome", ["replica", "outcome"], registry=r
        )
        self.retries = Counter(
            "strata_router_retries",
            "Retries on another replica, by the outcome that caused them",
            ["outcome"],
            registry=r,
        )
        self.retries_denied = Counter("strata_router_retries_denied", "Retries the budget refused", registry=r)
        self.failovers = Counter(
            "strata_router_failovers", "Requests answered by another replica than the first one tried", registry=r
        )
        self.ejections = Counter("strata_router_ejections", "Replicas ejected after failures", ["replica"], registry=r)
        self.unavailable = Counter(
            "strata_router_unavailable", "503s for want of a replica, by reason", ["reason"], registry=r
        )
        self.replicas = Gauge("strata_router_replicas", "Known replicas by state", ["state"], registry=r)
        self.held = Gauge("strata_router_held", "Requests waiting for a replica able to take them", registry=r)
        self.scale_replicas = Gauge(
            "strata_router_scale_replicas", "The autoscaler's last decision: replicas asked for", registry=r
        )
        self.scale_decisions = Counter(
            "strata_router_scale_decisions", "Autoscaler decisions by reason", ["reason"], registry=r
        )
        self.scale_lead = Gauge(
            "strata_router_scale_lead_seconds",
            "The replica start-up the last decision looked ahead by (the lead, from the mounted file when given)",
            registry=r,
        )
        self.forecasters_dropped = Gauge(
            "strata_router_forecaster_unavailable",
            "Forecasters left out for this run (1), e.g. the LSTM where torch is not installed",
            ["forecaster"],
            registry=r,
        )
        self.latency = Histogram(
            "strata_router_request_seconds", "Client request latency (to the last byte)", ["endpoint"], registry=r
        )


@dataclass
class Attempt:
    """How one attempt ended: an outcome, and the replica's answer when it gave one (``streamed``: already sent
    to the client, nothing more to do)."""

    outcome: Outcome
    status: int | None = None
    headers: dict[str, str] | None = None
    body: bytes = b""
    error: str = ""
    streamed: web.StreamResponse | None = None


def error_response(path: str, status: int, error: str, reason: str, attempts: int = 0) -> web.Response:
    """The router's own refusal of a request to ``path``, in the body's shape that path speaks
    (``strata_api.serving.refusal_body``: OpenAI's error with ``reason`` as its code, or ``{"error", "reason"}``)."""
    headers = {ATTEMPTS_HEADER: str(attempts)}
    if status in (429, 503):
        headers["Retry-After"] = "1"
    body = orjson.dumps(refusal_body(path, status, error, reason))
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


@web.middleware
async def unrouted_in_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A path the router has no route for gets its 404, and a method a route does not take its 405 (with
    ``Allow``), in the JSON of its other refusals rather than aiohttp's plain text."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as error:
        allowed = error.allowed_methods if isinstance(error, web.HTTPMethodNotAllowed) else None
        message = unrouted_refusal(request.method, request.path, allowed)
        response = error_response(request.path, error.status, message, error.reason.lower())
        if allowed is not None:
            response.headers["Allow"] = ",".join(sorted(allowed))
        return response


def copied_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}


class Router:
    """The HTTP shell: routes, the forwarding loop, and the discovery and probe loops."""

    def __init__(
        self,
        settings: RouterSettings,
        source: ReplicaSource,
        seed: int | None = None,
        canary: ReplicaSource | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.canary = canary
        self.canary_share = settings.canary_percent / 100
        self.policy = Policy(settings.policy)
        self.table = ReplicaTable(settings.table_config())
        self.budget = RetryBudget(settings.retry_ratio, settings.retry_floor_per_s, settings.retry_window_s)
        self.metrics = RouterMetrics()
        self.rng = random.Random(seed)
        self.ready = False
        self.draining = False
        """SIGTERM came: ``/readyz`` answers 503 while requests are still served (:func:`serve`)."""
        self.holding = 0
        """Requests waiting for a replica (``hold_s``)."""
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.scaler: LiveScaler | None = None
        self.applied: int | None = None
        """The replicas the operator last said it has set (``GET /scale?applied=N``); None: not told yet."""
        self._refits: RefitWorker | None = None
        if settings.autoscale_mode:
            forecast_settings = ForecastSettings(bin_s=settings.autoscale_interval_s)
            candidates = usable_candidates(forecast_settings)
            for note in candidates.dropped:
                log.warning("forecaster left out for this run: %s", note)
                self.metrics.forecasters_dropped.labels(note.split(":")[0]).set(1)
            policy = settings.scaling_policy()
            lead = (
                LeadFile(settings.autoscale_startup_file, policy.startup_s) if settings.autoscale_startup_file else None
            )
            self.scaler = LiveScaler(
                policy,
                settings.autoscale_interval_s,
                settings.autoscale_peers,
                candidates.usable,
                forecast_settings,
                lead=lead,
            )

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_body_bytes, middlewares=[unrouted_in_json])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_page)
        app.router.add_get(SCALE_PATH, self.scale)
        for endpoint in ENDPOINTS.values():
            if endpoint.method == "GET":
                app.router.add_get(endpoint.path, self.forward)  # HEAD too: answered as GET, without the body
            else:
                app.router.add_route(endpoint.method, endpoint.path, self.forward)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the router has not started")
        return self._session

    async def _start(self, app: web.Application) -> None:
        timeout = aiohttp.ClientTimeout(
            sock_connect=self.settings.connect_timeout_s, sock_read=self.settings.upstream_timeout_s
        )
        connector = aiohttp.TCPConnector(limit=0)  # the replicas' queues bound the load, not the router's pool
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._discover_forever()), loop.create_task(self._probe_forever())]
        if self.scaler is not None:
            self._tasks.append(loop.create_task(self._scale_forever(self.scaler)))
            self._refits = self.scaler.refit_worker(self.settings.autoscale_refit_interval_s)
            if self._refits is not None:
                self._refits.start()

    async def _stop(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._refits is not None:
            self._refits.stop()
        await self.session.close()

    # --- the router's own endpoints

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        if self.ready:
            return web.json_response({"status": "ready", "replicas": self.table.counts()})
        return web.json_response({"status": "discovering replicas"}, status=503)

    async def metrics_page(self, request: web.Request) -> web.Response:
        for state, count in self.table.counts().items():
            self.metrics.replicas.labels(state).set(count)
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def scale(self, request: web.Request) -> web.Response:
        """The autoscaler's last decision (:class:`strata_api.serving.ScaleReport`); 404 when the router runs no
        autoscaler or has not decided yet."""
        if self.scaler is None:
            return error_response(
                SCALE_PATH, 404, "this router runs no autoscaler (autoscale_mode is empty)", "not autoscaling"
            )
        applied = request.query.get(SCALE_APPLIED_PARAM)
        if applied is not None:
            if not (applied.isascii() and applied.isdigit() and len(applied) <= 6):
                message = (
                    f"{SCALE_APPLIED_PARAM} must be a whole number of replicas from 0 to 999999, got {applied[:40]!r}"
                )
                return error_response(SCALE_PATH, 400, message, "bad parameter")
            self.applied = int(applied)
        if self.scaler.last is None:
            return error_response(SCALE_PATH, 404, "no scaling decision yet", "first interval not over")
        return web.json_response(self.scaler.last.report().to_json())

    async def _scale_forever(self, scaler: LiveScaler) -> None:
        """One decision per interval, from the replicas the table knows: ready ones (routable, ejected or
        draining) and starting ones (not ready yet: the headless Service publishes them too, and those the
        operator's applied count has past the ready ones, which may have no address yet)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.settings.autoscale_interval_s)
            counts = self.table.counts()
            ready = sum(counts.values()) - counts["not_ready"]
            starting = starting_replicas(ready, counts["not_ready"], self.applied)
            try:
                decision = await loop.run_in_executor(None, scaler.tick, time.time(), ready, starting, self.holding)
            except Exception:  # a forecaster bug must not end the decisions: log it, decide again next interval
                log.exception("scaling decision failed")
                continue
            self.metrics.scale_replicas.set(decision.replicas)
            self.metrics.scale_decisions.labels(decision.cause).inc()
            self.metrics.scale_lead.set(scaler.policy.startup_s)
            log.info("scale: %d replicas (%s): %s", decision.replicas, decision.cause, decision.reason)

    # --- forwarding

    async def forward(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        endpoint = ENDPOINTS[request.path]
        scaler = self.scaler
        if scaler is not None:
            scaler.observe(time.time())
        replica: str | None = None
        try:
            response, replica = await self._forward(request, endpoint)
        finally:  # a cancelled request (the client left, the router stops) is no longer in flight either
            elapsed = time.monotonic() - started
            if scaler is not None:
                scaler.finish(time.time(), elapsed if replica is not None else None)
        self.metrics.requests.labels(replica or "none", str(response.status)).inc()
        self.metrics.latency.labels(endpoint.path).observe(elapsed)
        return response

    async def _forward(self, request: web.Request, endpoint: Endpoint) -> tuple[web.StreamResponse, str | None]:
        path = endpoint.path
        if refusal := coded_body_refusal(request.headers.get("Content-Encoding")):
            return error_response(path, 415, refusal, "bad request"), None
        if (request.content_length or 0) > self.settings.max_body_bytes:
            return error_response(path, 413, large_body_refusal(self.settings.max_body_bytes), "bad request"), None
        try:
            body = await asyncio.wait_for(request.read(), self.settings.body_timeout_s)
            parsed = orjson.loads(body) if endpoint.method == "POST" else {}
        except TimeoutError:
            return error_response(path, 408, late_body_refusal(self.settings.body_timeout_s), "bad request"), None
        except web.HTTPRequestEntityTooLarge:
            return error_response(path, 413, large_body_refusal(self.settings.max_body_bytes), "bad request"), None
        except ConnectionResetError:  # nobody reads this answer; returning one spares the log a traceback
            return error_response(path, 400, "the client left before the body was complete", "bad request"), None
        except orjson.JSONDecodeError as error:
            return error_response(path, 400, f"the body is not valid JSON: {error}", "bad request"), None
        if not isinstance(parsed, dict):
            return error_response(path, 400, "the body must be a JSON object", "bad request"), None
        self.budget.record_request(time.monotonic())
        headers = copied_headers(request.headers)
        tried: list[str] = []
        last: Attempt | None = None
        while True:
            if last is not None:  # a retry: allowed by the rules, the attempt limit, a replica left and the budget
                if last.streamed is not None:
                    if last.outcome is Outcome.OK and len(tried) > 1:
                        self.metrics.failovers.inc()
                    return last.streamed, tried[-1]
                if not may_retry(last.outcome, endpoint) or len(tried) >= self.settings.max_attempts:
                    break
                if not self.table.candidates(frozenset(tried)):
                    break
                if not self.budget.try_spend(time.monotonic()):
                    self.metrics.retries_denied.inc()
                    break
                self.metrics.retries.labels(last.outcome.value).inc()
            replica = self.table.choose(self.policy, self.rng, frozenset(tried), self.canary_share)
            if replica is None and last is None:
                replica = await self._held()
            if replica is None:
                break
            tried.append(replica.address)
            last = await self._attempt(replica, endpoint, request, body, headers, len(tried))
        return self._answer(path, last, tried), tried[-1] if last is not None and last.status is not None else None

    async def _held(self) -> Replica | None:
        """A replica for a request that found none able to take it, waited for up to ``hold_s`` (the first one of a
        scale from zero, a replica starting): None when none comes in time, the router is stopping, or
        ``max_held`` requests wait already."""
        if self.settings.hold_s <= 0 or self.draining or self.holding >= self.settings.max_held:
            return None
        self.holding += 1
        self.metrics.held.set(self.holding)
        try:
            deadline = time.monotonic() + self.settings.hold_s
            while time.monotonic() < deadline and not self.draining:
                await asyncio.sleep(HOLD_POLL_S)
                replica = self.table.choose(self.policy, self.rng, frozenset(), self.canary_share)
                if replica is not None:
                    return replica
            return None
        finally:
            self.holding -= 1
            self.metrics.held.set(self.holding)

    def _answer(self, path: str, last: Attempt | None, tried: list[str]) -> web.StreamResponse:
        """The client's answer once no further attempt will be made: the last replica's own answer when it gave
        one, else the router's 503 naming why no replica was left, else 502 (or 504 after a timeout)."""
        if last is not None and last.status is not None:
            if last.outcome is Outcome.OK and len(tried) > 1:
                self.metrics.failovers.inc()
            headers = dict(last.headers or {})
            headers[ATTEMPTS_HEADER] = str(len(tried))
            headers[REPLICA_HEADER] = tried[-1]
            return web.Response(status=last.status, body=last.body, headers=headers)
        reason = self.table.unavailable_reason()
        if reason is not None:
            self.metrics.unavailable.labels(reason.value).inc()
            message = "no replica can take the request"
            if last is not None:
                message += f" (replica {tried[-1]}: {last.error})"
            return error_response(path, 503, message, reason.value, len(tried))
        assert last is not None  # a routable replica exists, so one was tried
        status = 504 if last.outcome is Outcome.TIMEOUT else 502
        error = f"replica {tried[-1]}: {last.error}"
        return error_response(path, status, error, f"upstream {last.outcome.value}", len(tried))

    async def _attempt(
        self,
        replica: Replica,
        endpoint: Endpoint,
        request: web.Request,
        body: bytes,
        headers: dict[str, str],
        attempts: int,
    ) -> Attempt:
        started = time.monotonic()
        try:
            result = await self._exchange(replica, endpoint, request, body, headers, attempts)
        except asyncio.CancelledError:
            self.table.abandon(replica)  # the router is stopping: not the replica's doing
            raise
        now = time.monotonic()
        if self.table.finish(replica, result.outcome, now - started, now):
            self.metrics.ejections.labels(replica.address).inc()
            log.warning(
                "ejected %s for %.1f s after %d failure(s) in a row, the last %s: %s",
                replica.address,
                (replica.ejected_until or now) - now,
                replica.consecutive_failures,
                result.outcome.value,
                result.error,
            )
        self.metrics.attempts.labels(replica.address, result.outcome.value).inc()
        return result

    async def _exchange(
        self,
        replica: Replica,
        endpoint: Endpoint,
        request: web.Request,
        body: bytes,
        headers: dict[str, str],
        attempts: int,
    ) -> Attempt:
        url = f"http://{replica.address}{endpoint.path}"
        timeout = self.settings.upstream_timeout_s
        try:
            sending = self.session.request(endpoint.method, url, data=body or None, headers=headers)
            upstream = await asyncio.wait_for(sending, timeout)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:
            return Attempt(Outcome.CONNECT_FAILED, error=f"cannot connect: {error}")
        except TimeoutError:
            return Attempt(Outcome.TIMEOUT, error=f"no answer within {timeout} s")
        except aiohttp.ClientError as error:
            return Attempt(Outcome.RESET, error=f"connection broken: {broken(error)}")
        try:
            streaming = upstream.status == 200 and upstream.content_type == "text/event-stream"
            if not streaming:
                limit = self.settings.max_answer_bytes
                payload = await asyncio.wait_for(read_at_most(upstream, limit), timeout)
                if payload is None:
                    return Attempt(Outcome.SERVER_ERROR, error=f"its answer is larger than {limit} bytes")
                return Attempt(
                    outcome_of_status(upstream.status),
                    upstream.status,
                    copied_headers(upstream.headers),
                    payload,
                    error=f"answered {upstream.status}",
                )
            streamed, outcome = await self._stream(upstream, request, replica, attempts)
            return Attempt(outcome, 200, streamed=streamed, error="the stream broke off")
        except TimeoutError:
            return Attempt(Outcome.TIMEOUT, error=f"no answer within {timeout} s")
        except aiohttp.ClientError as error:
            return Attempt(Outcome.RESET, error=f"connection broken: {broken(error)}")
        finally:
            upstream.release()

    async def _stream(
        self, upstream: aiohttp.ClientResponse, request: web.Request, replica: Replica, attempts: int
    ) -> tuple[web.StreamResponse, Outcome]:
        """Pass a streamed body through chunk by chunk. Once the first byte is out no retry is possible; a replica
        that breaks off mid-stream breaks the client's connection too, so the client cannot take a cut stream
        for a whole one."""
        response = web.StreamResponse(status=upstream.status, headers=copied_headers(upstream.headers))
        response.headers[ATTEMPTS_HEADER] = str(attempts)
        response.headers[REPLICA_HEADER] = replica.address
        try:
            await response.prepare(request)
        except ConnectionResetError:
            return response, Outcome.OK  # the client left before the first byte
        try:
            async for chunk in upstream.content.iter_any():
                try:
                    await response.write(chunk)
                except ConnectionResetError:
                    return response, Outcome.OK  # the client left; not the replica's fault
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("the stream from %s broke off: %r", replica.address, error)
            if request.transport is not None:
                request.transport.abort()
            return response, Outcome.RESET
        await response.write_eof()
        return response, Outcome.OK

    # --- discovery and probes

    async def _discover_forever(self) -> None:
        while True:
            try:
                canary = await self.canary.addresses() if self.canary is not None else []
                added, removed = self.table.sync(await self.source.addresses(), canary)
            except OSError as error:
                log.warning("discovery failed: %s", error)
                added, removed = [], []
            if added or removed:
                log.info("replicas added %s, removed %s", added, removed)
                await asyncio.gather(*(self._probe(address) for address in added))
            self.ready = True
            await asyncio.sleep(self.settings.dns_interval_s)

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.probe_interval_s)
            await asyncio.gather(*(self._probe(address) for address in list(self.table.replicas)))

    async def _get(self, url: str) -> tuple[int | None, bytes]:
        """(status, body); status None when no answer came in time, 0 when the connection was refused."""
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=self.settings.probe_timeout_s)) as r:
                return r.status, await r.read()
        except aiohttp.ClientConnectorError:
            return 0, b""  # nothing listens there (or the host is unreachable): an answer, and a clear one
        except (aiohttp.ClientError, TimeoutError):
            return None, b""

    async def _probe(self, address: str) -> None:
        (status, ready_body), (metrics_status, metrics_body) = await asyncio.gather(
            self._get(f"http://{address}/readyz"), self._get(f"http://{address}/metrics")
        )
        ready: bool | None
        ready, draining = readiness_from_probe(status, ready_body) if status is not None else (None, False)
        depth = pressure = None
        if metrics_status == 200:
            page = metrics_body.decode(errors="replace")
            depth, pressure = queue_depth_from_metrics(page), node_pressure_from_metrics(page)
        if self.table.probed(address, ready, draining, depth, time.monotonic(), pressure):
            log.info("readmitted %s: its cooldown is over and /readyz answers 200", address)


async def read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole body of ``response``, or None (the rest left unread) once it is over ``limit`` bytes."""
    if response.content_length is not None and response.content_length > limit:
        return None
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


def broken(error: aiohttp.ClientError) -> str:
    """What a broken exchange with a replica says in the router's 502 and its log: the error's type and message.
    Never its repr, which for a bad answer carries the request it answered, the client's headers (an
    ``Authorization``) among them."""
    return f"{type(error).__name__}: {error}"


async def serve(settings: RouterSettings, source: ReplicaSource, canary: ReplicaSource | None = None) -> None:
    """Run the router until SIGTERM or SIGINT, then answer for ``shutdown_delay_s`` more (a second signal ends the
    wait), close the port and let the requests in flight finish within ``drain_s``."""
    router = Router(settings, source, canary=canary)  # bodies are not decoded: strata_api.serving.coded_body_refusal
    logging.getLogger("aiohttp.server").addFilter(MalformedRequestLog())
    runner = web.AppRunner(
        router.app(),
        handle_signals=False,
        access_log=None,
        auto_decompress=False,
        shutdown_timeout=settings.drain_s,
        keepalive_timeout=settings.idle_timeout_s,
    )
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    log.info("listening on %s:%d, policy %s", settings.host, settings.port, settings.policy)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    router.draining = True  # readyz 503, and no request is held any more
    if settings.shutdown_delay_s > 0:
        stop.clear()
        log.info("stopping: answering for %g s more while new connections move elsewhere", settings.shutdown_delay_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.shutdown_delay_s)
    log.info("closing the port; requests in flight have %g s to finish", settings.drain_s)
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_router_settings(argv)
        source = source_from(settings.replica, settings.replicas_dns)
        canary = canary_source_from(settings.canary_replica, settings.canary_dns)
    except ValueError as error:
        print(f"strata-router: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings, source, canary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
