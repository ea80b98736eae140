"""Inference server: `python -m strata_workloads.serve`.

POST /v1/generate {"prompt": str, "max_new_tokens": int}  -> {"text": str, "tokens": int}
POST /v1/predict  {"text": str}                           -> {"nll": float, "tokens": int, "perplexity": float}
GET /healthz (alive), /readyz (warmed up and not draining), /metrics (Prometheus).
Malformed requests get 400 with a message; a full queue 429; not ready or draining 503.
On SIGTERM: /readyz turns 503, new requests get 503, in-flight requests finish (up to drain_seconds), exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import orjson
import torch
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from strata_workloads.batching import DynamicBatcher, Overloaded
from strata_workloads.inference import Quantization, decode, encode, generate, load_model, quantize, score
from strata_workloads.model import Transformer
from strata_workloads.settings import parse_value
from strata_workloads.telemetry import setup_logging

log = logging.getLogger("strata_workloads.serve")


@dataclass(frozen=True)
class ServeSettings:
    """Field -> env var STRATA_SERVE_<FIELD upper-cased>."""

    model: str = "debug"  # preset the checkpoint was trained with
    checkpoint: str = ""  # step folder or checkpoint root (newest complete); empty: random weights
    quantization: str = "none"  # none | int8-weight | int8-dynamic
    host: str = "0.0.0.0"
    port: int = 8000
    max_batch: int = 8  # requests per model call
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for company
    max_queue: int = 64  # waiting requests beyond which new ones get 429
    max_new_tokens: int = 64  # upper bound a request may ask for
    max_prompt_bytes: int = 4096
    drain_seconds: float = 25.0  # SIGTERM: how long in-flight requests may take (below the pod's grace period)
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default


def load_serve_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ServeSettings:
    import argparse

    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="python -m strata_workloads.serve")
    values: dict[str, object] = {}
    for f in fields(ServeSettings):
        key = f"STRATA_SERVE_{f.name.upper()}"
        if key in env:
            values[f.name] = parse_value(f.type, env[key])
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None, help=key)
    kinds = {f.name: f.type for f in fields(ServeSettings)}
    for name, raw in vars(parser.parse_args(argv)).items():
        if raw is not None:
            values[name] = parse_value(kinds[name], raw)
    return ServeSettings(**values)  # type: ignore[arg-type]


class BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class GenerateRequest:
    prompt: list[int]
    max_new_tokens: int


class Server:
    def __init__(self, model: Transformer, settings: ServeSettings) -> None:
        self.model = model
        self.settings = settings
        self.ready = False
        self.draining = False
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "strata_serve_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "strata_serve_latency_seconds", "Request latency", ["endpoint"], registry=self.registry
        )
        self.batch_size = Histogram(
            "strata_serve_batch_size",
            "Requests per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.queue_depth = Gauge("strata_serve_in_flight", "Requests queued or running", registry=self.registry)
        self.generator: DynamicBatcher[GenerateRequest, list[int]] = DynamicBatcher(
            self._generate_batch, settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue, self._observe
        )
        self.scorer: DynamicBatcher[list[int], tuple[float, int]] = DynamicBatcher(
            lambda texts: score(self.model, texts),
            settings.max_batch,
            settings.max_wait_ms / 1000,
            settings.max_queue,
            self._observe,
        )

    def _observe(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)

    def _generate_batch(self, requests: list[GenerateRequest]) -> list[list[int]]:
        return generate(self.model, [r.prompt for r in requests], [r.max_new_tokens for r in requests])

    def warm_up(self) -> None:
        """One call per path before reporting ready, so the first user request does not pay for lazy init."""
        generate(self.model, [encode("def ")], [2])
        score(self.model, [encode("import os\n")])

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.max_prompt_bytes * 4 + 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/v1/generate", self.handle_generate)
        app.router.add_post("/v1/predict", self.handle_predict)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        self.generator.start()
        self.scorer.start()
        await asyncio.to_thread(self.warm_up)
        self.ready = True
        log.info("ready", extra={"quantization": self.settings.quantization})

    async def _stop(self, app: web.Application) -> None:
        await self.generator.stop()
        await self.scorer.stop()

    @property
    def in_flight(self) -> int:
        return self.generator.in_flight + self.scorer.in_flight

    async def drain(self) -> None:
        self.draining = True
        deadline = time.monotonic() + self.settings.drain_seconds
        # Two batchers share the count; polling every 20 ms during a one-off drain is simpler than an event.
        while self.in_flight and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        log.info("drained", extra={"left_in_flight": self.in_flight})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.ready and not self.draining:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "draining" if self.draining else "warming up"}, status=503)

    async def metrics(self, request: web.Request) -> web.Response:
        self.queue_depth.set(self.in_flight)
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as err:
            raise BadRequest(f"body is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        return body

    def _text(self, body: dict[str, Any], key: str) -> list[int]:
        value = body.get(key)
        if not isinstance(value, str) or not value:
            raise BadRequest(f"'{key}' must be a non-empty string")
        tokens = encode(value)
        if len(tokens) > self.settings.max_prompt_bytes:
            raise BadRequest(f"'{key}' is {len(tokens)} bytes; the limit is {self.settings.max_prompt_bytes}")
        return tokens

    async def _serve(self, endpoint: str, request: web.Request) -> web.Response:
        started = time.monotonic()
        status, payload = 200, {}
        if not self.ready or self.draining:
            status, payload = 503, {"error": "draining" if self.draining else "warming up"}
        else:
            try:
                body = await self._body(request)
                if endpoint == "generate":
                    payload = await self._generate(body)
                else:
                    payload = await self._predict(body)
            except BadRequest as err:
                status, payload = 400, {"error": str(err)}
            except Overloaded as err:
                status, payload = 429, {"error": f"overloaded: {err}; retry later"}
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(time.monotonic() - started)
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        return web.json_response(payload, status=status, headers=headers, dumps=lambda o: orjson.dumps(o).decode())

    async def _generate(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = self._text(body, "prompt")
        n = body.get("max_new_tokens", 16)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= self.settings.max_new_tokens:
            raise BadRequest(f"'max_new_tokens' must be an integer in [1, {self.settings.max_new_tokens}]")
        tokens = await self.generator.submit(GenerateRequest(prompt, n))
        return {"text": decode(tokens), "tokens": len(tokens)}

    async def _predict(self, body: dict[str, Any]) -> dict[str, Any]:
        text = self._text(body, "text")
        if len(text) < 2:
            raise BadRequest("'text' needs at least two bytes to score")
        nll, n = await self.scorer.submit(text)
        return {"nll": nll, "tokens": n, "perplexity": math.exp(nll / n)}

    async def handle_generate(self, request: web.Request) -> web.Response:
        return await self._serve("generate", request)

    async def handle_predict(self, request: web.Request) -> web.Response:
        return await self._serve("predict", request)


def build_server(settings: ServeSettings) -> Server:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = load_model(settings.model, Path(settings.checkpoint) if settings.checkpoint else None)
    return Server(quantize(model, Quantization(settings.quantization)), settings)


async def serve(settings: ServeSettings) -> None:
    server = build_server(settings)
    runner = web.AppRunner(server.app(), handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    log.info("listening", extra={"host": settings.host, "port": settings.port})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.drain()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_serve_settings(argv)
    setup_logging(os.environ.get("STRATA_LOG_FORMAT", "json"), 0)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
