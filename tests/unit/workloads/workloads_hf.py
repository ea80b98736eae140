"""The tiny Hugging Face Llama the serving and fine-tuning tests save with ``save_pretrained``: GQA (4 query heads
over 2 key/value heads) and SwiGLU, small enough to train and serve in seconds."""

from __future__ import annotations

import transformers


def tiny_llama_config(vocab_size: int) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
