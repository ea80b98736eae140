"""Resume at another world size and layout through the real entry point: fsdp=2 -> one process, one process ->
fsdp=2, tp=2 -> one process, tp=2 -> pp=2. Each resumes the uninterrupted runs' step-3 checkpoint and trains
to step 6. The same runs show the fallback over two ranks: fsdp=2 over its own checkpoints with a flipped bit
in step 6."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from workloads_checkpoint import flip_a_bit
from workloads_launch import Job, launch

from strata_api.workload import ExitCode

DENSE = {"model": "debug-dense"}  # top-1 expert routing would flip on last-ulp differences between layouts


def _resume_from_step_3(tmp: Path, source: Path, name: str, world: int, **layout: str) -> Job:
    target = tmp / name
    target.mkdir()
    shutil.copytree(source / "step-00000003", target / "step-00000003")
    return launch(tmp, name, world, checkpoint_dir=str(target), **DENSE, **layout)


def _succeeded(job: Job) -> None:
    assert set(job.wait()) == {ExitCode.SUCCEEDED}, job.logs[0].read_text()[-3000:]


@pytest.mark.unit
@pytest.mark.timeout(900)  # fifteen rank start-ups in two waves on a starved 2-core machine
def test_resume_at_another_world_size_and_layout(tmp_path: Path) -> None:
    jobs: list[Job] = []
    try:
        one = launch(tmp_path, "one", 1, checkpoint_dir=str(tmp_path / "one"), **DENSE)
        fsdp = launch(tmp_path, "fsdp", 2, checkpoint_dir=str(tmp_path / "fsdp"), **DENSE)
        tp = launch(tmp_path, "tp", 2, checkpoint_dir=str(tmp_path / "tp"), tp="2", **DENSE)
        jobs += [one, fsdp, tp]
        for job in (one, fsdp, tp):
            _succeeded(job)
        fsdp_to_one = _resume_from_step_3(tmp_path, tmp_path / "fsdp", "fsdp_to_one", 1)
        one_to_fsdp = _resume_from_step_3(tmp_path, tmp_path / "one", "one_to_fsdp", 2)
        tp_to_one = _resume_from_step_3(tmp_path, tmp_path / "tp", "tp_to_one", 1)
        tp_to_pp = _resume_from_step_3(tmp_path, tmp_path / "tp", "tp_to_pp", 2, pp="2", pp_schedule="1f1b")
        shutil.copytree(tmp_path / "fsdp", tmp_path / "fsdp_damaged")
        flip_a_bit(tmp_path / "fsdp_damaged" / "step-00000006")
        fallback = launch(tmp_path, "fallback", 2, checkpoint_dir=str(tmp_path / "fsdp_damaged"), **DENSE)
        jobs += [fsdp_to_one, one_to_fsdp, tp_to_one, tp_to_pp, fallback]
        for job in (fsdp_to_one, one_to_fsdp, tp_to_one, tp_to_pp, fallback):
            _succeeded(job)
    finally:
        for job in jobs:
            job.kill()

    want = one.losses()
    assert sorted(want) == [1, 2, 3, 4, 5, 6]
    # Every layout trains on the same batches (data.PackedLoader: one global sample order, the data position one
    # sample count), so the uninterrupted fsdp=2 run and every resumed run, whatever its world size and layout,
    # have the losses of one process never stopped.
    for step, loss in fsdp.losses().items():
        assert loss == pytest.approx(want[step], rel=1e-5), (step, fsdp.losses(), want)
    for resumed in (fsdp_to_one, one_to_fsdp, tp_to_one, tp_to_pp):
        got = resumed.losses()
        assert sorted(got) == [4, 5, 6]
        for step, loss in got.items():
            assert loss == pytest.approx(want[step], rel=1e-5), (resumed.logs[0], step, got, want)
    # Both ranks skipped the damaged step 6 and continued from step 3 exactly as the uninterrupted run did.
    got, reference = fallback.losses(), fsdp.losses()
    assert sorted(got) == [4, 5, 6]
    for step, loss in got.items():
        assert loss == pytest.approx(reference[step], rel=1e-6, abs=0), (step, got, reference)
