"""Dynamic batching: requests wait at most `max_wait` for company, up to `max_batch` per model call; a bounded
queue turns overload into a fast refusal instead of unbounded latency.

The server scores (`/v1/predict`, one forward per batch) through this; generation uses continuous batching
(`continuous.py`). A lone request pays `max_wait` here (recorded per batch as the oldest request's wait):
running it at once when the model is idle would split a burst that arrives a millisecond later, whose rest
would then wait for the whole first call. For one forward that costs little; for a whole generation it cost
a lone request `max_wait` every time, which is why generation no longer batches this way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


class Overloaded(Exception):
    """The queue is full: the caller should answer 429."""


@dataclass(eq=False)
class Pending(Generic[In, Out]):
    """A request in the queue (hashable by identity: the continuous batcher keys its running rows by it)."""

    item: In
    future: asyncio.Future[Out]
    enqueued: float
    waited: float = 0.0


class QueueServer(Generic[In, Out]):
    """A bounded queue served by one loop task (``_loop``): the part both batchers share. A full queue refuses
    at once (:class:`Overloaded`, answered 429) instead of growing latency without bound."""

    def __init__(self, max_queue: int) -> None:
        self._queue: asyncio.Queue[Pending[In, Out]] = asyncio.Queue(maxsize=max_queue)
        self._task: asyncio.Task[None] | None = None
        self.in_flight = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _put(self, item: In) -> Pending[In, Out]:
        """Queue an item, or refuse it at once when the queue is full."""
        pending: Pending[In, Out] = Pending(item, asyncio.get_running_loop().create_future(), time.monotonic())
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise Overloaded(f"queue full ({self._queue.maxsize} waiting)") from None
        return pending

    async def submit(self, item: In) -> Out:
        pending = self._put(item)
        self.in_flight += 1
        try:
            return await pending.future
        finally:
            self.in_flight -= 1

    async def _loop(self) -> None:
        raise NotImplementedError

    async def _gather(self, batch: list[Pending[In, Out]], size: int, deadline: float) -> None:
        """Add waiting requests to ``batch`` until it holds ``size`` or ``deadline`` (monotonic) has passed: the
        wait for company of a batch that is formed before it runs."""
        while len(batch) < size:
            # Requests already waiting join at once: under a backlog the first one's deadline has long
            # passed, and asyncio.wait_for(timeout=0) would give up before get() ran, batching nothing.
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout=remaining))
            except TimeoutError:
                return


class DynamicBatcher(QueueServer[In, Out]):
    def __init__(
        self,
        run_batch: Callable[[list[In]], list[Out]],
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[int, float, float], None] | None = None,
    ) -> None:
        super().__init__(max_queue)
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        # (size, seconds the oldest request waited before the model ran, seconds the model ran)
        self._on_batch = on_batch

    async def _loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            await self._gather(batch, self.max_batch, batch[0].enqueued + self.max_wait_s)
            started = time.monotonic()
            try:
                # The model runs in a worker thread so the event loop keeps accepting (and refusing) requests.
                results = await asyncio.to_thread(self._run_batch, [p.item for p in batch])
            except Exception as err:  # one bad batch fails its requests, not the server
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(err)
                continue
            if self._on_batch is not None:
                self._on_batch(len(batch), started - batch[0].enqueued, time.monotonic() - started)
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)
