"""gpuType Any: admission tries GPU types in the order the scheduler extender quotes them, and falls back to the
job's own order (H100, then MI300X) when there is no extender or it does not answer in time."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from operator_builders import a_job, a_node, a_pool

import strata_api as api
from strata_api import GPUType
from strata_operator.core.quotes import (
    Quote,
    newly_roomy,
    ordered,
    ordered_kinds,
    quote_template,
    read_quote,
    roomy_kinds,
)
from strata_operator.core.room import fleet_rooms
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


def test_a_kept_quote_is_outdated_only_by_a_kind_that_has_gained_room_for_a_worker_and_that_it_does_not_list() -> None:
    fleet = [
        a_node("h-res-1"),
        a_node("h-res-2"),
        a_node("h-spot", capacity="spot"),
        a_node("m-res", MI300X),
        a_node("m-spot", MI300X, "spot"),
        a_node("cpu", None, "on-demand"),
    ]
    cordoned = replace(a_node("m-od", MI300X, "on-demand"), schedulable=False)
    free = {"h-res-1": 2, "h-res-2": 5, "h-spot": 8, "m-res": 0, "m-spot": 3, "m-od": 8}
    room = fleet_rooms([*fleet, cordoned], free)[0].most_free()
    assert room == {(H100, "reserved"): 5, (H100, "spot"): 8, (MI300X, "reserved"): 0, (MI300X, "spot"): 3}

    gang = a_job(name="gang", data=2, tensor=4, gpus_per_worker=4, gpu_type="Any")  # two workers of 4 GPUs
    asked = roomy_kinds(gang, room)
    assert asked == {(H100, "reserved"), (H100, "spot")}  # MI300X spot has 3 free: no room for a worker
    quote = Quote((H100, MI300X), ((H100, "spot"),))  # the extender left H100 reserved out (say, held back)
    assert newly_roomy(quote, asked, asked) == frozenset()  # nothing changed: keep it

    room[(MI300X, "reserved")] = 8  # a reserved MI300X node freed
    now = roomy_kinds(gang, room)
    assert newly_roomy(quote, asked, now) == {(MI300X, "reserved")}  # ask again
    assert newly_roomy(replace(quote, kinds=((MI300X, "reserved"), (H100, "spot"))), asked, now) == frozenset()
    assert roomy_kinds(a_job(name="h100", data=1, tensor=4, gpus_per_worker=4), room) == {
        (H100, "reserved"),
        (H100, "spot"),
    }  # a kind of a type the job does not accept never outdates its quote
