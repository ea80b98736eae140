"""The workload's progress reports and the operator agree: the pod carries the names the reporter reads, the value
the reporter writes is one the operator parses, and a report that cannot be delivered never stops training."""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime
from pathlib import Path

import pytest
from operator_builders import a_job, a_pool
from progress_support import record_progress_reports

import strata_api as api
from strata_api.workload import Progress, WorkerEnv
from strata_operator.core.pods import build_worker_pods
from strata_operator.settings import OperatorSettings
from strata_workloads import progress


def test_the_pod_carries_every_name_the_reporter_reads() -> None:
    job = a_job(name="llm", data=2, tensor=8, status={"phase": "Admitted", "attempt": 1})
    for pod in build_worker_pods(job, a_pool(), OperatorSettings()):
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env[WorkerEnv.PROGRESS_ANNOTATION]["value"] == api.ANN_PROGRESS
        assert env[WorkerEnv.POD_NAME]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env[WorkerEnv.POD_NAMESPACE]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
        assert pod["spec"]["automountServiceAccountToken"] is True


def test_the_value_the_workload_writes_is_the_one_the_operator_reads() -> None:
    when = datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC)
    parsed = Progress.parse(progress.ProgressReporter.value(step=130, checkpoint_step=120, when=when))
    assert parsed == Progress(step=130, checkpoint_step=120, checkpoint_time=when)


def test_the_loss_travels_with_the_step_and_a_value_json_cannot_hold_is_dropped() -> None:
    when = datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC)
    value = progress.ProgressReporter.value(step=130, checkpoint_step=120, when=when, loss=2.25)
    assert Progress.parse(value).loss == 2.25
    assert "loss" not in progress.ProgressReporter.value(step=1, checkpoint_step=1, when=when, loss=float("nan"))
    for hostile in ('"2.5"', "true", "1e999", str(10**400), "[1]"):
        assert Progress.parse(f'{{"step": 3, "loss": {hostile}}}') == Progress(step=3), hostile


def test_a_checkpoint_report_carries_the_step_the_trainer_reached_and_its_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent = record_progress_reports(monkeypatch)
    progress.note_step(120, 3.5)
    progress.report_checkpoint(120)
    progress.note_step(125, 3.25)  # an asynchronous save of step 120 commits while step 125 is done
    progress.report_checkpoint(120)
    first, second = (Progress.parse(v) for v in sent)
    assert (first.step, first.checkpoint_step, first.loss) == (120, 120, 3.5)
    assert (second.step, second.checkpoint_step, second.loss) == (125, 120, 3.25)


def test_outside_a_strata_pod_there_is_no_reporter(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", WorkerEnv.PROGRESS_ANNOTATION: api.ANN_PROGRESS}
    assert progress.ProgressReporter.from_environment({}, tmp_path) is None
    assert progress.ProgressReporter.from_environment(env, tmp_path) is None  # no pod name, no token


def test_an_undeliverable_report_is_logged_once_and_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    reporter = progress.ProgressReporter(
        "https://127.0.0.1:1", "team", "llm-worker-0", api.ANN_PROGRESS, ssl.create_default_context(), token="t"
    )
    with caplog.at_level(logging.WARNING, logger=progress.__name__):
        assert reporter.report(10, 10) is False
        assert reporter.report(20, 20) is False
    assert [r.getMessage() for r in caplog.records].count(
        "progress report failed; training goes on (later failures are not logged)"
    ) == 1


def test_the_figures_of_the_step_reached_travel_with_the_report_and_the_operator_reads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(progress, "_latest", progress._Latest())
    when = datetime(2026, 3, 1, 12, 30, 5, tzinfo=UTC)
    progress.note_validation(2.5)
    progress.note_step(120, 2.25, tokens_per_second=51_200.0, mfu=0.42, peak_memory_bytes=70 * 2**30)
    report = Progress.parse(progress.latest_report(120, when).encode())
    assert report == Progress(120, 120, when, 2.25, 51_200.0, 0.42, 70 * 2**30, 2.5)
    # A checkpoint past the last step noted (saved before any step of this attempt): that step's figures are not
    # known; the peak memory and the last validation loss still are.
    later = Progress.parse(progress.latest_report(130, when).encode())
    assert later == Progress(130, 130, when, peak_memory_bytes=70 * 2**30, validation_loss=2.5)
