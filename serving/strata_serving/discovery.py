"""Where the router's replicas are: a static list, or the DNS name of a headless Service (re-resolved).

In Kubernetes a headless Service's name resolves to its pods' addresses (the *ready* ones only, unless the Service
publishes not-ready addresses, as the operator's ``<name>-replicas`` does so that the router sees starting
replicas: its probes keep them out of the rotation until ready), so the router learns of new replicas and forgets
deleted ones without API access or RBAC. Also the reading of a replica's probe answers.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from strata_api.serving import NODE_PRESSURE_METRIC, QUEUE_DEPTH_METRIC


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


def gauge_samples(text: str, name: str) -> list[float]:
    """The values of gauge ``name``'s samples in a Prometheus text page, in page order (each label set's one); a
    sample whose value is not a number is left out."""
    values: list[float] = []
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in (" ", "{"):
            try:
                values.append(float(line.rsplit(" ", 1)[1]))
            except (IndexError, ValueError):
                continue
    return values


def queue_depth_from_metrics(text: str) -> float | None:
    """The replica's queue depth from its Prometheus text, or None when the gauge is not there."""
    depths = gauge_samples(text, QUEUE_DEPTH_METRIC)
    return depths[0] if depths else None


def node_pressure_from_metrics(text: str) -> float:
    """The replica's node pressure from its Prometheus text: the most stalled of the resources it reports (a share,
    0 to 1; values out of that range are clipped, NaN left out), 0 when it reports none (a server on a kernel
    without PSI, or one from before the gauge)."""
    shares = [min(1.0, max(0.0, share)) for share in gauge_samples(text, NODE_PRESSURE_METRIC) if math.isfinite(share)]
    return max(shares, default=0.0)


def readiness_from_probe(status: int | None, body: bytes) -> tuple[bool, bool]:
    """(ready, draining) from ``/readyz``'s status and body (None: no answer; 0: the connection refused). The
    workload server answers 503 with ``{"status": "draining"}`` once SIGTERM has come, and 503 ``warming up``
    before it is ready."""
    if status == 200:
        return True, False
    return False, status == 503 and b"draining" in body
