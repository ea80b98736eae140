"""Test support for the router: its process and replica processes on loopback (``fake_replica.py`` or the real
workload server), started with free ports, waited for, and stopped; and readers of its answers and metrics.

Tests import it as ``router_support`` (``tests/conftest.py`` puts this folder on ``sys.path``); the router's
benchmark does the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

FAKE_REPLICA = Path(__file__).resolve().parent / "fake_replica.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Process:
    """One started process, the address it listens on, and its log."""

    name: str
    popen: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def kill(self) -> None:
        """SIGKILL: the process dies at once, its connections reset, as a pod on a lost node."""
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def terminate(self) -> None:
        """SIGTERM: a replica drains (as a pod being deleted) and exits."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@dataclass
class Processes:
    """Every process a test started; :meth:`stop_all` kills what is left (the fixture calls it)."""

    folder: Path
    started: list[Process] = field(default_factory=list)

    def start(self, name: str, command: list[str], port: int, env: dict[str, str] | None = None) -> Process:
        log = self.folder / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=self.folder
            )
        process = Process(name, popen, port, log)
        self.started.append(process)
        return process

    def fake_replica(self, name: str, *flags: str, port: int = 0) -> Process:
        """A stand-in replica (``fake_replica.py``) on ``port`` (0: a free one)."""
        port = port or free_port()
        command = [sys.executable, str(FAKE_REPLICA), "--port", str(port), "--name", name, *flags]
        return self.start(name, command, port)

    def router(self, replicas: list[str], *flags: str, name: str = "router") -> Process:
        port = free_port()
        command = [sys.executable, "-m", "strata_serving.router", "--host", "127.0.0.1", "--port", str(port)]
        for replica in replicas:
            command += ["--replica", replica]
        return self.start(name, [*command, *flags], port)

    def workload_server(self, name: str, *flags: str) -> Process:
        port = free_port()
        command = [sys.executable, "-m", "strata_workloads.serve", "--host", "127.0.0.1", "--port", str(port)]
        return self.start(name, [*command, *flags], port, env={"STRATA_LOG_FORMAT": "text"})

    def stop_all(self) -> None:
        for process in self.started:
            process.kill()


async def wait_ready(process: Process, timeout_s: float = 30.0, path: str = "/readyz") -> None:
    """Until ``path`` answers 200; fails with the process's log when it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise AssertionError(f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}")
            try:
                async with session.get(process.url + path, timeout=aiohttp.ClientTimeout(total=1)) as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{process.name} not ready after {timeout_s} s:\n{process.log_tail()}")


async def wait_routable(router: Process, replicas: int, timeout_s: float = 10.0) -> None:
    """Until the router counts ``replicas`` routable replicas (probed ready, not ejected)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if total(await metrics(router), "strata_router_replicas", state="routable") == replicas:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the router does not count {replicas} routable replicas:\n{router.log_tail()}")


async def metrics(process: Process) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a process's ``/metrics``: (name, sorted labels) -> value."""
    async with aiohttp.ClientSession() as session, session.get(process.url + "/metrics") as response:
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


@dataclass(frozen=True)
class Answer:
    status: int
    replica: str
    attempts: int
    body: bytes
    seconds: float


async def post(session: aiohttp.ClientSession, url: str, body: object, timeout_s: float = 30.0) -> Answer:
    """One request through the router: status, the answering replica, the attempts it took, the latency."""
    started = time.monotonic()
    async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
        payload = await response.read()
        return Answer(
            response.status,
            response.headers.get("x-strata-replica", ""),
            int(response.headers.get("x-strata-attempts", "0")),
            payload,
            time.monotonic() - started,
        )


async def exchange(port: int, request: bytes, wait_s: float = 10) -> tuple[int, bytes, float]:
    """Send raw bytes and read one answer: its status, body and the seconds it took."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), wait_s)
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    body = await asyncio.wait_for(reader.readexactly(length), wait_s)
    writer.close()
    return int(head.split()[1]), body, time.monotonic() - started


async def seconds_until_closed(port: int, request_line: bytes, gap_s: float = 0.25, wait_s: float = 10) -> float:
    """Send ``request_line``, then one header line every ``gap_s`` and never the blank line that ends the head (a
    slow-loris client), until the other side closes the connection; the seconds that took."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request_line)
        for n in itertools.count():
            if time.monotonic() - started > wait_s:
                raise AssertionError(f"the connection was still open after {wait_s} s")
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(), gap_s) == b"":
                    return time.monotonic() - started
            writer.write(b"X-Wait-%d: y\r\n" % n)
            await writer.drain()
    except ConnectionError:
        return time.monotonic() - started
    finally:
        writer.close()
    raise AssertionError("unreachable")


OPENAI_PATHS = frozenset({"/v1/completions", "/v1/models", "/v1/chat/completions"})
"""Paths an OpenAI client calls (the last one the server does not have): their refusals are in OpenAI's shape."""


def refusal(path: str, status: int, body: object) -> tuple[str, str | None]:
    """The message and the reason (OpenAI's ``code``) of a refusal's body, after checking that it is in the shape a
    client of ``path`` reads: OpenAI's ``{"error": {"message", "type", "param", "code"}}`` on OpenAI's paths, with
    the type its status calls for; ``{"error": message}`` (and ``"reason"``, where there is one) elsewhere."""
    assert isinstance(body, dict), body
    error = body["error"]
    if path in OPENAI_PATHS:
        assert isinstance(error, dict), body
        assert set(error) == {"message", "type", "param", "code"}, body
        kind = "requests" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
        assert error["type"] == kind, body
        return error["message"], error["code"]
    assert isinstance(error, str), body
    assert set(body) <= {"error", "reason"}, body
    return error, body.get("reason")
