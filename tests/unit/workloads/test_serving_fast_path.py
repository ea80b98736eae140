"""Serving options beyond fp32 eager: bf16, INT8 weight-only on bf16, torch.compile compiled during warm-up;
and the batcher's rule for a lone request."""

from __future__ import annotations

import asyncio
import copy

import pytest
import torch
import torch._dynamo.utils
from aiohttp.test_utils import TestClient, TestServer
from torch.profiler import ProfilerActivity, profile

from strata_workloads.batching import DynamicBatcher
from strata_workloads.inference import Precision, Quantization, encode, generate, prepare, score
from strata_workloads.model import Transformer
from strata_workloads.presets import get_preset
from strata_workloads.serve import Server, prepare_model
from strata_workloads.settings import ServeSettings, load_serve_settings

pytestmark = [
    # torchao 0.18 has an invalid escape sequence in a docstring (see test_serving.py).
    pytest.mark.filterwarnings(r"ignore:invalid escape sequence '\\\.':SyntaxWarning"),
    # torchao's Int8Tensor does not implement the hash AOTAutograd's cache asks for; the cache then skips it.
    pytest.mark.filterwarnings("ignore:Int8Tensor does not implement _stable_hash_for_caching:UserWarning"),
]

PROMPTS = ["def main(", "import os\nimport sys\n", "x"]
TEXTS = ["class Foo:\n    pass\n", "for i in range(10):\n    print(i)\n", "ab"]
SAMPLE = encode("def f(x):\n    return x * 2\n" * 2)
# Relative L2 error of the logits against fp32. bf16 keeps 8 significant bits, so every rounding is off by up to
# 2^-9 (0.2%); a few dozen roundings through 4 layers add up to about 1%, and int8 weights add about 0.6%
# (measured in fp32). 5% leaves room for that and still fails on a wrong cast, scale or layout (errors of
# order 100%).
LOGITS_RTOL = 0.05
# Scoring sums the log-likelihood over a text, so per-token errors average out; the INT8 aim is 1% perplexity.
NLL_RTOL = 0.01


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(get_preset("debug")).eval()


def _logits(model: Transformer, tokens: list[int]) -> torch.Tensor:
    with torch.inference_mode():
        logits: torch.Tensor = model(torch.tensor([tokens]))
    return logits.float()


def _assert_close_to_fp32(reference: Transformer, served: Transformer) -> None:
    ref, got = _logits(reference, SAMPLE), _logits(served, SAMPLE)
    assert float((ref - got).norm() / ref.norm()) < LOGITS_RTOL
    texts = [encode(t) for t in TEXTS]
    for (ref_nll, _), (nll, _) in zip(score(reference, texts), score(served, texts), strict=True):
        assert abs(nll - ref_nll) / ref_nll < NLL_RTOL, (nll, ref_nll)


@pytest.mark.unit
def test_settings_flags_and_env() -> None:
    settings = load_serve_settings(["--precision", "bf16", "--compile", "true"], env={})
    assert (settings.precision, settings.compile) == ("bf16", True)
    settings = load_serve_settings([], env={"STRATA_SERVE_PRECISION": "bf16", "STRATA_SERVE_COMPILE": "1"})
    assert (settings.precision, settings.compile) == ("bf16", True)
    assert (ServeSettings().precision, ServeSettings().compile) == ("fp32", False)


@pytest.mark.unit
@pytest.mark.parametrize("mode", [Quantization.NONE, Quantization.INT8_WEIGHT])
def test_bf16_eager_is_close_to_fp32(model: Transformer, mode: Quantization) -> None:
    served = prepare(copy.deepcopy(model), Precision.BF16, mode, compiled=False)
    assert next(served.parameters()).dtype == torch.bfloat16
    _assert_close_to_fp32(model, served)
    prompts = [encode(p) for p in PROMPTS]
    batched = generate(served, prompts, [6, 3, 5])
    assert batched == [generate(served, [p], [n])[0] for p, n in zip(prompts, [6, 3, 5], strict=True)]


async def _compiled_server_serves_without_compiling(reference: Transformer, settings: ServeSettings) -> Transformer:
    """Warm-up compiles every shape class; afterwards requests of new batch sizes and lengths compile nothing,
    outputs stay close to fp32, and batched equals unbatched on this path."""
    server = Server(prepare_model(copy.deepcopy(reference), settings), settings)
    # Hitting dynamo's recompile limit would silently run a module eagerly; here it fails instead.
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        await _serve_new_shapes(server)
    _assert_close_to_fp32(reference, server.model)
    prompts = [encode(p) for p in PROMPTS]
    batched = generate(server.model, prompts, [6, 3, 5])
    assert batched == [generate(server.model, [p], [n])[0] for p, n in zip(prompts, [6, 3, 5], strict=True)]
    return server.model


async def _serve_new_shapes(server: Server) -> None:
    async with TestClient(TestServer(server.app())) as client:
        await server.wait_ready()
        assert (await client.get("/readyz")).status == 200
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert graphs > 0, "warm-up compiled nothing"
        bodies = [{"prompt": p, "max_new_tokens": n} for p, n in zip(PROMPTS, [6, 3, 5], strict=True)]
        answers = await asyncio.gather(*(client.post("/v1/generate", json=b) for b in bodies))
        assert [r.status for r in answers] == [200, 200, 200]
        scored = await asyncio.gather(*(client.post("/v1/predict", json={"text": t}) for t in TEXTS))
        assert [r.status for r in scored] == [200, 200, 200]
        long = await client.post("/v1/generate", json={"prompt": "x = 1\n" * 12, "max_new_tokens": 2})
        assert long.status == 200  # past the window: the recomputing path, also compiled already
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs, "a request compiled a graph"


@pytest.mark.unit
async def test_compiled_bf16_int8_server_uses_the_int8_kernel(model: Transformer) -> None:
    settings = ServeSettings(precision="bf16", quantization="int8-weight", compile=True, max_new_tokens=8)
    served = await _compiled_server_serves_without_compiling(model, settings)
    # The point of this mode: inductor substituted torchao's int8 x bf16 kernel for dequantise-then-matmul, in
    # every linear (a module left eager, or compiled without the rewrite, would not call it).
    linears = sum(isinstance(m, torch.nn.Linear) for m in served.modules())
    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.inference_mode():
        served(torch.tensor([encode("def ")]))
    assert sum(e.name == "aten::_weight_int8pack_mm" for e in prof.events()) == linears


@pytest.mark.slow
async def test_compiled_bf16_server(model: Transformer) -> None:
    await _compiled_server_serves_without_compiling(
        model, ServeSettings(precision="bf16", compile=True, max_new_tokens=8)
    )


@pytest.mark.unit
async def test_the_batcher_records_how_long_a_batch_waited() -> None:
    """A lone request waits max_wait for company; a batch that fills up runs without waiting for the deadline."""
    batches: list[tuple[int, float]] = []

    def double(items: list[int]) -> list[int]:
        return [2 * i for i in items]

    max_wait = 0.3
    batcher: DynamicBatcher[int, int] = DynamicBatcher(
        double, max_batch=3, max_wait_s=max_wait, max_queue=8, on_batch=lambda n, w, s: batches.append((n, w))
    )
    batcher.start()
    try:
        assert await batcher.submit(1) == 2
        assert await asyncio.gather(*(batcher.submit(i) for i in range(3))) == [0, 2, 4]
    finally:
        await batcher.stop()
    assert [n for n, _ in batches] == [1, 3]
    assert batches[0][1] >= max_wait
    assert batches[1][1] < max_wait / 2  # generous: scheduling time only
