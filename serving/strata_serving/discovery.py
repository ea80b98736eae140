"""Where the router's replicas are: a static list, or the DNS name of a headless Service (re-resolved).

In Kubernetes a headless Service's name resolves to its pods' addresses (the *ready* ones only, unless the Service
publishes not-ready addresses, as the operator's ``<name>-replicas`` does so that the router sees starting
replicas: its probes keep them out of the rotation until ready), so the router learns of new replicas and forgets
deleted ones without API access or RBAC. Also the reading of a replica's probe answers.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

QUEUE_DEPTH_METRIC = "strata_serve_in_flight"
"""The workload server's gauge of requests queued or running (``strata_workloads.serve``)."""


class ReplicaSource(Protocol):
    """Something that lists replica addresses (``host:port``) each time it is asked."""

    async def addresses(self) -> list[str]: ...


def split_host_port(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port); a ValueError naming the value when it is not one."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    return host.strip("[]"), int(port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class StaticSource:
    """A fixed list (``--replica host:port``, repeatable)."""

    replicas: tuple[str, ...]

    def __post_init__(self) -> None:
        for replica in self.replicas:
            split_host_port(replica)

    async def addresses(self) -> list[str]:
        return list(self.replicas)


@dataclass
class DnsSource:
    """Every address ``name`` resolves to, at ``port`` (``--replicas-dns name:port``). A name that does not exist
    (a headless Service with no ready pod has no records) lists nothing; a transient resolver failure keeps the
    previous list rather than dropping every replica at once."""

    name: str
    port: int
    _last: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: str) -> DnsSource:
        host, port = split_host_port(value)
        return cls(host, port)

    async def addresses(self) -> list[str]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.name, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            if error.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                self._last = ()
            return list(self._last)
        self._last = tuple(sorted({join_host_port(str(info[4][0]), self.port) for info in infos}))
        return list(self._last)


def source_from(replicas: Sequence[str], replicas_dns: str) -> ReplicaSource:
    """The source the settings name: exactly one of a static list and a DNS name."""
    if bool(replicas) == bool(replicas_dns):
        raise ValueError("name the replicas with either --replica host:port (repeatable) or --replicas-dns name:port")
    return StaticSource(tuple(replicas)) if replicas else DnsSource.parse(replicas_dns)


def canary_source_from(replicas: Sequence[str], replicas_dns: str) -> ReplicaSource | None:
    """The canary revision's source (``--canary-replica`` or ``--canary-dns``), None when there is no canary."""
    if not replicas and not replicas_dns:
        return None
    return source_from(replicas, replicas_dns)


def queue_depth_from_metrics(text: str) -> float | None:
    """The replica's queue depth from its Prometheus text, or None when the gauge is not there."""
    for line in text.splitlines():
        if line.startswith(QUEUE_DEPTH_METRIC) and line[len(QUEUE_DEPTH_METRIC) : len(QUEUE_DEPTH_METRIC) + 1] in (
            " ",
            "{",
        ):
            try:
                return float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                return None
    return None


def readiness_from_probe(status: int | None, body: bytes) -> tuple[bool, bool]:
    """(ready, draining) from ``/readyz``'s status and body (None: no answer; 0: the connection refused). The
    workload server answers 503 with ``{"status": "draining"}`` once SIGTERM has come, and 503 ``warming up``
    before it is ready."""
    if status == 200:
        return True, False
    return False, status == 503 and b"draining" in body
