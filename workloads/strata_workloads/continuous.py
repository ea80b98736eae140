"""Continuous batching for generation: requests join the running decode loop between steps and leave it when
done, so no request waits for company and none waits for other requests' whole generations.

Why: with a batcher that runs whole generations, a request that finds the model idle must either wait
`max_wait` for company (a lone user pays it every time) or start at once, and then a burst that arrives a
millisecond later waits for that first generation to finish. Here the first request starts at once and the
rest of the burst joins after one decode step.

A request is either awaited whole (`submit`) or read as it is made (`open`: a `TokenStream` gets each step's
tokens; closing it early, for a stop string or a client that went away, frees its row before the next step).

Static batching (`static_wait_s`; an InferenceService's `batching.mode: static`) runs the same rows the way a
batcher of whole generations does, for comparison and for clients that want it: a batch forms while its first
request waits up to `max_wait` for company, then decodes until its last row is done, with no newcomer joining;
a row that finishes early leaves its place empty. Each row still makes the tokens it would make alone, so the two
modes give the same answers and differ only in when a request starts.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

import torch

from strata_workloads.batching import Pending, QueueServer
from strata_workloads.inference import GREEDY, Sampling, _pad, generate, next_tokens
from strata_workloads.model import KVCache, Transformer
from strata_workloads.presets import EOS_TOKEN

Key = TypeVar("Key")


class Batching(StrEnum):
    """How generation requests share the model (``ServeSettings.batching``)."""

    CONTINUOUS = "continuous"
    STATIC = "static"


class RunningBatch(Generic[Key]):
    """Rows decoding together over one KV cache. Each row attends only to its own cache slots (per-row
    positions and mask, as in `generate`), so it produces the tokens it would produce alone; rows of
    different ages simply sit at different positions. Each row picks its tokens by its own `Sampling`
    (greedy unless told otherwise)."""

    def __init__(self, model: Transformer, eos_id: int = EOS_TOKEN) -> None:
        self.model = model
        self.eos_id = eos_id  # the tokenizer's end of text: a row that makes it is done
        self.keys: list[Key] = []
        self.produced: list[list[int]] = []
        self.limits: list[int] = []
        self.samplings: list[Sampling] = []
        self.generators: list[torch.Generator | None] = []
        self.cache: KVCache | None = None
        self.pending = torch.zeros(0, dtype=torch.long)  # each row's last token, not yet fed to the model
        self.positions = torch.zeros(0, dtype=torch.long)  # where that token goes in the row's cache

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def fits(model: Transformer, prompt: list[int], max_new_tokens: int) -> bool:
        """Whether a request can use the cache; longer ones need `generate`'s sliding window."""
        return bool(prompt) and max_new_tokens > 0 and len(prompt) + max_new_tokens <= model.config.max_seq_len

    @torch.inference_mode()
    def join(
        self,
        keys: list[Key],
        prompts: list[list[int]],
        max_new_tokens: list[int],
        samplings: list[Sampling] | None = None,
    ) -> dict[Key, list[int]]:
        """Prefill the newcomers (their first token comes from it) and add them; returns rows already done."""
        samplings = samplings if samplings is not None else [GREEDY] * len(keys)
        batch, lengths = _pad(prompts)
        capacity = int((lengths + torch.tensor(max_new_tokens)).max())
        cache = KVCache(capacity, positions=torch.arange(batch.shape[1]).expand(len(prompts), -1))
        logits = self.model(batch, cache)[torch.arange(len(prompts)), lengths - 1]
        if self.cache is None:
            self.cache = cache
        else:
            self.cache = _concat(self.cache, cache)
        self.keys += keys
        self.produced += [[] for _ in keys]
        self.limits += max_new_tokens
        self.samplings += samplings
        self.generators += [s.generator() for s in samplings]
        self.pending = torch.cat([self.pending, torch.zeros(len(keys), dtype=torch.long)])
        self.positions = torch.cat([self.positions, lengths - 1])
        first = len(self.keys) - len(keys)
        return self._advance(logits, range(first, len(self.keys)))

    @torch.inference_mode()
    def step(self) -> dict[Key, list[int]]:
        """One decode step for every row; returns (and removes) the rows that finished."""
        if self.cache is None or not self.keys:
            return {}
        self.cache.positions = self.positions[:, None]
        logits = self.model(self.pending[:, None], self.cache)[:, -1]
        return self._advance(logits, range(len(self.keys)))

    def drop(self, keys: Collection[Key]) -> None:
        """Remove these rows unfinished (their requests were abandoned), freeing their places at once."""
        if any(k in keys for k in self.keys):
            self._keep([r for r, k in enumerate(self.keys) if k not in keys])

    def _advance(self, logits: torch.Tensor, rows: range) -> dict[Key, list[int]]:
        tokens = next_tokens(logits, self.samplings[rows.start : rows.stop], self.generators[rows.start : rows.stop])
        done: list[int] = []
        for row, token in zip(rows, tokens, strict=True):
            self.produced[row].append(token)
            self.pending[row] = token
            self.positions[row] += 1
            if token == self.eos_id or len(self.produced[row]) >= self.limits[row]:
                done.append(row)
        finished = {self.keys[row]: self.produced[row] for row in done}
        if done:
            gone = set(done)
            self._keep([r for r in range(len(self.keys)) if r not in gone])
        return finished

    def _keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, dtype=torch.long)
        self.keys = [self.keys[r] for r in rows]
        self.produced = [self.produced[r] for r in rows]
        self.limits = [self.limits[r] for r in rows]
        self.samplings = [self.samplings[r] for r in rows]
        self.generators = [self.generators[r] for r in rows]
        self.pending, self.positions = self.pending[index], self.positions[index]
        if not rows:
            self.cache = None
        elif self.cache is not None:
            for store in (self.cache.keys, self.cache.values):
                for layer, buffer in store.items():
                    store[layer] = buffer[index]


def _concat(old: KVCache, new: KVCache) -> KVCache:
    """One cache holding both caches' rows, at the larger capacity (the extra slots are masked until used)."""
    capacity = max(old.capacity, new.capacity)

    def grown(buffer: torch.Tensor) -> torch.Tensor:
        extra = capacity - buffer.shape[1]
        return (
            buffer
            if extra == 0
            else torch.cat([buffer, buffer.new_zeros(buffer.shape[0], extra, *buffer.shape[2:])], 1)
        )

    merged = KVCache(capacity)
    for layer in new.keys:
        merged.keys[layer] = torch.cat([grown(old.keys[layer]), grown(new.keys[layer])])
        merged.values[layer] = torch.cat([grown(old.values[layer]), grown(new.values[layer])])
    return merged


@dataclass(frozen=True)
class GenerateRequest:
    prompt: list[int]
    max_new_tokens: int
    sampling: Sampling = GREEDY


_Pending = Pending[GenerateRequest, list[int]]


class TokenStream:
    """One request's tokens in the order its row makes them, a list per step of the batcher (a newcomer's first
    step may bring two: its prefill's and the batch's step). Iteration ends when the row is done and raises
    what failed its step. `close()` (always: it gives back the request's place in `in_flight`) abandons an
    unfinished request: the batcher drops its row before its next step."""

    def __init__(self, batcher: ContinuousBatcher, pending: _Pending) -> None:
        self._batcher = batcher
        self.pending = pending
        self.sent = 0  # tokens passed to the queue so far (the batcher's side)
        self.chunks: asyncio.Queue[list[int] | None] = asyncio.Queue()  # None: the row is done
        self._closed = False

    def __aiter__(self) -> TokenStream:
        return self

    async def __anext__(self) -> list[int]:
        chunk = None if self._closed else await self.chunks.get()
        if chunk is None:
            if self.pending.future.done() and not self.pending.future.cancelled():
                self.pending.future.result()  # the step's error, if one failed this request
            raise StopAsyncIteration
        return chunk

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._batcher.in_flight -= 1
        self._batcher._streams.pop(self.pending, None)
        if not self.pending.future.done():
            self.pending.future.cancel()


class ContinuousBatcher(QueueServer[GenerateRequest, list[int]]):
    """Admission and stepping on the event loop's side; the model runs in a worker thread, one step per hop,
    so the loop keeps accepting (and refusing) requests while others decode."""

    def __init__(
        self,
        model: Transformer,
        max_batch: int,
        max_queue: int,
        on_step: Callable[[int, float | None, float], None] | None = None,
        eos_id: int = EOS_TOKEN,
        static_wait_s: float | None = None,
    ) -> None:
        super().__init__(max_queue)
        self.model = model
        self.eos_id = eos_id
        self.max_batch = max_batch
        self.static_wait_s = static_wait_s
        """None: continuous batching. Seconds: static batching, the baseline the batching mode ``static`` serves
        (module docstring): a batch forms while its first request waits this long for company, up to
        ``max_batch``, and runs until its last row is done; requests that arrive meanwhile wait for its end."""
        # (rows in the step, seconds the oldest newcomer waited before its prefill (None: no newcomer), seconds)
        self._on_step = on_step
        self._running: RunningBatch[_Pending] = RunningBatch(model, eos_id)
        self._streams: dict[_Pending, TokenStream] = {}

    @property
    def running(self) -> int:
        """Rows in the running batch (places taken of `max_batch`)."""
        return len(self._running)

    def open(self, request: GenerateRequest) -> TokenStream:
        """Queue a request whose tokens are read as they are made; raises Overloaded when the queue is full."""
        pending = self._put(request)
        self.in_flight += 1
        stream = TokenStream(self, pending)
        self._streams[pending] = stream
        return stream

    async def _loop(self) -> None:
        while True:
            joining = [] if self._running else [await self._queue.get()]
            if self.static_wait_s is None:
                while len(self._running) + len(joining) < self.max_batch and not self._queue.empty():
                    joining.append(self._queue.get_nowait())
            elif joining:  # static: a batch forms only once the last one has ended, and waits for company
                await self._gather(joining, self.max_batch, joining[0].enqueued + self.static_wait_s)
            joining = [p for p in joining if not p.future.done()]  # abandoned while queued
            leaving = {p for p in self._running.keys if p.future.done()}
            if not joining and len(leaving) == len(self._running):
                self._running = RunningBatch(self.model, self.eos_id)
                continue
            started = time.monotonic()
            for p in joining:
                p.waited = started - p.enqueued
            try:
                finished = await asyncio.to_thread(self._advance, joining, leaving)
            except Exception as err:  # one failed step fails the requests in it, not the server
                for p in [*self._running.keys, *joining]:
                    if not p.future.done():
                        p.future.set_exception(err)
                    if p in self._streams:
                        self._streams[p].chunks.put_nowait(None)
                self._running = RunningBatch(self.model, self.eos_id)
                continue
            if self._on_step is not None:
                waited = max((p.waited for p in joining), default=None)
                self._on_step(len(self._running) + len(finished), waited, time.monotonic() - started)
            self._deliver(finished)
            for p, tokens in finished.items():
                if not p.future.done():
                    p.future.set_result(tokens)

    def _deliver(self, finished: dict[_Pending, list[int]]) -> None:
        """Pass each open stream the tokens its row made since the last step; a finished row's stream ends."""
        for p, tokens in itertools.chain(
            zip(self._running.keys, self._running.produced, strict=True), finished.items()
        ):
            stream = self._streams.get(p)
            if stream is not None and len(tokens) > stream.sent:
                stream.chunks.put_nowait(tokens[stream.sent :])
                stream.sent = len(tokens)
        for p in finished:
            if p in self._streams:
                self._streams[p].chunks.put_nowait(None)

    def _advance(self, joining: list[_Pending], leaving: Collection[_Pending] = ()) -> dict[_Pending, list[int]]:
        """Abandoned rows leave, newcomers are prefilled, then one decode step for all. A request too long for
        the cache runs alone with the sliding window and greedy (rare: it holds the others up for its whole
        generation; /v1/completions refuses such requests)."""
        self._running.drop(leaving)
        finished: dict[_Pending, list[int]] = {}
        fit = [p for p in joining if RunningBatch.fits(self.model, p.item.prompt, p.item.max_new_tokens)]
        for p in joining:
            if p not in fit:
                finished[p] = generate(self.model, [p.item.prompt], [p.item.max_new_tokens])[0]
        stepping = bool(self._running)
        if fit:
            prompts = [p.item.prompt for p in fit]
            limits = [p.item.max_new_tokens for p in fit]
            finished |= self._running.join(fit, prompts, limits, [p.item.sampling for p in fit])
        if stepping:  # newcomers already got their first token from the prefill
            finished |= self._running.step()
        return finished
