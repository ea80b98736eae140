"""Hugging Face model directories (config.json + safetensors) in and out of Strata's model.

`load_hf_model_dir` reads a Llama or Qwen2 directory (one model.safetensors, or shards named by
model.safetensors.index.json) into a `ModelConfig` and a state dict with Strata's parameter names;
`save_hf_model_dir` writes the reverse, so a model trained here opens in `transformers`. No permutation is
needed: Strata's rotary embedding pairs (i, i + head_dim/2) as Hugging Face's `rotate_half` does.

Every problem with a directory (no config.json, an unknown model_type or an unsupported field, a tensor missing,
unexpected or of the wrong shape) raises ValueError naming the file and the field or tensor.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from strata_workloads.model import Transformer
from strata_workloads.presets import FFNActivation, ModelConfig, RopeScaling

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MODEL_TYPES = ("llama", "qwen2")

# Strata's name -> Hugging Face's, per layer ({i} is the layer index) and for the whole model.
_LAYER_NAMES = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wq.bias": "self_attn.q_proj.bias",
    "attention.wk.bias": "self_attn.k_proj.bias",
    "attention.wv.bias": "self_attn.v_proj.bias",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
}
_MODEL_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}
_OUTPUT, _HF_OUTPUT = "output.weight", "lm_head.weight"
# Buffers some older checkpoints carry; Strata computes them.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Strata's parameter names and shapes for a Llama/Qwen2-shaped config (what a directory must provide)."""
    kv_dim = config.kv_heads * config.head_dim
    per_layer: dict[str, tuple[int, ...]] = {
        "attention_norm.weight": (config.dim,),
        "attention.wq.weight": (config.dim, config.dim),
        "attention.wk.weight": (kv_dim, config.dim),
        "attention.wv.weight": (kv_dim, config.dim),
        "attention.wo.weight": (config.dim, config.dim),
        "ffn_norm.weight": (config.dim,),
        "feed_forward.w1.weight": (config.ffn_hidden, config.dim),
        "feed_forward.w3.weight": (config.ffn_hidden, config.dim),
        "feed_forward.w2.weight": (config.dim, config.ffn_hidden),
    }
    if config.qkv_bias:
        per_layer |= {
            "attention.wq.bias": (config.dim,),
            "attention.wk.bias": (kv_dim,),
            "attention.wv.bias": (kv_dim,),
        }
    shapes = {f"layers.{i}.{name}": shape for i in range(config.n_layers) for name, shape in per_layer.items()}
    return shapes | {
        "tok_embeddings.weight": (config.vocab_size, config.dim),
        "norm.weight": (config.dim,),
        _OUTPUT: (config.vocab_size, config.dim),
    }


def to_hf_name(name: str) -> str:
    if name in _MODEL_NAMES:
        return _MODEL_NAMES[name]
    if name == _OUTPUT:
        return _HF_OUTPUT
    _, index, rest = name.split(".", 2)  # layers.{i}.rest
    return f"model.layers.{index}.{_LAYER_NAMES[rest]}"


def _field(raw: dict[str, Any], key: str, path: Path, default: Any = None) -> Any:
    value = raw.get(key, default)
    if value is None:
        raise ValueError(f"{path}: field {key!r} is missing")
    return value


def config_from_hf(raw: dict[str, Any], path: Path) -> ModelConfig:
    """A ModelConfig from a config.json's contents (`path` names the file in errors)."""
    model_type = raw.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{path}: model_type {model_type!r} is not supported (supported: {', '.join(MODEL_TYPES)})")
    if raw.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{path}: field 'hidden_act' is {raw['hidden_act']!r}; only 'silu' (SwiGLU) is supported")
    for flag in ("attention_bias", "mlp_bias", "use_sliding_window"):
        if raw.get(flag):
            raise ValueError(f"{path}: field {flag!r} is true; not supported")
    dim, n_heads = int(_field(raw, "hidden_size", path)), int(_field(raw, "num_attention_heads", path))
    head_dim = raw.get("head_dim")
    if head_dim is not None and int(head_dim) * n_heads != dim:
        raise ValueError(f"{path}: field 'head_dim' ({head_dim}) must equal hidden_size / num_attention_heads")
    # transformers 5 writes rope_parameters; older files have rope_theta and rope_scaling at the top level.
    rope = raw.get("rope_parameters") or {**(raw.get("rope_scaling") or {}), "rope_theta": raw.get("rope_theta")}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = None
    if rope_type == "llama3":
        scaling = RopeScaling(
            factor=float(rope["factor"]),
            low_freq_factor=float(rope["low_freq_factor"]),
            high_freq_factor=float(rope["high_freq_factor"]),
            original_max_len=int(rope["original_max_position_embeddings"]),
        )
    elif rope_type != "default":
        raise ValueError(f"{path}: rope type {rope_type!r} is not supported (supported: default, llama3)")
    config = ModelConfig(
        dim=dim,
        n_layers=int(_field(raw, "num_hidden_layers", path)),
        n_heads=n_heads,
        n_kv_heads=int(raw.get("num_key_value_heads") or n_heads),
        ffn_hidden=int(_field(raw, "intermediate_size", path)),
        vocab_size=int(_field(raw, "vocab_size", path)),
        max_seq_len=int(_field(raw, "max_position_embeddings", path)),
        norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta") or 10000.0),
        rope_scaling=scaling,
        ffn_activation=FFNActivation.SWIGLU,
        qkv_bias=model_type == "qwen2",
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        moe_aux_loss_coef=0.0,
    )
    try:
        config.validate()
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return config


def config_to_hf(config: ModelConfig, tie_embeddings: bool) -> dict[str, Any]:
    """config.json contents for a Llama/Qwen2-shaped config (qwen2 when it has q/k/v biases)."""
    if config.ffn_activation is not FFNActivation.SWIGLU or config.moe_every:
        raise ValueError(
            f"ffn_activation={config.ffn_activation.value}, moe_every={config.moe_every}: only dense SwiGLU models "
            "(Llama/Qwen2 shaped) have a Hugging Face equivalent"
        )
    model_type = "qwen2" if config.qkv_bias else "llama"
    rope: dict[str, Any] = {"rope_theta": config.rope_theta, "rope_type": "default"}
    if config.rope_scaling is not None:
        s = config.rope_scaling
        rope |= {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_len,
        }
    return {
        "architectures": ["Qwen2ForCausalLM" if config.qkv_bias else "LlamaForCausalLM"],
        "model_type": model_type,
        "hidden_size": config.dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.ffn_hidden,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        "hidden_act": "silu",
        "rope_parameters": rope,
        # Older readers look for these two at the top level.
        "rope_theta": config.rope_theta,
        "rope_scaling": None if config.rope_scaling is None else rope,
        "tie_word_embeddings": tie_embeddings,
        "dtype": "float32",
    }


def _weight_files(directory: Path) -> list[Path]:
    """The directory's safetensors files: the shards its index names, or the one model.safetensors."""
    index = directory / INDEX_FILE
    if not index.is_file():
        if (directory / WEIGHTS_FILE).is_file():
            return [directory / WEIGHTS_FILE]
        raise ValueError(f"{directory}: neither {WEIGHTS_FILE} nor {INDEX_FILE}")
    try:
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{index}: unreadable index ({err})") from None
    files = [directory / name for name in sorted(set(weight_map.values()))]
    for file in files:
        if not file.is_file():
            raise ValueError(f"{index}: names {file.name}, which does not exist")
    return files


def _tensor_headers(files: list[Path]) -> dict[str, tuple[tuple[int, ...], Path]]:
    """Each tensor's shape and file, read from the safetensors headers only (no tensor data)."""
    from safetensors import safe_open

    headers: dict[str, tuple[tuple[int, ...], Path]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                headers |= {name: (tuple(handle.get_slice(name).get_shape()), file) for name in handle.keys()}  # noqa: SIM118
        except Exception as err:  # safetensors raises its own SafetensorError for a damaged file
            raise ValueError(f"{file}: unreadable safetensors file ({err})") from None
    return headers


def read_hf_config(path: str | Path) -> ModelConfig:
    """The ModelConfig of a Hugging Face Llama/Qwen2 directory, from its config.json alone."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{config_path}: no such file (not a Hugging Face model directory)")
    try:
        raw = json.loads(config_path.read_text())
    except ValueError as err:
        raise ValueError(f"{config_path}: not JSON ({err})") from None
    return config_from_hf(raw, config_path)


def check_hf_model_dir(path: str | Path) -> tuple[ModelConfig, dict[str, tuple[str, Path]]]:
    """Validate a directory without reading tensor data: its config, and every tensor it needs present with
    the shape the config implies and none left over. Returns the config and, per Strata name, the Hugging Face
    name and file to read it from."""
    directory = Path(path)
    config = read_hf_config(directory)
    headers = _tensor_headers(_weight_files(directory))
    sources: dict[str, tuple[str, Path]] = {}
    used = {_HF_OUTPUT}  # a tied checkpoint may still carry the copy
    for name, shape in expected_shapes(config).items():
        hf_name = to_hf_name(name)
        if name == _OUTPUT and config.tie_embeddings and hf_name not in headers:
            hf_name = _MODEL_NAMES["tok_embeddings.weight"]
        if hf_name not in headers:
            raise ValueError(f"{directory}: tensor {hf_name!r} is missing")
        found, file = headers[hf_name]
        if found != shape:
            raise ValueError(f"{file}: tensor {hf_name!r} has shape {found}; {directory / CONFIG_FILE} implies {shape}")
        used.add(hf_name)
        sources[name] = (hf_name, file)
    unexpected = sorted(n for n in headers if n not in used and not n.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise ValueError(f"{headers[unexpected[0]][1]}: unexpected tensors {', '.join(unexpected[:5])}")
    return config, sources


def load_hf_model_dir(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The ModelConfig and Strata-named state dict of a Hugging Face Llama/Qwen2 directory (tensors keep the
    file's dtype; `load_state_dict` converts). A tied output projection becomes a copy of the embedding."""
    from safetensors import safe_open

    config, sources = check_hf_model_dir(path)
    state: dict[str, torch.Tensor] = {}
    for file in sorted({file for _, file in sources.values()}):
        with safe_open(str(file), framework="pt") as handle:
            for name, (hf_name, source) in sources.items():
                if source == file:
                    tensor = handle.get_tensor(hf_name)
                    state[name] = tensor.clone() if name == _OUTPUT else tensor
    return config, state


def save_hf_model_dir(path: str | Path, config: ModelConfig, state_dict: dict[str, torch.Tensor]) -> None:
    """Write config.json and model.safetensors for `state_dict` (Strata's names, full unsharded tensors).

    The output projection is left out and tie_word_embeddings set when it equals the embedding, as a tied model
    loaded here and not trained stays; otherwise both are written."""
    from safetensors.torch import save_file

    directory = Path(path)
    shapes = expected_shapes(config)
    missing = sorted(set(shapes) - set(state_dict))
    if missing:
        raise ValueError(f"state dict lacks {', '.join(missing[:5])} for {directory}")
    tied = torch.equal(state_dict[_OUTPUT], state_dict["tok_embeddings.weight"])
    tensors = {
        to_hf_name(name): state_dict[name].detach().to("cpu").contiguous()
        for name in shapes
        if not (tied and name == _OUTPUT)
    }
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})
    (directory / CONFIG_FILE).write_text(json.dumps(config_to_hf(config, tied), indent=2) + "\n")


def initial_model(config: ModelConfig, model_dir: str) -> Transformer:
    """The model a run starts from: `model_dir`'s weights when given (its config must be `config` up to
    max_seq_len), else `config` randomly initialised from torch's current seed."""
    model = Transformer(config)
    if model_dir:
        loaded, state = load_hf_model_dir(model_dir)
        if replace(loaded, max_seq_len=config.max_seq_len) != config:
            raise ValueError(f"{model_dir}: its config.json no longer matches the run's model {config}")
        model.load_state_dict(state)
    return model
