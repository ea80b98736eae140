"""A real short training run reports the figures a user watches: tokens/s, MFU, peak memory, loss, gradient norm and
learning rate in each step's JSON log line, in the metrics Prometheus scrapes, and in the progress report the
operator reads into the TrainingJob's status."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytest
from progress_support import record_progress_reports
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from strata_api.workload import ExitCode, Progress
from strata_workloads.settings import load_train_settings
from strata_workloads.trainer import Process, Trainer, TrainingPlan

SETTINGS = {
    "STRATA_MODEL": "debug-dense",
    "STRATA_STEPS": "3",
    "STRATA_GLOBAL_BATCH": "4",
    "STRATA_MICRO_BATCH": "2",
    "STRATA_SEQ_LEN": "32",
    "STRATA_DATA_MAX_DOCS": "60",
    "STRATA_LOG_FORMAT": "json",
    "STRATA_CHECKPOINT_ASYNC": "false",
}


@pytest.mark.timeout(300)
def test_a_short_run_logs_exports_and_reports_its_figures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = record_progress_reports(monkeypatch)
    settings = load_train_settings([], env={**SETTINGS, "STRATA_CHECKPOINT_DIR": str(tmp_path / "ckpt")})
    process = Process.join({})
    sigterm = signal.getsignal(signal.SIGTERM)
    with caplog.at_level(logging.INFO, logger="strata_workloads.train"):
        trainer = Trainer(settings, TrainingPlan.of(settings, process.world), process, show_bar=False)
        try:
            assert trainer.fit() == ExitCode.SUCCEEDED
        finally:
            signal.signal(signal.SIGTERM, sigterm)
            scratch = getattr(getattr(trainer, "data", None), "scratch", None)  # the corpus prepared at start
            if scratch is not None:
                scratch.cleanup()

    steps = [r.__dict__ for r in caplog.records if r.getMessage() == "step"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    for line in steps:
        assert line["tokens_per_s"] > 0
        assert 0 < line["mfu"] < 1  # against the CPU's matrix-product rate measured at start
        assert line["peak_memory_bytes"] > 10 * 2**20  # the process's resident set: torch alone is more
        assert min(line["loss"], line["grad_norm"], line["lr"]) > 0

    families = {f.name: f for f in text_string_to_metric_families(generate_latest(trainer.metrics.registry).decode())}
    samples = {s.name: s.value for f in families.values() for s in f.samples}
    assert samples["strata_train_tokens_total"] == 3 * 4 * 32
    assert samples["strata_train_model_flops_total"] == 3 * 4 * 32 * trainer.flops_per_token
    assert samples["strata_train_device_peak_flops"] > 0
    assert samples["strata_train_learning_rate"] == steps[-1]["lr"]
    assert samples["strata_train_peak_memory_bytes"] >= steps[-1]["peak_memory_bytes"]
    assert samples["strata_train_loss"] == steps[-1]["loss"]

    final = Progress.parse(sent[-1])  # the report of the last checkpoint, as the operator reads it
    assert (final.step, final.checkpoint_step, final.loss) == (3, 3, steps[-1]["loss"])
    assert final.tokens_per_second == pytest.approx(steps[-1]["tokens_per_s"])
    assert final.mfu == pytest.approx(steps[-1]["mfu"])
    assert final.peak_memory_bytes == steps[-1]["peak_memory_bytes"]
