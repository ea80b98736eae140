"""Inference server: `python -m strata_workloads.serve`.

POST /v1/completions (OpenAI's completions API, streamed as server-sent events with "stream": true; completions.py)
GET /v1/models       (the one served model, by ServeSettings.served_model)
POST /v1/generate {"prompt": str, "max_new_tokens": int}  -> {"text": str, "tokens": int}
POST /v1/predict  {"text": str}                           -> {"nll": float, "tokens": int, "perplexity": float}
                  (over every token but the first; past the model's window in sliding windows, predict_stride)
GET /healthz (alive, from the start), /readyz (warmed up, compiled where asked, and not draining), /metrics (with
the queue depth and the node's pressure, which the routers read: strata_workloads.pressure).
Malformed requests get 400 with a message (in OpenAI's error shape on the OpenAI routes, naming the field), a body
over the limit 413, a compressed one 415; a full queue 429; not ready or draining 503.
On SIGTERM: /readyz turns 503, new requests get 503, in-flight requests finish (up to drain_seconds), exit 0.
Every request gets an access log line but a poll answered 2xx (probes, routers, Prometheus: QuietPollsAccessLog).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import orjson
import torch
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_log import AccessLogger
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from strata_api.serving import (
    COMPLETIONS_PATH,
    GENERATE_PATH,
    MODELS_PATH,
    NODE_PRESSURE_METRIC,
    PREDICT_PATH,
    QUEUE_DEPTH_METRIC,
    MalformedRequestLog,
    coded_body_refusal,
    large_body_refusal,
    late_body_refusal,
    refusal_body,
    unrouted_refusal,
)
from strata_api.workload import ExitCode
from strata_workloads.batching import DynamicBatcher, Overloaded
from strata_workloads.checkpoint import CorruptCheckpoint, NoUsableCheckpoint
from strata_workloads.completions import (
    ApiError,
    CompletionRequest,
    CompletionText,
    completion_body,
    models_body,
    new_completion_id,
    now,
    parse_completion,
    texts,
    usage,
    usage_chunk,
)
from strata_workloads.continuous import Batching, ContinuousBatcher, GenerateRequest, TokenStream
from strata_workloads.inference import (
    Precision,
    Quantization,
    load_model,
    prepare,
    score,
    scoring_stride,
    warm_up,
)
from strata_workloads.model import Transformer
from strata_workloads.pressure import read_node_pressure
from strata_workloads.settings import ServeSettings, load_serve_settings
from strata_workloads.telemetry import setup_logging
from strata_workloads.tokenizer import ByteTokenizer, Tokenizer, check_fits, load_tokenizer, resolve_tokenizer_path

log = logging.getLogger("strata_workloads.serve")


class BadRequest(ValueError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


HEALTHZ, READYZ, METRICS = "/healthz", "/readyz", "/metrics"
POLLED_PATHS = frozenset({HEALTHZ, READYZ, METRICS})
"""What machines ask every few seconds: the kubelet's probes (the replicas' liveness and readiness, as the operator
writes them), and ``/readyz`` and ``/metrics`` from each router twice a second (``probe_interval_s``: readiness, the
queue depth and the node's pressure) and ``/metrics`` from Prometheus."""


class Server:
    def __init__(self, model: Transformer, settings: ServeSettings, tokenizer: Tokenizer | None = None) -> None:
        """`tokenizer`: the text <-> ids of every endpoint and the EOS that ends a generation (default bytes)."""
        self.model = model
        self.settings = settings
        self.tokenizer = tokenizer or ByteTokenizer()
        check_fits(self.tokenizer, model.config.vocab_size)
        self.ready = False
        self.draining = False
        self.started = now()
        self._warming: asyncio.Task[None] | None = None
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "strata_serve_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "strata_serve_latency_seconds", "Request latency", ["endpoint"], registry=self.registry
        )
        self.batch_wait = Histogram(
            "strata_serve_batch_wait_seconds",
            "How long the oldest request a model call admitted had waited for it",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "strata_serve_batch_size",
            "Rows per model call: a generation step of the running batch, or a scoring batch",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.queue_depth = Gauge(QUEUE_DEPTH_METRIC, "Requests queued or running", registry=self.registry)
        self.node_pressure = Gauge(
            NODE_PRESSURE_METRIC,
            "Share of the last 10 s in which some task on the node waited for the resource (Linux PSI some avg10)",
            ["resource"],
            registry=self.registry,
        )
        if settings.batching not in set(Batching):
            raise ValueError(f"batching {settings.batching!r} is none of {', '.join(Batching)}")
        static = settings.batching == Batching.STATIC
        self.generator = ContinuousBatcher(
            model,
            settings.max_batch,
            settings.max_queue,
            self._observe,
            self.tokenizer.eos_id,
            static_wait_s=settings.max_wait_ms / 1000 if static else None,
        )
        # Checked here, before anything starts: a stride the model's window cannot take is a bad configuration.
        self.stride = scoring_stride(settings.predict_stride, model.config.max_seq_len)
        self.scorer: DynamicBatcher[list[int], tuple[float, int]] = DynamicBatcher(
            lambda texts: score(self.model, texts, self.stride),
            settings.max_batch,
            settings.max_wait_ms / 1000,
            settings.max_queue,
            self._observe,
        )

    def _observe(self, size: int, waited: float | None, seconds: float) -> None:
        self.batch_size.observe(size)
        if waited is not None:
            self.batch_wait.observe(waited)

    def warm_up(self) -> None:
        """Every path and shape class before reporting ready, so the first user request pays neither for lazy
        init nor for compilation."""
        warm_up(self.model)

    def warm_up_request(self) -> GenerateRequest:
        """A request as long as the model's window takes: the longest prompt the server accepts that leaves room
        for ``max_new_tokens`` in the KV cache, so that a batch of them takes the cache of a full batch at full
        length."""
        window = self.model.config.max_seq_len
        new_tokens = max(1, min(self.settings.max_new_tokens, window - 1))
        length = max(1, min(self.settings.max_prompt_bytes, window - new_tokens))
        text = self.tokenizer.encode("def main():\n    return 0\n") or [0]
        return GenerateRequest((text * (length // len(text) + 1))[:length], new_tokens)

    async def serve_warm_up_requests(self) -> None:
        """``warmup_requests`` of :meth:`warm_up_request` through the batcher, ``max_batch`` at a time (what a
        replica's memory must hold under full load, taken before it reports ready rather than by a user's
        request); an error here fails the warm-up, so the replica never reports ready."""
        request, left = self.warm_up_request(), self.settings.warmup_requests
        while left > 0:
            batch = min(left, self.settings.max_batch)
            await asyncio.gather(*(self.generator.submit(request) for _ in range(batch)))
            left -= batch

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_body_bytes, middlewares=[unrouted_in_json])
        app.router.add_get(HEALTHZ, self.healthz)
        app.router.add_get(READYZ, self.readyz)
        app.router.add_get(METRICS, self.metrics)
        app.router.add_post(GENERATE_PATH, self.handle_generate)
        app.router.add_post(PREDICT_PATH, self.handle_predict)
        app.router.add_post(COMPLETIONS_PATH, self.handle_completions)
        app.router.add_get(MODELS_PATH, self.handle_models)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        self.generator.start()
        self.scorer.start()
        # In the background: compiling can take minutes, and meanwhile /healthz must answer (a liveness probe
        # that cannot connect would restart the pod) while /readyz says 503.
        self._warming = asyncio.get_running_loop().create_task(self._warm())

    async def _warm(self) -> None:
        began = time.monotonic()
        await asyncio.to_thread(self.warm_up)
        await self.serve_warm_up_requests()
        self.ready = True
        log.info(
            "ready",
            extra={
                "quantization": self.settings.quantization,
                "precision": self.settings.precision,
                "compile": self.settings.compile,
                "batching": self.settings.batching,
                "warmup_requests": self.settings.warmup_requests,
                "warm_up_s": round(time.monotonic() - began, 1),
            },
        )

    async def wait_ready(self) -> None:
        """Until warm-up has finished; raises what warm-up raised."""
        if self._warming is None:
            raise RuntimeError("the server has not started")
        await self._warming

    async def _stop(self, app: web.Application) -> None:
        if self._warming is not None and not self._warming.done():
            self._warming.cancel()
            await asyncio.gather(self._warming, return_exceptions=True)
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
        self.node_pressure.clear()  # a resource no longer readable is not reported as it last was
        if self.settings.node_pressure_dir:  # read in the loop: the kernel writes procfs files in memory, no I/O
            for resource, share in read_node_pressure(Path(self.settings.node_pressure_dir)).items():
                self.node_pressure.labels(resource).set(share)
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @property
    def max_body_bytes(self) -> int:
        """The largest request body read (a larger one gets 413): room for the longest prompt and the other fields."""
        return self.settings.max_prompt_bytes * 4 + 1024

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if refusal := coded_body_refusal(request.headers.get("Content-Encoding")):
            raise BadRequest(refusal, 415)
        if (request.content_length or 0) > self.max_body_bytes:
            raise BadRequest(large_body_refusal(self.max_body_bytes), 413)
        try:
            body = orjson.loads(await asyncio.wait_for(request.read(), self.settings.body_timeout_s))
        except TimeoutError:
            raise BadRequest(late_body_refusal(self.settings.body_timeout_s), 408) from None
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(large_body_refusal(self.max_body_bytes), 413) from None
        except ConnectionResetError:  # nobody reads this answer; returning one spares the log a traceback
            raise BadRequest("the client left before the body was complete") from None
        except orjson.JSONDecodeError as err:
            raise BadRequest(f"body is not valid JSON: {err}") from None
        if not isinstance(body, dict):
            raise BadRequest("body must be a JSON object")
        return body

    def _text(self, body: dict[str, Any], key: str) -> list[int]:
        value = body.get(key)
        if not isinstance(value, str) or not value:
            raise BadRequest(f"'{key}' must be a non-empty string")
        tokens = self.tokenizer.encode(value)
        if len(tokens) > self.settings.max_prompt_bytes:
            raise BadRequest(f"'{key}' is {len(tokens)} bytes; the limit is {self.settings.max_prompt_bytes}")
        return tokens

    @property
    def unavailable(self) -> str | None:
        """Why requests are refused with 503 now, or None."""
        if self.draining:
            return "draining"
        return None if self.ready else "warming up"

    async def _serve(self, endpoint: str, request: web.Request) -> web.Response:
        started = time.monotonic()
        status, payload, refused = 200, {}, self.unavailable
        if refused:
            status = 503
        else:
            try:
                body = await self._body(request)
                if endpoint == "generate":
                    payload = await self._generate(body)
                else:
                    payload = await self._predict(body)
            except BadRequest as err:
                status, refused = err.status, str(err)
            except Overloaded as err:
                status, refused = 429, f"overloaded: {err}; retry later"
        if refused:
            payload = refusal_body(request.path, status, refused)
        self._count(endpoint, status, started)
        return _json(payload, status)

    def _count(self, endpoint: str, status: int, started: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(time.monotonic() - started)

    async def _generate(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = self._text(body, "prompt")
        n = body.get("max_new_tokens", 16)
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= self.settings.max_new_tokens:
            raise BadRequest(f"'max_new_tokens' must be an integer in [1, {self.settings.max_new_tokens}]")
        tokens = await self.generator.submit(GenerateRequest(prompt, n))
        return {"text": self.tokenizer.decode(tokens), "tokens": len(tokens)}

    async def _predict(self, body: dict[str, Any]) -> dict[str, Any]:
        text = self._text(body, "text")
        if len(text) < 2:
            raise BadRequest("'text' needs at least two bytes to score")
        nll, n = await self.scorer.submit(text)
        return {"nll": nll, "tokens": n, "perplexity": math.exp(nll / n)}

    async def handle_completions(self, request: web.Request) -> web.StreamResponse:
        """OpenAI's completions; a stream's latency counts until its last chunk."""
        started = time.monotonic()
        response: web.StreamResponse
        try:
            completion, stream = await self._open_completion(request)
        except ApiError as err:
            response = _json(err.body(), err.status)
        else:
            try:
                if completion.stream:
                    response = await self._stream_completion(request, completion, stream)
                else:
                    response = await self._whole_completion(completion, stream)
            finally:
                stream.close()  # frees the row at once when the text stopped or the client left before the end
        self._count("completions", response.status, started)
        return response

    async def _open_completion(self, request: web.Request) -> tuple[CompletionRequest, TokenStream]:
        if self.unavailable:
            raise ApiError(503, self.unavailable)
        try:
            body = await self._body(request)
        except BadRequest as err:
            raise ApiError(err.status, str(err)) from None
        completion = parse_completion(body, self.model, self.settings, self.tokenizer)
        try:
            stream = self.generator.open(GenerateRequest(completion.prompt, completion.max_tokens, completion.sampling))
        except Overloaded as err:
            raise ApiError(429, f"overloaded: {err}; retry later", code="rate_limit_exceeded") from None
        return completion, stream

    async def _whole_completion(self, completion: CompletionRequest, stream: TokenStream) -> web.Response:
        text = CompletionText(completion.stop, self.tokenizer)
        async with aclosing(texts(stream, text)) as pieces:
            async for _ in pieces:
                pass
        body = completion_body(new_completion_id(), now(), self.settings.served_model, text.text, text.finish_reason)
        return _json(body | {"usage": usage(completion, text)}, 200)

    async def _stream_completion(
        self, request: web.Request, completion: CompletionRequest, stream: TokenStream
    ) -> web.StreamResponse:
        """Server-sent events: a chunk per step that made text, a last chunk with the finish reason (then the
        usage, when asked), then `[DONE]`. A client that left is noticed at its row's next step (its
        connection closed, or a write failing), and the caller's close frees the row."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        text = CompletionText(completion.stop, self.tokenizer)
        ids = (new_completion_id(), now(), self.settings.served_model)
        extra: dict[str, Any] = {"usage": None} if completion.include_usage else {}
        try:
            async with aclosing(texts(stream, text)) as pieces:
                async for piece in pieces:
                    if request.transport is None or request.transport.is_closing():
                        return response
                    if piece:
                        await response.write(_event(completion_body(*ids, piece, None) | extra))
            await response.write(_event(completion_body(*ids, "", text.finish_reason) | extra))
            if completion.include_usage:
                await response.write(_event(usage_chunk(*ids, usage(completion, text))))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client left during a write
        return response

    async def handle_models(self, request: web.Request) -> web.Response:
        return _json(models_body(self.settings.served_model, self.started), 200)

    async def handle_generate(self, request: web.Request) -> web.Response:
        return await self._serve("generate", request)

    async def handle_predict(self, request: web.Request) -> web.Response:
        return await self._serve("predict", request)


@web.middleware
async def unrouted_in_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A path without a route gets its 404 and a method a route does not take its 405 (with ``Allow``) in the
    server's JSON error shape, not aiohttp's plain text."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as error:
        allowed = error.allowed_methods if isinstance(error, web.HTTPMethodNotAllowed) else None
        message = unrouted_refusal(request.method, request.path, allowed)
        response = _json(refusal_body(request.path, error.status, message), error.status)
        if allowed is not None:
            response.headers["Allow"] = ",".join(sorted(allowed))
        return response


def _json(payload: dict[str, Any], status: int) -> web.Response:
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return web.json_response(payload, status=status, headers=headers, dumps=lambda o: orjson.dumps(o).decode())


def _event(body: dict[str, Any]) -> bytes:
    """One server-sent event."""
    return b"data: " + orjson.dumps(body) + b"\n\n"


def build_server(settings: ServeSettings) -> Server:
    if settings.threads:
        torch.set_num_threads(settings.threads)
    checkpoint = Path(settings.checkpoint) if settings.checkpoint else None
    model = load_model(settings.model, checkpoint, settings.model_dir, settings.step)
    tokenizer = load_tokenizer(resolve_tokenizer_path(settings.tokenizer, settings.model_dir))
    return Server(prepare_model(model, settings), settings, tokenizer)


def prepare_model(model: Transformer, settings: ServeSettings) -> Transformer:
    return prepare(model, Precision(settings.precision), Quantization(settings.quantization), settings.compile)


class QuietPollsAccessLog(AccessLogger):
    """aiohttp's access log without the lines of polls answered 2xx (:data:`POLLED_PATHS`): each router asks
    /readyz and /metrics twice a second, the kubelet /readyz every 2 s and /healthz every 10 s, which would
    otherwise be nearly all of a replica's log (over 14,000 lines an hour with one router) and push the lines that
    matter (``weights loaded``, ``ready``, requests, refusals) out of ``kubectl logs --tail``. A failing probe (503
    while warming up or draining) is logged as any request."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.method == "GET" and request.path in POLLED_PATHS and 200 <= response.status < 300:
            return
        super().log(request, response, time)


def app_runner(server: Server) -> web.AppRunner:
    """The server's app as :func:`serve` runs it: signals are the caller's, bodies are not decoded
    (``strata_api.serving.coded_body_refusal``), polls answered 2xx leave no access line, and a connection without a
    whole request head closes after ``idle_timeout_s``."""
    return web.AppRunner(
        server.app(),
        handle_signals=False,
        auto_decompress=False,
        access_log_class=QuietPollsAccessLog,
        keepalive_timeout=server.settings.idle_timeout_s,
    )


async def serve(server: Server) -> None:
    settings = server.settings
    logging.getLogger("aiohttp.server").addFilter(MalformedRequestLog())
    runner = app_runner(server)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    log.info("listening", extra={"host": settings.host, "port": settings.port})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopping = loop.create_task(stop.wait())
    warming = loop.create_task(server.wait_ready())
    await asyncio.wait({stopping, warming}, return_when=asyncio.FIRST_COMPLETED)
    if warming.done() and warming.exception() is not None:
        # A server that cannot warm up would never be ready; exiting lets the pod's restart policy show it.
        await runner.cleanup()
        raise warming.exception()  # type: ignore[misc]
    await stopping
    await server.drain()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_serve_settings(argv)
    setup_logging(os.environ.get("STRATA_LOG_FORMAT", "json"), 0)
    try:
        server = build_server(settings)
    except (ValueError, KeyError) as err:  # an unknown preset, quantization, precision or batching; a bad stride
        log.error("invalid configuration", extra={"error": str(err).strip("'\"")})
        return ExitCode.INVALID_CONFIGURATION
    except (CorruptCheckpoint, NoUsableCheckpoint, FileNotFoundError) as err:
        # a restart would read the same bytes; a checkpoint setting with no checkpoint under it (a wrong
        # spec.model.path, or a TrainingJob that has saved none yet) is said the same way: the operator reports it
        log.error("no usable checkpoint", extra={"error": str(err)})
        return ExitCode.NO_USABLE_CHECKPOINT
    asyncio.run(serve(server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
