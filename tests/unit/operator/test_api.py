"""The CRDs read well (`kubectl explain`), the examples are valid shapes, and settings parse flags and env."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_builders import ROOT, apply_defaults, schema

from strata_api import ResourcePool, TrainingJob
from strata_operator.settings import OperatorSettings

KINDS = ("trainingjob.yaml", "resourcepool.yaml")


def fields(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for key, sub in node.get("properties", {}).items():
        if key == "metadata":
            continue
        yield f"{path}.{key}", sub
        yield from fields(sub, f"{path}.{key}")
    if "items" in node:
        yield f"{path}[]", node["items"]
        yield from fields(node["items"], f"{path}[]")


@pytest.mark.parametrize("kind", KINDS)
def test_every_field_has_a_description(kind: str) -> None:
    missing = [path for path, sub in fields(schema(kind), kind) if not sub.get("description")]
    assert missing == []


@pytest.mark.parametrize("kind", KINDS)
def test_every_cel_rule_names_the_fields_it_checks(kind: str) -> None:
    rules = [r for _, sub in fields(schema(kind), kind) for r in sub.get("x-kubernetes-validations", ())]
    rules += schema(kind).get("x-kubernetes-validations", [])
    for rule in rules:
        named = [w for w in rule["message"].replace(",", " ").split() if "." in w.strip(".")]
        assert named, f"message of rule {rule['rule']!r} names no field"


def examples(folder: str) -> list[Path]:
    return sorted((ROOT / "examples" / folder).glob("*.yaml"))


@pytest.mark.parametrize(
    "path", [*examples("trainingjobs"), ROOT / "examples" / "finetune" / "trainingjob.yaml"], ids=lambda p: p.name
)
def test_example_jobs_read_as_valid_layouts(path: Path) -> None:
    body = apply_defaults(schema("trainingjob.yaml"), yaml.safe_load(path.read_text()))
    body["metadata"].update(namespace="default", uid="u", creationTimestamp="2026-01-01T00:00:00Z")
    spec = TrainingJob.from_body(body).spec
    p = spec.parallelism
    assert spec.world_size == p.data * p.tensor * p.pipeline
    assert spec.training.global_batch_size % (spec.training.micro_batch_size * p.data) == 0
    assert (p.data * p.tensor) % p.expert == 0
    assert spec.workers * spec.processes_per_worker == spec.world_size
    if spec.on_cpu:
        assert (spec.resources.gpus, spec.processes_per_worker) == (0, 1)
    else:
        assert spec.resources.gpus % spec.resources.gpus_per_worker == 0


def test_example_pools_are_the_seeds() -> None:
    pools = {}
    for path in examples("pools"):
        pool = ResourcePool.from_body(apply_defaults(schema("resourcepool.yaml"), yaml.safe_load(path.read_text())))
        pools[pool.name] = pool
    assert (pools["high-priority"].max_gpus, pools["high-priority"].max_runtime_seconds) == (80, 3600)
    assert (pools["low-priority"].max_gpus, pools["low-priority"].max_runtime_seconds) == (400, 1800)
    assert pools["high-priority"].priority > pools["low-priority"].priority
    assert pools["low-priority"].preemptible
    assert not pools["high-priority"].preemptible


def test_settings_come_from_flags_over_environment_over_defaults() -> None:
    env = {
        "STRATA_OPERATOR_BACKOFF_BASE_S": "2.5",
        "STRATA_OPERATOR_SCHEDULER_NAME": "from-env",
        "STRATA_OPERATOR_NAMESPACES": "a,b",
        "STRATA_OPERATOR_STANDALONE": "true",
    }
    settings = OperatorSettings.from_args(["--scheduler-name", "default-scheduler"], env=env)
    assert settings.scheduler_name == "default-scheduler"
    assert settings.backoff_base_s == 2.5
    assert settings.namespaces == ("a", "b")
    assert settings.standalone is True
    assert OperatorSettings.from_args([], env={}) == OperatorSettings()


def test_a_malformed_environment_value_is_an_error_naming_the_variable(capsys: pytest.CaptureFixture[str]) -> None:
    for variable, raw in (("STRATA_OPERATOR_STANDALONE", "maybe"), ("STRATA_OPERATOR_BACKOFF_BASE_S", "ten")):
        with pytest.raises(SystemExit) as exit_:
            OperatorSettings.from_args([], env={variable: raw})
        assert exit_.value.code == 2
        assert f"error: {variable}: " in capsys.readouterr().err
