"""Progress reports to the operator: after each committed checkpoint, the worker annotates its own pod.

The operator reads the annotation (``{"step", "checkpointStep", "checkpointTime"}`` and the figures of the step
reached: loss, tokens/s, MFU, peak memory, validation loss) into the TrainingJob's ``status.progress`` and
``status.lastCheckpoint``, which is what a restart resumes from and what a user sees.
The pod's name, namespace and the annotation key come from the environment the operator's pod builder sets
(downward API and ``STRATA_PROGRESS_ANNOTATION``), so this module needs nothing of the operator's code. The pod
runs as its namespace's worker ServiceAccount; the chart's admission policy lets its token (bound to this pod)
patch only this pod, and only the progress annotation.

Only the standard library speaks to the API server (one JSON merge patch per checkpoint needs no client
library). Reporting never fails training: the first failure is logged, later ones are not, and every call
returns quickly (a short timeout).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from strata_api.workload import Progress, WorkerEnv

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where Kubernetes mounts a pod's ServiceAccount token and the cluster's CA."""
TIMEOUT_S = 5.0
"""Longest a report may hold up the checkpointing rank."""


@dataclass
class ProgressReporter:
    """Patches one pod's progress annotation with a bearer token."""

    server: str
    """API server URL, e.g. ``https://10.96.0.1:443``."""
    namespace: str
    pod: str
    annotation: str
    context: ssl.SSLContext
    token: str | None = None
    token_file: Path | None = None
    """Read at every report: projected ServiceAccount tokens are rotated by the kubelet."""
    _failed: bool = field(default=False, repr=False)

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str] | None = None, account_dir: Path = SERVICE_ACCOUNT_DIR
    ) -> ProgressReporter | None:
        """The reporter of a worker in a Strata pod; None outside one (a local run, a test without a cluster)."""
        env = os.environ if env is None else env
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
        names = (env.get(WorkerEnv.PROGRESS_ANNOTATION), env.get(WorkerEnv.POD_NAME), env.get(WorkerEnv.POD_NAMESPACE))
        token, ca = account_dir / "token", account_dir / "ca.crt"
        if not host or not all(names) or not token.is_file() or not ca.is_file():
            return None
        annotation, pod, namespace = (str(n) for n in names)
        server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        context = ssl.create_default_context(cafile=str(ca))
        return cls(server, namespace, pod, annotation, context, token_file=token)

    @staticmethod
    def value(step: int, checkpoint_step: int, when: datetime, loss: float | None = None) -> str:
        """The annotation's value, as the operator parses it."""
        return Progress(step=step, checkpoint_step=checkpoint_step, checkpoint_time=when, loss=loss).encode()

    def patch(self, value: str) -> int:
        """Set the annotation; the HTTP status (0 when the API server could not be reached)."""
        token = self.token_file.read_text().strip() if self.token_file is not None else self.token
        body = json.dumps({"metadata": {"annotations": {self.annotation: value}}}).encode()
        request = urllib.request.Request(
            f"{self.server}/api/v1/namespaces/{self.namespace}/pods/{self.pod}",
            data=body,
            method="PATCH",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/merge-patch+json",
                "Accept": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=self.context) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)
        except (OSError, ValueError):
            return 0

    def report(self, step: int, checkpoint_step: int, when: datetime | None = None, loss: float | None = None) -> bool:
        """Report a committed checkpoint; False (logged the first time only) when it did not reach the pod."""
        return self.send(Progress(step, checkpoint_step, when or datetime.now(UTC), loss))

    def send(self, report: Progress) -> bool:
        """Write ``report`` on the pod; False (logged the first time only) when it did not reach it."""
        try:
            status = self.patch(report.encode())
        except OSError as error:  # an unreadable token file
            status, detail = 0, repr(error)
        else:
            detail = f"HTTP {status}" if status else "API server unreachable"
        if 200 <= status < 300:
            return True
        if not self._failed:
            self._failed = True
            log.warning(
                "progress report failed; training goes on (later failures are not logged)",
                extra={"pod": f"{self.namespace}/{self.pod}", "error": detail},
            )
        return False


@functools.cache
def _reporter() -> ProgressReporter | None:
    return ProgressReporter.from_environment()


@dataclass
class _Latest:
    """The last step the trainer completed and its figures, and the last validation loss: what a report says
    besides the checkpoint."""

    step: int = 0
    loss: float | None = None
    tokens_per_second: float | None = None
    mfu: float | None = None
    peak_memory_bytes: int | None = None
    validation_loss: float | None = None


_latest = _Latest()


def note_step(
    step: int,
    loss: float,
    tokens_per_second: float | None = None,
    mfu: float | None = None,
    peak_memory_bytes: int | None = None,
) -> None:
    """The trainer completed ``step`` with these figures (no I/O: the next report carries them)."""
    _latest.step, _latest.loss, _latest.tokens_per_second, _latest.mfu = step, loss, tokens_per_second, mfu
    _latest.peak_memory_bytes = peak_memory_bytes


def note_validation(loss: float) -> None:
    """An evaluation on the held-out split gave ``loss`` (no I/O: the next report carries it)."""
    _latest.validation_loss = loss


def latest_report(checkpoint_step: int, when: datetime) -> Progress:
    """What a report of a committed checkpoint of ``checkpoint_step`` says: the step the trainer has reached by
    now (an asynchronous save commits while training goes on) with that step's figures when they are known,
    the peak memory and the last validation loss."""
    reached = max(checkpoint_step, _latest.step)
    known = _latest.step == reached
    return Progress(
        step=reached,
        checkpoint_step=checkpoint_step,
        checkpoint_time=when,
        loss=_latest.loss if known else None,
        tokens_per_second=_latest.tokens_per_second if known else None,
        mfu=_latest.mfu if known else None,
        peak_memory_bytes=_latest.peak_memory_bytes,
        validation_loss=_latest.validation_loss,
    )


def report_checkpoint(step: int) -> None:
    """A checkpoint of ``step`` is committed: say so on this pod (when running in one). Never raises."""
    reporter = _reporter()
    if reporter is not None:
        reporter.send(latest_report(step, datetime.now(UTC)))
