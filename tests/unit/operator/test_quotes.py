"""gpuType Any: admission tries GPU types in the order the scheduler extender quotes them, and falls back to the
job's own order (H100, then MI300X) when there is no extender or it does not answer in time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from operator_builders import a_job, a_pool

import strata_api as api
from strata_api import GPUType
from strata_operator.core.quotes import Quote, ordered, ordered_kinds, quote_template, read_quote
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


def test_the_quote_by_node_kind_keeps_its_order_and_the_jobs_kinds() -> None:
    answer = {
        "recommended": "MI300X",
        "options": [{"gpuType": "MI300X"}, {"gpuType": "H100"}],
        "kinds": [
            {"gpuType": "MI300X", "capacityType": "reserved", "costPerUnitWork": 0.0},
            {"gpuType": "TPU", "capacityType": "spot"},  # a type the job does not accept
            {"gpuType": "H100", "capacityType": "spot", "costPerUnitWork": 2.78},
            {"gpuType": "H100", "capacityType": "preemptible"},  # not a capacity type
            {"gpuType": "MI300X", "capacityType": "on-demand", "costPerUnitWork": 7.06},
        ],
    }
    assert read_quote(answer, BOTH) == Quote(
        (MI300X, H100), ((MI300X, "reserved"), (H100, "spot"), (MI300X, "on-demand"))
    )
    assert ordered_kinds(answer, (H100,)) == ((H100, "spot"),)


def test_malformed_kinds_fall_back_to_the_types_never_a_crash() -> None:
    types = {"recommended": "MI300X", "options": [{"gpuType": "MI300X"}, {"gpuType": "H100"}]}
    for kinds in (
        None,  # an extender that predates kinds
        "MI300X/reserved",
        {"gpuType": "H100", "capacityType": "spot"},
        [["H100", "spot"]],
        [{"gpuType": "H100"}],
        [{"gpuType": "H100", "capacityType": None}],
        [{"gpuType": 7, "capacityType": "spot"}],
        [{"gpuType": "H100", "capacityType": "spot"}, "junk"],
    ):
        answer = types if kinds is None else {**types, "kinds": kinds}
        assert read_quote(answer, BOTH) == Quote((MI300X, H100)), kinds
    assert read_quote({"kinds": []}, BOTH) is None  # no options: not a quote


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

    async def ask() -> dict[str, Quote]:
        quoter = Quoter(settings)
        try:
            return await quoter.orders(jobs)
        finally:
            await quoter.close()

    started = time.monotonic()
    assert asyncio.run(ask()) == {}
    assert time.monotonic() - started < 2.0
