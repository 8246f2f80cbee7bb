"""The damping of Newton/NewtonCG follows rho of the *proposed* step, as Martens (2010)."""

from __future__ import annotations

import pytest
import torch

import torchopt_survey as ts


@pytest.mark.parametrize("cls", [ts.Newton, ts.NewtonCG], ids=lambda c: c.__name__)
def test_damping_rises_when_the_proposed_step_is_too_long(cls: type) -> None:
    # f = sqrt(1 + x^2) from x = 1: the Newton step lands on x = -1, where f is what it was
    # (rho = 0); the line search then settles near the minimum x = 0, where the quadratic
    # model predicts the decrease well (rho ~ 0.78). Judged at the proposed step, the damping
    # must rise from 0 to 1e-3.
    x = torch.ones(1, dtype=torch.float64, requires_grad=True)
    opt = cls([x], max_iter=1)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.sqrt(1 + x**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    state = opt.state[x]
    assert float(state["ls_step"]) < 1.0 and abs(float(x)) < 0.5  # the search cut the step
    assert float(state["rho"]) == pytest.approx(0.0, abs=1e-12)
    assert float(state["damping"]) == pytest.approx(1e-3)
