"""The OpenAI completions API of the real server on loopback: exact usage, greedy text equal to /v1/generate's,
streams that arrive as tokens are made and concatenate to the whole text, stop strings, seeded sampling, each
bad field refused with 400 naming it, OpenAI-shaped 429/503, and a client that leaves mid-stream freeing its
row."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
import torch
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from strata_workloads.completions import CompletionText
from strata_workloads.inference import Sampling, decode, encode, generate, next_tokens
from strata_workloads.model import Transformer
from strata_workloads.presets import EOS_TOKEN, get_preset
from strata_workloads.serve import Server
from strata_workloads.settings import ServeSettings

MODEL = "debug"  # the served name: no model_name, no checkpoint


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(get_preset("debug")).eval()


@asynccontextmanager
async def serving(model: Transformer, **settings: Any) -> AsyncIterator[tuple[Server, TestClient[Any, Any]]]:
    server = Server(model, ServeSettings(**{"max_new_tokens": 48, **settings}))
    async with TestClient(TestServer(server.app())) as client:
        await server.wait_ready()
        yield server, client


def slow_steps(server: Server, seconds: float) -> list[int]:
    """Each hop of the batcher takes `seconds` longer; returns the list that counts hops (one entry each)."""
    hops: list[int] = []
    advance = server.generator._advance

    def slow(*args: Any) -> Any:
        time.sleep(seconds)
        hops.append(1)
        return advance(*args)

    server.generator._advance = slow  # type: ignore[method-assign]
    return hops


async def until_idle(server: Server) -> None:
    """Until no request is in flight and no row decodes (an abandoned row leaves before the batcher's next step)."""
    deadline = time.monotonic() + 10
    while (server.in_flight or server.generator.running) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    assert (server.in_flight, server.generator.running) == (0, 0)


async def events(response: ClientResponse) -> AsyncIterator[Any]:
    """The data of each server-sent event: a chunk's JSON, or the string [DONE]."""
    async for line in response.content:
        if line.startswith(b"data: "):
            data = line.removeprefix(b"data: ").strip()
            yield "[DONE]" if data == b"[DONE]" else orjson.loads(data)


def completion(prompt: str, **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": prompt, "temperature": 0, **fields}


@pytest.mark.unit
async def test_a_greedy_completion_is_generate_s_text_with_exact_usage(model: Transformer) -> None:
    async with serving(model) as (_, client):
        listed = await (await client.get("/v1/models")).json()
        assert [m["id"] for m in listed["data"]] == [MODEL]
        for prompt, max_tokens in (("def ", 20), ("hello world", 40)):  # the second ends at EOS (token 23)
            tokens = generate(model, [encode(prompt)], [max_tokens])[0]
            resp = await client.post("/v1/completions", json=completion(prompt, max_tokens=max_tokens))
            assert resp.status == 200
            body = await resp.json()
            generated = await client.post("/v1/generate", json={"prompt": prompt, "max_new_tokens": max_tokens})
            assert body["object"] == "text_completion"
            assert body["id"].startswith("cmpl-")
            assert body["model"] == MODEL
            [choice] = body["choices"]
            assert choice["text"] == (await generated.json())["text"]
            assert choice["finish_reason"] == ("stop" if tokens[-1] == EOS_TOKEN else "length")
            assert choice["logprobs"] is None
            assert body["usage"] == {
                "prompt_tokens": len(prompt.encode()),
                "completion_tokens": len(tokens),
                "total_tokens": len(prompt.encode()) + len(tokens),
            }
        assert tokens[-1] == EOS_TOKEN  # so finish_reason "stop" was checked too


@pytest.mark.unit
async def test_a_stream_arrives_as_it_is_made_and_concatenates_to_the_whole_text(model: Transformer) -> None:
    async with serving(model) as (server, client):
        whole = await (await client.post("/v1/completions", json=completion("def ", max_tokens=30))).json()
        slow_steps(server, 0.02)
        body = completion("def ", max_tokens=30, stream=True, stream_options={"include_usage": True})
        resp = await client.post("/v1/completions", json=body)
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        received = [chunk async for chunk in events(resp)]
    assert received[-1] == "[DONE]"
    chunks, usage_chunk = received[:-2], received[-2]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole["choices"][0]["text"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + ["length"]
    assert len(chunks) > 10  # a chunk per step that made text, not one at the end
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == whole["usage"]
    assert all(c["id"] == chunks[0]["id"] and c["object"] == "text_completion" for c in chunks)


@pytest.mark.unit
async def test_the_first_chunk_arrives_before_the_last_token_is_made(model: Transformer) -> None:
    async with serving(model) as (server, client):
        hops = slow_steps(server, 0.05)
        resp = await client.post("/v1/completions", json=completion("def ", max_tokens=30, stream=True))
        stream = events(resp)
        first = await anext(stream)
        hops_at_first_chunk = len(hops)
        rest = [chunk async for chunk in stream]
    assert first["choices"][0]["text"]
    assert rest[-1] == "[DONE]"
    # 30 tokens take 29 hops (a newcomer's first hop brings two); the first chunk came after one or two.
    assert hops_at_first_chunk <= 3 < len(hops), (hops_at_first_chunk, len(hops))


@pytest.mark.unit
@pytest.mark.parametrize("stream", [False, True])
async def test_a_stop_string_ends_the_completion(model: Transformer, stream: bool) -> None:
    tokens = generate(model, [encode("x")], [40])[0]
    full = decode(tokens)
    stop = "#_"  # two tokens (35, 95): the first is held back until the second shows it is the stop string
    assert stop in full
    made = next(k for k in range(1, len(tokens) + 1) if stop in decode(tokens[:k]))
    async with serving(model) as (server, client):
        body = completion("x", max_tokens=40, stop=["never", stop], stream=stream)
        resp = await client.post("/v1/completions", json=body)
        assert resp.status == 200
        if stream:
            chunks = [c async for c in events(resp) if c != "[DONE]"]
            text = "".join(c["choices"][0]["text"] for c in chunks)
            assert not any(stop[0] in c["choices"][0]["text"] for c in chunks)
            finish = chunks[-1]["choices"][0]["finish_reason"]
        else:
            whole = await resp.json()
            text, finish = whole["choices"][0]["text"], whole["choices"][0]["finish_reason"]
            assert whole["usage"]["completion_tokens"] == made < 40
        await until_idle(server)  # the row stopped early has left the batch
    assert text == full[: full.index(stop)]
    assert finish == "stop"


@pytest.mark.unit
async def test_seeded_sampling_repeats_and_differs_from_greedy(model: Transformer) -> None:
    async with serving(model, max_batch=4) as (_, client):

        async def text(**fields: Any) -> str:
            resp = await client.post("/v1/completions", json=completion("def ", max_tokens=30, **fields))
            assert resp.status == 200
            return str((await resp.json())["choices"][0]["text"])

        greedy = await text()
        # Alone and batched with three other seeds: a seeded row draws from its own generator.
        alone = await text(temperature=1.0, seed=7)
        together = await asyncio.gather(*(text(temperature=1.0, seed=s) for s in (7, 8, 9, 10)))
        assert together[0] == alone != greedy
        assert len(set(together)) > 1
        assert await text(temperature=1.0, top_p=1e-6, seed=3) == greedy  # the nucleus holds the top token only
        assert await text(temperature=2.0, top_k=1, seed=3) == greedy  # one token kept: the most likely
        assert await text(temperature=1.0, top_k=0, seed=7) == alone  # 0 is off


@pytest.mark.unit
def test_top_k_draws_only_among_the_k_most_likely_tokens() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 320)
    top3 = set(logits[0].topk(3).indices.tolist())
    for seed in range(200):
        sampling = Sampling(temperature=2.0, top_k=3, seed=seed)  # hot: without top-k any of 320 could come
        assert next_tokens(logits, [sampling], [sampling.generator()])[0] in top3
    drawn = set()
    for seed in range(200):
        sampling = Sampling(temperature=2.0, top_k=3, top_p=0.999, seed=seed)
        drawn.add(next_tokens(logits, [sampling], [sampling.generator()])[0])
    assert drawn == top3  # each of the three is drawn, and top_p applies within them
    greedy = next_tokens(logits, [Sampling()], [None])
    assert all(
        next_tokens(logits, [s], [s.generator()]) == greedy for s in (Sampling(1.5, top_k=1, seed=i) for i in range(20))
    )


@pytest.mark.unit
def test_next_tokens_is_argmax_when_greedy_and_a_seeded_draw_otherwise() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 2.5]])
    samplings = [Sampling(), Sampling(temperature=5.0, seed=1)]
    draws = [next_tokens(logits, samplings, [s.generator() for s in samplings]) for _ in range(20)]
    assert {d[0] for d in draws} == {1}
    assert len({d[1] for d in draws}) == 1  # the same seed, the same first draw
    generator = Sampling(temperature=5.0, seed=1).generator()
    assert len({next_tokens(logits[1:], samplings[1:], [generator])[0] for _ in range(50)}) == 3


@pytest.mark.unit
def test_completion_text_holds_back_what_may_become_a_stop_string_or_a_character() -> None:
    text = CompletionText(("STOP", "é!"))
    pieces = [text.add(t) for t in [*encode("aS"), 300, *encode("Tx é")]]  # 300: a token past the bytes
    assert pieces == ["a", "", "", "", "STx", " ", "", ""]  # "S", "ST": maybe STOP; "é" is two bytes, maybe "é!"
    assert text.add(ord("?")) == "é?"
    assert (text.add(ord("S")), text.add(ord("T")), text.add(ord("O"))) == ("", "", "")
    assert text.add(ord("P")) == ""
    assert (text.text, text.stopped, text.tokens, text.finish_reason) == ("aSTx é?", True, 13, "stop")
    ended = CompletionText(("STOP",))
    assert [ended.add(t) for t in encode("xST")] == ["x", "", ""]
    assert ended.finish() == "ST"  # the row ended: what was held back was no stop string
    assert (ended.text, ended.finish_reason) == ("xST", "length")
    eos = CompletionText(())
    assert (eos.add(0xC3), eos.add(EOS_TOKEN)) == ("", "\ufffd")  # a character cut off by EOS
    assert eos.finish_reason == "stop"


BAD_FIELDS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("model", lambda b: b.pop("model")),
    ("prompt", lambda b: b.update(prompt="")),
    ("prompt", lambda b: b.update(prompt=["a", "b"])),
    ("prompt", lambda b: b.update(prompt="x" * 5000)),
    ("max_tokens", lambda b: b.update(max_tokens=0)),
    ("max_tokens", lambda b: b.update(max_tokens="8")),
    ("max_tokens", lambda b: b.update(max_tokens=60)),  # past the window with a 4-byte prompt
    ("temperature", lambda b: b.update(temperature=-1)),
    ("temperature", lambda b: b.update(temperature=True)),
    ("top_p", lambda b: b.update(top_p=0)),
    ("top_p", lambda b: b.update(top_p=1.5)),
    ("stop", lambda b: b.update(stop=["a", "b", "c", "d", "e"])),
    ("stop", lambda b: b.update(stop=[""])),
    ("stop", lambda b: b.update(stop=3)),
    ("stream", lambda b: b.update(stream="yes")),
    ("stream_options", lambda b: b.update(stream_options={"include_usage": True})),  # without stream
    ("n", lambda b: b.update(n=2)),
    ("echo", lambda b: b.update(echo=True)),
    ("best_of", lambda b: b.update(best_of=3)),
    ("logprobs", lambda b: b.update(logprobs=2)),
    ("seed", lambda b: b.update(seed=1.5)),
    ("top_k", lambda b: b.update(top_k=-1)),
    ("top_k", lambda b: b.update(top_k=2.5)),
    ("top_k", lambda b: b.update(top_k=True)),
    ("top_k", lambda b: b.update(top_k="5")),
    ("user", lambda b: b.update(user=5)),
    ("frobnicate", lambda b: b.update(frobnicate=1)),
]


@pytest.mark.unit
async def test_each_bad_field_is_refused_with_400_naming_it(model: Transformer) -> None:
    async with serving(model, max_prompt_bytes=4096) as (_, client):
        for param, spoil in BAD_FIELDS:
            body = completion("def ", max_tokens=8)
            spoil(body)
            resp = await client.post("/v1/completions", json=body)
            error = (await resp.json())["error"]
            assert (resp.status, error["param"], error["type"]) == (400, param, "invalid_request_error"), error
            assert error["message"]
            assert error["code"] is None
        resp = await client.post("/v1/completions", data=b"{nope", headers={"Content-Type": "application/json"})
        assert resp.status == 400
        assert "JSON" in (await resp.json())["error"]["message"]
        resp = await client.post("/v1/completions", json=completion("def ") | {"model": "gpt-4"})
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "model_not_found"
        # What is accepted at its default: user is ignored, n 1, echo false, a list of one prompt.
        fine = completion("def ", max_tokens=2) | {"user": "u", "n": 1, "echo": False, "prompt": ["def "]}
        assert (await client.post("/v1/completions", json=fine)).status == 200


@pytest.mark.unit
async def test_a_full_queue_gives_429_and_draining_503_in_openai_s_shape(model: Transformer) -> None:
    async with serving(model, max_batch=1, max_queue=1) as (server, client):
        slow_steps(server, 0.05)
        running = await client.post("/v1/completions", json=completion("def ", max_tokens=30, stream=True))
        await anext(events(running))  # its row is in the batch: the queue is empty
        queued = asyncio.create_task(client.post("/v1/completions", json=completion("x", max_tokens=2)))
        while server.generator._queue.empty():  # noqa: ASYNC110 (the queue has no event to wait on)
            await asyncio.sleep(0.005)
        refused = await client.post("/v1/completions", json=completion("x", max_tokens=2))
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "1"
        assert (await refused.json())["error"]["code"] == "rate_limit_exceeded"
        server.draining = True
        unavailable = await client.post("/v1/completions", json=completion("x", max_tokens=2))
        assert unavailable.status == 503
        assert (await unavailable.json())["error"] == {
            "message": "draining",
            "type": "server_error",
            "param": None,
            "code": None,
        }
        assert (await queued).status == 200
        running.close()


@pytest.mark.unit
async def test_a_client_that_leaves_mid_stream_frees_its_row(model: Transformer) -> None:
    async with serving(model, max_batch=1) as (server, client):
        hops = slow_steps(server, 0.05)
        resp = await client.post("/v1/completions", json=completion("def ", max_tokens=40, stream=True))
        await anext(events(resp))
        resp.close()  # the connection goes with it
        await until_idle(server)
        assert len(hops) < 10  # freed at once, not after its 40 tokens
        metrics = await (await client.get("/metrics")).text()
        assert "strata_serve_in_flight 0.0" in metrics
        # The one row of max_batch 1 is free: the next request is served.
        assert (await client.post("/v1/completions", json=completion("x", max_tokens=2))).status == 200


@pytest.mark.unit
async def test_draining_lets_an_open_stream_finish(model: Transformer) -> None:
    async with serving(model) as (server, client):
        slow_steps(server, 0.02)
        resp = await client.post("/v1/completions", json=completion("def ", max_tokens=20, stream=True))
        stream = events(resp)
        await anext(stream)
        drain = asyncio.create_task(server.drain())
        refused = await client.post("/v1/completions", json=completion("x", max_tokens=2))
        assert refused.status == 503
        rest = [chunk async for chunk in stream]
        assert rest[-2]["choices"][0]["finish_reason"] == "length"
        assert rest[-1] == "[DONE]"
        await drain
        assert server.in_flight == 0


@pytest.mark.unit
async def test_streams_that_leave_among_others_leak_nothing(model: Transformer) -> None:
    """Rows leaving mid-batch while others join and finish: the others' text is unchanged, nothing is left."""
    prompts = ["def ", "x", "class A:\n", "import os\n"]
    async with serving(model, max_batch=3) as (server, client):
        want = {
            p: await (await client.post("/v1/completions", json=completion(p, max_tokens=24))).json() for p in prompts
        }
        slow_steps(server, 0.005)

        async def leave(prompt: str) -> None:
            resp = await client.post("/v1/completions", json=completion(prompt, max_tokens=24, stream=True))
            await anext(events(resp))
            resp.close()

        async def stay(prompt: str) -> str:
            resp = await client.post("/v1/completions", json=completion(prompt, max_tokens=24, stream=True))
            return "".join([c["choices"][0]["text"] async for c in events(resp) if c != "[DONE]"])

        jobs = [stay(p) if i % 2 else leave(p) for i, p in enumerate(prompts * 3)]
        results = await asyncio.gather(*jobs)
        for i, (prompt, result) in enumerate(zip(prompts * 3, results, strict=True)):
            if i % 2:
                assert result == want[prompt]["choices"][0]["text"], prompt
        await until_idle(server)
        assert server.generator._streams == {}
        assert server.generator._queue.empty()
