"""Serving: batched equals unbatched, INT8 stays close to fp32, and the HTTP contract (4xx, 429, 503, drain)."""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from torch.optim.lr_scheduler import LambdaLR

from strata_workloads.batching import DynamicBatcher, Overloaded
from strata_workloads.checkpoint import Checkpointer, TrainState
from strata_workloads.engine import Engine, build_engine
from strata_workloads.inference import (
    Quantization,
    encode,
    generate,
    generate_recompute,
    load_model,
    quantize,
    score,
)
from strata_workloads.layout import ParallelDims
from strata_workloads.model import KVCache, Transformer
from strata_workloads.optim import OptimConfig, build_optimizer
from strata_workloads.parallelize import ParallelizeOptions
from strata_workloads.presets import get_preset
from strata_workloads.serve import Server
from strata_workloads.settings import ServeSettings

# torchao 0.18 has an invalid escape sequence in a docstring (quant_api.py); Python reports it when it compiles
# the module from source, which happens here because the environment sets PYTHONDONTWRITEBYTECODE.
pytestmark = pytest.mark.filterwarnings(r"ignore:invalid escape sequence '\\\.':SyntaxWarning")

PROMPTS = ["def main(", "import os\nimport sys\n", "x"]
TEXTS = ["class Foo:\n    pass\n", "for i in range(10):\n    print(i)\n", "ab"]


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(get_preset("debug")).eval()


@pytest.mark.unit
def test_batched_outputs_equal_unbatched(model: Transformer) -> None:
    prompts = [encode(p) for p in PROMPTS]
    batched = generate(model, prompts, [6, 3, 5])
    alone = [generate(model, [p], [n])[0] for p, n in zip(prompts, [6, 3, 5], strict=True)]
    assert batched == alone
    assert [len(t) for t in batched] == [6, 3, 5]
    texts = [encode(t) for t in TEXTS]
    together = score(model, texts)
    for (nll, n), text in zip(together, texts, strict=True):
        nll_alone, n_alone = score(model, [text])[0]
        assert n == n_alone == len(text) - 1
        assert nll == pytest.approx(nll_alone, rel=1e-5)


@pytest.mark.unit
def test_kv_cache_decode_equals_full_recompute(model: Transformer) -> None:
    # Logits: a prefill of right-padded prompts, then one token per row per step at its own position, against
    # the whole sequence run from scratch.
    rows = [encode("def main(x):\n"), encode("ab")]
    lengths = [len(r) for r in rows]
    extra = [[7, 8, 9], [10, 11, 12]]
    full = [r + e for r, e in zip(rows, extra, strict=True)]
    with torch.inference_mode():
        batch = torch.full((2, max(lengths)), 256)
        for i, r in enumerate(rows):
            batch[i, : len(r)] = torch.tensor(r)
        cache = KVCache(max(lengths) + 3, positions=torch.arange(max(lengths)).expand(2, -1))
        got = [model(batch, cache)[torch.arange(2), torch.tensor(lengths) - 1]]
        for step in range(3):
            cache.positions = torch.tensor(lengths)[:, None] + step
            got.append(model(torch.tensor([[e[step]] for e in extra]), cache)[:, -1])
        for i, seq in enumerate(full):
            want = model(torch.tensor([seq]))[0, lengths[i] - 1 :]
            torch.testing.assert_close(torch.stack([g[i] for g in got]), want, rtol=1e-5, atol=1e-5)
    # Tokens: the cached generator equals the recomputing one, batched and alone, and past the model's window
    # (which falls back to the sliding window).
    prompts = [encode(p) for p in PROMPTS]
    assert generate(model, prompts, [6, 3, 5]) == generate_recompute(model, prompts, [6, 3, 5])
    for prompt in prompts:
        assert generate(model, [prompt], [8]) == generate_recompute(model, [prompt], [8])
    long = [encode("x = 1\n" * 12)]  # 72 bytes, past debug's 64-token window
    assert generate(model, long, [4]) == generate_recompute(model, long, [4])


@pytest.mark.unit
@pytest.mark.parametrize("mode", [Quantization.INT8_WEIGHT, Quantization.INT8_DYNAMIC])
def test_int8_is_close_to_fp32(model: Transformer, mode: Quantization) -> None:
    quantized = quantize(copy.deepcopy(model), mode)
    batch = torch.tensor([encode("def f(x):\n    return x * 2\n" * 2)])
    with torch.inference_mode():
        ref, got = model(batch), quantized(batch)
    assert not torch.equal(ref, got), "quantization changed nothing"
    # Relative L2 error of the logits (measured: 0.6% weight-only, 1.5% dynamic on this model).
    assert float((ref - got).norm() / ref.norm()) < 0.05
    texts = [encode(t) for t in TEXTS]
    for (ref_nll, n), (nll, _) in zip(score(model, texts), score(quantized, texts), strict=True):
        assert abs(nll - ref_nll) / ref_nll < 0.01, (mode, n, nll, ref_nll)


def a_training_run() -> tuple[Engine, torch.optim.AdamW, LambdaLR]:
    """The debug preset's engine, optimizer and scheduler on one CPU process, as a training run has them."""
    torch.manual_seed(3)
    engine = build_engine(
        Transformer(get_preset("debug")), ParallelDims(1), None, ParallelizeOptions(), torch.device("cpu")
    )
    optimizer, scheduler = build_optimizer(engine, OptimConfig())
    return engine, optimizer, scheduler


@pytest.mark.unit
def test_loads_the_weights_of_a_training_checkpoint_and_logs_the_step_it_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine, optimizer, scheduler = a_training_run()
    Checkpointer(tmp_path, async_save=False).save(engine.parts, optimizer, scheduler, TrainState(step=7))
    with caplog.at_level(logging.INFO, logger="strata_workloads.inference"):
        loaded = load_model("debug", tmp_path)
    for (name, want), got in zip(engine.parts[0].state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(want, got), name
    # the root's newest step folder, named in the replica's log (kubectl logs says which step a replica serves)
    said = [r.checkpoint for r in caplog.records if r.getMessage() == "weights loaded"]  # type: ignore[attr-defined]
    assert said == [str(tmp_path / "step-00000007")]


@pytest.mark.unit
def test_a_root_serves_the_step_asked_for_while_newer_ones_exist_and_the_newest_when_that_one_cannot_be_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine, optimizer, scheduler = a_training_run()
    checkpointer = Checkpointer(tmp_path, keep=5, async_save=False)
    weights: dict[int, dict[str, torch.Tensor]] = {}
    for step in (10, 20, 30):
        with torch.no_grad():
            for tensor in engine.parts[0].parameters():
                tensor.add_(0.01)  # each step's weights differ
        checkpointer.save(engine.parts, optimizer, scheduler, TrainState(step=step))
        weights[step] = {k: v.clone() for k, v in engine.parts[0].state_dict().items()}

    def served(step: int | None) -> tuple[int, list[str]]:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="strata_workloads.inference"):
            loaded = load_model("debug", tmp_path, step=step).state_dict()
        which = [s for s, want in weights.items() if all(torch.equal(want[k], loaded[k]) for k in want)]
        assert len(which) == 1, which
        return which[0], [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    assert served(20) == (20, [])  # the revision's step, though 30 is newer
    assert served(None) == (30, [])
    unusable = "the step asked for is unusable, serving the newest checkpoint that loads"
    assert served(25) == (30, [unusable])  # not there (retention removed it, or never written)
    (tmp_path / "step-00000020" / "COMPLETE").write_text("{}")  # its checksums no longer match what it holds
    step, warned = served(20)
    assert (step, warned[0]) == (30, unusable)


@pytest.mark.unit
async def test_batcher_groups_waiting_requests_and_refuses_beyond_its_queue() -> None:
    sizes: list[int] = []

    def slow_double(items: list[int]) -> list[int]:
        time.sleep(0.05)
        return [2 * i for i in items]

    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        slow_double, max_batch=4, max_wait_s=0.02, max_queue=4, on_batch=lambda n, w, s: sizes.append(n)
    )
    batcher.start()
    try:
        assert await asyncio.gather(*(batcher.submit(i) for i in range(4))) == [0, 2, 4, 6]
        assert sizes == [4]
        # One batch running, four waiting: the next request is refused at once.
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(8)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        refused = [i for i, r in enumerate(results) if isinstance(r, Overloaded)]
        assert refused, "nothing was refused"
        assert len(refused) <= 4  # at most four wait; one more may have been taken into the running batch
        assert all(r == 2 * i for i, r in enumerate(results) if i not in refused)
    finally:
        await batcher.stop()


@pytest.mark.unit
async def test_http_contract(model: Transformer) -> None:
    server = Server(model, ServeSettings(max_batch=4, max_wait_ms=2, max_queue=2, max_new_tokens=8))
    # Warm-up held until the test lets it go: alive, not ready, requests refused with 503.
    gate = threading.Event()
    warm_up = server.warm_up
    server.warm_up = lambda: (gate.wait(timeout=60), warm_up())  # type: ignore[assignment]
    async with TestClient(TestServer(server.app())) as client:
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 503
        early = await client.post("/v1/generate", json={"prompt": "def ", "max_new_tokens": 3})
        assert early.status == 503
        assert (await early.json())["error"] == "warming up"
        gate.set()
        await server.wait_ready()
        assert (await client.get("/readyz")).status == 200
        ok = await client.post("/v1/generate", json={"prompt": "def ", "max_new_tokens": 3})
        assert ok.status == 200
        assert (await ok.json())["tokens"] == 3
        scored = await client.post("/v1/predict", json={"text": "import os\n"})
        assert scored.status == 200
        assert (await scored.json())["perplexity"] > 1

        bad = [
            ("/v1/generate", b"{not json", "not valid JSON"),
            ("/v1/generate", b"[1, 2]", "JSON object"),
            ("/v1/generate", b'{"prompt": 3}', "'prompt' must be a non-empty string"),
            ("/v1/generate", b'{"prompt": "x", "max_new_tokens": 100}', "'max_new_tokens' must be an integer"),
            ("/v1/predict", b'{"text": "a"}', "at least two bytes"),
        ]
        for path, body, message in bad:
            resp = await client.post(path, data=body, headers={"Content-Type": "application/json"})
            assert resp.status == 400, (path, body)
            assert message in (await resp.json())["error"]

        # Overload: a slow model, a queue of two; a burst gets some 429s and every other request succeeds.
        original = server.generator._advance

        def slow(*args: Any) -> dict[Any, list[int]]:
            time.sleep(0.2)
            return original(*args)

        server.generator._advance = slow  # type: ignore[method-assign]
        burst = await asyncio.gather(
            *(client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 1}) for _ in range(12))
        )
        statuses = sorted(r.status for r in burst)
        assert set(statuses) == {200, 429}, statuses

        # Drain: the request in flight completes; new ones and /readyz get 503.
        in_flight = asyncio.create_task(client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 1}))
        await asyncio.sleep(0.05)
        drain = asyncio.create_task(server.drain())
        await asyncio.sleep(0.01)
        assert (await client.get("/readyz")).status == 503
        refused = await client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 1})
        assert refused.status == 503
        assert (await in_flight).status == 200
        await drain

        metrics = await (await client.get("/metrics")).text()
        assert 'strata_serve_requests_total{endpoint="generate",status="429"}' in metrics
        assert "strata_serve_batch_size_bucket" in metrics


def test_replicas_without_a_checkpoint_serve_the_same_random_weights() -> None:
    # an InferenceService of a preset with random weights: each replica loads its own model, and they must agree
    first, second = load_model("debug", None), load_model("debug", None)
    pairs = zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
