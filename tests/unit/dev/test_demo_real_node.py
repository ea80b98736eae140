"""``make demo`` and ``make up`` add the real node by default, a host that cannot run containers is told why and
how to run kwok-only, and the demo's job in real pods is ``cpu-tiny`` from the local workloads image, its loss read
from the workload's own log lines. The cluster tier runs the node itself (tests/cluster/test_real_node.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from strata_dev import dev_cluster, node
from strata_dev.__main__ import parser
from strata_dev.demo import REAL_JOB, StepReport, import_space_problem, real_job_manifest, step_report
from strata_dev.node import preflight
from strata_dev.node_config import REAL_NODE_LABEL
from strata_dev.processes import ClusterError

STEP_LINE = (
    '{"ts":1796417372.78,"level":"info","logger":"strata_workloads.train","msg":"step","step":63,'
    '"loss":4.9764299392700195,"grad_norm":1.2634941339492798,"tokens_per_s":2843.4,"lr":0.00025}'
)
"""A step line as worker 0 of cpu-tiny wrote it on the real node."""


@pytest.mark.parametrize("command", ["demo", "up", "_serve"])
def test_demo_and_up_add_the_real_node_unless_told_not_to(command: str) -> None:
    assert parser().parse_args([command]).real_node is True
    assert parser().parse_args([command, "--no-real-node"]).real_node is False
    assert parser().parse_args([command, "--real-node"]).real_node is True


def test_a_host_that_cannot_run_containers_is_told_why_and_how_to_run_kwok_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(node.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("PATH", str(tmp_path))  # none of the node's tools on PATH
    with pytest.raises(ClusterError) as failure:
        preflight()
    message = str(failure.value)
    assert message.startswith("this host cannot run the real node: not root")
    assert "containerd not on PATH (make node-deps)" in message
    assert "REAL_NODE=0 make demo" in message
    assert "--no-real-node" in message


def test_up_says_why_before_it_starts_a_daemon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(dev_cluster, "DEV_DIR", tmp_path / "dev-cluster")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterError, match="kwok-only"):
        dev_cluster.up("examples/fleet.yaml", 0, real_node=True)
    assert not (tmp_path / "dev-cluster").exists()  # no daemon, no log: the reason went to the terminal


def test_the_job_in_real_pods_is_cpu_tiny_on_the_real_node_from_the_local_image() -> None:
    example = yaml.safe_load(REAL_JOB.read_text())
    job = real_job_manifest(REAL_JOB, "localhost/strata-workloads:98d3703ff5f7", "cpu-tiny-checkpoints")

    assert job["spec"]["workload"]["image"] == "localhost/strata-workloads:98d3703ff5f7"
    assert job["spec"]["workload"]["imagePullPolicy"] == "Never"  # nothing is pulled: the node holds the image
    assert job["spec"]["resources"]["nodeSelector"] == {REAL_NODE_LABEL: "true"}  # not kwok's CPU nodes
    example["spec"]["workload"] |= job["spec"]["workload"]
    example["spec"]["resources"]["nodeSelector"] = {REAL_NODE_LABEL: "true"}
    assert job["spec"]["checkpoint"]["persistentVolumeClaim"] == "cpu-tiny-checkpoints"  # what the service reads
    example["spec"]["checkpoint"]["persistentVolumeClaim"] = "cpu-tiny-checkpoints"
    assert job == example  # everything else is the example's
    assert example["spec"]["resources"]["gpuType"] == "CPU"


def test_the_loss_is_read_from_the_workloads_step_lines() -> None:
    assert step_report(STEP_LINE) == StepReport(step=63, loss=4.9764299392700195, at=1796417372.78)


@pytest.mark.parametrize(
    "line",
    [
        '{"ts":1796417390.395,"level":"info","msg":"checkpoint saved","path":"/checkpoints/step-00000150"}',
        '{"ts":1796417372.78,"msg":"step","step":63,"loss":null}',  # a loss JSON could not hold (NaN)
        '{"ts":1796417372.78,"msg":"step","step":true,"loss":4.9}',
        '{"ts":"later","msg":"step","step":63,"loss":4.9}',
        'Error from server (BadRequest): container "worker" in pod "cpu-tiny-worker-0" is waiting to start',
        "No resources found in demo-real namespace.",
        json.dumps(["step", 63]),
        "",
    ],
)
def test_any_other_line_reports_no_step(line: str) -> None:
    assert step_report(line) is None


def test_the_demo_refuses_to_import_an_image_the_disk_cannot_hold() -> None:
    gib = 2**30
    archive = int(5.7 * gib)  # the workloads image
    assert import_space_problem(free_bytes=20 * gib, archive_bytes=archive) is None
    problem = import_space_problem(free_bytes=int(6.8 * gib), archive_bytes=archive)
    assert problem == (
        "the real node needs 13.4 GiB free under /var/lib for its images (5.7 GiB, kept as layers and unpacked), "
        "6.8 GiB are free"
    )
