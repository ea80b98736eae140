"""The router under load, as processes on loopback: the router (``python -m strata_serving.router``) in front of
stand-in replicas (``tests/support/fake_replica.py``: a fixed service time per request, a few requests at once, a
queue), with an open-loop client that sends on a schedule whatever the answers do.

1. **One slow replica, bursty load**: three replicas serve a request in ``--fast-ms``, a fourth in ``--slow-ms``;
   the load alternates between a base rate and bursts. The same arrival schedule goes through a least-loaded
   router (as by default, pricing a replica as serving one request at a time; and with ``--replica-concurrency 4``,
   what these replicas do), and a round-robin one, one after the other on the same replicas: p50, p99, max and the
   slow replica's share.
2. **Failover**: three replicas at a steady rate; one is killed (SIGKILL: its connections reset, as a lost node)
   mid-load, and in a second run one is drained (SIGTERM: ``/readyz`` turns 503, new requests get 503, as a
   deleted pod). Reported: errored requests, the seconds from the first error to the last, retried requests and
   p99 after the event; with the router's retries, and without (``--max-attempts 1``) to show what they buy.
   Every endpoint the router serves is free of side effects, so every errored request here was a retryable one.

    .venv/bin/python bench/serving/router_bench.py [--duration-s 12] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "support"))

from router_support import Process, Processes, post, wait_ready, wait_routable

REQUEST = {"prompt": "def main(", "max_new_tokens": 16}


@dataclass(frozen=True)
class Result:
    sent_at: float  # seconds from the run's start
    status: int
    replica: str
    attempts: int
    seconds: float


def bursty_schedule(
    duration_s: float, base_rps: float, burst_rps: float, period_s: float, rng: random.Random
) -> list[float]:
    """Poisson arrivals whose rate is ``burst_rps`` for the first quarter of each period and ``base_rps`` after."""
    times, now = [], 0.0
    while now < duration_s:
        rate = burst_rps if (now % period_s) < period_s / 4 else base_rps
        now += rng.expovariate(rate)
        times.append(now)
    return times[:-1]


async def run_load(
    router: Process, schedule: list[float], during: Callable[[float], None] | None = None
) -> list[Result]:
    """Send one request at each time of ``schedule`` (open loop); ``during(t)`` is called as time passes."""
    results: list[Result] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.monotonic()

        async def one(at: float) -> None:
            try:
                answer = await post(session, router.url + "/v1/generate", REQUEST, timeout_s=30)
                results.append(Result(at, answer.status, answer.replica, answer.attempts, answer.seconds))
            except (aiohttp.ClientError, TimeoutError):
                results.append(Result(at, 0, "", 0, time.monotonic() - start - at))

        tasks = []
        for at in schedule:
            delay = start + at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if during is not None:
                during(at)
            tasks.append(asyncio.create_task(one(at)))
        await asyncio.gather(*tasks)
    return results


def machine_load() -> str:
    """The 1-minute load average and the cores: the figures share the machine with whatever else runs."""
    return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def slow_replica_comparison(folder: Path, args: argparse.Namespace) -> None:
    processes = Processes(folder / "slow")
    processes.folder.mkdir()
    try:
        fast = [
            processes.fake_replica(f"fast{i}", "--delay", str(args.fast_ms / 1000), "--slots", "4") for i in range(3)
        ]
        slow = processes.fake_replica("slow", "--delay", str(args.slow_ms / 1000), "--slots", "4")
        replicas = [*fast, slow]
        addresses = [replica.address for replica in replicas]
        routers = {
            "least-loaded": processes.router(addresses, name="least-loaded"),
            "least-loaded, c=4": processes.router(addresses, "--replica-concurrency", "4", name="least-loaded-c4"),
            "round-robin": processes.router(addresses, "--policy", "round-robin", name="round-robin"),
        }
        await asyncio.gather(*(wait_ready(process) for process in [*replicas, *routers.values()]))
        for router in routers.values():
            await wait_routable(router, len(replicas))
        schedule = bursty_schedule(
            args.duration_s, args.base_rps, args.burst_rps, args.period_s, random.Random(args.seed)
        )
        print(f"\n1. One slow replica of four ({args.fast_ms:g} ms x3, {args.slow_ms:g} ms x1, 4 at a time each), "
              f"bursty load ({args.base_rps:g}/s, {args.burst_rps:g}/s bursts for a quarter of every "
              f"{args.period_s:g} s): {len(schedule)} requests over {args.duration_s:g} s, the same schedule for "
              "each policy")  # fmt: skip
        print(f"   {'policy':<20}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'slow share':>12}{'errors':>8}")
        rows = {}
        for name, router in routers.items():
            results = await run_load(router, schedule)
            ok = [result.seconds * 1000 for result in results if result.status == 200]
            share = sum(result.replica == slow.address for result in results) / len(results)
            rows[name] = (statistics.median(ok), percentile(ok, 0.99))
            print(f"   {name:<20}{rows[name][0]:>9.1f}{rows[name][1]:>9.1f}{max(ok):>9.1f}{share:>11.1%}"
                  f"{len(results) - len(ok):>8}")  # fmt: skip
        for name in ("least-loaded", "least-loaded, c=4"):
            print(f"   round-robin / {name}: p50 x{rows['round-robin'][0] / rows[name][0]:.2f}, "
                  f"p99 x{rows['round-robin'][1] / rows[name][1]:.2f}")  # fmt: skip
        print(f"   {machine_load()}")
    finally:
        processes.stop_all()


async def failover(folder: Path, args: argparse.Namespace, event: str, max_attempts: int) -> tuple[str, ...]:
    processes = Processes(folder / f"{event}-{max_attempts}")
    processes.folder.mkdir()
    try:
        replicas = [
            processes.fake_replica(f"r{i}", "--delay", str(args.fast_ms / 1000), "--slots", "4") for i in range(3)
        ]
        router = processes.router([r.address for r in replicas], "--max-attempts", str(max_attempts))
        await asyncio.gather(*(wait_ready(process) for process in [*replicas, router]))
        await wait_routable(router, len(replicas))
        rng = random.Random(args.seed)
        schedule = bursty_schedule(args.duration_s, args.failover_rps, args.failover_rps, args.period_s, rng)
        at = args.duration_s / 3
        fired = False

        def strike(now: float) -> None:
            nonlocal fired
            if not fired and now >= at:
                fired = True
                replicas[0].kill() if event == "kill" else replicas[0].terminate()

        results = await run_load(router, schedule, strike)
        errors = [result for result in results if result.status != 200]
        window = (max(r.sent_at + r.seconds for r in errors) - min(r.sent_at for r in errors)) if errors else 0.0
        after = [result.seconds * 1000 for result in results if at <= result.sent_at < at + 2 and result.status == 200]
        retried = sum(result.attempts > 1 for result in results)
        statuses = Counter(result.status for result in errors)
        return (
            f"{event} ({'retries' if max_attempts > 1 else 'no retries'})",
            str(len(results)),
            f"{len(errors)} " + " ".join(f"{status or 'none'}x{n}" for status, n in sorted(statuses.items())),
            f"{window:.2f}",
            str(retried),
            f"{percentile(after, 0.99):.1f}" if after else "-",
        )
    finally:
        processes.stop_all()


async def main(args: argparse.Namespace) -> None:
    print("Router benchmark: the router and stand-in replicas as processes on loopback")
    with tempfile.TemporaryDirectory(prefix="router-bench-") as folder:
        await slow_replica_comparison(Path(folder), args)
        print(f"\n2. Failover: three replicas ({args.fast_ms:g} ms, 4 at a time each), {args.failover_rps:g} "
              f"requests/s for {args.duration_s:g} s, one replica killed or drained at "
              f"{args.duration_s / 3:.1f} s")  # fmt: skip
        header = ("run", "requests", "errored", "error s", "retried", "p99 ms, 2 s after")
        widths = (22, 10, 24, 9, 9, 19)
        print(
            "   "
            + "".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w) in enumerate(zip(header, widths, strict=True)))
        )
        for event in ("kill", "drain"):
            for max_attempts in (3, 1):
                row = await failover(Path(folder), args, event, max_attempts)
                print(
                    "   "
                    + "".join(
                        f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, w) in enumerate(zip(row, widths, strict=True))
                    )
                )
        print(f"   {machine_load()}")
        print("   errored: answers other than 200 by status (none: no answer), all retryable (every endpoint is "
              "free of side effects); error s: from the first errored request's start to the last one's "
              "end")  # fmt: skip


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=12.0)
    parser.add_argument("--fast-ms", type=float, default=40.0, help="service time of a normal replica")
    parser.add_argument("--slow-ms", type=float, default=200.0, help="service time of the slow replica")
    parser.add_argument("--base-rps", type=float, default=40.0)
    parser.add_argument("--burst-rps", type=float, default=200.0)
    parser.add_argument("--period-s", type=float, default=3.0, help="one burst per period")
    parser.add_argument("--failover-rps", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=1)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
