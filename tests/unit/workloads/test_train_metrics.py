"""A training process exports counts as counters (steps/s, tokens/s and model FLOP/s are ``rate()`` of them, over any
window a dashboard picks; MFU is the last over the devices' peak), and the step it is at as a gauge that may go back
after a restart from a checkpoint."""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from strata_workloads.telemetry import TrainMetrics


def test_steps_and_tokens_are_counters_and_the_step_a_gauge() -> None:
    metrics = TrainMetrics(port=0)
    for step in (11, 12, 13):
        metrics.record_step(
            step,
            loss=2.0,
            grad_norm=0.5,
            tokens=4096,
            seconds=0.2,
            lr=3e-4,
            model_flops=4096e6,
            peak_memory_bytes=2**30,
        )
    metrics.checkpoints.inc()
    metrics.device_peak_flops.set(989.4e12)
    text = generate_latest(metrics.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {name for name, f in families.items() if f.type == "counter"} == {
        "strata_train_steps",
        "strata_train_tokens",
        "strata_train_checkpoints",
        "strata_train_model_flops",
    }
    assert "strata_train_steps_total 3.0" in text
    assert "strata_train_tokens_total 12288.0" in text
    assert "strata_train_step 13.0" in text
    assert "strata_train_step_duration_seconds_count 3.0" in text
    assert "strata_train_checkpoints_total 1.0" in text
    samples = {s.name: s.value for f in families.values() for s in f.samples}
    assert samples["strata_train_model_flops_total"] == 3 * 4096e6
    assert samples["strata_train_device_peak_flops"] == 989.4e12
    assert samples["strata_train_learning_rate"] == 3e-4
    assert samples["strata_train_peak_memory_bytes"] == 2**30
    assert not [name for name in families if name.endswith("per_second")]  # no precomputed rates
    metrics.record_step(5, loss=2.1, grad_norm=0.4, tokens=4096, seconds=0.2)  # resumed from an older checkpoint
    text = generate_latest(metrics.registry).decode()
    assert "strata_train_step 5.0" in text
    assert "strata_train_steps_total 4.0" in text
