"""Pipeline parallel with torch.distributed.pipelining: split the model into stages, build the schedule."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import (
    PipelineScheduleMulti,
    PipelineScheduleSingle,
    Schedule1F1B,
    ScheduleGPipe,
    ScheduleInterleaved1F1B,
    ScheduleInterleavedZeroBubble,
    ScheduleZBVZeroBubble,
    _PipelineSchedule,
)
from torch.distributed.pipelining.stage import _PipelineStageBase

from strata_api.workload import PIPELINE_SCHEDULES
from strata_workloads.model import Transformer


@dataclass(frozen=True)
class ScheduleSpec:
    cls: type[_PipelineSchedule]
    stages_per_rank: int
    # "loop": rank r holds stages r, r+pp, ...; "v": rank r holds stages r and 2*pp-1-r.
    placement: str


SCHEDULES: dict[str, ScheduleSpec] = {
    PIPELINE_SCHEDULES["GPipe"]: ScheduleSpec(ScheduleGPipe, 1, "loop"),
    PIPELINE_SCHEDULES["1F1B"]: ScheduleSpec(Schedule1F1B, 1, "loop"),
    PIPELINE_SCHEDULES["Interleaved1F1B"]: ScheduleSpec(ScheduleInterleaved1F1B, 2, "loop"),
    PIPELINE_SCHEDULES["InterleavedZeroBubble"]: ScheduleSpec(ScheduleInterleavedZeroBubble, 2, "loop"),
    PIPELINE_SCHEDULES["ZeroBubbleV"]: ScheduleSpec(ScheduleZBVZeroBubble, 2, "v"),
}
"""Keyed by the workload's schedule names (``STRATA_PP_SCHEDULE``), which the contract maps the API's to."""


def get_schedule_spec(name: str) -> ScheduleSpec:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise KeyError(f"unknown pipeline schedule {name!r}; known: {', '.join(SCHEDULES)}") from None


def stage_ids_for_rank(pp_rank: int, pp: int, spec: ScheduleSpec) -> list[int]:
    if spec.stages_per_rank == 1:
        return [pp_rank]
    if spec.placement == "v":
        return [pp_rank, 2 * pp - 1 - pp_rank]
    return [pp_rank + i * pp for i in range(spec.stages_per_rank)]


def layer_split(n_layers: int, n_stages: int) -> list[range]:
    """Contiguous, balanced layer ranges; earlier stages take the remainder."""
    base, extra = divmod(n_layers, n_stages)
    bounds = [0]
    for stage in range(n_stages):
        bounds.append(bounds[-1] + base + (1 if stage < extra else 0))
    return [range(bounds[i], bounds[i + 1]) for i in range(n_stages)]


def stage_module(model: Transformer, stage: int, n_stages: int) -> Transformer:
    """A copy of `model` holding only this stage's layers (and the embedding / head on the end stages)."""
    part = copy.deepcopy(model)
    keep = {str(i) for i in layer_split(model.config.n_layers, n_stages)[stage]}
    for name in list(part.layers.keys()):
        if name not in keep:
            del part.layers[name]
    if stage != 0:
        part.tok_embeddings = None
    if stage != n_stages - 1:
        part.norm = None
        part.output = None
    return part


def build_stages(
    model: Transformer,
    pp_mesh: DeviceMesh,
    schedule: str,
    device: torch.device,
    parallelize_part: Callable[[nn.Module], nn.Module],
) -> tuple[list[nn.Module], list[PipelineStage]]:
    spec = get_schedule_spec(schedule)
    pp = pp_mesh.size()
    n_stages = pp * spec.stages_per_rank
    parts, stages = [], []
    for stage_id in stage_ids_for_rank(pp_mesh.get_local_rank(), pp, spec):
        part = parallelize_part(stage_module(model, stage_id, n_stages))
        parts.append(part)
        stages.append(PipelineStage(part, stage_id, n_stages, device, group=pp_mesh.get_group()))
    return parts, stages


def build_schedule(
    schedule: str,
    stages: list[PipelineStage],
    n_microbatches: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> _PipelineSchedule:
    spec = get_schedule_spec(schedule)
    if issubclass(spec.cls, PipelineScheduleSingle):
        return spec.cls(stages[0], n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=False)
    assert issubclass(spec.cls, PipelineScheduleMulti)
    return spec.cls(list[_PipelineStageBase](stages), n_microbatches=n_microbatches, loss_fn=loss_fn, scale_grads=False)
