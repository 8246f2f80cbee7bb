"""Newton's method (exact Hessian) and Hessian-free Newton-CG, as torch.optim optimizers.

Survey §III.A: w <- w - H⁻¹ ∇f. Both solve the damped Newton system (C + λI) p = -g for the
direction p, with C the Hessian (or, for NewtonCG, optionally the Gauss-Newton matrix), then move
along p with the shared line search (:mod:`.core.line_search`) and adapt λ by the reduction ratio
ρ = (actual decrease) / (decrease predicted by the quadratic model).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .core import validation as V
from .core.curvature import (
    CurvatureKind,
    CurvatureOperator,
    Evaluation,
    evaluate_with_graph,
    flatten,
)
from .core.second_order import COMMON_HYPERPARAMETERS, ClosureOptimizer, adapt_damping

_CONTRACT = """
    **Closure.** As for ``torch.optim.LBFGS``: ``closure()`` clears the gradients, re-evaluates
    the model, calls ``loss.backward()`` and returns the loss. The optimizer runs it with that
    ``backward`` call deferred (a thread-local torch function mode records it instead) and
    takes the gradient itself with ``torch.autograd.grad(..., create_graph=True)``, so the same
    evaluation also gives the curvature products; ``param.grad`` is still set. The closure may
    also skip ``backward`` altogether. The loss must be one finite number (ValueError/TypeError
    otherwise); gradients must be dense.

    **Per ``step()``.** Up to ``max_iter`` outer iterations (each: one curvature solve, one line
    search). ``step()`` evaluates the closure once at the start, then once per line-search trial
    (usually one per iteration); it returns the loss at the start, as LBFGS does. It stops early
    when ``max |g_i| <= tolerance_grad`` (``tolerance_grad``) or when an iteration changes the
    loss by less than ``tolerance_change`` or moves no parameter by more than it
    (``tolerance_change``).

    **Line search.** ``line_search_fn="strong_wolfe"`` (default) starts at step ``lr`` (1: the
    Newton step) and enforces the strong Wolfe conditions with ``c1``, ``c2`` within ``max_ls``
    closure evaluations; ``None`` takes the fixed step ``lr``. A failed search leaves the
    parameters at the best point it evaluated and warns (RuntimeWarning).

    **Damping.** λ (``damping``, initial value) is added to the curvature. With
    ``adapt_damping=True``, after each iteration, with t = ``lr`` the step the model proposed
    (the line search's first trial, wherever the search then settles):
    ρ = (f(x) - f(x + t p)) / -(t gᵀp + ½ t² pᵀCp); ρ < 1/4 → λ × 3/2 (λ = 0 becomes 10⁻³),
    ρ > 3/4 → λ × 2/3 (Levenberg-Marquardt rule with Martens (2010)'s constants, ρ of the
    proposed step as there).

    **Parameter groups.** All groups form one flat vector and must carry the same
    hyperparameters (ValueError otherwise). All parameters must share one dtype and device.

    **State** (one dict of tensors under the first parameter, so ``state_dict`` /
    ``load_state_dict`` continue identically): ``func_evals`` (closure evaluations),
    ``hvp_evals`` (curvature-vector products), ``n_iter``, ``damping``, ``rho``, and the last
    line search's ``ls_success``, ``ls_evals``, ``ls_step``.
"""


class _DampedNewton(ClosureOptimizer):
    """Shared outer loop: evaluate with graph, direction from the damped system, line search,
    ρ-adapted damping."""

    def _kind(self) -> CurvatureKind:
        return "hessian"

    def _init_state(self, state: dict[str, Tensor], p: Tensor) -> None:
        state["damping"] = torch.tensor(float(self._hp["damping"]), dtype=p.dtype)
        state["rho"] = torch.tensor(math.nan, dtype=p.dtype)

    def _direction(
        self, op: CurvatureOperator, grad: Tensor, damping: float, state: dict[str, Tensor]
    ) -> tuple[Tensor, float, float]:
        """(p, pᵀCp with C undamped, λ actually used)."""
        raise NotImplementedError

    def _run(self, closure: Callable[[], Any]) -> Any:
        state, hp, params = self._state(), self._hp, self._params
        kind = self._kind()

        def evaluate_at() -> Evaluation:
            return evaluate_with_graph(closure, params, self._name, kind)

        ev = evaluate_at()
        self._count(state, "func_evals")
        self._first_evaluation(ev)
        start_loss = ev.loss_tensor.detach() if ev.loss_tensor is not None else ev.loss
        stale = False  # ev's graph predates a write of the parameters
        for _ in range(hp["max_iter"]):
            if self._grad_small(ev.grad):
                break
            if stale:  # evaluate the chosen point again, only once its products are needed
                ev = evaluate_at()
                self._count(state, "func_evals")
            op = CurvatureOperator(params, ev, kind)
            damping = self._scalar(state, "damping")
            direction, curvature, damping = self._direction(op, ev.grad, damping, state)
            self._count(state, "hvp_evals", op.products)
            gtd = float(ev.grad.dot(direction))
            x0 = flatten(params)
            res = self._search(evaluate_at, x0, ev, ev, direction, hp["lr"], state)
            # rho of the proposed step (the search's first trial, t = lr), as Martens (2010):
            # judged at the step the search settled on instead, a model that proposes a step
            # 100 times too long keeps rho near 1/2 and its damping never rises
            t = res.first_step
            predicted = -(t * gtd + 0.5 * t * t * curvature)
            rho = (ev.loss - res.first_loss) / predicted if predicted > 0.0 else math.nan
            if hp["adapt_damping"]:
                damping = adapt_damping(damping, rho)
            self._set(state, "damping", damping)
            self._set(state, "rho", rho)
            self._count(state, "n_iter")
            stop = self._stop_after(ev.loss, res, direction)
            if stop:
                break
            ev, stale = res.payload, res.moved
        return start_loss


class Newton(_DampedNewton):
    r"""Newton's method with the exact Hessian over all parameters (flattened):
    solve (H + λI) p = -g by Cholesky, then line search along p.

    Survey 2 §III-A, with damping :math:`\lambda` and a line-search step :math:`t`:

    .. math::
        w \leftarrow w - H^{-1} \nabla f(w)
        \quad\longrightarrow\quad
        (H + \lambda I)\, p = -\nabla f(w), \qquad w \leftarrow w + t\, p

    Args:
        params (iterable): tensors or parameter-group dicts; all groups form one problem and
            must share the hyperparameters. ``torch.optim.LBFGS(params)``.
        lr (float, optional): first trial step of the line search, or the fixed step with
            ``line_search_fn=None`` (default ``1``: the Newton step). ``torch.optim.LBFGS(lr=...)``.
        max_iter (int, optional): outer iterations per ``step()`` call (default ``20``).
            ``torch.optim.LBFGS(max_iter=...)``.
        tolerance_grad (float, optional): stop when :math:`\max_i |g_i|` is at most this
            (default ``1e-7``). ``torch.optim.LBFGS(tolerance_grad=...)``.
        tolerance_change (float, optional): stop when the loss, or every parameter, changes by
            less than this in an iteration (default ``1e-9``).
            ``torch.optim.LBFGS(tolerance_change=...)``.
        line_search_fn (str or None, optional): ``"strong_wolfe"`` (default) or ``None`` (fixed
            step ``lr``). ``torch.optim.LBFGS(line_search_fn=...)``, whose default is ``None``.
        c1 (float, optional): Armijo (sufficient decrease) constant of the strong Wolfe
            conditions, ``0 < c1 < c2`` (default ``1e-4``; fixed inside torch.optim.LBFGS).
        c2 (float, optional): curvature constant of the strong Wolfe conditions, ``c2 < 1``
            (default ``0.9``; fixed inside torch.optim.LBFGS).
        max_ls (int, optional): closure evaluations allowed per line search (default ``25``;
            fixed inside torch.optim.LBFGS).
        damping (float, optional): initial Levenberg-Marquardt damping :math:`\lambda` (default
            ``0``: undamped Newton). No torch.optim counterpart.
        adapt_damping (bool, optional): adapt :math:`\lambda` by the reduction ratio
            :math:`\rho` after each iteration (default ``True``). No torch.optim counterpart.
        max_params (int, optional): refuse more parameters than this (default ``10_000``): the
            Hessian has :math:`n^2` entries (397,510 parameters would need 632 GB in float32).
            Use :class:`NewtonCG` above it.

    The Hessian is built from n Hessian-vector products (double backward, vmapped over blocks
    of rows where the model's operations allow it) and symmetrised. **When H + λI is not
    positive definite** (Cholesky fails), λ is raised to max(10 λ, 10⁻³ · mean(abs(diag H))) and the
    factorisation retried, up to 60 times (then the step falls back to -g); the raised λ is kept
    in the state and then adapted by ρ like any other.
    """

    _hyperparameters = {
        **COMMON_HYPERPARAMETERS,
        "damping": V.non_negative(),
        "adapt_damping": V.boolean,
        "max_params": V.positive_int,
    }

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        max_iter: int = 20,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        line_search_fn: str | None = "strong_wolfe",
        c1: float = 1e-4,
        c2: float = 0.9,
        max_ls: int = 25,
        damping: float = 0.0,
        adapt_damping: bool = True,
        max_params: int = 10_000,
    ) -> None:
        defaults = dict(
            lr=lr, max_iter=max_iter, tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change, line_search_fn=line_search_fn, c1=c1, c2=c2,
            max_ls=max_ls, damping=damping, adapt_damping=adapt_damping, max_params=max_params,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        n = sum(p.numel() for p in self._params)
        limit = self.param_groups[0]["max_params"]
        if n > limit:
            itemsize = self._params[0].element_size()
            gb = n * n * itemsize / 1e9
            raise ValueError(
                f"Newton: the parameters hold {n:,} values; their Hessian would be {n:,} x {n:,} "
                f"({gb:,.1f} GB in {self._params[0].dtype}), above max_params={limit:,}. Raise "
                "max_params if that fits, or use NewtonCG, which never forms the Hessian"
            )

    def _direction(
        self, op: CurvatureOperator, grad: Tensor, damping: float, state: dict[str, Tensor]
    ) -> tuple[Tensor, float, float]:
        h = op.matrix()
        eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
        scale = float(h.diagonal().abs().mean())
        floor = 1e-3 * scale if scale > 0.0 and math.isfinite(scale) else 1e-3
        lam = damping
        for _ in range(60):
            factor, info = torch.linalg.cholesky_ex(h + lam * eye)
            if int(info) == 0:
                p = -torch.cholesky_solve(grad.unsqueeze(1), factor).squeeze(1)
                if bool(torch.isfinite(p).all()):
                    return p, float(p.dot(h @ p)), lam
            lam = max(10.0 * lam, floor)
        return -grad, float(grad.dot(h @ grad)), lam


class NewtonCG(_DampedNewton):
    r"""Hessian-free (truncated) Newton: solve (C + λI) p = -g approximately by conjugate
    gradients that only need products C v, then line search along p.

    .. math::
        (C + \lambda I)\, p \approx -g, \qquad
        C \in \{\, H,\; J^\top H_L J \,\}, \qquad w \leftarrow w + t\, p

    C is the Hessian (``curvature="hessian"``, products by double backward) or the generalised
    Gauss-Newton matrix Jᵀ H_L J (``curvature="gauss_newton"``), which is positive
    semi-definite whenever the loss is convex in the network outputs (cross-entropy, MSE), so CG
    stays stable on non-convex models.

    **Gauss-Newton closure contract.** With ``curvature="gauss_newton"`` the closure returns
    the pair ``(loss, outputs)``: ``outputs`` is the network output tensor and ``loss`` must be
    computed from ``outputs`` alone by a loss convex in them (e.g.
    ``out = model(x); loss = F.cross_entropy(out, y); loss.backward(); return loss, out``).
    J is then the Jacobian of ``outputs`` in the parameters, H_L the Hessian of ``loss`` in
    ``outputs``. Each product costs about three backward passes.

    **Inner solve** (truncated CG, started from the previous solution when ``warm_start``;
    a warm start with non-positive curvature is dropped): at most ``cg_max_iter`` iterations;
    stop when ‖r‖ <= ``cg_tol`` · ‖g‖ (``cg_tol=None``: min(1/2, √‖g‖), which makes the outer
    convergence superlinear); on non-positive curvature pᵀ(C + λI)p <= 0 return the steepest
    descent direction -g if it happens on the first inner iteration, else the last iterate
    before it. A solution that is not a descent direction is replaced by -g.

    Args:
        params (iterable): tensors or parameter-group dicts; all groups form one problem and
            must share the hyperparameters. ``torch.optim.LBFGS(params)``.
        lr (float, optional): first trial step of the line search, or the fixed step with
            ``line_search_fn=None`` (default ``1``: the Newton step). ``torch.optim.LBFGS(lr=...)``.
        max_iter (int, optional): outer iterations per ``step()`` call (default ``20``).
            ``torch.optim.LBFGS(max_iter=...)``.
        tolerance_grad (float, optional): stop when :math:`\max_i |g_i|` is at most this
            (default ``1e-7``). ``torch.optim.LBFGS(tolerance_grad=...)``.
        tolerance_change (float, optional): stop when the loss, or every parameter, changes by
            less than this in an iteration (default ``1e-9``).
            ``torch.optim.LBFGS(tolerance_change=...)``.
        line_search_fn (str or None, optional): ``"strong_wolfe"`` (default) or ``None`` (fixed
            step ``lr``). ``torch.optim.LBFGS(line_search_fn=...)``, whose default is ``None``.
        c1 (float, optional): Armijo (sufficient decrease) constant of the strong Wolfe
            conditions, ``0 < c1 < c2`` (default ``1e-4``; fixed inside torch.optim.LBFGS).
        c2 (float, optional): curvature constant of the strong Wolfe conditions, ``c2 < 1``
            (default ``0.9``; fixed inside torch.optim.LBFGS).
        max_ls (int, optional): closure evaluations allowed per line search (default ``25``;
            fixed inside torch.optim.LBFGS).
        damping (float, optional): initial Levenberg-Marquardt damping :math:`\lambda` (default
            ``0``: undamped Newton). No torch.optim counterpart.
        adapt_damping (bool, optional): adapt :math:`\lambda` by the reduction ratio
            :math:`\rho` after each iteration (default ``True``). No torch.optim counterpart.
        curvature (str, optional): ``"hessian"`` (default; products by double backward) or
            ``"gauss_newton"`` (generalised Gauss-Newton products; the closure returns
            ``(loss, outputs)``).
        cg_max_iter (int, optional): inner CG iterations per outer iteration (default ``50``).
        cg_tol (float or None, optional): relative residual tolerance in (0, 1), or ``None``
            (default) for the adaptive :math:`\min(1/2, \sqrt{\|g\|})`.
        warm_start (bool, optional): start CG from the previous solution (default ``True``).

    Extra state: ``cg_solution`` (flat), ``cg_iters`` and ``negative_curvature`` (last solve).
    """

    _hyperparameters = {
        **COMMON_HYPERPARAMETERS,
        "damping": V.non_negative(),
        "adapt_damping": V.boolean,
        "curvature": V.one_of("hessian", "gauss_newton"),
        "cg_max_iter": V.positive_int,
        "cg_tol": V.optional_open_unit_interval,
        "warm_start": V.boolean,
    }

    def __init__(
        self,
        params: Any,
        lr: float = 1.0,
        max_iter: int = 20,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        line_search_fn: str | None = "strong_wolfe",
        c1: float = 1e-4,
        c2: float = 0.9,
        max_ls: int = 25,
        damping: float = 0.0,
        adapt_damping: bool = True,
        curvature: str = "hessian",
        cg_max_iter: int = 50,
        cg_tol: float | None = None,
        warm_start: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr, max_iter=max_iter, tolerance_grad=tolerance_grad,
            tolerance_change=tolerance_change, line_search_fn=line_search_fn, c1=c1, c2=c2,
            max_ls=max_ls, damping=damping, adapt_damping=adapt_damping, curvature=curvature,
            cg_max_iter=cg_max_iter, cg_tol=cg_tol, warm_start=warm_start,
        )
        super().__init__(params, defaults)

    def _kind(self) -> CurvatureKind:
        return self._hp["curvature"]

    def _init_state(self, state: dict[str, Tensor], p: Tensor) -> None:
        super()._init_state(state, p)
        n = sum(q.numel() for q in self._params)
        state["cg_solution"] = torch.zeros(n, dtype=p.dtype, device=p.device)
        state["cg_iters"] = torch.zeros((), dtype=torch.int64)
        state["negative_curvature"] = torch.tensor(False)

    def _direction(
        self, op: CurvatureOperator, grad: Tensor, damping: float, state: dict[str, Tensor]
    ) -> tuple[Tensor, float, float]:
        hp = self._hp
        g_norm = float(grad.norm())
        tol = hp["cg_tol"] if hp["cg_tol"] is not None else min(0.5, math.sqrt(g_norm))
        target = tol * g_norm

        def damped(v: Tensor) -> Tensor:
            return op(v) + damping * v

        x = torch.zeros_like(grad)
        r = -grad
        warm = state["cg_solution"]
        if hp["warm_start"] and warm.shape == grad.shape and bool(warm.any()):
            a_warm = damped(warm)
            if float(warm.dot(a_warm)) > 0.0:
                x, r = warm.clone(), -grad - a_warm
        p, rr = r.clone(), float(r.dot(r))
        iters, negative, from_cg = 0, False, True
        for i in range(hp["cg_max_iter"]):
            if math.sqrt(rr) <= target:
                break
            ap = damped(p)
            p_ap = float(p.dot(ap))
            if not p_ap > 0.0:  # non-positive (or NaN) curvature along p
                negative = True
                if i == 0:
                    x, from_cg = -grad, False
                break
            alpha = rr / p_ap
            x = x + alpha * p
            r = r - alpha * ap
            rr_new = float(r.dot(r))
            iters += 1
            p = r + (rr_new / rr) * p
            rr = rr_new
        if not float(grad.dot(x)) < 0.0:
            x, from_cg = -grad, False
        if from_cg:
            # xᵀ(C + λI)x = xᵀ(-g - r) for the CG residual r: the model's curvature for free
            curvature = float(-grad.dot(x) - r.dot(x)) - damping * float(x.dot(x))
        else:
            curvature = float(x.dot(op(x)))
        state["cg_solution"].copy_(x)
        self._set(state, "cg_iters", iters)
        self._set(state, "negative_curvature", negative)
        return x, curvature, damping


# One text for both classes' closure/step/line-search/damping/state contract.
Newton.__doc__ = (Newton.__doc__ or "") + _CONTRACT
NewtonCG.__doc__ = (NewtonCG.__doc__ or "") + _CONTRACT
