"""Which GPU type a job that accepts several (``gpuType: Any``) should get: the scheduler extender's quote, its
request and its answer (pure; :mod:`strata_operator.runtime.quoter` asks).

A pod's GPU vendor is fixed by the resource it requests, so kube-scheduler never weighs an H100 against an MI300X
for one pod; the choice is made at admission. The extender's ``POST /quote`` (body ``{"Pod": <pod template>}``)
answers with the node kinds (``kinds``: GPU type x capacity type) with room now, in order of cost per unit of
work (prices, relative throughput, power tariff, reclaim hazard, from the same catalog), and the GPU types in the
order of their cheapest kind (``options``, ``recommended``). Admission takes the first kind that holds the whole
gang, then falls back to the types in order (:mod:`strata_operator.core.admission`, rule 2).

A quote lists the kinds with room when it was asked. It is kept a while (``runtime.quoter.QUOTE_TTL_S``), but not
past the moment a kind the job accepts gains room for one of its workers that the quote does not list
(:func:`newly_roomy`): the job is then asked about again at the next pass, so a waiting gang is not admitted by an
order that knows nothing of the GPUs that just freed (a freed reserved GPU is paid anyway, and the cheapest there
is).

An answer that is not a quote gives no order (:func:`read_quote` returns None); the fallback is then the job's own
order (see :mod:`strata_operator.runtime.quoter`). A quote whose ``kinds`` are missing (an extender that predates
them) or malformed gives the types alone: admission then takes the first type that holds the gang, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import strata_api as api
from strata_api import CapacityType, GPUType, ResourcePool, TrainingJob
from strata_operator.core.pods import build_worker_pods
from strata_operator.core.room import Kind
from strata_operator.settings import OperatorSettings


@dataclass(frozen=True)
class Quote:
    """A job's quote as admission reads it."""

    types: tuple[GPUType, ...]
    """Every accepted type, the quoted ones first in the quote's order."""
    kinds: tuple[tuple[GPUType, str], ...] = ()
    """The quoted node kinds (GPU type, capacity type) the job accepts, cheapest first; empty without them."""


def quote_template(job: TrainingJob, pool: ResourcePool, settings: OperatorSettings) -> dict[str, Any]:
    """Worker 0 as the operator would create it, accepting every GPU type the job accepts (the extender prices
    the pod once per type)."""
    types = job.spec.gpu_types
    provisional = replace(job, status=replace(job.status, gpu_type=types[0]))
    pod = build_worker_pods(provisional, pool, settings)[0]
    pod["metadata"]["annotations"][api.ANN_GPU_TYPES] = ",".join(t.value for t in types)
    return pod


def ordered(answer: Any, accepted: Sequence[GPUType]) -> tuple[GPUType, ...] | None:
    """The accepted types, the quote's order first (cheapest first), the rest as the job lists them; None when
    the answer is not a quote."""
    if not isinstance(answer, dict) or not isinstance(answer.get("options"), list):
        return None
    quoted = [o.get("gpuType") for o in answer["options"] if isinstance(o, dict)]
    recommended = answer.get("recommended")
    if recommended is not None and (not quoted or quoted[0] != recommended):
        quoted.insert(0, recommended)
    first = [t for q in quoted for t in accepted if t.value == q]
    return tuple(dict.fromkeys([*first, *accepted]))


def ordered_kinds(answer: Any, accepted: Sequence[GPUType]) -> tuple[tuple[GPUType, str], ...]:
    """The answer's node kinds of accepted types and known capacity types, in its order; empty when it has none or
    they are malformed (an entry not an object, or its ``gpuType`` or ``capacityType`` not a string)."""
    entries = answer.get("kinds") if isinstance(answer, dict) else None
    if not isinstance(entries, list):
        return ()
    capacities = {c.value for c in CapacityType}
    kinds: list[tuple[GPUType, str]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            return ()
        gpu, capacity = entry.get("gpuType"), entry.get("capacityType")
        if not isinstance(gpu, str) or not isinstance(capacity, str):
            return ()
        kinds.extend((t, capacity) for t in accepted if t.value == gpu and capacity in capacities)
    return tuple(dict.fromkeys(kinds))


def read_quote(answer: Any, accepted: Sequence[GPUType]) -> Quote | None:
    """The quote in ``answer`` for a job that accepts ``accepted``; None when the answer is not a quote."""
    types = ordered(answer, accepted)
    return Quote(types, ordered_kinds(answer, accepted)) if types is not None else None


def roomy_kinds(job: TrainingJob, room: Mapping[Kind, int]) -> frozenset[Kind]:
    """The kinds of a GPU type ``job`` accepts with room for one of its workers on some node."""
    need = job.spec.resources.gpus_per_worker
    return frozenset(k for k, most in room.items() if most >= need and k[0] in job.spec.gpu_types)


def newly_roomy(quote: Quote, roomy_then: frozenset[Kind], roomy_now: frozenset[Kind]) -> frozenset[Kind]:
    """The kinds that have gained room for a worker since the quote was asked (``roomy_then``) and that it does not
    list: what makes a kept quote out of date. A kind that had room then and is not listed was left out by the
    extender for its own reasons (the job's capacity types, the pool's nodes, the reserved hold-back), and asking
    again would only give the same answer."""
    return roomy_now - roomy_then - frozenset(quote.kinds)
