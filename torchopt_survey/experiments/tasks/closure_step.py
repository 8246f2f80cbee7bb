"""The closure-based training step of the second-order methods (issue #8).

The first-order tasks call ``loss.backward(); optimizer.step()``. Newton, NewtonCG,
ConjugateGradient (and torch.optim.LBFGS) instead need a closure that re-evaluates the loss on the
same batch, several times per step. Tasks build one ``compute() -> (loss, outputs)`` over their
(full) batch and hand it to :func:`closure_step`, which adapts it to the optimizer's closure
contract (NewtonCG with Gauss-Newton products wants ``(loss, outputs)``, the others the loss)
and returns the loss at the start of the step plus the optimizer's cumulative counters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch

from torchopt_survey.optim.core.second_order import ClosureOptimizer

Compute = Callable[[], tuple[torch.Tensor, torch.Tensor]]


def needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    return isinstance(optimizer, (ClosureOptimizer, torch.optim.LBFGS))


def refuse_closure_optimizers(optimizer: torch.optim.Optimizer, name: str) -> None:
    """Under torchrun: the closure-based methods are refused, not silently run unsharded.

    Their line searches and Hessian-vector products re-evaluate the loss and differentiate it
    twice (``torch.autograd.grad``), which DDP's gradient all-reduce does not cover.
    """
    if needs_closure(optimizer):
        raise ValueError(
            f"optimizer {name!r}: the closure-based second-order methods (newton, newton_cg, cg) "
            "do not run under torchrun/DDP; run them in one process"
        )


def closure_step(
    optimizer: torch.optim.Optimizer, compute: Compute
) -> tuple[torch.Tensor, dict[str, float]]:
    """One ``optimizer.step(closure)``; returns (loss at the start, counters for the history).

    Counters (cumulative over the run): ``opt/func_evals`` (closure evaluations),
    ``opt/hvp_evals`` (curvature-vector products), ``opt/iterations`` (outer iterations)."""
    gauss_newton = optimizer.param_groups[0].get("curvature") == "gauss_newton"

    def closure() -> object:
        optimizer.zero_grad(set_to_none=True)
        loss, outputs = compute()
        loss.backward()
        return (loss, outputs) if gauss_newton else loss

    # torch types the closure's result as float; optimizers take the loss tensor as it is
    loss = optimizer.step(cast(Callable[[], float], closure))
    if isinstance(optimizer, ClosureOptimizer):
        state = optimizer._state()
        counters = {
            "opt/func_evals": float(state["func_evals"]),
            "opt/hvp_evals": float(state["hvp_evals"]),
            "opt/iterations": float(state["n_iter"]),
        }
    else:  # LBFGS keeps the same two counts under other names
        state = optimizer.state[optimizer.param_groups[0]["params"][0]]
        counters = {
            "opt/func_evals": float(state.get("func_evals", 0)),
            "opt/hvp_evals": 0.0,
            "opt/iterations": float(state.get("n_iter", 0)),
        }
    return torch.as_tensor(loss).detach(), counters
