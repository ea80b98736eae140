"""The node's pressure as Linux measures it, for the model server's ``/metrics`` (``NODE_PRESSURE_METRIC``).

Pressure stall information (PSI, ``/proc/pressure/<resource>``, Linux 4.20 and later) says for each resource the
share of recent time in which some task waited for it: a line ``some avg10=2.42 avg60=3.25 avg300=19.38
total=...`` in percent over the last 10, 60 and 300 seconds. It is the kernel's own account of contention, which
the kubelet also reports (KEP-4205, stable in Kubernetes 1.36); inside a container ``/proc/pressure`` is the
node's (a container's own is its cgroup's ``cpu.pressure``). The server reports ``some avg10`` of CPU and memory:

- ``cpu``: the host-side work of a request (tokenising, the batcher, the launch of each step's kernels) waits for
  a CPU the node's other pods are using;
- ``memory``: the node reclaims memory (the road to the kubelet's memory-pressure eviction), and a task that
  touches reclaimed pages stalls.

IO is left out: a replica holds its weights in memory and reads nothing per request, so a node busy writing (a
checkpoint, an image pull) does not slow it. ``avg10`` because the router reads it twice a second: the last minute
or five would keep a replica scored down long after its node has recovered.
"""

from __future__ import annotations

from pathlib import Path

RESOURCES = ("cpu", "memory")
"""The resources the server reports, each a file of the PSI directory (the module docstring says why these)."""
PSI_DIR = "/proc/pressure"
"""Where Linux publishes PSI; the server's ``node_pressure_dir`` by default."""


def some_avg10(text: str) -> float | None:
    """The ``some avg10`` share (0 to 1) of a PSI file's text; None when the text has no such field or it is not a
    percentage."""
    for line in text.splitlines():
        kind, _, fields = line.partition(" ")
        if kind != "some":
            continue
        for item in fields.split():
            key, _, value = item.partition("=")
            if key != "avg10":
                continue
            try:
                percent = float(value)
            except ValueError:
                return None
            return percent / 100 if 0 <= percent <= 100 else None
    return None


def read_node_pressure(directory: Path) -> dict[str, float]:
    """Each of :data:`RESOURCES` whose PSI file under ``directory`` is there and readable, with its ``some avg10``
    share; a resource whose file is missing (a kernel without PSI, or booted with ``psi=0``) or unreadable is left
    out rather than reported as 0, which would say the node is idle."""
    shares: dict[str, float] = {}
    for resource in RESOURCES:
        try:
            text = (directory / resource).read_text()
        except (OSError, UnicodeDecodeError):
            continue
        share = some_avg10(text)
        if share is not None:
            shares[resource] = share
    return shares
