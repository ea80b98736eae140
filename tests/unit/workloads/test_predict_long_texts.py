"""/v1/predict on texts longer than the model's window: a sliding window scores every token once, with as much
left context as a window allows (Hugging Face's perplexity guide), equal to a reference computed here window by
window; texts within the window score as before windows existed; the stride is a checked setting."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import torch
import torch.nn.functional as F
from router_support import Processes, wait_ready

from strata_workloads.checkpoint import Checkpointer, TrainState
from strata_workloads.engine import build_engine
from strata_workloads.inference import encode, load_model, score, scoring_stride, windows
from strata_workloads.layout import ParallelDims
from strata_workloads.model import Transformer
from strata_workloads.optim import OptimConfig, build_optimizer
from strata_workloads.parallelize import ParallelizeOptions
from strata_workloads.presets import EOS_TOKEN, get_preset
from strata_workloads.serve import Server
from strata_workloads.settings import ServeSettings

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

WINDOW = get_preset("debug").max_seq_len  # 64 positions
LONG_TEXT = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n" * 6  # 378 bytes: six windows' worth


def a_sharp_model(seed: int) -> Transformer:
    """A random model whose scores depend on context: at initialisation attention is near uniform and the output
    near the uniform distribution, so any context gives about the same score (windowed and whole-text scores
    agreed to 1e-5); sharper queries, keys and output weights make them differ by 6e-4, where the windowed
    implementation and the reference agree to 1e-7."""
    torch.manual_seed(seed)
    model = Transformer(get_preset("debug")).eval()
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith(("wq.weight", "wk.weight")):
                weight.mul_(4)
        model.output.weight.mul_(30)
    return model


@pytest.fixture(scope="module")
def model() -> Transformer:
    return a_sharp_model(0)


@torch.inference_mode()
def windowed_reference(model: Transformer, tokens: list[int], stride: int) -> float:
    """The perplexity guide's loop, one window per forward: windows of the model's length every `stride`
    tokens, each scoring only the targets the previous window did not reach."""
    ids = torch.tensor(tokens)
    size = model.config.max_seq_len
    total, previous_end = 0.0, 0
    for begin in range(0, len(tokens) - 1, stride):
        end = min(begin + size, len(tokens) - 1)
        logits = model(ids[None, begin:end])[0].float()
        nll = F.cross_entropy(logits, ids[begin + 1 : end + 1], reduction="none")
        total += float(nll[previous_end - begin :].double().sum())
        previous_end = end
        if end == len(tokens) - 1:
            break
    return total


@torch.inference_mode()
def unwindowed_score(model: Transformer, texts: list[list[int]]) -> list[tuple[float, int]]:
    """`score` as it was before sliding windows (commit ce8a7d3): one forward over each whole text."""
    lengths = torch.tensor([len(t) for t in texts])
    batch = torch.full((len(texts), int(lengths.max())), EOS_TOKEN, dtype=torch.long)
    for i, text in enumerate(texts):
        batch[i, : len(text)] = torch.tensor(text)
    logits = model(batch[:, :-1]).float()
    nll = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")
    mask = torch.arange(batch.shape[1] - 1)[None, :] < (lengths - 1)[:, None]
    sums = (nll * mask).sum(dim=1)
    return [(float(s), int(n)) for s, n in zip(sums, lengths - 1, strict=True)]


@pytest.mark.parametrize(("predictions", "stride"), [(300, 32), (300, 64), (300, 1), (64, 32), (65, 32), (10, 5)])
def test_windows_predict_every_token_once_within_the_model_window(predictions: int, stride: int) -> None:
    spans = windows(predictions, WINDOW, stride)
    counted = [p for w in spans for p in range(w.counted, w.end)]
    assert counted == list(range(predictions))
    assert all(w.end - w.begin <= WINDOW for w in spans)
    assert spans[0].counted == 0
    # after the first window, a counted prediction has at least window - stride inputs before it
    assert all(w.counted - w.begin >= WINDOW - stride for w in spans[1:])


def test_a_long_text_scores_as_the_windowed_reference(model: Transformer) -> None:
    tokens = encode(LONG_TEXT)
    assert len(tokens) > 4 * WINDOW
    for stride in (WINDOW // 2, 16, WINDOW):
        ((nll, n),) = score(model, [tokens], stride)
        assert n == len(tokens) - 1
        assert nll == pytest.approx(windowed_reference(model, tokens, stride), rel=1e-6), stride
    # the default stride is half the window; one forward over the whole text (past the positions the model
    # was made for) gives another answer
    assert score(model, [tokens])[0] == score(model, [tokens], WINDOW // 2)[0]
    assert score(model, [tokens])[0][0] != pytest.approx(unwindowed_score(model, [tokens])[0][0], rel=1e-4)


def test_long_and_short_texts_batched_score_as_each_alone(model: Transformer) -> None:
    texts = [encode(LONG_TEXT), encode("import os\n"), encode(LONG_TEXT[:100])]
    together = score(model, texts)
    for text, (nll, n) in zip(texts, together, strict=True):
        nll_alone, n_alone = score(model, [text])[0]
        assert n == n_alone == len(text) - 1
        assert nll == pytest.approx(nll_alone, rel=1e-5)


def test_texts_within_the_window_score_exactly_as_before(model: Transformer) -> None:
    texts = [encode("class Foo:\n    pass\n"), encode("ab"), encode(LONG_TEXT[: WINDOW + 1])]
    assert score(model, texts) == unwindowed_score(model, texts)
    assert score(model, texts[:1]) == unwindowed_score(model, texts[:1])


def test_the_stride_defaults_to_half_the_window_and_refuses_what_would_skip_tokens(model: Transformer) -> None:
    assert scoring_stride(None, WINDOW) == WINDOW // 2
    assert scoring_stride(7, WINDOW) == 7
    for bad in (0, -3, WINDOW + 1):
        with pytest.raises(ValueError, match=rf"predict_stride={bad} must lie in \[1, {WINDOW}\]"):
            scoring_stride(bad, WINDOW)
    with pytest.raises(ValueError, match="predict_stride"):
        Server(model, ServeSettings(predict_stride=WINDOW + 1))


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.stop_all()


def a_checkpoint(folder: Path) -> Path:
    engine = build_engine(a_sharp_model(5), ParallelDims(1), None, ParallelizeOptions(), torch.device("cpu"))
    optimizer, scheduler = build_optimizer(engine, OptimConfig())
    Checkpointer(folder, async_save=False).save(engine.parts, optimizer, scheduler, TrainState(step=1))
    return folder


async def test_the_server_process_scores_a_long_text_as_the_windowed_reference(
    processes: Processes, tmp_path: Path
) -> None:
    checkpoint = a_checkpoint(tmp_path / "checkpoints")
    server = processes.workload_server("replica", "--checkpoint", str(checkpoint), "--predict-stride", "16")
    await wait_ready(server, timeout_s=90)
    async with (
        aiohttp.ClientSession() as session,
        session.post(server.url + "/v1/predict", json={"text": LONG_TEXT}) as response,
    ):
        assert response.status == 200, await response.text()
        answer = await response.json()
    tokens = encode(LONG_TEXT)
    want = windowed_reference(load_model("debug", checkpoint), tokens, 16)
    assert answer["tokens"] == len(tokens) - 1
    assert answer["nll"] == pytest.approx(want, rel=1e-6)
    assert answer["perplexity"] == pytest.approx(math.exp(want / (len(tokens) - 1)), rel=1e-6)


def test_the_server_refuses_a_stride_longer_than_the_window_as_a_bad_configuration() -> None:
    command = [sys.executable, "-m", "strata_workloads.serve", "--port", "0", "--predict-stride", str(WINDOW + 1)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, "STRATA_LOG_FORMAT": "json"}
    )
    assert done.returncode == 2, done.stderr
    assert f"predict_stride={WINDOW + 1} must lie in [1, {WINDOW}]" in done.stdout + done.stderr
