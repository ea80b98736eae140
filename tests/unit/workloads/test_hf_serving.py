"""Serving a Hugging Face directory with its tokenizer.json: /v1/generate and streamed /v1/completions give the
text of the reference model's greedy tokens, counted in the tokenizer's ids, and stop at the tokenizer's EOS."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from test_tokenizer import train_tokenizer_json
from workloads_hf import tiny_llama_config

from strata_workloads.serve import build_server
from strata_workloads.settings import ServeSettings
from strata_workloads.tokenizer import load_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

PROMPT = "the quick brown"


def greedy(model: Any, prompt: list[int], steps: int) -> list[int]:
    """The reference's greedy continuation, recomputing the whole sequence each step."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


@pytest.mark.unit
@pytest.mark.timeout(120)
async def test_a_served_hf_directory_answers_with_its_tokenizer_and_stops_at_its_eos(tmp_path: Path) -> None:
    directory = tmp_path / "model"
    tokenizer = load_tokenizer(str(train_tokenizer_json(directory)))
    config = tiny_llama_config(tokenizer.vocab_size)
    torch.manual_seed(0)
    reference = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0.0, 0.2)
    reference.save_pretrained(directory)
    prompt = tokenizer.encode(PROMPT)
    unstopped = greedy(reference, prompt, 8)
    # The tokenizer's EOS is the third generated token, so the server must stop there.
    eos = unstopped[2]
    expected = unstopped[: unstopped.index(eos) + 1]
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": tokenizer_token(directory, eos)}))
    tokenizer = load_tokenizer(str(directory))
    assert tokenizer.eos_id == eos

    server = build_server(ServeSettings(model_dir=str(directory), model_name="tiny", max_new_tokens=8))
    async with TestClient(TestServer(server.app())) as client:
        await server.wait_ready()
        generated = await (await client.post("/v1/generate", json={"prompt": PROMPT, "max_new_tokens": 8})).json()
        assert generated == {"text": tokenizer.decode(expected), "tokens": len(expected)}
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "stream": True}
        body |= {"stream_options": {"include_usage": True}}
        resp = await client.post("/v1/completions", json=body)
        events = [orjson.loads(line[6:]) for line in (await resp.text()).splitlines() if line.startswith("data: {")]
        assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == tokenizer.decode(expected)
        assert [e["choices"][0]["finish_reason"] for e in events if e["choices"]][-1] == "stop"
        assert events[-1]["usage"]["prompt_tokens"] == len(prompt)
        assert events[-1]["usage"]["completion_tokens"] == len(expected)


def tokenizer_token(directory: Path, token_id: int) -> str:
    from tokenizers import Tokenizer

    token = Tokenizer.from_file(str(directory / "tokenizer.json")).id_to_token(token_id)
    assert token is not None
    return str(token)


@pytest.mark.unit
@pytest.mark.timeout(60)
def test_a_server_given_a_broken_directory_exits_with_the_bad_config_code(tmp_path: Path) -> None:
    from strata_api.workload import ExitCode
    from strata_workloads.serve import main

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["--model-dir", str(tmp_path)]) == ExitCode.INVALID_CONFIGURATION
