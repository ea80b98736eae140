"""Continuous batching: rows that join a running batch get the tokens they would get alone, a short request
does not wait for a long one, and a lone request does not wait for company."""

from __future__ import annotations

import asyncio

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer

from strata_workloads.continuous import ContinuousBatcher, GenerateRequest, RunningBatch
from strata_workloads.inference import encode, generate
from strata_workloads.model import Transformer
from strata_workloads.presets import get_preset
from strata_workloads.serve import Server
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
