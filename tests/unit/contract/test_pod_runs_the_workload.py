"""The operator's worker pods, run for real on CPU: the environment the operator writes into each pod starts
`python -m strata_workloads.launch`, which trains across the pods with gloo, checkpoints, and on SIGTERM
exits with the code the operator resumes from (85)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from operator_builders import a_pool, job_body

import strata_api as api
from strata_dev.cluster import free_port
from strata_operator.core.pods import TRAIN_COMMAND, build_worker_pods
from strata_operator.settings import OperatorSettings
from strata_workloads.launch import combine


def pod_commands(tmp_path: Path, steps: int, data: int = 2, tensor: int = 2) -> list[tuple[list[str], dict[str, str]]]:
    body = job_body(
        "llm",
        data=data,
        tensor=tensor,
        gpus_per_worker=2,
        status={"phase": "Admitted", "attempt": 1, "placement": {"gpuType": "H100"}},
        workload={"image": "registry.example/strata/workloads:1", "preset": "debug"},
        training={"globalBatchSize": 2 * data, "microBatchSize": 1, "steps": steps, "precision": "fp32"},
        checkpoint={"intervalSteps": 2},
    )
    job = api.TrainingJob.from_body(body)
    port = str(free_port())
    commands = []
    for pod in build_worker_pods(job, a_pool("pool"), OperatorSettings()):
        container = pod["spec"]["containers"][0]
        env = {
            e["name"]: e["value"] for e in container["env"] if "value" in e
        }  # downward-API values come from a kubelet
        # what the pod network and the checkpoint volume give a real pod
        env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "STRATA_CHECKPOINT_DIR": str(tmp_path / "ckpt")}
        env |= {"STRATA_METRICS_PORT": "0", "STRATA_DATA_MAX_DOCS": "300", "STRATA_ANOMALY_CONTAMINATION": "0"}
        env |= {"PATH": os.environ["PATH"], "PYTHONPATH": os.pathsep.join(sys.path)}
        command = [sys.executable if part == "python" else part for part in container["command"]]
        commands.append((command, env))
    return commands


def start(commands: list[tuple[list[str], dict[str, str]]], logs: Path) -> list[subprocess.Popen[bytes]]:
    logs.mkdir(exist_ok=True)
    procs = []
    for i, (command, env) in enumerate(commands):
        with (logs / f"pod-{i}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
    return procs


def complete_checkpoints(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "ckpt").glob("step-*") if (p / "COMPLETE").exists())


def test_pods_use_the_launcher() -> None:
    assert TRAIN_COMMAND == ("python", "-m", "strata_workloads.launch")


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def logs_of(tmp_path: Path) -> str:
    return "\n".join(p.read_text()[-1500:] for p in sorted((tmp_path / "logs").iterdir()))


@pytest.mark.timeout(400)
def test_two_pods_of_two_processes_train_and_checkpoint(tmp_path: Path) -> None:
    procs = start(pod_commands(tmp_path, steps=2), tmp_path / "logs")
    try:
        codes = [p.wait(360) for p in procs]
    finally:
        stop(procs)
    assert codes == [0, 0], logs_of(tmp_path)
    assert complete_checkpoints(tmp_path)[-1] == "step-00000002", logs_of(tmp_path)


@pytest.mark.timeout(400)
def test_sigterm_to_a_pod_saves_a_checkpoint_and_exits_85(tmp_path: Path) -> None:
    [pod] = start(pod_commands(tmp_path, steps=100000, data=2, tensor=1), tmp_path / "logs")
    try:
        log = tmp_path / "logs" / "pod-0.log"
        deadline = time.monotonic() + 300
        while '"msg":"step"' not in log.read_text():  # in the training loop, its SIGTERM handler installed
            assert time.monotonic() < deadline, "no training step within 300 s"
            assert pod.poll() is None, logs_of(tmp_path)
            time.sleep(0.5)
        pod.send_signal(signal.SIGTERM)  # what the kubelet does on a spot notice or suspend
        code = pod.wait(120)
    finally:
        stop([pod])
    assert code == 85, logs_of(tmp_path)
    assert complete_checkpoints(tmp_path), logs_of(tmp_path)


@pytest.mark.parametrize(
    ("codes", "pod"),
    [
        ([0, 0], 0),
        ([85, 85], 85),
        ([0, 85], 85),
        ([85, 2], 2),
        ([1, 3], 3),
        ([85, 4], 4),
        ([4, 2], 4),
        ([1, 85], 1),
        ([-9, 0], 1),
        ([0, 137], 137),
    ],
)
def test_the_pod_exit_code_tells_the_operator_what_happened(codes: list[int], pod: int) -> None:
    assert combine(codes) == pod
