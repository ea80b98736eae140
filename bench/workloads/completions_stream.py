"""Streamed against whole OpenAI completions on the workload server, side by side in one run.

The server as `python -m strata_workloads.serve` runs it, in its own process on loopback, with random weights
of a preset (latency does not depend on what the weights say); greedy, `max_tokens` new tokens per request,
the client in this process. In each round,
for each concurrency, a burst of `c` streamed requests, then a burst of `c` whole ones (the machine's load
hits both alike). It prints per concurrency the median time to the first text chunk of a stream, the median
time to a whole (non-streamed) response, their ratio, and the streamed requests' own end-to-end time against
the whole ones' (what sending a chunk per step costs). Then, with max_batch 1 and the server in-process (to
read its batch), how long after a client closes its stream the batch place is free again (in steps and
milliseconds).

    .venv/bin/python bench/workloads/completions_stream.py --preset small --max-tokens 64 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp
import orjson
import torch
from aiohttp.test_utils import TestClient, TestServer

from strata_workloads.model import Transformer
from strata_workloads.presets import get_preset
from strata_workloads.serve import Server
from strata_workloads.settings import ServeSettings

PROMPT = "def main():\n    "


def _body(preset: str, max_tokens: int, stream: bool) -> dict[str, Any]:
    return {"model": preset, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": stream}


async def _streamed(client: Any, body: dict[str, Any]) -> tuple[float, float, str]:
    """(seconds to the first text chunk, seconds to [DONE], the text)."""
    began = time.perf_counter()
    first, text = None, ""
    resp = await client.post("/v1/completions", json=body)
    async for line in resp.content:
        if not line.startswith(b"data: "):
            continue
        data = line.removeprefix(b"data: ").strip()
        if data == b"[DONE]":
            break
        piece = orjson.loads(data)["choices"][0]["text"]
        if piece and first is None:
            first = time.perf_counter() - began
        text += piece
    total = time.perf_counter() - began
    return (first if first is not None else total), total, text


async def _whole(client: Any, body: dict[str, Any]) -> tuple[float, str]:
    began = time.perf_counter()
    resp = await client.post("/v1/completions", json=body)
    text = (await resp.json())["choices"][0]["text"]
    return time.perf_counter() - began, str(text)


class _Client:
    """Posts to a server on loopback by path, as TestClient does."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def post(self, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        return await self.session.post(self.base + path, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until_ready(session: aiohttp.ClientSession, base: str, server: subprocess.Popen[bytes]) -> None:
    while server.poll() is None:
        try:
            if (await session.get(base + "/readyz")).status == 200:
                return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the server exited with {server.returncode}")


def start_server(preset: str, max_tokens: int, max_batch: int) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    flags = ["--model", preset, "--host", "127.0.0.1", "--port", str(port), "--max-batch", str(max_batch)]
    server = subprocess.Popen(
        [sys.executable, "-m", "strata_workloads.serve", *flags, "--max-new-tokens", str(max_tokens)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return server, port


async def latency(
    server: subprocess.Popen[bytes], port: int, preset: str, max_tokens: int, rounds: int, concurrencies: list[int]
) -> None:
    first: dict[int, list[float]] = {c: [] for c in concurrencies}
    streamed: dict[int, list[float]] = {c: [] for c in concurrencies}
    whole: dict[int, list[float]] = {c: [] for c in concurrencies}
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        await _until_ready(session, base, server)
        await _rounds(_Client(session, base), preset, max_tokens, rounds, concurrencies, first, streamed, whole)
    med = statistics.median
    print(f"\n{preset}, {max_tokens} tokens, {rounds} rounds, the server in its own process (medians, ms)")
    print("| concurrency | first chunk (stream) | whole response | first / whole | stream to [DONE] / whole |")
    print("| --- | --- | --- | --- | --- |")
    for c in concurrencies:
        f, s, w = med(first[c]) * 1e3, med(streamed[c]) * 1e3, med(whole[c]) * 1e3
        print(f"| {c} | {f:.1f} | {w:.1f} | {f / w:.3f} | {s / w:.2f} |")


async def _rounds(
    client: _Client,
    preset: str,
    max_tokens: int,
    rounds: int,
    concurrencies: list[int],
    first: dict[int, list[float]],
    streamed: dict[int, list[float]],
    whole: dict[int, list[float]],
) -> None:
    for _ in range(rounds):
        for c in concurrencies:
            got = await asyncio.gather(*(_streamed(client, _body(preset, max_tokens, True)) for _ in range(c)))
            done = await asyncio.gather(*(_whole(client, _body(preset, max_tokens, False)) for _ in range(c)))
            assert {t for _, _, t in got} == {t for _, t in done}, "a stream's text differs from the whole text"
            first[c] += [f for f, _, _ in got]
            streamed[c] += [s for _, s, _ in got]
            whole[c] += [w for w, _ in done]


async def freed_after_disconnect(preset: str, max_tokens: int, rounds: int) -> None:
    torch.manual_seed(0)
    model = Transformer(get_preset(preset)).eval()
    server = Server(model, ServeSettings(model=preset, max_batch=1, max_new_tokens=max_tokens))
    steps: list[int] = []
    advance = server.generator._advance

    def counted(*args: Any) -> Any:
        steps.append(1)
        return advance(*args)

    server.generator._advance = counted  # type: ignore[method-assign]
    waits, extra_steps = [], []
    async with TestClient(TestServer(server.app())) as client:
        await server.wait_ready()
        for _ in range(rounds):
            resp = await client.post("/v1/completions", json=_body(preset, max_tokens, True))
            await resp.content.readline()  # the first chunk
            closed, at = time.perf_counter(), len(steps)
            resp.close()
            while server.generator.running or server.in_flight:  # noqa: ASYNC110 (a measurement)
                await asyncio.sleep(0.0005)
            waits.append(time.perf_counter() - closed)
            extra_steps.append(len(steps) - at)
    print(
        f"\nmax_batch 1, a client closing its stream after the first chunk ({max_tokens} tokens asked, "
        f"{rounds} times): the place is free after {statistics.median(waits) * 1e3:.1f} ms (median), "
        f"{max(extra_steps)} more steps at most"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    server, port = start_server(args.preset, args.max_tokens, max(args.concurrency))
    try:
        asyncio.run(latency(server, port, args.preset, args.max_tokens, args.rounds, args.concurrency))
    finally:
        server.terminate()
        server.wait(timeout=60)
    asyncio.run(freed_after_disconnect(args.preset, args.max_tokens, args.rounds))


if __name__ == "__main__":
    main()
