"""Batches do not depend on the layout, through the real entry point: a JSON-lines dataset prepared with
`python -m strata_workloads.prepare` and trained by one process (two micro-batches accumulated), and the same
file prepared at start-up by each rank of an fsdp=2 run and of a pp=2 run, with the default eight shards (which a
hash ring once split 6/2 over two ranks), train on the same batches: the same loss and validation loss at every
step. A dataset with a bad line exits with the bad-configuration code and names the line and field."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
from workloads_launch import Job, launch

from strata_api.workload import ExitCode

WORDS = ("the", "a", "model", "data", "token", "batch", "rank", "shard", "step", "loss", "window", "pack", "seed")
PREPARE = [sys.executable, "-m", "strata_workloads.prepare"]
SETTINGS = {
    "model": "debug-dense",
    "steps": "4",
    "eval_every_steps": "2",
    "eval_batches": "2",
    "anomaly_contamination": "0",
    "data_validation_fraction": "0.1",
    "checkpoint_every_steps": "0",
    "data_max_docs": "0",  # every document (the launcher's default reads 60)
}


def _write_dataset(path: Path) -> None:
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40)))} for _ in range(200)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _step_records(job: Job) -> dict[int, dict[str, object]]:
    return {int(r["step"]): r for r in job.records() if r.get("msg") == "step"}  # type: ignore[call-overload]


@pytest.mark.unit
@pytest.mark.timeout(600)  # five rank start-ups on a starved 2-core machine
def test_one_process_and_fsdp_train_on_the_same_batches(tmp_path: Path) -> None:
    dataset = tmp_path / "corpus.jsonl"
    _write_dataset(dataset)
    prepared = tmp_path / "prepared"
    subprocess.run(
        [*PREPARE, "--validation-fraction", "0.1", "--source", str(dataset), "--out", str(prepared)],
        check=True,
        timeout=300,
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text(dataset.read_text() + '{"txt": "no text field"}\n')
    jobs: list[Job] = []
    try:
        one = launch(tmp_path, "one", 1, data_dir=str(prepared), **SETTINGS)
        fsdp = launch(tmp_path, "fsdp", 2, data_dir=str(dataset), **SETTINGS)
        pipeline = launch(tmp_path, "pp", 2, data_dir=str(dataset), pp="2", pp_schedule="1f1b", **SETTINGS)
        broken = launch(tmp_path, "broken", 1, data_dir=str(bad), **SETTINGS)
        jobs += [one, fsdp, pipeline, broken]
        assert one.wait() == [ExitCode.SUCCEEDED], one.logs[0].read_text()[-3000:]
        assert fsdp.wait() == [ExitCode.SUCCEEDED] * 2, fsdp.logs[0].read_text()[-3000:]
        assert pipeline.wait() == [ExitCode.SUCCEEDED] * 2, pipeline.logs[0].read_text()[-3000:]
        assert broken.wait() == [ExitCode.INVALID_CONFIGURATION]
    finally:
        for job in jobs:
            job.kill()

    assert "bad.jsonl line 201: no field 'text' (fields: txt)" in broken.logs[0].read_text()
    want = _step_records(one)
    assert sorted(want) == [1, 2, 3, 4]
    evaluated = [step for step in want if "val_loss" in want[step]]
    assert evaluated == [2, 4]
    assert all(math.isfinite(float(want[step]["val_loss"])) for step in evaluated)  # type: ignore[arg-type]
    for job in (fsdp, pipeline):
        got = _step_records(job)
        assert sorted(got) == [1, 2, 3, 4]
        for step in want:
            assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=1e-5), (job.logs[0], step)
        for step in evaluated:
            assert got[step]["val_loss"] == pytest.approx(want[step]["val_loss"], rel=1e-5), (job.logs[0], step)
    assert float(want[4]["val_loss"]) < float(want[2]["val_loss"])  # type: ignore[arg-type]
