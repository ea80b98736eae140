"""Progress reports as the operator would receive them, without an API server: the workload's reporter with its
HTTP patch replaced by a list, so a test reads exactly the values a worker would write to its pod."""

from __future__ import annotations

import ssl

import pytest

import strata_api as api
from strata_workloads import progress


def record_progress_reports(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Install a reporter for this test (a fresh "latest step" too); the list fills with each report's value."""
    sent: list[str] = []

    class Recording(progress.ProgressReporter):
        def patch(self, value: str) -> int:
            sent.append(value)
            return 200

    reporter = Recording("https://127.0.0.1:1", "team", "llm-worker-0", api.ANN_PROGRESS, ssl.create_default_context())
    monkeypatch.setattr(progress, "_reporter", lambda: reporter)
    monkeypatch.setattr(progress, "_latest", progress._Latest())
    return sent
