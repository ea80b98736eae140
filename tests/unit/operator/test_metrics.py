"""The operator's metrics, as Prometheus scrapes them: counters end in _total, and the job gauges (queue, GPUs
admitted per pool, the oldest queued job) come from the last admission pass, so a pool that has emptied stops
reporting instead of repeating its last value."""

from __future__ import annotations

from operator_builders import a_job, at
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from strata_api import Phase, format_time
from strata_operator.runtime.metrics import Metrics


def queued(name: str, pool: str, since: float) -> dict[str, object]:
    condition = {"type": "Queued", "status": "True", "reason": "Submitted", "message": "", "lastTransitionTime": ""}
    condition["lastTransitionTime"] = format_time(at(since))
    return {"name": name, "pool": pool, "status": {"phase": "Queued", "conditions": [condition]}}


def running(name: str, pool: str, gpu_type: str, tensor: int) -> dict[str, object]:
    return {
        "name": name,
        "pool": pool,
        "tensor": tensor,
        "status": {"phase": "Running", "placement": {"gpuType": gpu_type}},
    }


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_queue_admitted_gpus_and_oldest_queued_job_per_pool() -> None:
    metrics = Metrics()
    jobs = [
        a_job(**queued("a", "research", since=60)),
        a_job(**queued("b", "research", since=30)),  # the longest waiting of its pool
        a_job(**queued("c", "prod", since=90)),
        a_job(**running("d", "research", "H100", tensor=8)),
        a_job(**running("e", "research", "H100", tensor=4)),
        a_job(**running("f", "prod", "MI300X", tensor=8)),
        a_job(name="g", pool="prod", status={"phase": "Succeeded", "placement": {"gpuType": "H100"}}),
    ]
    metrics.observe_jobs(jobs)
    found = samples(metrics)
    assert found[("strata_trainingjobs", (("phase", "Queued"),))] == 3
    assert found[("strata_trainingjobs", (("phase", "Running"),))] == 3
    assert found[("strata_trainingjobs", (("phase", "Failed"),))] == 0  # every phase, zero included
    assert found[("strata_queued_trainingjobs", (("pool", "research"),))] == 2
    assert found[("strata_queue_oldest_timestamp_seconds", (("pool", "research"),))] == at(30).timestamp()
    assert found[("strata_queue_oldest_timestamp_seconds", (("pool", "prod"),))] == at(90).timestamp()
    assert found[("strata_admitted_gpus", (("gpu_type", "H100"), ("pool", "research")))] == 12
    assert found[("strata_admitted_gpus", (("gpu_type", "MI300X"), ("pool", "prod")))] == 8
    assert ("strata_admitted_gpus", (("gpu_type", "H100"), ("pool", "prod"))) not in found  # a finished job holds none

    metrics.observe_jobs([a_job(**running("d", "research", "H100", tensor=8))])
    found = samples(metrics)
    assert [k for k in found if k[0] == "strata_queue_oldest_timestamp_seconds"] == []  # no stale queue
    assert [k for k in found if k[0] == "strata_admitted_gpus"] == [
        ("strata_admitted_gpus", (("gpu_type", "H100"), ("pool", "research")))
    ]


def test_a_suspended_job_is_not_waiting_in_the_queue() -> None:
    metrics = Metrics()
    metrics.observe_jobs([a_job(suspend=True, **queued("s", "research", since=0))])
    found = samples(metrics)
    assert found[("strata_trainingjobs", (("phase", Phase.QUEUED.value),))] == 1
    assert [k for k in found if k[0] in ("strata_queued_trainingjobs", "strata_queue_oldest_timestamp_seconds")] == []


def test_counters_end_in_total_and_restarts_show_as_a_process_start() -> None:
    metrics = Metrics()
    metrics.restarts.labels("NodeLost").inc()
    metrics.cost.labels("H100").inc(2.5)
    text = generate_latest(metrics.registry).decode()
    counters = [f.name for f in text_string_to_metric_families(text) if f.type == "counter"]
    assert "strata_trainingjob_restarts" in counters
    assert "strata_cost_dollars" in counters
    assert 'strata_trainingjob_restarts_total{reason="NodeLost"} 1.0' in text
    assert "process_start_time_seconds " in text
