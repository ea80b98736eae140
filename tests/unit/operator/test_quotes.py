"""gpuType Any: admission tries GPU types in the order the scheduler extender quotes them, and falls back to the
job's own order (H100, then MI300X) when there is no extender or it does not answer in time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from operator_builders import a_job, a_pool

import strata_api as api
from strata_api import GPUType
from strata_operator.core.quotes import ordered, quote_template
from strata_operator.runtime.quoter import Quoter
from strata_operator.settings import OperatorSettings

H100, MI300X = GPUType.H100, GPUType.MI300X
BOTH = (H100, MI300X)


def test_the_quote_order_comes_first_and_every_accepted_type_stays() -> None:
    answer = {"recommended": "MI300X", "options": [{"gpuType": "MI300X"}, {"gpuType": "H100"}]}
    assert ordered(answer, BOTH) == (MI300X, H100)
    assert ordered({"recommended": "MI300X", "options": [{"gpuType": "MI300X"}]}, BOTH) == (MI300X, H100)
    assert ordered({"recommended": None, "options": []}, BOTH) == BOTH  # nothing fits now: the job's order
    assert ordered({"recommended": "TPU", "options": [{"gpuType": "TPU"}]}, BOTH) == BOTH  # unknown types ignored


def test_an_answer_that_is_not_a_quote_is_no_quote() -> None:
    assert ordered(["H100"], BOTH) is None
    assert ordered({"recommended": "H100"}, BOTH) is None


def test_the_template_is_worker_zero_accepting_every_type_of_the_job() -> None:
    job = a_job(name="llm", data=2, tensor=8, gpu_type="Any", status={"phase": "Queued"})
    pod = quote_template(job, a_pool(), OperatorSettings())
    assert pod["metadata"]["name"] == "llm-worker-0"
    assert pod["metadata"]["annotations"][api.ANN_GPU_TYPES] == "H100,MI300X"


def test_without_an_extender_there_are_no_quotes() -> None:
    job = a_job(name="llm", data=2, tensor=8, gpu_type="Any", status={"phase": "Queued"})
    assert asyncio.run(Quoter(OperatorSettings()).orders([(job, a_pool())])) == {}


def test_an_extender_that_is_away_costs_at_most_the_quote_timeout() -> None:
    settings = OperatorSettings(extender_url="http://127.0.0.1:9", quote_timeout_s=0.3)  # nothing listens there
    job, pool = a_job(name="llm", data=2, tensor=8, gpu_type="Any", status={"phase": "Queued"}), a_pool()
    jobs = [(replace(job, name=f"j{i}"), pool) for i in range(50)]

    async def ask() -> dict[str, tuple[GPUType, ...]]:
        quoter = Quoter(settings)
        try:
            return await quoter.orders(jobs)
        finally:
            await quoter.close()

    started = time.monotonic()
    assert asyncio.run(ask()) == {}
    assert time.monotonic() - started < 2.0
