"""MoE load-balancing loss: its gradient, fed in at each layer, equals that of adding it to the loss.

Parity under expert, data and pipeline parallel (with the loss on) is in test_parity.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from strata_workloads.engine import build_engine
from strata_workloads.layout import ParallelDims
from strata_workloads.model import Transformer, cross_entropy_loss
from strata_workloads.moe import MoE, load_balancing_loss
from strata_workloads.parallelize import ParallelizeOptions
from strata_workloads.presets import get_preset

COEF = 0.3


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.unit
def test_balancing_loss_is_one_when_balanced_and_larger_when_not() -> None:
    uniform = torch.full((8, 4), 0.25)
    spread = torch.tensor([[0], [1], [2], [3]] * 2)
    assert float(load_balancing_loss(uniform, spread, batch=2)) == pytest.approx(1.0)
    skewed = F.softmax(torch.tensor([[4.0, 0.0, 0.0, 0.0]] * 8), dim=-1)
    assert float(load_balancing_loss(skewed, torch.zeros(8, 1, dtype=torch.long), batch=2)) > 3.0


@pytest.mark.unit
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_injected_gradient_equals_adding_the_loss(grad_accum: int) -> None:
    data = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(5))
    micro = data.chunk(grad_accum)

    # Reference: the balancing loss added to each micro-batch's loss, with the same 1/grad_accum weight.
    torch.manual_seed(0)
    ref = Transformer(get_preset("debug", moe_aux_loss_coef=0.0))
    routed: list[tuple[torch.Tensor, int]] = []
    for moe in (m for m in ref.modules() if isinstance(m, MoE)):
        moe.router.register_forward_hook(lambda mod, args, out: routed.append((out, args[0].shape[0])))
    for chunk in micro:
        routed.clear()
        loss = cross_entropy_loss(ref(chunk[:, :-1]), chunk[:, 1:])
        for logits, n_tokens in routed:
            probs = F.softmax(logits.float(), dim=-1)
            loss = loss + COEF * load_balancing_loss(probs, probs.topk(1, dim=-1).indices, chunk.shape[0])
            assert n_tokens == chunk.shape[0] * 16
        (loss / grad_accum).backward()

    torch.manual_seed(0)
    model = Transformer(get_preset("debug", moe_aux_loss_coef=COEF))
    engine = build_engine(
        model, ParallelDims(1), None, ParallelizeOptions(), torch.device("cpu"), grad_accum=grad_accum
    )
    for chunk in micro:
        engine.forward_backward(chunk[:, :-1], chunk[:, 1:])

    got, want = _grads(model), _grads(ref)
    assert got.keys() == want.keys()
    for name, g in got.items():
        torch.testing.assert_close(g, want[name], rtol=1e-5, atol=1e-7, msg=name)
    router = "layers.1.feed_forward.router.weight"
    without = Transformer(get_preset("debug", moe_aux_loss_coef=0.0))
    without.load_state_dict(ref.state_dict())
    for chunk in micro:
        (cross_entropy_loss(without(chunk[:, :-1]), chunk[:, 1:]) / grad_accum).backward()
    assert not torch.allclose(_grads(without)[router], got[router], rtol=1e-3), "the balancing loss changed nothing"
