"""Which GPU type a job that accepts several (``gpuType: Any``) should get: the scheduler extender's quote, its
request and its answer (pure; :mod:`strata_operator.runtime.quoter` asks).

A pod's GPU vendor is fixed by the resource it requests, so kube-scheduler never weighs an H100 against an MI300X
for one pod; the choice is made at admission. The extender's ``POST /quote`` (body ``{"Pod": <pod template>}``)
answers with the GPU types in order of cost per unit of work right now (prices, relative throughput, power tariff,
reclaim hazard, from the same catalog). Admission then tries the types in that order.

An answer that is not a quote gives no order (:func:`ordered` returns None); the fallback is then the job's own
order (see :mod:`strata_operator.runtime.quoter`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import strata_api as api
from strata_api import GPUType, ResourcePool, TrainingJob
from strata_operator.core.pods import build_worker_pods
from strata_operator.settings import OperatorSettings


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
