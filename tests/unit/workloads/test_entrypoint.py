"""The operator's contract with `python -m strata_workloads.train`: an invalid layout or setting exits 2 (the operator
fails the job instead of retrying it) with a message naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from workloads_launch import launch

from strata_api.workload import ExitCode


@pytest.mark.unit
def test_invalid_layout_exits_with_the_bad_config_code_and_names_the_degrees(tmp_path: Path) -> None:
    job = launch(tmp_path, "bad", 1, tp="2", pp="2")
    assert job.wait(timeout=180) == [ExitCode.INVALID_CONFIGURATION]
    errors = [r for r in job.records() if r.get("msg") == "invalid configuration"]
    assert len(errors) == 1
    assert "tp=2 * pp=2 = 4, but world_size=1" in str(errors[0]["error"])


@pytest.mark.unit
def test_a_setting_that_does_not_parse_exits_with_the_bad_config_code_and_names_the_variable(tmp_path: Path) -> None:
    job = launch(tmp_path, "unparsable", 1, seq_len="long", compile="maybe")
    assert job.wait(timeout=180) == [ExitCode.INVALID_CONFIGURATION]
    assert "error: STRATA_SEQ_LEN: " in job.logs[0].read_text()
