"""Continuous batching: rows that join a running batch get the tokens they would get alone, a short request
does not wait for a long one, and a lone request does not wait for company. Static batching (the same rows, a batch
formed whole and run to its end) gives the same answers; warm-up requests fill full batches before ready."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer

from strata_api.workload import ExitCode
from strata_workloads.continuous import ContinuousBatcher, GenerateRequest, RunningBatch
from strata_workloads.inference import encode, generate
from strata_workloads.model import Transformer
from strata_workloads.presets import get_preset
from strata_workloads.serve import Server, main
from strata_workloads.settings import ServeSettings


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(get_preset("debug")).eval()


def _alone(model: Transformer, prompt: str, n: int) -> list[int]:
    return generate(model, [encode(prompt)], [n])[0]


@pytest.mark.unit
def test_rows_joining_a_running_batch_get_the_tokens_they_get_alone(model: Transformer) -> None:
    batch: RunningBatch[str] = RunningBatch(model)
    finished: dict[str, list[int]] = {}
    order: list[str] = []

    def record(done: dict[str, list[int]]) -> None:
        finished.update(done)
        order.extend(done)

    record(batch.join(["long"], [encode("def main(")], [12]))
    for _ in range(3):
        record(batch.step())
    # Two newcomers with prompts shorter and longer than the running row's, one of them done at its first token.
    record(batch.join(["short", "one"], [encode("import os\nimport sys\n"), encode("x")], [3, 1]))
    assert "one" in finished
    while len(batch):
        record(batch.step())
    assert finished == {
        "long": _alone(model, "def main(", 12),
        "short": _alone(model, "import os\nimport sys\n", 3),
        "one": _alone(model, "x", 1),
    }
    assert order == ["one", "short", "long"]  # the short request left before the long one ended


@pytest.mark.unit
async def test_a_request_joins_a_running_generation(model: Transformer) -> None:
    """The old batcher ran whole generations: a request arriving during one waited for all of it."""
    steps: list[int] = []
    late: list[asyncio.Task[list[int]]] = []
    arrived = asyncio.Event()

    def on_step(rows: int, waited: float | None, seconds: float) -> None:
        steps.append(rows)
        if len(steps) == 1:  # the long request has started: two more arrive
            late.extend(
                asyncio.get_running_loop().create_task(batcher.submit(GenerateRequest(encode(p), 2)))
                for p in ("ab", "class A:\n")
            )
            arrived.set()

    batcher = ContinuousBatcher(model, max_batch=2, max_queue=8, on_step=on_step)
    batcher.start()
    try:
        long = asyncio.create_task(batcher.submit(GenerateRequest(encode("def main("), 40)))
        await arrived.wait()
        first_late = await late[0]
        assert not long.done(), "the late request waited for the long one"
        assert first_late == _alone(model, "ab", 2)
        assert await late[1] == _alone(model, "class A:\n", 2)
        assert await long == _alone(model, "def main(", 40)
    finally:
        await batcher.stop()
    assert max(steps) == 2  # max_batch rows at most; the third request waited in the queue for a free row


@pytest.mark.unit
async def test_a_lone_request_does_not_wait_for_company(model: Transformer) -> None:
    """The old batcher made a lone request wait max_wait for company that never came."""
    server = Server(model, ServeSettings(max_batch=8, max_wait_ms=1000, max_new_tokens=4))
    async with TestClient(TestServer(server.app())) as client:
        await server.wait_ready()
        resp = await client.post("/v1/generate", json={"prompt": "def ", "max_new_tokens": 4})
        assert resp.status == 200
    samples = {s.name: s.value for m in server.batch_wait.collect() for s in m.samples}
    assert samples["strata_serve_batch_wait_seconds_count"] >= 1
    # Generous: scheduling time only, well under a millisecond when idle; the old batcher waited the second.
    assert samples["strata_serve_batch_wait_seconds_sum"] < 0.5


@pytest.mark.unit
async def test_static_batching_runs_a_batch_to_its_end_before_the_next_starts_with_the_same_tokens(
    model: Transformer,
) -> None:
    """`batching.mode: static`: the first request waits for company, the batch formed runs until its last row is
    done, and a request arriving meanwhile waits for that end (continuous batching starts it at the next step:
    the test above); each row's tokens are still its own."""
    steps: list[tuple[int, float | None]] = []
    late: list[asyncio.Task[list[int]]] = []
    arrived = asyncio.Event()

    def on_step(rows: int, waited: float | None, seconds: float) -> None:
        steps.append((rows, waited))
        if len(steps) == 1:  # the first batch has started: one more arrives, with a place free for it
            late.append(asyncio.get_running_loop().create_task(batcher.submit(GenerateRequest(encode("ab"), 2))))
            arrived.set()

    batcher = ContinuousBatcher(model, max_batch=4, max_queue=8, on_step=on_step, static_wait_s=0.3)
    batcher.start()
    try:
        long = asyncio.create_task(batcher.submit(GenerateRequest(encode("def main("), 12)))
        await asyncio.sleep(0.05)  # within the first request's wait for company: it joins the same batch
        short = asyncio.create_task(batcher.submit(GenerateRequest(encode("import os\n"), 3)))
        await arrived.wait()
        assert await short == _alone(model, "import os\n", 3)
        assert await long == _alone(model, "def main(", 12)
        assert await late[0] == _alone(model, "ab", 2)
    finally:
        await batcher.stop()
    first_rows, first_waited = steps[0]
    assert first_rows == 2  # both requests of the first 0.3 s, prefilled together
    assert first_waited is not None
    assert first_waited >= 0.25  # the first request waited for company
    late_start = next(i for i, (_, waited) in enumerate(steps) if i > 0 and waited is not None)
    assert late_start == 12  # the long row's 12 tokens: a prefill and 11 steps, then the late request's batch
    assert [rows for rows, _ in steps[1:late_start]] == [2, 2] + [1] * 9  # the short row left after 3 tokens


@pytest.mark.unit
async def test_a_static_server_answers_as_a_continuous_one_and_an_unknown_mode_is_a_configuration_error(
    model: Transformer, capfd: pytest.CaptureFixture[str]
) -> None:
    answers = {}
    for mode in ("continuous", "static"):
        server = Server(model, ServeSettings(max_batch=4, max_wait_ms=20, max_new_tokens=6, batching=mode))
        async with TestClient(TestServer(server.app())) as client:
            await server.wait_ready()
            replies = await asyncio.gather(
                *(client.post("/v1/generate", json={"prompt": p, "max_new_tokens": 6}) for p in ("def ", "x = 1"))
            )
            answers[mode] = [(await r.json())["text"] for r in replies]
    assert answers["static"] == answers["continuous"]
    assert main(["--batching", "dynamic"]) == ExitCode.INVALID_CONFIGURATION
    assert "batching 'dynamic' is none of continuous, static" in capfd.readouterr().err


@pytest.mark.unit
async def test_warm_up_requests_fill_full_batches_at_full_length_before_the_server_is_ready(model: Transformer) -> None:
    server = Server(model, ServeSettings(max_batch=2, max_new_tokens=8, warmup_requests=3))
    served: list[GenerateRequest] = []
    rows: list[int] = []
    submit, advance = server.generator.submit, server.generator._advance

    async def recording(request: GenerateRequest) -> list[int]:
        served.append(request)
        return await submit(request)

    def counting(joining: list[Any], leaving: Any = ()) -> Any:
        rows.append(len(joining) + server.generator.running)
        return advance(joining, leaving)

    server.generator.submit = recording  # type: ignore[method-assign]
    server.generator._advance = counting  # type: ignore[method-assign]
    async with TestClient(TestServer(server.app())) as client:
        await server.wait_ready()
        assert (await client.get("/readyz")).status == 200
    window = model.config.max_seq_len
    assert len(served) == 3
    assert all(len(r.prompt) + r.max_new_tokens == window and r.max_new_tokens == 8 for r in served)
    assert max(rows) == 2  # a full batch of max_batch at once, then the third alone


@pytest.mark.unit
async def test_a_replica_that_cannot_serve_its_warm_up_requests_never_reports_ready(model: Transformer) -> None:
    server = Server(model, ServeSettings(max_batch=2, warmup_requests=2))

    def out_of_memory(*args: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    server.generator._advance = out_of_memory  # type: ignore[method-assign]
    async with TestClient(TestServer(server.app())) as client:
        with pytest.raises(torch.OutOfMemoryError):
            await server.wait_ready()
        assert (await client.get("/readyz")).status == 503
