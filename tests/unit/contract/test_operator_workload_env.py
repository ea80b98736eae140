"""The operator's worker pods and the bundled workload agree: every STRATA_* variable a pod carries is one the
workload reads, its values parse, and each example TrainingJob is a layout the workload can run.

A misspelt variable would otherwise be ignored silently and the job would train with defaults."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_builders import a_pool, apply_defaults, schema

import strata_api as api
from strata_api.settings import env_name
from strata_api.workload import PIPELINE_SCHEDULES, WorkerEnv
from strata_operator.core.pods import build_worker_pods
from strata_operator.settings import OperatorSettings
from strata_workloads.layout import ParallelDims
from strata_workloads.pipeline import SCHEDULES
from strata_workloads.presets import get_preset
from strata_workloads.settings import TRAIN_ENV_PREFIX, TrainSettings, load_train_settings

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples" / "trainingjobs").glob("*.yaml"))
OPERATOR_ONLY = {"STRATA_JOB", "STRATA_ATTEMPT"}


def job_from(body: dict[str, Any]) -> api.TrainingJob:
    meta = {"namespace": "team", "uid": "u1", "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"}
    body = {**body, "metadata": {**meta, **body["metadata"]}}
    granted = api.CPU if body["spec"]["resources"].get("gpuType") == api.CPU else "H100"
    body["status"] = {"phase": "Admitted", "attempt": 1, "placement": {"gpuType": granted}}
    return api.TrainingJob.from_body(apply_defaults(schema("trainingjob.yaml"), body))


def pod_envs(job: api.TrainingJob) -> list[dict[str, str]]:
    pods = build_worker_pods(job, a_pool(job.spec.pool), OperatorSettings())
    return [{e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"] if "value" in e} for pod in pods]


def read_by_the_workload() -> set[str]:
    """The variables training reads: strata_api.settings.load_settings reads `{prefix}{FIELD}` for each field."""
    return {env_name(TRAIN_ENV_PREFIX, f.name) for f in fields(TrainSettings)} | {WorkerEnv.PROGRESS_ANNOTATION}


def test_every_strata_variable_the_operator_sets_is_read_by_the_workload() -> None:
    known = read_by_the_workload()
    job = job_from(yaml.safe_load(EXAMPLES[0].read_text()))
    for env in pod_envs(job):
        unknown = {k for k in env if k.startswith("STRATA_")} - known - OPERATOR_ONLY
        assert unknown == set(), f"the workload ignores {sorted(unknown)}"


def test_every_pipeline_schedule_of_the_api_is_one_the_workload_runs() -> None:
    enum = schema("trainingjob.yaml")["properties"]["spec"]["properties"]["parallelism"]["properties"][
        "pipelineSchedule"
    ]["enum"]
    assert set(PIPELINE_SCHEDULES) == set(enum)
    assert set(PIPELINE_SCHEDULES.values()) == set(SCHEDULES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_each_example_job_is_a_layout_the_workload_accepts(path: Path) -> None:
    job = job_from(yaml.safe_load(path.read_text()))
    envs = pod_envs(job)
    assert len(envs) == job.spec.workers
    ranks = []
    for env in envs:
        settings = load_train_settings([], env)
        assert settings.tp == job.spec.parallelism.tensor
        assert settings.pp == job.spec.parallelism.pipeline
        assert settings.ep == job.spec.parallelism.expert
        assert settings.global_batch == job.spec.training.global_batch_size
        assert settings.micro_batch == job.spec.training.micro_batch_size
        assert settings.steps == job.spec.training.steps
        assert settings.model == job.spec.workload.preset
        dims = ParallelDims(
            world_size=int(env["WORLD_SIZE"]),
            dp_replicate=settings.dp_replicate,
            dp_shard=settings.dp_shard,
            tp=settings.tp,
            pp=settings.pp,
            ep=settings.ep,
        )
        model = get_preset(settings.model)
        dims.validate_for_model(model.n_layers, model.n_heads, model.n_experts)
        dims.validate_batch(settings.global_batch, settings.micro_batch, settings.pp_microbatches)
        first, local = int(env["RANK"]), int(env["LOCAL_WORLD_SIZE"])
        ranks += range(first, first + local)
    assert sorted(ranks) == list(range(job.spec.world_size)), "every global rank exactly once"


def test_a_model_directory_and_tokenizer_reach_every_worker_s_settings() -> None:
    body = yaml.safe_load(EXAMPLES[0].read_text())
    path = body["spec"].get("checkpoint", {}).get("path", "/checkpoints")
    body["spec"]["workload"] |= {"modelDir": f"{path}/models/llama", "tokenizer": f"{path}/models/tok.json"}
    for env in pod_envs(job_from(body)):
        settings = load_train_settings([], env)
        assert settings.model_dir == f"{path}/models/llama"
        assert settings.tokenizer == f"{path}/models/tok.json"
    for env in pod_envs(job_from(yaml.safe_load(EXAMPLES[0].read_text()))):  # unset: the preset, as before
        assert WorkerEnv.MODEL_DIR not in env
        assert WorkerEnv.TOKENIZER not in env
