"""Nonlinear conjugate gradient as a torch.optim optimizer.

Survey §III.B: w <- w + α d, d = -∇f + β d₋₁, with α from the shared strong-Wolfe line search
(:mod:`.core.line_search`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .core import validation as V
from .core.curvature import evaluate, flatten
from .core.second_order import COMMON_HYPERPARAMETERS, ClosureOptimizer

BETAS = ("FR", "PR", "PR+", "HS", "DY")


def conjugacy_beta(kind: str, g: Tensor, g_prev: Tensor, d_prev: Tensor) -> float:
    """β of the nonlinear CG variants, y = g - g_prev:
    FR gᵀg / g₋ᵀg₋ (Fletcher-Reeves), PR gᵀy / g₋ᵀg₋ (Polak-Ribière), PR+ max(PR, 0),
    HS gᵀy / dᵀy (Hestenes-Stiefel), DY gᵀg / dᵀy (Dai-Yuan). A zero denominator gives 0.

    Args:
        kind (str): ``"FR"``, ``"PR"``, ``"PR+"``, ``"HS"`` or ``"DY"``.
        g (Tensor): the current flat gradient.
        g_prev (Tensor): the previous flat gradient.
        d_prev (Tensor): the previous search direction.

    Returns:
        float: β for the new direction ``-g + β d_prev``.
    """
    y = g - g_prev
    if kind in ("FR", "PR", "PR+"):
        num = g.dot(g) if kind == "FR" else g.dot(y)
        den = g_prev.dot(g_prev)
    else:
        num = g.dot(g) if kind == "DY" else g.dot(y)
        den = d_prev.dot(y)
    den_f = float(den)
    if den_f == 0.0:
        return 0.0
    beta = float(num) / den_f
    return max(beta, 0.0) if kind == "PR+" else beta


class ConjugateGradient(ClosureOptimizer):
    r"""Nonlinear conjugate gradient with a strong-Wolfe line search.

    Each outer iteration: d = -g + β d₋₁ with β from ``beta``; then a line search along d.
    Survey 2 §III-B:

    .. math::
        d_k = -\nabla f(w_k) + \beta_k d_{k-1}, \qquad w_{k+1} = w_k + \alpha_k d_k

    **Restarts** to steepest descent (d = -g): every ``restart`` iterations (default: n, the
    number of parameters), after a line search that made no progress, and whenever d is not a
    descent direction, tested as gᵀd >= 0.

    **Closure.** Exactly as for ``torch.optim.LBFGS``: ``closure()`` clears the gradients,
    re-evaluates the model, calls ``loss.backward()`` and returns the loss (one finite number;
    dense gradients). ``step()`` without a closure raises TypeError.

    **Per ``step()``.** Up to ``max_iter`` outer iterations; ``step()`` evaluates the closure once
    at the start, then once per line-search trial; it returns the loss at the start. It stops
    early when ``max |g_i| <= tolerance_grad`` or when an iteration changes the loss by less than
    ``tolerance_change`` or moves no parameter by more than it.

    **Line search.** ``line_search_fn="strong_wolfe"`` (default) with ``c1``, ``c2`` (default
    0.1: CG needs a fairly exact search; with c2 < 1/2 Fletcher-Reeves always gives descent
    directions) and at most ``max_ls`` evaluations; the first trial step is
    ``lr · min(1, 1/‖g‖₁)`` after a restart from scratch, else t₋₁ · (g₋ᵀd₋)/(gᵀd) (Nocedal &
    Wright's initial-step rule). ``None`` takes the fixed step ``lr``. A failed search leaves the
    parameters at the best point it evaluated, warns (RuntimeWarning) and restarts.

    Args:
        params (iterable): tensors or parameter-group dicts; all groups form one problem and
            must share the hyperparameters. ``torch.optim.LBFGS(params)``.
        lr (float, optional): scale of the first trial step, or the fixed step with
            ``line_search_fn=None`` (default ``1``). ``torch.optim.LBFGS(lr=...)``.
        max_iter (int, optional): outer iterations per ``step()`` (default ``20``).
            ``torch.optim.LBFGS(max_iter=...)``.
        tolerance_grad (float, optional): stop when :math:`\max_i |g_i|` is at most this
            (default ``1e-7``). ``torch.optim.LBFGS(tolerance_grad=...)``.
        tolerance_change (float, optional): stop when the loss, or every parameter, changes by
            less than this (default ``1e-9``). ``torch.optim.LBFGS(tolerance_change=...)``.
        beta (str, optional): the conjugacy formula, ``"FR"``, ``"PR"``, ``"PR+"`` (default),
            ``"HS"`` or ``"DY"`` (see
            :func:`~torchopt_survey.optim.conjugate_gradient.conjugacy_beta`). No torch.optim
            counterpart.
        restart (int or None, optional): restart period in iterations (default ``None``: the
            number of parameters). No torch.optim counterpart.
        line_search_fn (str or None, optional): ``"strong_wolfe"`` (default) or ``None``.
            ``torch.optim.LBFGS(line_search_fn=...)``.
        c1 (float, optional): Armijo constant, ``0 < c1 < c2`` (default ``1e-4``).
        c2 (float, optional): curvature constant (default ``0.1``, see above).
        max_ls (int, optional): closure evaluations per line search (default ``25``).

    **State** (tensors under the first parameter; ``state_dict`` round-trips exactly):
    ``func_evals``, ``hvp_evals`` (always 0), ``n_iter``, ``restarts``, ``d_prev``, ``g_prev``,
    ``since_restart``, ``t_prev``, ``gtd_prev``, and the last line search's ``ls_success``,
    ``ls_evals``, ``ls_step``.
    """

    _hyperparameters = {
        **COMMON_HYPERPARAMETERS,
        "beta": V.one_of(*BETAS),
        "restart": V.optional_positive_int,
    }

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        max_iter: int = 20,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        beta: str = "PR+",
        restart: int | None = None,
        line_search_fn: str | None = "strong_wolfe",
        c1: float = 1e-4,
        c2: float = 0.1,
        max_ls: int = 25,
    ) -> None:
        defaults = dict(
            lr=lr, max_iter=max_iter, tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change, beta=beta, restart=restart,
            line_search_fn=line_search_fn, c1=c1, c2=c2, max_ls=max_ls,
        )
        super().__init__(params, defaults)

    def _init_state(self, state: dict[str, Tensor], p: Tensor) -> None:
        n = sum(q.numel() for q in self._params)
        state["d_prev"] = torch.zeros(n, dtype=p.dtype, device=p.device)
        state["g_prev"] = torch.zeros(n, dtype=p.dtype, device=p.device)
        state["has_direction"] = torch.tensor(False)
        state["since_restart"] = torch.zeros((), dtype=torch.int64)
        state["restarts"] = torch.zeros((), dtype=torch.int64)
        state["t_prev"] = torch.zeros((), dtype=p.dtype)
        state["gtd_prev"] = torch.zeros((), dtype=p.dtype)

    def _run(self, closure: Callable[[], Any]) -> Any:
        state, hp, params = self._state(), self._hp, self._params
        n = state["d_prev"].numel()
        period = hp["restart"] or n

        def evaluate_at() -> Any:
            return evaluate(closure, params, self._name)

        ev = evaluate_at()
        self._count(state, "func_evals")
        self._first_evaluation(ev)
        start_loss = ev.loss_tensor if ev.loss_tensor is not None else torch.tensor(ev.loss)
        for _ in range(hp["max_iter"]):
            g = ev.grad
            if self._grad_small(g):
                break
            fresh = True
            if bool(state["has_direction"]) and int(state["since_restart"]) < period:
                beta = conjugacy_beta(hp["beta"], g, state["g_prev"], state["d_prev"])
                d = -g + beta * state["d_prev"]
                fresh = not float(g.dot(d)) < 0.0  # not a descent direction: restart
            if fresh:
                d = -g
                self._set(state, "since_restart", 0)
                self._count(state, "restarts")
            gtd = float(g.dot(d))
            if gtd == 0.0:  # only with tolerance_grad=0 and an exactly zero gradient
                break
            if hp["line_search_fn"] is None:
                t0 = hp["lr"]
            elif bool(state["has_direction"]) and float(state["t_prev"]) > 0.0:
                t0 = float(state["t_prev"]) * float(state["gtd_prev"]) / gtd
            else:
                t0 = hp["lr"] * min(1.0, 1.0 / float(g.abs().sum()))
            x0 = flatten(params)
            res = self._search(evaluate_at, x0, ev, ev, d, t0, state)
            state["g_prev"].copy_(g)
            state["d_prev"].copy_(d)
            self._set(state, "has_direction", res.step > 0.0)
            self._count(state, "since_restart")
            self._set(state, "t_prev", res.step)
            self._set(state, "gtd_prev", gtd)
            self._count(state, "n_iter")
            stop = self._stop_after(ev.loss, res, d)
            ev = res.payload
            if stop:
                break
        return start_loss
