"""Extender latency: one filter plus one prioritize call for one pod, p50 and p99, at 1,000 and 5,000 nodes.

Measured three ways:

- by calling the verbs directly (the extender's own work);
- through HTTP on loopback from a plain HTTP/1.1 keep-alive client in its own process, as kube-scheduler is
  (what kube-scheduler waits for, minus its own JSON encoding): "HTTP";
- through HTTP from an aiohttp client on the server's own event loop: "HTTP, aiohttp client in-process". Its
  client's CPU work (writing 90 KiB, reading 240 KiB per pair) runs on the same core and event loop as the
  server's, one after the other, so it adds a cost kube-scheduler never puts on the extender; kept for
  comparison with earlier figures. Every node name goes to filter
(kube-scheduler would send only the nodes its own plugins found feasible: this is the worst case), and the
nodes the filter passed go to prioritize, as kube-scheduler does. Bodies are written as Go writes them
(``{"Pod":...,"Nodes":null,"NodeNames":[...]}``), and the names come in a different order from one call to
the next (8 orders, cycled), as kube-scheduler's parallel filter writes them: nothing may be cached on a
request's exact text. The fleet is the default fleet scaled
up (strata_dev.fleet), with a quarter of the GPU nodes half full, and the pod is a tensor-parallel worker of
a job with pods already bound, so every check and score term runs; with ``--pod plain``, a GPU pod without
Strata's labels and annotations (8 nvidia.com/gpu, any GPU type, any capacity type), as a user might submit.

    .venv/bin/python bench/scheduler/extender_latency.py [--nodes 1000 5000] [--calls 2000] [--paths direct http]
        [--pod strata|plain|plain-amd|plain-1|other-scheduler|no-gpu]
    .venv/bin/python bench/scheduler/extender_latency.py --nodes 5000 --compare-server OLD/server.py [--rounds 24]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing
import random
import resource
import socket
import statistics
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import orjson

import strata_api as api
import strata_scheduler
from strata_api.catalog import DEFAULT_CATALOG, load_catalog
from strata_dev.fleet import load_fleet, node_manifests
from strata_scheduler.extender import Extender
from strata_scheduler.forecast_board import ForecastBoard
from strata_scheduler.metrics import ExtenderMetrics
from strata_scheduler.server import ExtenderServer
from strata_scheduler.state import ClusterState


def a_cluster(nodes: int) -> tuple[ClusterState, list[str]]:
    state = ClusterState()
    manifests = node_manifests(load_fleet().scaled(nodes))
    for manifest in manifests:
        state.upsert_node(manifest)
    gpu_nodes = [m for m in manifests if api.NVIDIA_GPU in m["status"]["allocatable"]]
    for index, manifest in enumerate(gpu_nodes[::4]):
        state.upsert_pod(_pod(f"busy-{index}", manifest["metadata"]["name"], job="other"))
    for rank, manifest in enumerate(gpu_nodes[:2]):
        state.upsert_pod(_pod(f"llm-{rank}", manifest["metadata"]["name"], job="llm", group=str(rank)))
    state.mark_synced("nodes")
    state.mark_synced("pods")  # freezes the cache out of the cyclic collector's walks, as in the service
    return state, [m["metadata"]["name"] for m in manifests]


def _pod(name: str, node: str | None, job: str, group: str = "0") -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "bench",
            "uid": name,
            "labels": {api.LABEL_JOB: job, api.LABEL_TP_GROUP: group, api.LABEL_PRIORITY: "10"},
            "annotations": {
                api.ANN_TP_SIZE: "4",
                api.ANN_CHECKPOINT_INTERVAL: "1800",
                api.ANN_EXPECTED_RUNTIME: "86400",
                api.ANN_CAPACITY_TYPES: "spot,reserved,on-demand",
                api.ANN_GPU_TYPES: "H100",
            },
        },
        "spec": {
            "schedulerName": api.SCHEDULER_NAME,
            "nodeName": node,
            "containers": [{"name": "w", "resources": {"requests": {api.NVIDIA_GPU: "4"}}}],
        },
        "status": {"phase": "Running" if node else "Pending"},
    }


def _plain_pod(requests: dict[str, str], scheduler: str = api.SCHEDULER_NAME) -> dict[str, Any]:
    """A pod with none of Strata's labels or annotations."""
    return {
        "metadata": {"name": "plain", "namespace": "bench", "uid": "plain"},
        "spec": {"schedulerName": scheduler, "containers": [{"name": "main", "resources": {"requests": requests}}]},
        "status": {"phase": "Pending"},
    }


PODS = {
    "strata": lambda: _pod("llm-9", None, job="llm", group="7"),
    "plain": lambda: _plain_pod({api.NVIDIA_GPU: "8"}),
    "plain-amd": lambda: _plain_pod({api.AMD_GPU: "8"}),
    "plain-1": lambda: _plain_pod({api.NVIDIA_GPU: "1"}),
    "other-scheduler": lambda: _plain_pod({api.NVIDIA_GPU: "8"}, scheduler="default-scheduler"),
    "no-gpu": lambda: _plain_pod({"cpu": "1"}),
}
"""Pod shapes for ``--pod``: Strata's tensor-parallel worker; GPU pods without Strata's labels (8 NVIDIA, 8 AMD,
1 NVIDIA GPU); a pod of another scheduler profile (the neutral answer); a pod without GPUs."""


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[int(len(ordered) * 0.99) - 1] * 1e3


Pair = tuple[bytes, bytes]
"""A filter body and the prioritize body that follows it."""


def request_pairs(extender: Extender, pod: dict[str, Any], names: list[str], orders: int = 8) -> list[Pair]:
    """Filter and prioritize bodies for the names in ``orders`` different orders."""
    pairs = []
    for order in range(orders):
        shuffled = list(names)
        random.Random(order).shuffle(shuffled)
        body = orjson.dumps({"Pod": pod, "Nodes": None, "NodeNames": shuffled})
        pairs.append((body, prioritize_body(extender, body)))
    return pairs


def prioritize_body(extender: Extender, filter_body: bytes) -> bytes:
    """What kube-scheduler sends to prioritize: the same pod and the nodes the filter let through."""
    status, answer = extender.filter(filter_body)
    assert status == 200
    request = orjson.loads(filter_body)
    request["NodeNames"] = orjson.loads(answer)["NodeNames"]
    return orjson.dumps(request)  # dicts keep their order: Pod, Nodes, NodeNames


def direct(extender: Extender, pairs: list[Pair], calls: int, cpu: list[float] | None = None) -> list[float]:
    """Wall-clock seconds per filter+prioritize; CPU seconds of this thread go to ``cpu`` (on a shared machine
    the wall clock includes waiting for a core, the CPU time does not)."""
    samples = []
    for call in range(calls):
        body, second = pairs[call % len(pairs)]
        started, started_cpu = time.perf_counter(), time.thread_time()
        status_f, _ = extender.filter(body)
        status_p, _ = extender.prioritize(second)
        samples.append(time.perf_counter() - started)
        if cpu is not None:
            cpu.append(time.thread_time() - started_cpu)
        assert status_f == status_p == 200
    return samples


def _post(sock: socket.socket, verb: str, body: bytes) -> int:
    """One request on a keep-alive connection; the status, after reading the whole answer."""
    head = f"POST /{verb} HTTP/1.1\r\nHost: extender\r\nContent-Type: application/json\r\n"
    sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(1 << 20)
    header, rest = data.split(b"\r\n\r\n", 1)
    lines = header.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        rest += sock.recv(1 << 20)
    return int(lines[0].split()[1])


def _client(port: int, pairs: list[Pair], calls: int, results: Connection) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as Go's net/http does
        samples = []
        for call in range(calls):
            body, second = pairs[call % len(pairs)]
            started = time.perf_counter()
            assert _post(sock, "filter", body) == _post(sock, "prioritize", second) == 200
            samples.append(time.perf_counter() - started)
    results.send(samples)


async def over_http_from_another_process(
    extender: Extender,
    pairs: list[Pair],
    calls: int,
    server_cpu: list[float] | None = None,
    server_class: Any = ExtenderServer,
) -> list[float]:
    """Samples from the client process; the server's CPU seconds per pair (user + system, mean) go to
    ``server_cpu``: on a loaded machine the wall clock includes waiting for a core, this does not."""
    started = resource.getrusage(resource.RUSAGE_SELF)
    server = await server_class(extender).start("127.0.0.1", 0)
    ours, theirs = multiprocessing.Pipe()
    client = multiprocessing.get_context("fork").Process(target=_client, args=(server.port, pairs, calls, theirs))
    client.start()
    samples: list[float] = await asyncio.get_running_loop().run_in_executor(None, ours.recv)
    client.join()
    await server.close()
    if server_cpu is not None:
        ended = resource.getrusage(resource.RUSAGE_SELF)
        used = ended.ru_utime - started.ru_utime + ended.ru_stime - started.ru_stime
        server_cpu.append(used / calls)
    return samples


async def over_http(extender: Extender, pairs: list[Pair], calls: int) -> list[float]:
    server = await ExtenderServer(extender).start("127.0.0.1", 0)
    port = server.port
    samples = []
    async with aiohttp.ClientSession() as session:
        for call in range(calls):
            body, second = pairs[call % len(pairs)]
            started = time.perf_counter()
            for verb, data in (("filter", body), ("prioritize", second)):
                async with session.post(f"http://127.0.0.1:{port}/{verb}", data=data) as response:
                    assert response.status == 200
                    await response.read()
            samples.append(time.perf_counter() - started)
    await server.close()
    return samples


def compare_servers(extender: Extender, pairs: list[Pair], old_server: Path, rounds: int, block: int = 300) -> None:
    """The HTTP layer alone, side by side in one process: ``old_server`` (a server.py, e.g. from a worktree of an
    earlier commit) and the current one over the same extender, in alternating blocks of ``block`` pairs (the
    order flipped every round), so that a loaded machine's ups and downs fall on both."""
    spec = importlib.util.spec_from_file_location("old_server", old_server)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_server"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    servers = {"old": module.ExtenderServer, "new": ExtenderServer}
    samples: dict[str, list[float]] = {"old": [], "new": []}
    cpu: dict[str, list[float]] = {"old": [], "new": []}
    block_p99: dict[str, list[float]] = {"old": [], "new": []}
    for round_ in range(rounds):
        for label in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
            got = asyncio.run(over_http_from_another_process(extender, pairs, block, cpu[label], servers[label]))
            samples[label] += got
            block_p99[label].append(percentiles(got)[1])
    for label in ("old", "new"):
        p50, p99 = percentiles(samples[label])
        print(
            f"{label} server ({servers[label].__module__}): {len(samples[label])} pairs, HTTP p50 {p50:.2f} p99 "
            f"{p99:.2f} ms, median p99 of {rounds} blocks {statistics.median(block_p99[label]):.2f} ms, server CPU "
            f"per pair (median of blocks) {statistics.median(cpu[label]) * 1e3:.2f} ms",
            flush=True,
        )


def _busy() -> None:
    """Pure-Python work that never blocks: it gives the GIL up only when the interpreter makes it."""
    total = 0
    while True:
        for value in range(10_000):
            total += value * value


PATHS = {"direct": "direct", "http": "HTTP", "inproc": "HTTP, aiohttp client in-process"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=PATHS,
        default=list(PATHS),
        help="which rows to measure (default: all); 'direct' also gives the CPU-time row",
    )
    parser.add_argument(
        "--pod",
        choices=PODS,
        default="strata",
        help="strata: a tensor-parallel worker of a Strata job (default); plain*: GPU pods without Strata's labels; "
        "other-scheduler: another profile's pod; no-gpu",
    )
    parser.add_argument(
        "--compare-server",
        type=Path,
        default=None,
        metavar="SERVER_PY",
        help="instead of the table: this server.py against the current one, alternating blocks of 300 pairs",
    )
    parser.add_argument("--rounds", type=int, default=24, help="blocks per server with --compare-server")
    parser.add_argument(
        "--busy-thread",
        action="store_true",
        help="keep a pure-Python thread busy meanwhile, as the forecaster is during a refit (GIL hand-overs)",
    )
    parser.add_argument(
        "--switch-interval-ms",
        type=float,
        default=None,
        help="sys.setswitchinterval for the run (CPython's default: 5 ms; the service sets 0.5 ms)",
    )
    args = parser.parse_args()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1e3)
    if args.busy_thread:
        threading.Thread(target=_busy, name="busy", daemon=True).start()
    catalog = load_catalog(DEFAULT_CATALOG)
    print("| nodes sent to filter | passed to prioritize | path | p50 ms | p99 ms | filter request bytes |")
    print("|---:|---:|---|---:|---:|---:|")
    print(f"<!-- pod {args.pod}, strata_scheduler from {strata_scheduler.__file__} -->", flush=True)
    for nodes in args.nodes:
        state, names = a_cluster(nodes)
        extender = Extender(state, catalog, ForecastBoard(), ExtenderMetrics(state.size))
        pod = PODS[args.pod]()
        pairs = request_pairs(extender, pod, names)
        body, second = pairs[0]
        direct(extender, pairs, 50)  # warm-up
        if args.compare_server is not None:
            compare_servers(extender, pairs, args.compare_server, args.rounds)
            continue
        cpu: list[float] = []
        server_cpu: list[float] = []
        passed = len(orjson.loads(second)["NodeNames"])
        for path in args.paths:
            if path == "direct":
                samples = direct(extender, pairs, args.calls, cpu)
            elif path == "http":
                samples = asyncio.run(over_http_from_another_process(extender, pairs, args.calls, server_cpu))
            else:
                samples = asyncio.run(over_http(extender, pairs, args.calls))
            p50, p99 = percentiles(samples)
            print(f"| {nodes} | {passed} | {PATHS[path]} | {p50:.2f} | {p99:.2f} | {len(body)} |", flush=True)
        if cpu:
            p50, p99 = percentiles(cpu)
            print(f"| {nodes} | {passed} | direct, CPU time | {p50:.2f} | {p99:.2f} | {len(body)} |", flush=True)
        if server_cpu:
            mean = server_cpu[0] * 1e3
            print(
                f"| {nodes} | {passed} | HTTP, server CPU per pair (mean) | {mean:.2f} | - | {len(body)} |", flush=True
            )


if __name__ == "__main__":
    main()
