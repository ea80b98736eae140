"""Processes of the local cluster: start one in its own process group so it dies with the launcher, stop its
whole group, and the one error type every start failure raises (:class:`ClusterError`).

Standard library only, below :mod:`strata_dev.cluster` and :mod:`strata_dev.node`, which both run components.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path


class ClusterError(RuntimeError):
    """One line that says which component failed, what to do and where its log is."""


def free_port() -> int:
    """A loopback port free right now (the component that binds it comes next)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    os.setpgrp()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(
    args: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``args`` in its own process group with output to ``log``; it dies with this process."""
    with log.open("wb") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            preexec_fn=_die_with_parent,
        )


@dataclass
class Component:
    """One running control-plane process and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 5) -> str:
        try:
            return "\n    ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"


def terminate(process: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """End ``process``'s whole group: SIGTERM, then SIGKILL after ``grace_s``."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
