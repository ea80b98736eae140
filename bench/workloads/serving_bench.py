"""INT8 quality and CPU speed-up, and dynamic batching vs batch size 1.

Trains the `small` preset briefly on the stdlib corpus (or loads --checkpoint), then:
1. perplexity on held-out stdlib documents for fp32, int8-weight, int8-dynamic, and forward latency;
2. a closed-loop load test on the HTTP server: throughput and p99 latency for max_batch=1 and 8.

    python bench/workloads/serving_bench.py --train-steps 150
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import math
import statistics
import time
from pathlib import Path

import torch
from aiohttp.test_utils import TestClient, TestServer

from strata_workloads.data import ShardedLoader, build_shards, load_documents, stdlib_root
from strata_workloads.engine import build_engine
from strata_workloads.inference import Quantization, load_model, quantize, score
from strata_workloads.layout import ParallelDims
from strata_workloads.model import Transformer
from strata_workloads.optim import OptimConfig, build_optimizer, train_step
from strata_workloads.parallelize import ParallelizeOptions
from strata_workloads.presets import get_preset
from strata_workloads.serve import Server, ServeSettings


def train_small(steps: int, seq: int) -> tuple[Transformer, list[list[int]]]:
    docs = load_documents(stdlib_root(), max_docs=600)
    held_out = [list(d.data[:seq]) for d in docs[-40:] if len(d.data) > seq]
    shards = build_shards(docs[:-40], 16)
    loader = ShardedLoader(shards, 0, 1, micro_batch=8, seq_len=seq)
    torch.manual_seed(0)
    engine = build_engine(
        Transformer(get_preset("small")), ParallelDims(1), None, ParallelizeOptions(), torch.device("cpu")
    )
    optimizer, scheduler = build_optimizer(engine, OptimConfig(lr=3e-3, warmup_steps=10, total_steps=steps))
    for step in range(steps):
        result = train_step(engine, [loader.next_batch()], optimizer, scheduler, 1.0)
        if step % 50 == 0 or step == steps - 1:
            print(f"train step {step + 1}: loss {result.loss:.3f}", flush=True)
    model = engine.parts[0]
    assert isinstance(model, Transformer)
    return model.eval(), held_out


def perplexity(model: Transformer, texts: list[list[int]]) -> float:
    scored = score(model, texts)
    return math.exp(sum(s for s, _ in scored) / sum(n for _, n in scored))


def latency(model: Transformer, batch: torch.Tensor, reps: int = 20) -> float:
    with torch.inference_mode():
        model(batch)
        began = time.perf_counter()
        for _ in range(reps):
            model(batch)
    return (time.perf_counter() - began) / reps


async def load_test(model: Transformer, max_batch: int, concurrency: int, requests: int) -> tuple[float, float]:
    server = Server(model, ServeSettings(max_batch=max_batch, max_wait_ms=5, max_queue=1024, max_new_tokens=8))
    latencies: list[float] = []
    async with TestClient(TestServer(server.app())) as client:
        queue = list(range(requests))

        async def user() -> None:
            while queue:
                queue.pop()
                began = time.perf_counter()
                resp = await client.post("/v1/generate", json={"prompt": "def main():\n    ", "max_new_tokens": 8})
                assert resp.status == 200, await resp.text()
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    p99 = statistics.quantiles(latencies, n=100)[98]
    return requests / elapsed, p99


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--requests", type=int, default=96)
    args = parser.parse_args()
    if args.checkpoint:
        model = load_model("small", args.checkpoint)
        held_out = [list(d.data[: args.seq]) for d in load_documents(stdlib_root(), max_docs=600)[-40:]]
    else:
        model, held_out = train_small(args.train_steps, args.seq)
    batch = torch.tensor([t for t in held_out if len(t) == args.seq][:8])
    base_ppl, base_lat = perplexity(model, held_out), latency(model, batch)
    print("| variant | held-out perplexity | change | forward latency (8 x 128) | speed-up |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| fp32 | {base_ppl:.3f} | - | {base_lat * 1e3:.2f} ms | 1.00 |")
    for mode in (Quantization.INT8_WEIGHT, Quantization.INT8_DYNAMIC):
        q = quantize(copy.deepcopy(model), mode)
        ppl, lat = perplexity(q, held_out), latency(q, batch)
        change = 100 * (ppl - base_ppl) / base_ppl
        print(f"| {mode} | {ppl:.3f} | {change:+.2f}% | {lat * 1e3:.2f} ms | {base_lat / lat:.2f} |")
    print()
    print("| max_batch | concurrency | requests/s | p99 latency |")
    print("| --- | --- | --- | --- |")
    for max_batch in (1, 8):
        rps, p99 = asyncio.run(load_test(model, max_batch, 16, args.requests))
        print(f"| {max_batch} | 16 | {rps:.1f} | {p99 * 1e3:.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
