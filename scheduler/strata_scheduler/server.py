"""The thin HTTP layer: routes to the extender verbs, probes, /metrics and /forecast.

Routes:

- ``POST /filter``, ``POST /prioritize``: the extender verbs (see :mod:`strata_scheduler.extender` for every
  answer they give);
- ``POST /quote``: for a pod template, the GPU type whose unit of work is cheapest now (see
  :meth:`~strata_scheduler.extender.Extender.quote`); for the operator when a job accepts several types;
- ``GET /healthz``: 200 while the process serves; ``GET /readyz``: 200 once the watch cache has synced, else 503;
- ``GET /metrics``: Prometheus text format;
- ``GET /forecast``: the latest forecasts as JSON (``{"forecasts": [...], "error": ...}``).

The verbs run inline on the event loop: they are pure CPU work of a millisecond or two under one lock, and a
thread hop would cost more than it saves.
"""

from __future__ import annotations

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from strata_scheduler.extender import Extender

EXTENDER_KEY = web.AppKey("extender", Extender)

JSON = "application/json"


def build_app(extender: Extender, max_body_bytes: int = 16 * 1024 * 1024) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes)
    app[EXTENDER_KEY] = extender
    app.router.add_post("/filter", _filter)
    app.router.add_post("/prioritize", _prioritize)
    app.router.add_post("/quote", _quote)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/forecast", _forecast)
    return app


async def _filter(request: web.Request) -> web.Response:
    return _answer(*request.app[EXTENDER_KEY].filter(await request.read()))


async def _prioritize(request: web.Request) -> web.Response:
    return _answer(*request.app[EXTENDER_KEY].prioritize(await request.read()))


async def _quote(request: web.Request) -> web.Response:
    return _answer(*request.app[EXTENDER_KEY].quote(await request.read()))


def _answer(status: int, body: bytes) -> web.Response:
    content_type = JSON if status == 200 else "text/plain"
    return web.Response(status=status, body=body, content_type=content_type)


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _readyz(request: web.Request) -> web.Response:
    state = request.app[EXTENDER_KEY].state
    if state.ready:
        return web.Response(text="ok")
    missing = sorted({"nodes", "pods"} - state.synced)
    return web.Response(status=503, text=f"watch cache not synced yet: {', '.join(missing)}")


async def _metrics(request: web.Request) -> web.Response:
    registry = request.app[EXTENDER_KEY].metrics.registry
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def _forecast(request: web.Request) -> web.Response:
    board = request.app[EXTENDER_KEY].board
    forecasts = sorted(board.latest().values(), key=lambda f: (f.gpu_type, f.priority))
    body = {"forecasts": [f.to_json() for f in forecasts], "error": board.last_error}
    return web.Response(body=orjson.dumps(body), content_type=JSON)
