"""Checkpoints: exact resume, resharded load, SIGTERM, and torn writes never taken for complete."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
from workloads_checkpoint import single_process_state
from workloads_launch import Job, launch

from strata_api.workload import ExitCode
from strata_workloads import checkpoint as ckpt
from strata_workloads.checkpoint import MARKER, Checkpointer, TrainState, complete_checkpoints, latest


@pytest.mark.unit
# Eight rank start-ups in two waves: on a starved 2-core CI machine importing torch alone can take a minute.
@pytest.mark.timeout(900)
def test_sigterm_checkpoint_resumes_exactly_and_loads_into_another_layout(tmp_path: Path) -> None:
    jobs: list[Job] = []
    try:
        _sigterm_resume_reshard(tmp_path, jobs)
    finally:
        for job in jobs:
            job.kill()


def _sigterm_resume_reshard(tmp_path: Path, jobs: list[Job]) -> None:
    # Uninterrupted reference and an interrupted run, side by side: pipeline parallel over 2 ranks.
    # Dense model: top-1 expert routing is discontinuous, so last-ulp differences between layouts could flip a
    # token's expert and the resharded run could not be held to a tight tolerance.
    layout = {"pp": "2", "pp_schedule": "1f1b", "model": "debug-dense"}
    straight = launch(tmp_path, "straight", 2, checkpoint_dir=str(tmp_path / "straight"), **layout)
    interrupted = launch(tmp_path, "interrupted", 2, checkpoint_dir=str(tmp_path / "interrupted"), **layout)
    jobs += [straight, interrupted]
    interrupted.wait_for_step(2)
    interrupted.terminate()
    assert interrupted.wait() == [ExitCode.CHECKPOINTED, ExitCode.CHECKPOINTED], interrupted.logs[0].read_text()[-3000:]
    assert straight.wait() == [ExitCode.SUCCEEDED, ExitCode.SUCCEEDED], straight.logs[0].read_text()[-3000:]
    saved = latest(tmp_path / "interrupted")
    assert saved is not None, "SIGTERM left no complete checkpoint"
    stopped_at = int(saved.name.split("-")[1])
    assert 2 <= stopped_at < 6

    resumed = launch(tmp_path, "resumed", 2, checkpoint_dir=str(tmp_path / "interrupted"), **layout)
    # Resharded: the uninterrupted run's step-3 checkpoint, loaded under tensor parallel instead of pipeline.
    resharded_dir = tmp_path / "resharded"
    resharded_dir.mkdir()
    shutil.copytree(tmp_path / "straight" / "step-00000003", resharded_dir / "step-00000003")
    resharded = launch(tmp_path, "resharded", 2, checkpoint_dir=str(resharded_dir), tp="2", model="debug-dense")
    jobs += [resumed, resharded]
    assert resumed.wait() == [ExitCode.SUCCEEDED, ExitCode.SUCCEEDED], resumed.logs[0].read_text()[-3000:]
    assert resharded.wait() == [ExitCode.SUCCEEDED, ExitCode.SUCCEEDED], resharded.logs[0].read_text()[-3000:]

    want = straight.losses()
    assert sorted(want) == [1, 2, 3, 4, 5, 6]
    got = resumed.losses()
    assert sorted(got) == list(range(stopped_at + 1, 7))
    for step, loss in got.items():
        assert loss == pytest.approx(want[step], rel=1e-6, abs=0), (step, got, want)
    other = resharded.losses()
    assert sorted(other) == [4, 5, 6]
    for step, loss in other.items():
        assert math.isclose(loss, want[step], rel_tol=1e-5), (step, other, want)


@pytest.mark.unit
def test_torn_write_is_never_taken_for_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpointer, parts, optimizer, scheduler = single_process_state(tmp_path)
    checkpointer.save(parts, optimizer, scheduler, TrainState(step=1))
    assert latest(tmp_path) == tmp_path / "step-00000001"

    def crash_midway(state: dict[str, object], checkpoint_id: str, no_dist: bool) -> None:
        Path(checkpoint_id).mkdir(parents=True)
        (Path(checkpoint_id) / "__0_0.distcp").write_bytes(b"half a shard")
        raise OSError("node lost mid-write")

    monkeypatch.setattr(ckpt, "dcp_save", crash_midway)
    with pytest.raises(OSError, match="mid-write"):
        checkpointer.save(parts, optimizer, scheduler, TrainState(step=2))
    # A folder with the final name but no marker (e.g. a copy cut short) is not complete either.
    shutil.copytree(tmp_path / "step-00000001", tmp_path / "step-00000003")
    (tmp_path / "step-00000003" / MARKER).unlink()
    assert latest(tmp_path) == tmp_path / "step-00000001"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpointer.load(tmp_path / "step-00000003", parts, optimizer, scheduler, TrainState())
    # A restarted job clears the leftovers of the torn write.
    Checkpointer(tmp_path, keep=2, async_save=False)
    assert not (tmp_path / "step-00000002.tmp").exists()


@pytest.mark.unit
def test_keeps_only_the_last_k_complete_checkpoints(tmp_path: Path) -> None:
    checkpointer, parts, optimizer, scheduler = single_process_state(tmp_path)
    for step in (1, 2, 3, 4):
        checkpointer.save(parts, optimizer, scheduler, TrainState(step=step))
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
