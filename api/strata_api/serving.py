"""The router's scaling report (``GET /scale``), as the router writes it and the operator reads it; the replica
endpoints the router forwards and the model server serves; and what the two answer a request they will not serve
(a compressed or late body, a path or method they have no route for, and the shape of every refusal's body) and
log of one they cannot parse.

The router of an InferenceService sees every request, so it runs the autoscaler (``strata_serving.autoscale``)
and serves its last decision here; the operator polls it, clamps it to the pool's quota, applies it to the
replicas' Deployment and writes ``status.lastScale``. One shape, defined once, so that neither side re-spells the
other's fields.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from strata_api import GROUP

LABEL_ROUTER = f"{GROUP}/inference-service-router"
"""Label of an InferenceService's router pods (its name); the replicas carry ``strata.dev/inference-service``."""
SCALE_PATH = "/scale"
"""The router's endpoint that answers the last :class:`ScaleReport` (404 before its first decision)."""
SCALE_APPLIED_PARAM = "applied"
"""``GET /scale?applied=N``: the replicas the operator has set on the service's Deployments (every revision's
``spec.replicas``), which the router then counts as ready or starting: a replica still waiting for a node has no
address yet, so the router cannot see it (HPA counts the Deployment's ``spec.replicas`` the same way)."""

QUEUE_DEPTH_METRIC = "strata_serve_in_flight"
"""The model server's gauge of its requests queued or running, on its ``/metrics``; each router reads it twice a
second for the requests that other routers and clients have there."""
NODE_PRESSURE_METRIC = "strata_serve_node_pressure"
"""The model server's gauge of its node's pressure, on its ``/metrics``, one sample per resource (label
``resource``: ``cpu``, ``memory``): the share of the last 10 seconds in which some task on the node waited for that
resource (Linux's pressure stall information, ``some avg10`` of ``/proc/pressure/<resource>``, over 100). The
router reads it with the queue depth and scores a replica on a stalled node down (``strata_serving.routing``); a
server on a kernel without PSI has no sample, and the router reads no pressure."""

GENERATE_PATH, PREDICT_PATH = "/v1/generate", "/v1/predict"
"""Strata's own endpoints of the model server: text from a prompt, and scores (perplexity) of texts."""
COMPLETIONS_PATH, MODELS_PATH = "/v1/completions", "/v1/models"
"""OpenAI's endpoints of the model server: completions (streamed or whole), and the model it serves."""


def speaks_openai(path: str) -> bool:
    """Whether a request to ``path`` is answered in OpenAI's API: its endpoints, and every other path under
    ``/v1/`` but Strata's own two (a client of OpenAI's API may call one the server does not have, such as
    ``/v1/chat/completions``, and reads the 404 as it reads any error of that API)."""
    return path.startswith("/v1/") and path not in (GENERATE_PATH, PREDICT_PATH)


def openai_error(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """A refusal's body in OpenAI's error shape, what its clients read (``error.message``, ``error.code``)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_error_type(status: int) -> str:
    """OpenAI's ``error.type`` for a refusal with HTTP ``status``."""
    if status == 429:
        return "requests"  # a rate limit, as OpenAI's API names it
    return "server_error" if status >= 500 else "invalid_request_error"


def refusal_body(path: str, status: int, message: str, reason: str | None = None) -> dict[str, Any]:
    """What the router and the model server answer in JSON when they refuse a request to ``path``: on a path that
    :func:`speaks_openai`, OpenAI's error shape with ``reason`` as its ``code``; elsewhere (Strata's own endpoints,
    the router's ``/scale``) ``{"error": message, "reason": reason}``, without ``reason`` when there is none."""
    if speaks_openai(path):
        return openai_error(message, openai_error_type(status), code=reason)
    return {"error": message} if reason is None else {"error": message, "reason": reason}


def coded_body_refusal(content_encoding: str | None) -> str | None:
    """The message of the 415 the router and the model server answer a request body sent with a
    ``Content-Encoding`` other than identity; None for an uncoded one. Neither decodes bodies: decoded, a body would
    be passed on to a replica still labelled with its coding and fail there (the router would eject the replicas),
    and one that does not decode would fail the server after its answer, as aiohttp drains it."""
    coding = "identity" if content_encoding is None else content_encoding
    if coding.lower() == "identity":
        return None
    return f"Content-Encoding {coding!r} is not supported: send the body uncompressed"


def large_body_refusal(limit: int) -> str:
    """The message of the 413 the router and the model server answer a request body larger than ``limit`` bytes.
    Both refuse a declared ``Content-Length`` over the limit before reading a byte of the body (rather than after
    waiting for a body a client that sent only its headers never sends), and a chunked one once it passes it."""
    return f"the body is larger than {limit} bytes"


IDLE_CONNECTION_S = 3630.0
"""Default seconds a client connection to the router or the model server may sit without a whole request head, idle
between requests (keep-alive) or sending its headers, before it is closed (aiohttp's ``keepalive_timeout``, which
is also the only limit on a head that never ends, a slow-loris client's). aiohttp's own default, kept: longer than
the idle timeouts of the proxies that pool connections to either (Envoy's hour, Istio's sidecars and Gateway API
implementations among them), so that neither is the one to close a connection a POST is about to be written on.
Where one faces untrusted clients directly, its ``idle_timeout_s`` shortens it."""


def late_body_refusal(timeout_s: float) -> str:
    """The message of the 408 the router and the model server answer a request whose body did not arrive whole
    within ``timeout_s``: a client that trickles its body (or stops sending it) does not hold a request open."""
    return f"the body did not arrive within {timeout_s:g} s"


def unrouted_refusal(method: str, path: str, allowed: Collection[str] | None) -> str:
    """The message of the 404 (``allowed`` None: no route at ``path``) or 405 (a route that takes only
    ``allowed``) the router and the model server answer in JSON, as they answer every other refusal."""
    if allowed is None:
        return f"there is no endpoint {path}"
    return f"{method} is not allowed on {path}; it takes {', '.join(sorted(allowed))}"


class MalformedRequestLog(logging.Filter):
    """On aiohttp's server logger: a request it cannot parse (a bad header, a line over its limit, a broken chunk)
    is logged as one WARNING line naming the parser's complaint, where aiohttp logs an ERROR with a traceback; a
    client sending garbage would otherwise fill the log with them. The client gets aiohttp's 400 either way.
    Every other record passes unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        message = getattr(error, "message", None)
        if getattr(error, "code", None) != 400 or not isinstance(message, str):
            return True  # not the parser's 400 (aiohttp.http_exceptions.HttpProcessingError): a real error
        complaint = message.strip().split("\n")[0].split(": b'")[0].rstrip(":")
        record.msg, record.args = "%s: %s", (record.getMessage(), complaint)  # never the request's bytes it quotes
        record.exc_info = None
        record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


@dataclass(frozen=True)
class ScaleForecast:
    """The forecast a predictive decision read, in the metric's unit (requests per second for ``rps``, requests in
    flight for ``concurrency``)."""

    mean: float
    lower: float
    upper: float
    horizon_s: float
    method: str


@dataclass(frozen=True)
class ScaleReport:
    """One scaling decision with its inputs: ``replicas`` is what the router's autoscaler asks for (already within
    ``replicas.min``/``max``); ``reason`` one CamelCase word (``Forecast``, ``ObservedLoad``, ``WithinTolerance``,
    ``LatencyAboveTarget``, ``LatencyBelowTarget``, ``AwaitingStartup``, ``Idle``, ``RequestsWaiting``,
    ``Stabilizing``, ``MinReplicas``, ``MaxReplicas``), ``message`` the same in a sentence with its figures."""

    time: str
    """When it was decided, RFC 3339 (UTC)."""
    mode: str
    """``predictive`` or ``reactive``."""
    replicas: int
    reason: str
    message: str
    observed_rps: float
    """The request rate over the metric window, whatever the metric."""
    ready: int
    starting: int
    forecast: ScaleForecast | None = None
    metric: str = "rps"
    """What the target is: ``rps``, ``concurrency`` or ``p99Latency`` (``spec.autoscaling.metric``); ``rps`` when a
    router from before the field answers."""
    observed: float | None = None
    """The metric's observed value: requests per second, mean requests in flight, or p99 latency in seconds; None
    when not measured (a p99 with no request finished in the window, or a router from before the field)."""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "time": self.time,
            "mode": self.mode,
            "replicas": self.replicas,
            "reason": self.reason,
            "message": self.message,
            "observedRate": round(self.observed_rps, 6),
            "ready": self.ready,
            "starting": self.starting,
            "metric": self.metric,
        }
        if self.observed is not None:
            body["observedValue"] = round(self.observed, 6)
        if self.forecast is not None:
            f = self.forecast
            body["forecast"] = {
                "mean": round(f.mean, 6),
                "lower": round(f.lower, 6),
                "upper": round(f.upper, 6),
                "horizonSeconds": f.horizon_s,
                "method": f.method,
            }
        return body

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> ScaleReport:
        """Read a router's answer; a ValueError (or KeyError, TypeError) when it is not one."""
        raw = body.get("forecast")
        forecast = None
        if raw is not None:
            forecast = ScaleForecast(
                mean=float(raw["mean"]),
                lower=float(raw["lower"]),
                upper=float(raw["upper"]),
                horizon_s=float(raw["horizonSeconds"]),
                method=str(raw["method"]),
            )
        replicas = int(body["replicas"])
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        observed = body.get("observedValue")
        return cls(
            time=str(body["time"]),
            mode=str(body["mode"]),
            replicas=replicas,
            reason=str(body["reason"]),
            message=str(body.get("message", "")),
            observed_rps=float(body["observedRate"]),
            ready=int(body.get("ready", 0)),
            starting=int(body.get("starting", 0)),
            forecast=forecast,
            metric=str(body.get("metric", "rps")),
            observed=None if observed is None else float(observed),
        )

    def last_scale(self, replicas: int, reason: str) -> dict[str, Any]:
        """The InferenceService's ``status.lastScale`` for this decision once the operator applied ``replicas``
        (the router's ask clamped to the quota) for ``reason`` (the router's, or the quota's when it cut)."""
        status: dict[str, Any] = {
            "time": self.time,
            "replicas": replicas,
            "requested": self.replicas,
            "reason": reason,
            "message": self.message,
            "mode": self.mode,
            "observedRate": round(self.observed_rps, 6),
            "metric": self.metric,
        }
        if self.observed is not None:
            status["observedValue"] = round(self.observed, 6)
        if self.forecast is not None:
            status["forecast"] = round(self.forecast.mean, 6)
            status["forecastLower"] = round(self.forecast.lower, 6)
            status["forecastUpper"] = round(self.forecast.upper, 6)
            status["forecastMethod"] = self.forecast.method
        return status
