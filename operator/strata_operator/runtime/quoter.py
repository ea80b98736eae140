"""Asks the scheduler extender which node kind (GPU type x capacity type) a ``gpuType: Any`` job should get
(:mod:`strata_operator.core.quotes` builds the request and reads the answer), and how many reserved GPUs it holds
back from low-priority gangs (``GET /holdback``, once per admission pass: :mod:`strata_operator.core.holdback`).

Fallback, documented in docs/operator.md: with no extender configured (``--extender-url`` empty), or when it does
not answer within ``--quote-timeout-s`` (or answers nonsense), the job's own order is used (H100, then MI300X for
``Any``) - the choice admission made before quotes existed. A quote is kept for :data:`QUOTE_TTL_S`, so a long
queue costs one request per job per interval, and all of a pass's quotes are asked at once. A kept quote is asked
again sooner when a kind it does not list gains room for the job's workers
(:func:`~strata_operator.core.quotes.newly_roomy`): a request per waiting job per such change of the fleet, not per
pass. The hold-back is
asked afresh at every pass that has a queue (it moves with every bind); without an answer in time there is no
hold, and admission admits as it did before it knew the hold (a gang the extender then half places is requeued
after ``UNSCHEDULABLE_GRACE_S``, :mod:`strata_operator.core.lifecycle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable, Mapping

import aiohttp

from strata_api import ResourcePool, TrainingJob
from strata_api.holdback import HOLDBACK_PATH, ReservedHoldBack
from strata_operator.core.quotes import Quote, newly_roomy, quote_template, read_quote, roomy_kinds
from strata_operator.core.room import Kind
from strata_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

QUOTE_TTL_S = 30.0
"""How long a job's quote is used before it is asked again (prices and free capacity move slowly)."""


class Quoter:
    """Asks the extender, with a cache and a deadline; never raises (the fallback is the job's own order)."""

    def __init__(self, settings: OperatorSettings) -> None:
        self.url = settings.extender_url.rstrip("/")
        self.timeout_s = settings.quote_timeout_s
        self.settings = settings
        self._cache: dict[tuple[str, str], tuple[float, Quote, frozenset[Kind]]] = {}
        """By (job key, uid): when the quote expires, the quote, and the kinds with room for a worker when asked."""
        self._session: aiohttp.ClientSession | None = None
        self._failing = False
        self._hold_failing = False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def orders(
        self, jobs: Iterable[tuple[TrainingJob, ResourcePool]], room: Mapping[Kind, int] | None = None
    ) -> dict[str, Quote]:
        """The quote (GPU types and node kinds, cheapest first) by job key, for the jobs that accept more than one
        type and got one. ``room``: the most free GPUs on one node of each kind now
        (:meth:`strata_operator.core.room.Room.most_free`); a kept quote that a kind with room since has outdated is
        asked again (None: kept quotes are used until they expire)."""
        if not self.url:
            return {}
        now = time.monotonic()
        self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        result: dict[str, Quote] = {}
        asks: list[tuple[tuple[str, str], TrainingJob, ResourcePool, frozenset[Kind]]] = []
        for job, pool in jobs:
            if len(job.spec.gpu_types) < 2:
                continue
            key = (job.key, job.uid)
            roomy = roomy_kinds(job, room) if room is not None else frozenset()
            kept = self._cache.get(key)
            if kept is not None and not (room is not None and newly_roomy(kept[1], kept[2], roomy)):
                result[job.key] = kept[1]
            else:
                asks.append((key, job, pool, roomy))
        if not asks:
            return result
        tasks = [asyncio.ensure_future(self._ask(job, pool)) for _, job, pool, _ in asks]
        done, pending = await asyncio.wait(tasks, timeout=self.timeout_s)
        for task in pending:
            task.cancel()
        answered = 0
        for (key, job, _, roomy), task in zip(asks, tasks, strict=True):
            order = task.result() if task in done and not task.cancelled() else None
            if order is not None:
                self._cache[key] = (now + QUOTE_TTL_S, order, roomy)
                result[job.key] = order
                answered += 1
            elif (kept := self._cache.get(key)) is not None:
                result[job.key] = kept[1]  # asked again and no answer: the kept quote is still the best there is
        self._report(answered=answered, asked=len(asks))
        return result

    def cached(self, job: TrainingJob) -> Quote | None:
        """The job's quote while it is kept (an admitted gang's unbound workers are counted on its kinds)."""
        kept = self._cache.get((job.key, job.uid))
        return kept[1] if kept is not None and kept[0] > time.monotonic() else None

    async def hold_back(self) -> ReservedHoldBack | None:
        """The extender's reserved hold-back now; None without an extender, or without a readable answer within
        ``quote_timeout_s`` (one log line when answers stop, one when they come back)."""
        if not self.url:
            return None
        hold = None
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            async with asyncio.timeout(self.timeout_s):
                async with self._client().get(f"{self.url}{HOLDBACK_PATH}") as response:
                    if response.status == 200:
                        hold = ReservedHoldBack.from_json(json.loads(await response.read()))
        if hold is None and not self._hold_failing:
            log.warning(f"the scheduler extender at {self.url} gives no reserved hold-back: admission holds none back")
        elif hold is not None and self._hold_failing:
            log.info(f"the scheduler extender at {self.url} gives its reserved hold-back again")
        self._hold_failing = hold is None
        return hold

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def _ask(self, job: TrainingJob, pool: ResourcePool) -> Quote | None:
        body = json.dumps({"Pod": quote_template(job, pool, self.settings)})
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
            headers = {"Content-Type": "application/json"}
            async with self._client().post(f"{self.url}/quote", data=body, headers=headers) as response:
                if response.status == 200:
                    return read_quote(json.loads(await response.read()), job.spec.gpu_types)
        return None

    def _report(self, answered: int, asked: int) -> None:
        """One log line when quotes stop (and start again), not one per job and pass."""
        failing = answered == 0 and asked > 0
        if failing and not self._failing:
            log.warning(f"the scheduler extender at {self.url} gives no quotes: GPU types in the job's own order")
        elif not failing and self._failing:
            log.info(f"the scheduler extender at {self.url} quotes again")
        self._failing = failing
