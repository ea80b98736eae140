"""Checkpoints that never resume garbage: checksums verified on load, fallback to the previous complete
checkpoint when the newest is damaged, a clear failure when none loads, retention that keeps the good one."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from workloads_checkpoint import flip_a_bit, single_process_state
from workloads_launch import Job, launch

from strata_api.workload import ExitCode
from strata_workloads.checkpoint import (
    MARKER,
    CorruptCheckpoint,
    NoUsableCheckpoint,
    TrainState,
    complete_checkpoints,
)
from strata_workloads.inference import load_model


def _truncate_a_shard(folder: Path) -> None:
    shard = max(folder.glob("*.distcp"), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])


def _overwrite_bytes(folder: Path) -> None:
    shard = max(folder.glob("*.distcp"), key=lambda p: p.stat().st_size)
    data = bytearray(shard.read_bytes())
    data[100:4196] = b"\x7f" * 4096
    shard.write_bytes(bytes(data))


def _truncate_metadata(folder: Path) -> None:
    meta = folder / ".metadata"
    meta.write_bytes(meta.read_bytes()[:40])


def _wrong_checksum(folder: Path) -> None:
    manifest = json.loads((folder / MARKER).read_text())
    name = next(iter(manifest["sha256"]))
    manifest["sha256"][name] = "0" * 64
    (folder / MARKER).write_text(json.dumps(manifest))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "flipped bit": flip_a_bit,
    "truncated shard": _truncate_a_shard,
    "overwritten bytes": _overwrite_bytes,
    "truncated .metadata": _truncate_metadata,
    "wrong checksum": _wrong_checksum,
}


def _first_weight(parts: list[torch.nn.Module]) -> torch.Tensor:
    return next(parts[0].parameters())


def _save_two(root: Path) -> tuple[torch.Tensor, Path]:
    """Checkpoints at steps 1 and 2 with different weights; the weights of step 1 and the step-2 folder."""
    checkpointer, parts, optimizer, scheduler = single_process_state(root)
    with torch.no_grad():
        _first_weight(parts).fill_(1.0)
    checkpointer.save(parts, optimizer, scheduler, TrainState(step=1))
    step_1 = _first_weight(parts).detach().clone()
    with torch.no_grad():
        _first_weight(parts).fill_(2.0)
    return step_1, checkpointer.save(parts, optimizer, scheduler, TrainState(step=2))


@pytest.mark.unit
@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    step_1, newest = _save_two(tmp_path)
    DAMAGE[damage](newest)

    checkpointer, parts, optimizer, scheduler = single_process_state(tmp_path)
    with caplog.at_level(logging.WARNING, logger="strata_workloads.checkpoint"):
        loaded = checkpointer.load_newest(parts, optimizer, scheduler, TrainState())
    assert loaded is not None
    path, state = loaded
    assert (path.name, state.step) == ("step-00000001", 1)
    assert torch.equal(_first_weight(parts), step_1), "the weights are step 1's, none of the damaged step 2's"
    warnings = [r for r in caplog.records if r.getMessage() == "checkpoint unusable, falling back to the previous one"]
    assert len(warnings) == 1
    assert warnings[0].checkpoint == str(newest)  # type: ignore[attr-defined]
    assert warnings[0].reason  # type: ignore[attr-defined]
    # Moved aside, kept for a person to look at, and never again counted as a complete checkpoint.
    assert (tmp_path / "step-00000002.bad").is_dir()
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000001"]


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_a_flipped_bit_names_the_file_that_fails_its_checksum(tmp_path: Path) -> None:
    _, newest = _save_two(tmp_path)
    flip_a_bit(newest)
    checkpointer, parts, optimizer, scheduler = single_process_state(tmp_path)
    with pytest.raises(Exception, match=r"\.distcp fails its checksum"):
        checkpointer.load(newest, parts, optimizer, scheduler, TrainState())


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_serving_refuses_a_named_checkpoint_that_fails_its_checksum(tmp_path: Path) -> None:
    _, newest = _save_two(tmp_path)
    load_model("debug-dense", newest)  # intact: loads
    flip_a_bit(newest)
    with pytest.raises(CorruptCheckpoint, match=r"\.distcp fails its checksum"):
        load_model("debug-dense", newest)


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_serving_a_root_falls_back_past_a_damaged_newest_with_a_warning_and_moves_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, newest = _save_two(tmp_path)
    previous = tmp_path / "step-00000001"
    expected = load_model("debug-dense", previous).state_dict()
    assert any(not torch.equal(t, expected[k]) for k, t in load_model("debug-dense", newest).state_dict().items())
    flip_a_bit(newest)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="strata_workloads"):
        served = load_model("debug-dense", tmp_path).state_dict()
    assert all(torch.equal(served[k], t) for k, t in expected.items())  # the previous checkpoint's weights
    loaded = [r.checkpoint for r in caplog.records if r.getMessage() == "weights loaded"]  # type: ignore[attr-defined]
    assert loaded == [str(previous)]  # the log names the step served, not the damaged newest
    warnings = [r for r in caplog.records if r.getMessage() == "checkpoint unusable, falling back to the previous one"]
    assert [w.checkpoint for w in warnings] == [str(newest)]  # type: ignore[attr-defined]
    assert "fails its checksum" in warnings[0].reason  # type: ignore[attr-defined]
    assert not hasattr(warnings[0], "moved_to")
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000001", "step-00000002"]  # read only
    _truncate_metadata(previous)
    with pytest.raises(NoUsableCheckpoint, match=r"step-00000002: .*checksum.*; step-00000001: "):
        load_model("debug-dense", tmp_path)
    # The server's entry point says so with the code no restart mends, instead of crash-looping.
    server = _serve(tmp_path)
    assert server.returncode == ExitCode.NO_USABLE_CHECKPOINT, server.stderr[-2000:]
    assert "no usable checkpoint" in server.stderr
    # a checkpoint setting with nothing under it (a wrong spec.model.path) is said the same way, not a traceback
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    server = _serve(empty)
    assert server.returncode == ExitCode.NO_USABLE_CHECKPOINT, server.stderr[-2000:]
    assert f"no complete checkpoint under {empty}" in server.stderr


def _serve(checkpoint: Path) -> subprocess.CompletedProcess[str]:
    """The server's entry point on ``checkpoint``, run to its exit."""
    command = [sys.executable, "-m", "strata_workloads.serve", "--model", "debug-dense", "--checkpoint"]
    command.append(str(checkpoint))
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_no_loadable_checkpoint_is_an_error_that_names_each_one(tmp_path: Path) -> None:
    _, newest = _save_two(tmp_path)
    flip_a_bit(newest)
    _truncate_metadata(tmp_path / "step-00000001")
    checkpointer, parts, optimizer, scheduler = single_process_state(tmp_path)
    with pytest.raises(NoUsableCheckpoint, match=r"step-00000002: .*checksum.*; step-00000001: .*checksum"):
        checkpointer.load_newest(parts, optimizer, scheduler, TrainState())


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_a_checkpoint_without_checksums_loads_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    step_1, newest = _save_two(tmp_path)
    shutil.rmtree(newest)
    (tmp_path / "step-00000001" / MARKER).write_text("ok\n")  # the marker before checksums were recorded
    checkpointer, parts, optimizer, scheduler = single_process_state(tmp_path)
    with caplog.at_level(logging.WARNING, logger="strata_workloads.checkpoint"):
        loaded = checkpointer.load_newest(parts, optimizer, scheduler, TrainState())
    assert loaded is not None
    assert loaded[1].step == 1
    assert torch.equal(_first_weight(parts), step_1)
    assert any("no checksums" in r.getMessage() for r in caplog.records)


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_an_unverifiable_old_checkpoint_that_fails_to_load_falls_back(tmp_path: Path) -> None:
    step_1, newest = _save_two(tmp_path)
    for folder in (tmp_path / "step-00000001", newest):
        (folder / MARKER).write_text("ok\n")
    _truncate_metadata(newest)  # no checksum to catch it: the load itself fails
    checkpointer, parts, optimizer, scheduler = single_process_state(tmp_path)
    loaded = checkpointer.load_newest(parts, optimizer, scheduler, TrainState())
    assert loaded is not None
    assert loaded[1].step == 1
    assert torch.equal(_first_weight(parts), step_1)


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_a_damaged_newest_checkpoint_never_pushes_the_good_one_out(tmp_path: Path) -> None:
    # keep=1: were the damaged step 5 still counted, saving step 2 after the fallback would leave
    # [1, 2, 5 (damaged)] and keep-1 retention would delete both good ones.
    _, newest = _save_two(tmp_path)
    damaged = newest.rename(tmp_path / "step-00000005")
    flip_a_bit(damaged)
    checkpointer, parts, optimizer, scheduler = single_process_state(tmp_path, keep=1)
    loaded = checkpointer.load_newest(parts, optimizer, scheduler, TrainState())
    assert loaded is not None
    assert loaded[1].step == 1
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000001"]
    checkpointer.save(parts, optimizer, scheduler, TrainState(step=2))
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000002"]
    again, parts, optimizer, scheduler = single_process_state(tmp_path, keep=1)
    reloaded = again.load_newest(parts, optimizer, scheduler, TrainState())
    assert reloaded is not None
    assert reloaded[1].step == 2


@pytest.mark.unit
@pytest.mark.timeout(600)  # three single-process runs of the real entry point on a starved 2-core machine
def test_the_entry_point_resumes_from_the_last_good_checkpoint_or_fails_without_retry(tmp_path: Path) -> None:
    jobs: list[Job] = []
    try:
        straight = launch(tmp_path, "straight", 1, checkpoint_dir=str(tmp_path / "straight"), model="debug-dense")
        jobs.append(straight)
        assert straight.wait() == [ExitCode.SUCCEEDED], straight.logs[0].read_text()[-3000:]
        shutil.copytree(tmp_path / "straight", tmp_path / "newest_damaged")
        flip_a_bit(tmp_path / "newest_damaged" / "step-00000006")
        shutil.copytree(tmp_path / "newest_damaged", tmp_path / "all_damaged")
        _truncate_a_shard(tmp_path / "all_damaged" / "step-00000003")
        fallback = launch(tmp_path, "fallback", 1, checkpoint_dir=str(tmp_path / "newest_damaged"), model="debug-dense")
        hopeless = launch(tmp_path, "hopeless", 1, checkpoint_dir=str(tmp_path / "all_damaged"), model="debug-dense")
        jobs += [fallback, hopeless]
        assert fallback.wait() == [ExitCode.SUCCEEDED], fallback.logs[0].read_text()[-3000:]
        # Not exit 1 ("retry"): a restart would find the same bytes.
        assert hopeless.wait() == [ExitCode.NO_USABLE_CHECKPOINT], hopeless.logs[0].read_text()[-3000:]
    finally:
        for job in jobs:
            job.kill()

    warning = next(r for r in fallback.records() if r["msg"] == "checkpoint unusable, falling back to the previous one")
    assert warning["checkpoint"] == str(tmp_path / "newest_damaged" / "step-00000006")
    assert "fails its checksum" in str(warning["reason"])
    want, got = straight.losses(), fallback.losses()
    assert sorted(got) == [4, 5, 6]  # resumed from step 3
    for step, loss in got.items():
        assert loss == pytest.approx(want[step], rel=1e-6, abs=0), (step, got, want)
    error = next(r for r in hopeless.records() if r["msg"] == "no usable checkpoint")
    assert "step-00000006" in str(error["error"])
    assert "step-00000003" in str(error["error"])
    assert hopeless.losses() == {}, "no step is trained from a fresh model over damaged checkpoints"
