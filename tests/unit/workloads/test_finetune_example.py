"""The fine-tune example's path end to end through the real entry points (examples/finetune/): a Hugging Face Llama
directory with its own tokenizer.json is fine-tuned on a jsonl dataset by `python -m strata_workloads.train`
(STRATA_MODEL_DIR, STRATA_DATA_DIR, as the operator sets them), the checkpoint is served on the directory's shape
and tokenizer (STRATA_SERVE_MODEL_DIR and STRATA_SERVE_CHECKPOINT, as an InferenceService naming the job gets),
and `python -m strata_workloads.export` writes a directory transformers opens whose greedy continuation is the
served completion."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from safetensors.torch import load_file
from test_tokenizer import train_tokenizer_json
from workloads_hf import tiny_llama_config
from workloads_launch import launch

from strata_workloads.export import main as export_main
from strata_workloads.serve import build_server
from strata_workloads.settings import ServeSettings
from strata_workloads.tokenizer import load_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

PROMPT = "the quick brown"
NEW_TOKENS = 6
DOCUMENTS = [
    "the quick brown fox jumps over the lazy dog",
    "strata trains and serves",
    "héllo wörld, naïve café",
]


def base_model(directory: Path) -> None:
    """A small random Llama saved with save_pretrained beside a tokenizer.json trained for it."""
    tokenizer = load_tokenizer(str(train_tokenizer_json(directory)))
    config = tiny_llama_config(tokenizer.vocab_size)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(directory)


def greedy(model: Any, prompt: list[int], steps: int, eos: int) -> list[int]:
    """transformers' greedy continuation, up to and without the EOS (which a completion's text leaves out)."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    out = ids[len(prompt) :]
    return out[: out.index(eos)] if eos in out else out


@pytest.mark.unit
@pytest.mark.timeout(180)
async def test_a_directory_fine_tuned_on_jsonl_is_served_and_exported(tmp_path: Path) -> None:
    base, dataset, ckpt, out = tmp_path / "base", tmp_path / "data.jsonl", tmp_path / "ckpt", tmp_path / "out"
    base_model(base)
    dataset.write_text("".join(json.dumps({"text": DOCUMENTS[i % 3]}) + "\n" for i in range(60)))
    job = launch(
        tmp_path,
        "tune",
        1,
        model_dir=str(base),
        data_dir=str(dataset),
        checkpoint_dir=str(ckpt),
        steps="4",
        checkpoint_every_steps="0",
        eval_every_steps="0",
        checkpoint_async="false",
    )
    try:
        assert job.wait(timeout=150) == [0], job.logs[0].read_text()[-3000:]
    finally:
        job.kill()
    assert sorted(job.losses()) == [1, 2, 3, 4]

    served = build_server(ServeSettings(model_dir=str(base), checkpoint=str(ckpt), model_name="tuned"))
    async with TestClient(TestServer(served.app())) as client:
        await served.wait_ready()
        body = {"model": "tuned", "prompt": PROMPT, "max_tokens": NEW_TOKENS, "temperature": 0}
        completion = await (await client.post("/v1/completions", json=body)).json()

    assert export_main(["--checkpoint", str(ckpt), "--model-dir", str(base), "--out", str(out)]) == 0
    exported = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").float().eval()
    tokenizer = load_tokenizer(str(base))
    expected = greedy(exported, tokenizer.encode(PROMPT), NEW_TOKENS, tokenizer.eos_id)
    assert completion["choices"][0]["text"] == tokenizer.decode(expected)
    # the weights moved: what is served and exported is the fine-tuned model, not the base directory
    tuned, start = load_file(next(out.glob("*.safetensors"))), load_file(base / "model.safetensors")
    assert not torch.equal(tuned["model.norm.weight"].float(), start["model.norm.weight"].float())
