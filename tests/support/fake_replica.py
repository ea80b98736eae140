"""A stand-in for the workload server, for the router's tests and benchmark: ``python tests/support/fake_replica.py``.

It speaks the server's HTTP contract (``strata_workloads.serve``): ``POST /v1/generate``, ``/v1/predict`` and
``/v1/completions`` (streamed as server-sent events with ``"stream": true``), ``GET /v1/models``, ``/healthz``,
``/readyz``, ``/metrics`` with ``strata_serve_in_flight``; 400 for a body that is not a JSON object, 429 beyond its
queue, 503 while warming up or draining (SIGTERM: ``/readyz`` turns 503 "draining", in-flight requests finish, then
it exits; ``--linger-s`` keeps it up draining that long, as a pod's preStop hook would). Its service time is
configurable instead of a model's: ``slots`` requests run at once, each for ``delay`` seconds, the rest wait in a
queue of ``max_queue``. ``--fail-status`` answers every request with that status; ``--hang`` never answers;
``--garbage`` answers with bytes that are not HTTP and closes the connection; ``--answer-bytes`` answers with a
chunked body of that many bytes (no Content-Length); ``--node-pressure-file`` reports the share in that file (read at
each scrape, so a test can change it) as its node's CPU pressure, ``strata_serve_node_pressure``.
Every answer names the replica (``"replica": name``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path

from aiohttp import web


class FakeReplica:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.slots = asyncio.Semaphore(args.slots)
        self.in_flight = 0
        self.started = time.monotonic()
        self.draining = False

    @property
    def ready(self) -> bool:
        return time.monotonic() - self.started >= self.args.ready_after and not self.draining

    async def readyz(self, request: web.Request) -> web.Response:
        if self.ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "draining" if self.draining else "warming up"}, status=503)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        text = f"# TYPE strata_serve_in_flight gauge\nstrata_serve_in_flight {float(self.in_flight)}\n"
        if self.args.node_pressure_file:
            share = float(await asyncio.to_thread(Path(self.args.node_pressure_file).read_text))
            text += (
                "# TYPE strata_serve_node_pressure gauge\n"
                f'strata_serve_node_pressure{{resource="cpu"}} {share}\n'
                'strata_serve_node_pressure{resource="memory"} 0.0\n'
            )
        return web.Response(text=text, content_type="text/plain")

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.args.name, "object": "model"}]})

    async def serve(self, request: web.Request) -> web.StreamResponse:
        if not self.ready:
            reason = "draining" if self.draining else "warming up"
            return web.json_response({"error": reason}, status=503, headers={"Retry-After": "1"})
        try:
            body = json.loads(await request.read())
        except ValueError as error:
            return web.json_response({"error": f"body is not valid JSON: {error}"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        if self.args.garbage and request.transport is not None:
            request.transport.write(b"this is not HTTP\r\n\r\n")
            request.transport.close()
            return web.Response()
        if self.args.fail_status:
            return web.json_response({"error": "injected failure"}, status=self.args.fail_status)
        if self.in_flight >= self.args.slots + self.args.max_queue:
            return web.json_response({"error": "overloaded"}, status=429, headers={"Retry-After": "1"})
        self.in_flight += 1
        try:
            if self.args.hang:
                await asyncio.sleep(3600)
            async with self.slots:
                if request.path == "/v1/completions" and body.get("stream"):
                    return await self.stream(request)
                await asyncio.sleep(self.args.delay)
                if self.args.answer_bytes:
                    return await self.chunked(request, self.args.answer_bytes)
                return web.json_response({"text": "ok", "tokens": 1, "replica": self.args.name})
        finally:
            self.in_flight -= 1

    async def chunked(self, request: web.Request, size: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        head = b'{"replica": "' + self.args.name.encode() + b'", "text": "'
        await response.write(head)
        left = max(0, size - len(head) - 2)
        while left > 0:
            part = min(left, 64 * 1024)
            await response.write(b"x" * part)
            left -= part
        await response.write(b'"}')
        await response.write_eof()
        return response

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for index in range(self.args.chunks):
            await asyncio.sleep(self.args.delay / self.args.chunks)
            event = {"choices": [{"index": 0, "text": f"t{index}"}], "replica": self.args.name}
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        for path in ("/v1/generate", "/v1/predict", "/v1/completions"):
            app.router.add_post(path, self.serve)
        app.router.add_get("/v1/models", self.models)
        return app


async def main(args: argparse.Namespace) -> None:
    replica = FakeReplica(args)
    runner = web.AppRunner(replica.app(), handle_signals=False, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    replica.draining = True
    began = time.monotonic()
    while (replica.in_flight and time.monotonic() < began + 10) or time.monotonic() < began + args.linger_s:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await runner.cleanup()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="replica")
    parser.add_argument("--delay", type=float, default=0.01, help="seconds of service per request")
    parser.add_argument("--slots", type=int, default=4, help="requests served at once")
    parser.add_argument("--max-queue", type=int, default=64, help="waiting requests beyond which 429")
    parser.add_argument("--chunks", type=int, default=5, help="events of a streamed completion")
    parser.add_argument("--ready-after", type=float, default=0.0, help="seconds of warm-up before /readyz is 200")
    parser.add_argument("--fail-status", type=int, default=0, help="answer every request with this status")
    parser.add_argument("--hang", action="store_true", help="never answer a request")
    parser.add_argument("--garbage", action="store_true", help="answer every request with bytes that are not HTTP")
    parser.add_argument("--answer-bytes", type=int, default=0, help="answer with a chunked body this long")
    parser.add_argument("--linger-s", type=float, default=0.0, help="seconds to stay up draining after SIGTERM")
    parser.add_argument(
        "--node-pressure-file", default="", help="a file holding the node's CPU pressure share, read at each scrape"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
