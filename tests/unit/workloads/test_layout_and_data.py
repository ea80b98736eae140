"""Pure checks: layout validation messages, presets, settings from env, LR schedule, the anomaly filter (data
loading and sharding: test_datasets.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from strata_workloads.data import Document, filter_anomalies, load_documents, stdlib_root
from strata_workloads.layout import ParallelDims
from strata_workloads.optim import OptimConfig, warmup_cosine
from strata_workloads.pipeline import SCHEDULES, layer_split, stage_ids_for_rank
from strata_workloads.presets import PRESETS, get_preset
from strata_workloads.settings import TrainSettings, load_train_settings


@pytest.mark.unit
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"world_size": 8, "dp_shard": 2, "tp": 2}, "dp_replicate=1 * dp_shard=2 * tp=2 * pp=1 = 4, but world_size=8"),
        ({"world_size": 4, "dp_shard": 2, "tp": 2, "ep": 4}, "ep=4 must divide dp_shard=2"),
        ({"world_size": 2, "tp": 0, "pp": 2}, "tp=0 must be >= 1"),
    ],
)
def test_layout_errors_name_each_degree(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match="invalid parallel layout") as err:
        ParallelDims(**kwargs)
    assert message in str(err.value)


@pytest.mark.unit
def test_layout_checks_against_model_and_batch() -> None:
    dims = ParallelDims(world_size=8, dp_shard=2, tp=2, pp=2, ep=2)
    assert (dims.dp, dims.efsdp) == (2, 1)
    with pytest.raises(
        ValueError, match=r"tp=2 must divide n_heads=3.*pp=2 x 2 stages per rank = 4 exceeds n_layers=3"
    ):
        dims.validate_for_model(n_layers=3, n_heads=3, n_experts=4, stages_per_rank=2)
    with pytest.raises(ValueError, match="ep=2 must divide n_experts=3"):
        dims.validate_for_model(n_layers=4, n_heads=4, n_experts=3)
    assert dims.validate_batch(global_batch=16, micro_batch=4, n_microbatches=2) == 2
    with pytest.raises(ValueError, match=r"global_batch=10 must be a multiple of micro_batch=4 \* dp=2"):
        dims.validate_batch(global_batch=10, micro_batch=4, n_microbatches=2)


@pytest.mark.unit
def test_presets_registry() -> None:
    assert {"debug", "debug-dense", "85m", "720m-moe", "640m"} <= set(PRESETS)
    assert get_preset("debug", n_layers=2).n_layers == 2
    with pytest.raises(KeyError, match="unknown model preset 'nope'; known presets: "):
        get_preset("nope")
    for name, config in PRESETS.items():
        if name[0].isdigit():  # GPU presets are named after their size
            assert config.num_params() / 1e6 == pytest.approx(int(name.split("m")[0]), rel=0.02), name


@pytest.mark.unit
def test_pipeline_stage_placement() -> None:
    assert [list(r) for r in layer_split(5, 2)] == [[0, 1, 2], [3, 4]]
    assert stage_ids_for_rank(1, 4, SCHEDULES["interleaved_1f1b"]) == [1, 5]
    assert stage_ids_for_rank(1, 4, SCHEDULES["zbv"]) == [1, 6]
    assert stage_ids_for_rank(3, 4, SCHEDULES["1f1b"]) == [3]


@pytest.mark.unit
def test_settings_from_env_then_flags() -> None:
    env = {"STRATA_TP": "2", "STRATA_PRECISION": "bf16", "STRATA_COMPILE": "true", "STRATA_LR": "0.001"}
    settings = load_train_settings(["--steps", "7", "--tp", "4"], env)
    assert settings == TrainSettings(tp=4, precision="bf16", compile=True, lr=0.001, steps=7)


@pytest.mark.unit
def test_warmup_then_cosine() -> None:
    config = OptimConfig(warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [warmup_cosine(s, config) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert warmup_cosine(9, config) == pytest.approx(0.55)
    assert warmup_cosine(14, config) == pytest.approx(0.1)
    assert warmup_cosine(100, config) == pytest.approx(0.1)


@pytest.mark.unit
def test_anomaly_filter_drops_outliers_and_logs_the_count(caplog: pytest.LogCaptureFixture) -> None:
    docs = load_documents(stdlib_root(), max_docs=120)
    assert len(docs) == 120
    assert all(isinstance(d.data, bytes) for d in docs)
    noise = [Document(f"noise{i}.py", bytes(range(128, 256)) * 400) for i in range(2)]
    with caplog.at_level("INFO", logger="strata_workloads.data"):
        kept = filter_anomalies(docs + noise, contamination=0.03)
    assert not {"noise0.py", "noise1.py"} & {d.name for d in kept}
    dropped = len(docs) + 2 - len(kept)
    assert 2 <= dropped <= math.ceil(0.03 * 122) + 1
    record = next(r for r in caplog.records if r.getMessage() == "anomaly filter dropped documents")
    assert record.dropped == dropped  # type: ignore[attr-defined]


@pytest.mark.unit
def test_corpus_is_the_standard_library() -> None:
    root = stdlib_root()
    assert (root / "os.py").is_file()
    names = {d.name for d in load_documents(root, max_docs=400)}
    assert "abc.py" in names
    assert not any(n.startswith("test/") for n in names)
    assert isinstance(root, Path)
