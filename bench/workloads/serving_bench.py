"""INT8 quality and CPU speed-up, and dynamic batching vs batch size 1.

1. Quality: trains the `small` preset briefly on the stdlib corpus (or loads --checkpoint); perplexity on
   held-out stdlib documents for fp32, int8-weight, int8-dynamic (torchao).
2. Speed: forward latency per mode on a preset large enough that the matmuls dominate (`85m` by default),
   for a decode step at batch 1 and 8 and a prefill of 8 x 128, eager and with torch.compile (which torchao
   recommends; on CPU, inductor turns int8 weight-only linears into `aten._weight_int8pack_mm`, and the
   table counts those rewrites).
3. Served speed: the HTTP server in-process, built as `python -m strata_workloads.serve` builds it, for
   fp32, fp32 int8-weight, and compiled fp32 / bf16 / bf16 int8-weight on `85m`: requests/s and p50/p99 of
   `/v1/generate` for one request at a time (decode batch 1) and bursts of 8 (decode batch 8), round-robin.
4. Dynamic batching: a closed-loop load test on the HTTP server (generation with the KV cache): requests/s
   and p99 latency for max_batch 1, static batching at 8 and continuous batching at 8 side by side,
   the best throughput under a p99 bound; then lone requests to the three in turn, with recorded waits.

    python bench/workloads/serving_bench.py --train-steps 150
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch._dynamo
from aiohttp.test_utils import TestClient, TestServer
from torch._dynamo.utils import counters

from strata_workloads.data import PackedLoader, PackedWindows, load_documents, pack_documents, stdlib_root
from strata_workloads.engine import build_engine
from strata_workloads.inference import Quantization, load_model, quantize, score
from strata_workloads.layout import ParallelDims
from strata_workloads.model import Transformer
from strata_workloads.optim import OptimConfig, build_optimizer, train_step
from strata_workloads.parallelize import ParallelizeOptions
from strata_workloads.presets import get_preset
from strata_workloads.serve import Server, prepare_model
from strata_workloads.settings import ServeSettings


def train_small(steps: int, seq: int) -> tuple[Transformer, list[list[int]]]:
    docs = load_documents(stdlib_root(), max_docs=600)
    held_out = [list(d.data[:seq]) for d in docs[-40:] if len(d.data) > seq]
    loader = PackedLoader(PackedWindows([pack_documents(docs[:-40])], seq), 0, 1, 8, 8, seed=0)
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


NEW_TOKENS = 32
PROMPT = "def main():\n    "
SHAPES = {"decode b=1": (1, 1), "decode b=8": (8, 1), "prefill 1x64": (1, 64)}


def int8_speed(preset: str, compile_models: bool, reps: int) -> None:
    """Forward latency per quantisation mode and shape on `preset` (random weights: speed does not depend on
    them). A decode step is a forward of one token per row: weights are read once per step and the matmuls are
    (batch x dim) by (dim x dim), the memory-bound case where int8 weights should pay off.

    Variants are timed round-robin (one call each, `reps` rounds, median per variant), so a change in the
    machine's load hits all of them alike and the speed-ups are side-by-side ratios."""
    torch.manual_seed(0)
    base = Transformer(get_preset(preset)).eval()
    torch._dynamo.config.recompile_limit = 64  # every variant and shape is its own graph
    variants: list[tuple[str, str, Transformer, int | str]] = []
    # (label, activation dtype, quantisation, compiled). Inductor's CPU rewrite of torchao's int8 weight-only
    # linear to aten._weight_int8pack_mm only accepts bf16 activations and scales, so the bf16 rows are the
    # ones where torchao's fast CPU kernel can run.
    plan = [
        ("fp32", torch.float32, Quantization.NONE, False),
        ("int8-weight", torch.float32, Quantization.INT8_WEIGHT, False),
        ("int8-dynamic", torch.float32, Quantization.INT8_DYNAMIC, False),
    ]
    if compile_models:
        plan += [
            ("fp32", torch.float32, Quantization.NONE, True),
            ("int8-weight", torch.float32, Quantization.INT8_WEIGHT, True),
            ("int8-dynamic", torch.float32, Quantization.INT8_DYNAMIC, True),
            ("bf16", torch.bfloat16, Quantization.NONE, True),
            ("int8-weight, bf16 activations", torch.bfloat16, Quantization.INT8_WEIGHT, True),
        ]
    for label, dtype, mode, compiled in plan:
        model = quantize(copy.deepcopy(base).to(dtype), mode)
        if compiled:
            # Each block compiled, as training does (parallelize.apply_compile): the blocks share one graph
            # per shape, so compiling takes seconds instead of minutes for an unrolled 12-layer model.
            for block in model.layers.values():
                block.compile(dynamic=False)
        counters.clear()
        with torch.inference_mode():
            for shape in SHAPES.values():
                model(torch.randint(0, 256, shape))  # warm-up; compiles when compiled
        # Inductor rewrites torchao's int8 weight-only pattern to aten._weight_int8pack_mm on CPU.
        woq: int | str = counters["inductor"]["woq_matcher_count"] if compiled else "-"
        variants.append((label, "compiled" if compiled else "eager", model, woq))
    print(
        f"INT8 speed: preset {preset} ({base.config.num_params() / 1e6:.0f}M parameters), "
        f"{torch.get_num_threads()} threads, median of {reps} round-robin calls ({max(3, reps // 3)} for prefill)"
    )
    ms: dict[int, list[float]] = {i: [] for i in range(len(variants))}
    with torch.inference_mode():
        for shape in SHAPES.values():
            batch = torch.randint(0, 256, shape)
            times: dict[int, list[float]] = {i: [] for i in range(len(variants))}
            for _ in range(reps if shape[1] == 1 else max(3, reps // 3)):  # prefill is ~100x a decode step
                for i, (_, _, run, _) in enumerate(variants):
                    began = time.perf_counter()
                    run(batch)
                    times[i].append(time.perf_counter() - began)
            for i, measured in times.items():
                ms[i].append(1e3 * statistics.median(measured))
    print("| variant | execution | " + " | ".join(f"{s} (ms)" for s in SHAPES) + " | speed-up vs fp32 | woq rewrites |")
    print("| --- | --- | " + " | ".join("---" for _ in SHAPES) + " | --- | --- |")
    for i, (label, execution, _, woq) in enumerate(variants):
        fp32 = next(j for j, v in enumerate(variants) if v[1] == execution and v[0] == "fp32")
        speedups = " / ".join(f"{b / m:.2f}" for b, m in zip(ms[fp32], ms[i], strict=True))
        cells = " | ".join(f"{m:.1f}" for m in ms[i])
        print(f"| {label} | {execution} | {cells} | {speedups} | {woq} |")


SERVED = {
    "fp32": ServeSettings(),
    "fp32 int8-weight": ServeSettings(quantization="int8-weight"),
    "fp32 compiled": ServeSettings(compile=True),
    "bf16 compiled": ServeSettings(precision="bf16", compile=True),
    "bf16 int8-weight compiled": ServeSettings(precision="bf16", quantization="int8-weight", compile=True),
}


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def _closed_loop(client: TestClient[Any, Any], users: int, per_user: int, new_tokens: int) -> list[float]:
    latencies: list[float] = []

    async def user() -> None:
        for _ in range(per_user):
            began = time.perf_counter()
            resp = await client.post("/v1/generate", json={"prompt": PROMPT, "max_new_tokens": new_tokens})
            assert resp.status == 200, await resp.text()
            latencies.append(time.perf_counter() - began)

    await asyncio.gather(*(user() for _ in range(users)))
    return latencies


def _batches(server: Server) -> tuple[float, float]:
    """(model calls, requests) the server's batch-size histogram has seen."""
    samples = {s.name: s.value for metric in server.batch_size.collect() for s in metric.samples}
    return samples["strata_serve_batch_size_count"], samples["strata_serve_batch_size_sum"]


async def _served_speed(preset: str, variants: list[str], new_tokens: int, rounds: int) -> None:
    torch.manual_seed(0)
    base = Transformer(get_preset(preset)).eval()
    servers: dict[str, Server] = {}
    clients: dict[str, TestClient[Any, Any]] = {}
    warm: dict[str, float] = {}
    # CPU seconds of the model's thread per variant: on a loaded machine a single-threaded model's wall time
    # swings with what else runs, its CPU time much less (memory bandwidth and caches are still shared).
    cpu: dict[str, float] = dict.fromkeys(variants, 0.0)
    for name in variants:
        settings = replace(SERVED[name], model=preset, max_new_tokens=new_tokens, max_queue=256)
        began = time.perf_counter()
        servers[name] = Server(prepare_model(copy.deepcopy(base), settings), settings)
        advance = servers[name].generator._advance

        def timed(*args: Any, advance: Any = advance, name: str = name) -> Any:
            began = time.thread_time()
            try:
                return advance(*args)
            finally:
                cpu[name] += time.thread_time() - began

        servers[name].generator._advance = timed  # type: ignore[method-assign]
        clients[name] = TestClient(TestServer(servers[name].app()))
        await clients[name].start_server()
        await servers[name].wait_ready()  # warm-up: compiles here, before ready
        warm[name] = time.perf_counter() - began
        print(f"{name}: ready after {warm[name]:.0f} s", flush=True)
    lone: dict[str, list[float]] = {n: [] for n in variants}
    loaded: dict[str, list[float]] = {n: [] for n in variants}
    bursts: dict[str, list[float]] = {n: [] for n in variants}
    cpu_lone: dict[str, float] = dict.fromkeys(variants, 0.0)
    cpu_burst: dict[str, float] = dict.fromkeys(variants, 0.0)
    calls: dict[str, tuple[float, float]] = {}
    # Round-robin in short turns (one request, then one burst of 8, per variant): the machine's load, which
    # changes from one minute to the next on a shared machine, hits every variant alike.
    for _ in range(rounds):
        for name in variants:
            started = cpu[name]
            lone[name] += await _closed_loop(clients[name], 1, 1, new_tokens)
            cpu_lone[name] += cpu[name] - started
        for name in variants:
            started = cpu[name]
            before = _batches(servers[name])
            began = time.perf_counter()
            loaded[name] += await _closed_loop(clients[name], 8, 1, new_tokens)
            bursts[name].append(time.perf_counter() - began)
            cpu_burst[name] += cpu[name] - started
            after = _batches(servers[name])
            done = calls.get(name, (0.0, 0.0))
            calls[name] = (done[0] + after[0] - before[0], done[1] + after[1] - before[1])
    for client in clients.values():
        await client.close()
    print(
        f"\nServed speed: preset {preset} ({base.config.num_params() / 1e6:.0f}M parameters), /v1/generate of "
        f"{new_tokens} tokens, {rounds} rounds round-robin, {torch.get_num_threads()} threads; 1 user: "
        f"{rounds} requests one at a time; 8 users: {rounds} bursts of 8 at once. requests/s from the medians "
        "(1 / p50 alone, 8 / median burst); mean batch = rows per generation step"
    )
    print(
        "| variant | warm-up (s) | 1 user: requests/s | p50 (ms) | p99 (ms) | 8 users: requests/s | p50 (ms) "
        "| p99 (ms) | mean batch | speed-up vs fp32 (1 user / 8 users) | model CPU ms per request (1 / 8) "
        "| CPU speed-up vs fp32 (1 / 8) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    per_request = {n: (1e3 * cpu_lone[n] / rounds, 1e3 * cpu_burst[n] / (8 * rounds)) for n in variants}
    rps = {n: (1 / statistics.median(lone[n]), 8 / statistics.median(bursts[n])) for n in variants}
    for name in variants:
        ref = rps.get("fp32", rps[name])
        cpu_ref = per_request.get("fp32", per_request[name])
        one, eight = lone[name], loaded[name]
        print(
            f"| {name} | {warm[name]:.0f} | {rps[name][0]:.2f} | {1e3 * _percentile(one, 50):.0f} | "
            f"{1e3 * _percentile(one, 99):.0f} | {rps[name][1]:.2f} | {1e3 * _percentile(eight, 50):.0f} | "
            f"{1e3 * _percentile(eight, 99):.0f} | {calls[name][1] / calls[name][0]:.1f} | "
            f"{rps[name][0] / ref[0]:.2f} / {rps[name][1] / ref[1]:.2f} | "
            f"{per_request[name][0]:.0f} / {per_request[name][1]:.0f} | "
            f"{cpu_ref[0] / per_request[name][0]:.2f} / {cpu_ref[1] / per_request[name][1]:.2f} |"
        )


def served_speed(preset: str, variants: list[str], new_tokens: int, rounds: int) -> None:
    asyncio.run(_served_speed(preset, variants, new_tokens, rounds))


# (max_batch, batching mode): static is how generation was batched before continuous batching (whole generations
# per batch, the first request waiting max_wait for company), the server's `batching: static` since.
BATCHING = {"max_batch 1": (1, "continuous"), "static 8": (8, "static"), "continuous 8": (8, "continuous")}


def _batching_server(model: Transformer, variant: str) -> Server:
    max_batch, mode = BATCHING[variant]
    settings = ServeSettings(max_batch=max_batch, max_wait_ms=5, max_queue=1024, max_new_tokens=32, batching=mode)
    return Server(model, settings)


def _mean_wait(server: Server) -> float:
    samples = {s.name: s.value for metric in server.batch_wait.collect() for s in metric.samples}
    count = samples["strata_serve_batch_wait_seconds_count"]
    return samples["strata_serve_batch_wait_seconds_sum"] / count if count else 0.0


async def load_test(model: Transformer, variant: str, concurrency: int, requests: int) -> tuple[float, float]:
    server = _batching_server(model, variant)
    latencies: list[float] = []
    async with TestClient(TestServer(server.app())) as client:
        await server.wait_ready()
        queue = list(range(requests))

        async def user() -> None:
            while queue:
                queue.pop()
                began = time.perf_counter()
                body = {"prompt": PROMPT, "max_new_tokens": NEW_TOKENS}
                resp = await client.post("/v1/generate", json=body)
                assert resp.status == 200, await resp.text()
                latencies.append(time.perf_counter() - began)

        began = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return requests / elapsed, _percentile(latencies, 99)


async def _lone_requests(model: Transformer, per_variant: int) -> None:
    """One user, requests sent to each variant in turn (a, b, c, a, b, c, ...): the machine's load hits all
    alike, unlike one variant's whole run after another's."""
    servers = {v: _batching_server(model, v) for v in BATCHING}
    clients = {v: TestClient(TestServer(s.app())) for v, s in servers.items()}
    latencies: dict[str, list[float]] = {v: [] for v in BATCHING}
    for variant, client in clients.items():
        await client.start_server()
        await servers[variant].wait_ready()
    for _ in range(per_variant):
        for variant, client in clients.items():
            began = time.perf_counter()
            resp = await client.post("/v1/generate", json={"prompt": PROMPT, "max_new_tokens": NEW_TOKENS})
            assert resp.status == 200, await resp.text()
            latencies[variant].append(time.perf_counter() - began)
    for client in clients.values():
        await client.close()
    print(f"Lone requests, interleaved: {per_variant} per variant, one at a time")
    print("| variant | p50 (ms) | p99 (ms) | mean recorded wait before the model (ms) |")
    print("| --- | --- | --- | --- |")
    for variant, measured in latencies.items():
        print(
            f"| {variant} | {1e3 * _percentile(measured, 50):.0f} | {1e3 * _percentile(measured, 99):.0f} | "
            f"{1e3 * _mean_wait(servers[variant]):.2f} |"
        )


def batching(model: Transformer, concurrencies: list[int], requests: int, p99_bound_ms: float) -> None:
    """Closed loop: `c` users each send the next request when their last one returns. For max_batch 1, static
    batching at 8 and continuous batching at 8 side by side, requests/s and p99 latency per concurrency;
    then the best throughput whose p99 stays under the bound; then lone requests interleaved."""
    print(
        f"Dynamic batching: generate {NEW_TOKENS} tokens, KV cache, {requests} requests per point, "
        f"{torch.get_num_threads()} threads"
    )
    print("| variant | concurrency | requests/s | p99 latency (ms) |")
    print("| --- | --- | --- | --- |")
    points: dict[str, list[tuple[int, float, float]]] = {v: [] for v in BATCHING}
    for c in concurrencies:
        for variant in BATCHING:
            rps, p99 = asyncio.run(load_test(model, variant, c, max(requests, 2 * c)))
            print(f"| {variant} | {c} | {rps:.1f} | {p99 * 1e3:.0f} |", flush=True)
            points[variant].append((c, rps, p99 * 1e3))
    if p99_bound_ms <= 0:
        # Machine-relative bound: twice the p99 of one request at a time, unbatched.
        p99_bound_ms = 2 * min(points["max_batch 1"], key=lambda p: p[0])[2]
    best: dict[str, tuple[float, int]] = {}
    for variant, measured in points.items():
        for c, rps, p99_ms in measured:
            if p99_ms <= p99_bound_ms and rps > best.get(variant, (0.0, 0))[0]:
                best[variant] = (rps, c)
    print()
    print(f"| variant | requests/s at p99 <= {p99_bound_ms:.0f} ms | at concurrency | gain vs max_batch 1 |")
    print("| --- | --- | --- | --- |")
    unbatched = best.get("max_batch 1", (0.0, 0))[0]
    for variant in BATCHING:
        rps, c = best.get(variant, (0.0, 0))
        gain = f"{rps / unbatched:.2f}x" if unbatched and rps else "-"
        print(f"| {variant} | {rps:.1f} | {c or 'none met the bound'} | {gain} |")
    print()
    asyncio.run(_lone_requests(model, max(requests // 2, 2)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared machine)")
    parser.add_argument("--speed-preset", default="85m", help="preset for the INT8 speed table")
    parser.add_argument("--speed-reps", type=int, default=10)
    parser.add_argument("--no-compile", action="store_true", help="INT8 speed: eager only")
    parser.add_argument("--served-preset", default="85m", help="preset for the served-speed table")
    parser.add_argument("--served-tokens", type=int, default=16, help="served speed: tokens per request")
    parser.add_argument("--served-rounds", type=int, default=6)
    parser.add_argument("--served-variants", nargs="+", default=list(SERVED), choices=list(SERVED))
    parser.add_argument("--requests", type=int, default=48, help="requests per load-test point")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument(
        "--p99-ms",
        type=float,
        default=0.0,
        help="p99 bound for the batching summary; 0: twice the unbatched, one-at-a-time p99",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["quality", "speed", "served", "batching"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model = load_model("small", args.checkpoint)
        held_out = [list(d.data[: args.seq]) for d in load_documents(stdlib_root(), max_docs=600)[-40:]]
    elif "quality" in args.skip and "batching" in args.skip:
        model, held_out = Transformer(get_preset("small")).eval(), []
    else:
        model, held_out = train_small(args.train_steps, args.seq)
    if "quality" not in args.skip:
        base_ppl = perplexity(model, held_out)
        print("INT8 quality: preset small, perplexity on 40 held-out stdlib documents (first 128 bytes)")
        print("| variant | held-out perplexity | change |")
        print("| --- | --- | --- |")
        print(f"| fp32 | {base_ppl:.3f} | - |")
        for mode in (Quantization.INT8_WEIGHT, Quantization.INT8_DYNAMIC):
            ppl = perplexity(quantize(copy.deepcopy(model), mode), held_out)
            print(f"| {mode} | {ppl:.3f} | {100 * (ppl - base_ppl) / base_ppl:+.2f}% |", flush=True)
        print()
    if "speed" not in args.skip:
        int8_speed(args.speed_preset, not args.no_compile, args.speed_reps)
        print()
    if "served" not in args.skip:
        served_speed(args.served_preset, args.served_variants, args.served_tokens, args.served_rounds)
        print()
    if "batching" not in args.skip:
        batching(model, args.concurrency, args.requests, args.p99_ms)


if __name__ == "__main__":
    main()
