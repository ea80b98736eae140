"""TrainingJobs as the operator holds them in memory, and the one way their status is written.

The job index (kopf's, filled by :mod:`strata_operator.handlers.trainingjob`) holds a :class:`JobEntry` per job;
the admission pass and each job's daemon write status through :func:`patch_status`, guarded by the
resourceVersion they read, so a stale view never writes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import strata_api as api
from strata_api import Phase, TrainingJob
from strata_operator.core.lifecycle import once_moment_of
from strata_operator.core.status import Event
from strata_operator.runtime.events import write_with_events
from strata_operator.runtime.kube import custom_path
from strata_operator.runtime.shared import Runtime


@dataclass(frozen=True)
class JobEntry:
    """A TrainingJob as the index holds it: the typed view, its raw status and its resourceVersion."""

    job: TrainingJob
    status: Mapping[str, Any]
    resource_version: str
    finalized: bool = True
    """kopf's finalizer is on the job: its first patch is done, so a guarded write will not race it."""

    @property
    def ref(self) -> dict[str, Any]:
        """What kopf needs to post an event about the job."""
        return {
            "apiVersion": api.API_VERSION,
            "kind": api.TRAINING_JOB,
            "metadata": {"name": self.job.name, "namespace": self.job.namespace, "uid": self.job.uid},
        }

    @property
    def status_path(self) -> str:
        return custom_path(api.GROUP, api.VERSION, api.TRAINING_JOBS, self.job.name, self.job.namespace) + "/status"


async def patch_status(runtime: Runtime, entry: JobEntry, patch: Mapping[str, Any], events: list[Event]) -> bool:
    """Write a status change if the job is still what we read; False when it changed meanwhile. Either way the
    view it was decided from is outdated now, which :meth:`Runtime.written_from` records for every writer: the
    admission pass's write of a new job reaches its daemon through the watch, and a daemon that decided from the
    older view before then would only conflict."""
    if not patch:
        return True
    runtime.written_from[entry.job.key] = (entry.resource_version, time.monotonic())
    job, written = entry.job, patch.get("phase")
    after = Phase(written) if written else job.status.phase
    attempt = int(patch.get("attempt", job.status.attempt))  # an admission writes its new attempt
    moment = once_moment_of(job, after, attempt)
    return await write_with_events(
        runtime.api,
        entry.ref,
        [replace(e, once=moment) for e in events],
        lambda: runtime.api.patch_status_if_unchanged(entry.status_path, entry.resource_version, patch),
    )
