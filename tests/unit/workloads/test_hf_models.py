"""Hugging Face Llama and Qwen2 directories load into Strata's model with the same logits as `transformers`
(grouped-query attention, Llama 3 rotary scaling, Qwen2's q/k/v biases and tied embeddings), also decoding with
the KV cache; a Strata model saved as a directory opens in `transformers` with the same logits; and a broken
directory is refused with a message naming the file and the field or tensor.

The reference models are random and made here from config objects (HF_HUB_OFFLINE: nothing is downloaded)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from strata_workloads.hf_checkpoint import load_hf_model_dir, save_hf_model_dir
from strata_workloads.model import KVCache, Transformer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

SHAPE = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4}


def llama_config() -> Any:
    # 4 query heads over 2 key/value heads; Llama 3 scaling with a short original context so that all three
    # frequency bands (kept, blended, divided) occur at head_dim 16.
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    return transformers.LlamaConfig(
        vocab_size=320, num_key_value_heads=2, max_position_embeddings=128, rope_parameters=rope, **SHAPE
    )


def qwen2_config() -> Any:
    return transformers.Qwen2Config(
        vocab_size=320, num_key_value_heads=1, max_position_embeddings=128, tie_word_embeddings=True, **SHAPE
    )


def random_hf_model(config: Any, seed: int = 0) -> Any:
    """A transformers model whose every parameter (norms and biases too) is random, in fp32, eval mode."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model.float().eval()


def strata_model(directory: Path) -> Transformer:
    config, state = load_hf_model_dir(directory)
    model = Transformer(config)
    model.load_state_dict(state)
    return model.eval()


TOKENS = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(1))
MAKERS = {"llama": llama_config, "qwen2": qwen2_config}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_hf_directory_loads_with_the_same_logits(kind: str, tmp_path: Path) -> None:
    reference = random_hf_model(MAKERS[kind]())
    reference.save_pretrained(tmp_path)
    model = strata_model(tmp_path)
    with torch.no_grad():
        expected = reference(TOKENS).logits
        torch.testing.assert_close(model(TOKENS), expected, atol=1e-5, rtol=1e-5)
        # Decoding with the KV cache: a prefill of all but the last token, then the last one at its position.
        cache = KVCache(TOKENS.shape[1], positions=torch.arange(TOKENS.shape[1] - 1).expand(2, -1))
        model(TOKENS[:, :-1], cache)
        cache.positions = torch.full((2, 1), TOKENS.shape[1] - 1)
        torch.testing.assert_close(model(TOKENS[:, -1:], cache)[:, -1], expected[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_strata_model_saved_as_hf_directory_opens_in_transformers(kind: str, tmp_path: Path) -> None:
    random_hf_model(MAKERS[kind](), seed=3).save_pretrained(tmp_path / "in")
    config, _ = load_hf_model_dir(tmp_path / "in")
    torch.manual_seed(4)
    model = Transformer(config).eval()  # Strata's own (untied) weights, as after training
    save_hf_model_dir(tmp_path / "out", config, model.state_dict())
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager")
    assert type(reloaded).__name__ == ("Qwen2ForCausalLM" if kind == "qwen2" else "LlamaForCausalLM")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.float().eval()(TOKENS).logits, model(TOKENS), atol=1e-5, rtol=1e-5)
    again, state = load_hf_model_dir(tmp_path / "out")
    assert again == replace(config, tie_embeddings=False)  # trained apart: both matrices are written
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(state[name], tensor, atol=0, rtol=0)


@pytest.mark.timeout(120)
def test_tied_model_saves_tied_and_sharded_directories_load(tmp_path: Path) -> None:
    reference = random_hf_model(qwen2_config())
    reference.save_pretrained(tmp_path / "tied")
    config, state = load_hf_model_dir(tmp_path / "tied")
    save_hf_model_dir(tmp_path / "out", config, state)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["tie_word_embeddings"] is True
    assert "lm_head.weight" not in load_file(str(tmp_path / "out" / "model.safetensors"))
    # The same tensors split over two shards named by an index.
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    tensors = load_file(str(tmp_path / "tied" / "model.safetensors"))
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in halves.items():
        save_file({n: tensors[n] for n in part}, str(sharded / file), metadata={"format": "pt"})
    index = {"weight_map": {n: file for file, part in halves.items() for n in part}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    (sharded / "config.json").write_text((tmp_path / "tied" / "config.json").read_text())
    with torch.no_grad():
        torch.testing.assert_close(strata_model(sharded)(TOKENS), reference(TOKENS).logits, atol=1e-5, rtol=1e-5)


def _edit_config(directory: Path, **changes: Any) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def _edit_tensors(directory: Path, drop: str = "", reshape: str = "") -> None:
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    tensors.pop(drop, None)
    if reshape:
        tensors[reshape] = tensors[reshape][:-1]
    save_file(tensors, str(path), metadata={"format": "pt"})


@pytest.mark.timeout(120)
def test_broken_directories_are_refused_naming_file_and_field(tmp_path: Path) -> None:
    random_hf_model(llama_config()).save_pretrained(tmp_path / "good")
    good = (tmp_path / "good" / "config.json").read_text(), load_file(str(tmp_path / "good" / "model.safetensors"))

    def fresh() -> Path:
        directory = tmp_path / "case"
        directory.mkdir(exist_ok=True)
        (directory / "config.json").write_text(good[0])
        save_file(good[1], str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory

    with pytest.raises(ValueError, match=r"empty/config\.json: no such file"):
        load_hf_model_dir(tmp_path / "empty")
    _edit_config(case := fresh(), model_type="gpt2")
    with pytest.raises(ValueError, match=r"case/config\.json: model_type 'gpt2' is not supported"):
        load_hf_model_dir(case)
    _edit_config(case := fresh(), hidden_act="gelu")
    with pytest.raises(ValueError, match=r"case/config\.json: field 'hidden_act'"):
        load_hf_model_dir(case)
    _edit_tensors(case := fresh(), drop="model.layers.1.mlp.up_proj.weight")
    with pytest.raises(ValueError, match=r"case: tensor 'model\.layers\.1\.mlp\.up_proj\.weight' is missing"):
        load_hf_model_dir(case)
    _edit_tensors(case := fresh(), reshape="model.layers.0.self_attn.k_proj.weight")
    with pytest.raises(
        ValueError, match=r"model\.safetensors: tensor 'model\.layers\.0\.self_attn\.k_proj\.weight' has shape"
    ):
        load_hf_model_dir(case)
    _edit_config(case := fresh(), num_key_value_heads=3)
    with pytest.raises(ValueError, match=r"config\.json: n_heads=4 must be divisible by n_kv_heads=3"):
        load_hf_model_dir(case)


@pytest.mark.timeout(120)
def test_training_from_a_directory_starts_from_its_weights_and_refuses_a_bad_one(tmp_path: Path) -> None:
    from strata_api.workload import ExitCode
    from strata_workloads.hf_checkpoint import initial_model
    from strata_workloads.settings import TrainSettings
    from strata_workloads.train import run
    from strata_workloads.trainer import TrainingPlan

    reference = random_hf_model(llama_config())
    reference.save_pretrained(tmp_path / "llama")
    plan = TrainingPlan.of(TrainSettings(model_dir=str(tmp_path / "llama"), seq_len=32), world=1)
    assert plan.model == load_hf_model_dir(tmp_path / "llama")[0]
    assert plan.tokenizer.vocab_size <= plan.model.vocab_size  # no tokenizer.json there: bytes
    with torch.no_grad():
        start = initial_model(plan.model, str(tmp_path / "llama")).eval()
        torch.testing.assert_close(start(TOKENS), reference(TOKENS).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"seq_len=256 exceeds .*max_position_embeddings=128"):
        TrainingPlan.of(TrainSettings(model_dir=str(tmp_path / "llama"), seq_len=256), world=1)
    _edit_tensors(tmp_path / "llama", drop="model.norm.weight")
    assert run(TrainSettings(model_dir=str(tmp_path / "llama"), seq_len=32), {}) == ExitCode.INVALID_CONFIGURATION


@pytest.mark.timeout(300)
def test_a_fine_tuned_directory_exports_as_one_transformers_opens(tmp_path: Path) -> None:
    import signal

    from strata_workloads.export import main as export_main
    from strata_workloads.inference import load_model
    from strata_workloads.settings import TrainSettings
    from strata_workloads.trainer import Process, Trainer, TrainingPlan

    random_hf_model(llama_config()).save_pretrained(tmp_path / "base")
    settings = TrainSettings(
        model_dir=str(tmp_path / "base"),
        steps=2,
        global_batch=2,
        micro_batch=2,
        seq_len=32,
        data_max_docs=40,
        checkpoint_dir=str(tmp_path / "ckpt"),
        checkpoint_async=False,
        log_format="json",
    )
    process = Process.join({})
    sigterm = signal.getsignal(signal.SIGTERM)
    trainer = Trainer(settings, TrainingPlan.of(settings, process.world), process, show_bar=False)
    try:
        trainer.fit()
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        scratch = getattr(getattr(trainer, "data", None), "scratch", None)
        if scratch is not None:
            scratch.cleanup()
    trained = load_model("debug", tmp_path / "ckpt", str(tmp_path / "base"))
    assert not torch.equal(trained.state_dict()["norm.weight"], load_hf_model_dir(tmp_path / "base")[1]["norm.weight"])
    args = [
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--model-dir",
        str(tmp_path / "base"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert export_main(args) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.float().eval()(TOKENS).logits, trained(TOKENS), atol=1e-5, rtol=1e-5)
    assert export_main([*args[:2], "--model-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    # The run's directory forgotten: the preset's shape does not fit the checkpoint, which is refused, not a crash.
    assert export_main([*args[:2], "--model", "debug-llama", "--out", str(tmp_path / "y")]) == 3
