"""The decisions inside Newton, NewtonCG, ConjugateGradient and their strong-Wolfe search, each
asserted on an input where the other choice gives another answer (hand computation, a Krylov
subspace solve, scipy), and the evaluation budget of each method on fixed problems.

The budgets are the closure-evaluation and curvature-product counts the implementation reaches
today, as upper bounds: an efficiency regression fails, an improvement passes. Each budget test
also requires convergence, so stopping early cannot pass for being cheap.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers.second_order_problems import DT, LX, LY, A, B, logistic, quadratic, rosenbrock
from torch import Tensor
from torch.nn import functional as F

import torchopt_survey as ts
from torchopt_survey.optim.conjugate_gradient import conjugacy_beta
from torchopt_survey.optim.core.line_search import _cubic_minimizer, strong_wolfe

# --------------------------------------------------------------------------- fixed problems


X_STAR = torch.linalg.solve(A, B)



def _run(
    cls: type, f: Callable[[Tensor], Tensor], x0: Tensor, steps: int = 1, **kwargs: Any
) -> tuple[Tensor, dict[str, Tensor], list[Tensor]]:
    """``steps`` calls of ``step()``; (final x, state, every point the closure was run at)."""
    x = x0.clone().requires_grad_()
    opt = cls([x], **kwargs)
    visited: list[Tensor] = []

    def closure() -> Tensor:
        opt.zero_grad()
        visited.append(x.detach().clone())
        loss = f(x)
        loss.backward()
        return loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(steps):
            opt.step(closure)
    return x.detach(), opt.state[x], visited


def _grad(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    x = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(f(x), x)
    return g


# --------------------------------------------------------------------------- Newton-CG inner solve

# f = cᵀx + ½ xᵀDx + Σ x⁴ at x = 0: gradient c, Hessian D = diag(1, 3, -1). D is positive definite
# on the Krylov space span{c, Dc} (eigenvalues 0.36, 31.6), so CG takes two steps, then meets
# negative curvature on its third direction.
D_INDEF = torch.tensor([1.0, 3.0, -1.0], dtype=DT)
C_INDEF = torch.tensor([1.0, 1.0, 0.1], dtype=DT)


def indefinite(x: Tensor) -> Tensor:
    return C_INDEF @ x + 0.5 * (D_INDEF * x * x).sum() + (x**4).sum()


def test_newton_cg_negative_curvature_after_first_inner_step_keeps_the_cg_iterate() -> None:
    _, st, _ = _run(ts.NewtonCG, indefinite, torch.zeros(3, dtype=DT), max_iter=1,
                    warm_start=False, cg_tol=1e-10)
    assert bool(st["negative_curvature"]) and int(st["cg_iters"]) == 2
    # two CG steps from 0 minimise the model over the Krylov space K = span{g, Hg}
    h = torch.diag(D_INDEF)
    k = torch.stack([C_INDEF, h @ C_INDEF], dim=1)
    partial = k @ torch.linalg.solve(k.T @ h @ k, -(k.T @ C_INDEF))
    torch.testing.assert_close(st["cg_solution"], partial, rtol=1e-12, atol=1e-12)
    # not the steepest-descent direction (not even parallel to it)
    cos = float(partial @ -C_INDEF / (partial.norm() * C_INDEF.norm()))
    assert cos < 0.99


def test_newton_cg_direction_that_is_not_descent_is_replaced_by_steepest_descent() -> None:
    # a warm start w with positive curvature but far uphill; one inner CG step from it still
    # points uphill (gᵀx₁ > 0), so -g is used instead
    w = torch.tensor([1.7, -3.25, -4.2], dtype=DT)
    h = torch.diag(D_INDEF)
    r = -C_INDEF - h @ w
    x1 = w + float(r @ r) / float(r @ h @ r) * r
    assert float(w @ h @ w) > 0 and float(r @ h @ r) > 0 and float(C_INDEF @ x1) > 0
    x = torch.zeros(3, dtype=DT, requires_grad=True)
    opt = ts.NewtonCG([x], max_iter=1, cg_max_iter=1, cg_tol=1e-10, line_search_fn=None,
                      lr=0.5)
    opt._state()["cg_solution"].copy_(w)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = indefinite(x)
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(x.detach(), -0.5 * C_INDEF, rtol=0, atol=1e-15)
    torch.testing.assert_close(opt.state[x]["cg_solution"], -C_INDEF, rtol=0, atol=0)


def test_newton_cg_warm_start_is_used_only_with_positive_curvature() -> None:
    # With cg_max_iter=1 the direction is (warm start) + one CG step from its residual: a warm
    # start equal to the exact solution is returned as is (residual 0, no step).
    x0 = torch.zeros(20, dtype=DT)
    x = x0.clone().requires_grad_()
    opt = ts.NewtonCG([x], max_iter=1, cg_max_iter=1, cg_tol=1e-10, line_search_fn=None)
    st = opt._state()
    st["cg_solution"].copy_(X_STAR)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = quadratic(x)
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(x.detach(), X_STAR, rtol=0, atol=1e-10)
    assert int(st["cg_iters"]) == 0
    # a warm start with negative curvature is dropped: CG starts from 0 and its first step is
    # along -g, the same as with no warm start at all
    y = torch.zeros(3, dtype=DT, requires_grad=True)
    opt = ts.NewtonCG([y], max_iter=1, cg_max_iter=1, cg_tol=1e-10, line_search_fn=None)
    st = opt._state()
    st["cg_solution"].copy_(torch.tensor([0.0, 0.0, 1.0], dtype=DT))  # uᵀHu = -1

    def closure_y() -> Tensor:
        opt.zero_grad()
        loss = indefinite(y)
        loss.backward()
        return loss

    opt.step(closure_y)
    h = torch.diag(D_INDEF)
    first_cg_step = -float(C_INDEF @ C_INDEF) / float(C_INDEF @ h @ C_INDEF) * C_INDEF
    torch.testing.assert_close(st["cg_solution"], first_cg_step, rtol=1e-12, atol=1e-12)


def _cg_by_hand(tol: float) -> tuple[Tensor, int]:
    """Linear CG on A x = B from 0 until ||r|| <= tol ||B||: (iterate, iterations)."""
    x, r = torch.zeros(20, dtype=DT), B.clone()
    p, iters = r.clone(), 0
    while float(r.norm()) > tol * float(B.norm()):
        ap = A @ p
        alpha = float(r @ r) / float(p @ ap)
        x, r_new = x + alpha * p, r - alpha * ap
        p = r_new + float(r_new @ r_new) / float(r @ r) * p
        r, iters = r_new, iters + 1
    return x, iters


def test_newton_cg_forcing_term_sets_the_inner_iterations() -> None:
    # cg_tol given: the inner solve runs until ||r|| <= cg_tol ||g||; None: min(1/2, sqrt||g||),
    # which is 1/2 here (||g|| = ||B|| > 1/4)
    assert math.sqrt(float(B.norm())) > 0.5
    for cg_tol, tol in ((1e-2, 1e-2), (None, 0.5)):
        _, st, _ = _run(ts.NewtonCG, quadratic, torch.zeros(20, dtype=DT), max_iter=1,
                        cg_tol=cg_tol)
        x, iters = _cg_by_hand(tol)
        assert int(st["cg_iters"]) == iters, cg_tol
        assert float((st["cg_solution"] - x).norm() / x.norm()) < 1e-8, cg_tol
    assert _cg_by_hand(0.5)[1] < _cg_by_hand(1e-2)[1]


def test_newton_cg_predicted_decrease_uses_the_model_curvature() -> None:
    # on a quadratic the model is exact: ρ = 1 for any truncated direction, step and damping
    # (λ shapes the direction, not the model), and after a warm-started solve, which holds
    # only if the undamped pᵀCp taken from the CG residual is right
    for cg_max_iter, lr, damping, steps in ((1, 0.3, 0.0, 1), (3, 1.0, 0.5, 1),
                                            (5, 0.7, 2.0, 1), (2, 0.5, 0.0, 3)):
        _, st, _ = _run(ts.NewtonCG, quadratic, torch.zeros(20, dtype=DT), steps=steps,
                        max_iter=1, cg_max_iter=cg_max_iter, cg_tol=1e-10, line_search_fn=None,
                        lr=lr, damping=damping, adapt_damping=False)
        assert float(st["rho"]) == pytest.approx(1.0, abs=1e-10), (cg_max_iter, damping)


def test_newton_cg_without_warm_start_starts_each_solve_from_zero() -> None:
    # two outer iterations with one inner step each: without the warm start the second
    # direction is the first CG step from 0 at the new point, (rᵀr / rᵀAr) r with r = -g
    for warm_start in (False, True):
        x, st, _ = _run(ts.NewtonCG, quadratic, torch.zeros(20, dtype=DT), steps=2, max_iter=1,
                        cg_max_iter=1, cg_tol=1e-10, line_search_fn=None, lr=0.5,
                        adapt_damping=False, warm_start=warm_start)
        x1 = 0.5 * (float(B @ B) / float(B @ A @ B)) * B  # after the first step
        r = -_grad(quadratic, x1)
        cold = float(r @ r) / float(r @ A @ r) * r
        same = torch.allclose(st["cg_solution"], cold, rtol=1e-10, atol=1e-12)
        assert same is (not warm_start), warm_start


def test_gauss_newton_of_a_loss_linear_in_the_outputs_is_zero() -> None:
    # loss = sum of the outputs: H_L = 0, so the Gauss-Newton matrix is 0 and Newton-CG falls
    # back to -g on its first inner iteration
    w = torch.ones(3, dtype=DT, requires_grad=True)
    opt = ts.NewtonCG([w], curvature="gauss_newton", max_iter=1, line_search_fn=None,
                      warm_start=False)

    def closure() -> tuple[Tensor, Tensor]:
        opt.zero_grad()
        out = LX[:, :3] @ w
        loss = out.sum()
        loss.backward()
        return loss, out

    opt.step(closure)
    st = opt.state[w]
    assert bool(st["negative_curvature"]) and int(st["cg_iters"]) == 0
    torch.testing.assert_close(w.detach(), 1.0 - LX[:, :3].sum(0))


# --------------------------------------------------------------------------- Newton


def test_newton_raises_damping_by_the_documented_rule_on_an_indefinite_hessian() -> None:
    # H = diag(2, -2 + 12 x1²) = diag(2, -1.88) at x1 = 0.1, mean |diag| = 1.94: λ = 0 fails,
    # then λ = max(10 λ, 1e-3 · 1.94) until H + λI > 0, i.e. the first such λ above 1.88
    def f(x: Tensor) -> Tensor:
        return x[0] ** 2 - x[1] ** 2 + x[1] ** 4

    _, st, _ = _run(ts.Newton, f, torch.tensor([0.5, 0.1], dtype=DT), max_iter=1,
                    adapt_damping=False)
    lam = 1e-3 * 1.94
    while not lam > 1.88:
        lam *= 10.0
    assert float(st["damping"]) == pytest.approx(lam, rel=1e-12)  # 1.94


def test_zero_curvature_of_a_linear_loss() -> None:
    # the gradient of cᵀx does not depend on x: every curvature product is 0. Newton's
    # Cholesky of 0 + λI fails at λ = 0, and with mean |diag H| = 0 the floor is 1e-3;
    # Newton-CG meets zero curvature on its first inner iteration and uses -g
    c = torch.tensor([1.0, -2.0, 0.5], dtype=DT)

    def f(x: Tensor) -> Tensor:
        return c @ x

    x0 = torch.zeros(3, dtype=DT)
    x, st, _ = _run(ts.Newton, f, x0, max_iter=1, adapt_damping=False, line_search_fn=None)
    assert float(st["damping"]) == 1e-3 and int(st["hvp_evals"]) == 3
    torch.testing.assert_close(x, -c / 1e-3)
    x, st, _ = _run(ts.NewtonCG, f, x0, max_iter=1, line_search_fn=None, warm_start=False)
    assert bool(st["negative_curvature"]) and int(st["cg_iters"]) == 0
    torch.testing.assert_close(x, -c)


def test_refusals_of_a_loss_without_graph_and_of_an_empty_group() -> None:
    x = torch.zeros(3, dtype=DT, requires_grad=True)
    for cls in (ts.Newton, ts.NewtonCG):
        opt = cls([x])
        with pytest.raises(ValueError, match="no autograd graph"):
            opt.step(lambda: (x.detach() ** 2).sum() + 1.0)
        with pytest.raises(ValueError, match=r"param_groups\[1\]\.params.*at least one"):
            opt.add_param_group({"params": []})


def test_newton_falls_back_to_steepest_descent_when_no_damping_helps() -> None:
    # |x1|^1.5 has an undefined second derivative at x1 = 0 (NaN in the Hessian): no λ makes
    # the solve finite; after 60 tries (λ = 1e-3 · 10⁵⁹) the step is -g, not a Newton step
    # (which would move x0 from 1 to 0.75, not 0.5)
    def f(x: Tensor) -> Tensor:
        return x[0] ** 2 + x[1].abs() ** 1.5

    x, st, _ = _run(ts.Newton, f, torch.tensor([1.0, 0.0], dtype=DT), max_iter=1,
                    line_search_fn=None, lr=0.25, adapt_damping=False)
    torch.testing.assert_close(x, torch.tensor([0.5, 0.0], dtype=DT), rtol=0, atol=0)
    assert float(st["damping"]) == pytest.approx(1e56, rel=1e-12)


def test_newton_raises_damping_when_the_solve_overflows() -> None:
    # float32, H = 1e-38 > 0: Cholesky succeeds, but -g / H = -1e39 overflows to -inf; λ rises
    # from the floor 1e-3 · 1e-38 tenfold until the solve is finite (λ = 1e-37)
    x = torch.zeros(1, requires_grad=True)
    opt = ts.Newton([x], max_iter=1, line_search_fn=None, lr=1e-36, adapt_damping=False)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = (0.5e-38 * x**2 + 10.0 * x).sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert float(opt.state[x]["damping"]) == pytest.approx(1e-37, rel=1e-5)
    assert float(x.detach()) == pytest.approx(-10.0 / (1e-38 + 1e-37) * 1e-36, rel=1e-4)


def test_a_step_beyond_the_model_minimum_has_no_reduction_ratio() -> None:
    # fixed step 3 along the Newton direction of a quadratic: the model predicts an increase
    # (-(t gᵀp + ½ t² pᵀHp) = -1.5 pᵀHp < 0), so ρ is undefined and λ rises from 0 to 1e-3
    # (the ratio of two increases would read as 1, a perfect model, and keep λ at 0)
    _, st, _ = _run(ts.Newton, quadratic, torch.zeros(20, dtype=DT), max_iter=1,
                    line_search_fn=None, lr=3.0)
    assert math.isnan(float(st["rho"])) and float(st["damping"]) == 1e-3


def test_tolerance_change_stops_on_a_small_step_with_a_large_loss_change() -> None:
    # f = 1e7 (x - 1e-4)²: the first iteration moves x by ~1e-4 (below tolerance_change 1e-3)
    # while the loss falls by ~0.1 (above it): the step test alone stops the run
    def f(x: Tensor) -> Tensor:
        return 1e7 * ((x - 1e-4) ** 2).sum()

    _, st, _ = _run(ts.ConjugateGradient, f, torch.zeros(1, dtype=DT), max_iter=5,
                    tolerance_grad=0.0, tolerance_change=1e-3)
    assert int(st["n_iter"]) == 1


def test_newton_fixed_step_moves_exactly_lr_times_the_newton_step() -> None:
    x, st, visited = _run(ts.Newton, quadratic, torch.zeros(20, dtype=DT), max_iter=1,
                          line_search_fn=None, lr=0.25)
    torch.testing.assert_close(x, 0.25 * X_STAR, rtol=0, atol=1e-12)
    assert int(st["func_evals"]) == 2 and len(visited) == 2


def test_fixed_step_to_a_non_finite_loss_is_refused() -> None:
    def f(x: Tensor) -> Tensor:
        return torch.where(x.abs().sum() > 1.5, torch.tensor(math.inf, dtype=DT),
                           (x**2).sum())

    with pytest.raises(ValueError, match="non-finite loss"):
        _run(ts.ConjugateGradient, f, torch.ones(1, dtype=DT), max_iter=1, line_search_fn=None,
             lr=2.0)


def test_no_iteration_when_the_gradient_is_already_small() -> None:
    x0 = X_STAR + 1e-9
    for cls in (ts.Newton, ts.NewtonCG, ts.ConjugateGradient):
        x, st, _ = _run(cls, quadratic, x0, max_iter=5, tolerance_grad=1e-6)
        assert int(st["n_iter"]) == 0 and int(st["func_evals"]) == 1, cls.__name__
        assert torch.equal(x, x0)
        # just above the tolerance: it iterates
        _, st, _ = _run(cls, quadratic, x0, max_iter=5, tolerance_grad=1e-10)
        assert int(st["n_iter"]) >= 1, cls.__name__


def test_tolerance_change_stops_after_one_iteration() -> None:
    # Rosenbrock's first iterations change the loss by far more than 1e-9 but less than 1e3
    _, st, _ = _run(ts.ConjugateGradient, rosenbrock, torch.zeros(10, dtype=DT), max_iter=50,
                    tolerance_change=1e3, tolerance_grad=0.0)
    assert int(st["n_iter"]) == 1
    _, st, _ = _run(ts.ConjugateGradient, rosenbrock, torch.zeros(10, dtype=DT), max_iter=50,
                    tolerance_change=1e-9, tolerance_grad=0.0)
    assert int(st["n_iter"]) == 50


# --------------------------------------------------------------------------- conjugate gradient


@pytest.mark.parametrize(("restart", "expected"), [(1, 10), (3, 4), (4, 3), (None, 1)])
def test_cg_restart_period_is_honoured(restart: int | None, expected: int) -> None:
    # FR with c2 = 0.1 gives descent directions, so every restart here is a periodic one:
    # iterations 1, 1+k, 1+2k, ... of 10 (n = 20: the default period never comes)
    _, st, _ = _run(ts.ConjugateGradient, quadratic, torch.zeros(20, dtype=DT), max_iter=10,
                    beta="FR", restart=restart, tolerance_grad=0.0, tolerance_change=0.0)
    assert int(st["n_iter"]) == 10
    assert int(st["restarts"]) == expected


def test_cg_with_restart_every_iteration_is_steepest_descent() -> None:
    def directions(restart: int | None) -> list[bool]:
        x = torch.zeros(20, dtype=DT, requires_grad=True)
        opt = ts.ConjugateGradient([x], max_iter=1, restart=restart, tolerance_grad=0.0,
                                   tolerance_change=0.0)

        def closure() -> Tensor:
            opt.zero_grad()
            loss = quadratic(x)
            loss.backward()
            return loss

        steepest = []
        for _ in range(5):
            opt.step(closure)
            st = opt.state[x]
            steepest.append(torch.allclose(st["d_prev"], -st["g_prev"], rtol=0, atol=1e-14))
        return steepest

    assert directions(1) == [True] * 5
    assert directions(None) == [True] + [False] * 4


def test_cg_first_trial_step_rule() -> None:
    # first iteration (from scratch): t0 = lr · min(1, 1/||g||₁); later: t₋₁ (g₋ᵀd₋) / (gᵀd)
    x0 = torch.zeros(20, dtype=DT)
    _, _, visited = _run(ts.ConjugateGradient, quadratic, x0, max_iter=2, lr=0.7,
                         tolerance_grad=0.0, tolerance_change=0.0)
    g0 = _grad(quadratic, x0)
    t0 = 0.7 * min(1.0, 1.0 / float(g0.abs().sum()))
    torch.testing.assert_close(visited[1], x0 - t0 * g0, rtol=0, atol=1e-14)
    # iteration 1 alone: where it ended (x1) and with which step (t1)
    x1, st1, visited1 = _run(ts.ConjugateGradient, quadratic, x0, max_iter=1, lr=0.7,
                             tolerance_grad=0.0, tolerance_change=0.0)
    t1 = float(st1["ls_step"])
    g1 = _grad(quadratic, x1)
    d1 = -g1 + conjugacy_beta("PR+", g1, g0, -g0) * -g0
    t_next = t1 * float(g0 @ -g0) / float(g1 @ d1)
    first_trial_2 = visited[len(visited1)]  # after the start and iteration 1's trials
    torch.testing.assert_close(first_trial_2, x1 + t_next * d1, rtol=1e-12, atol=1e-12)
    # (the from-scratch rule would give another point here)
    t_scratch = 0.7 * min(1.0, 1.0 / float(g1.abs().sum()))
    assert abs(t_next - t_scratch) > 0.1 * t_next


def test_cg_restarts_after_a_search_that_did_not_move() -> None:
    # max_ls=1 and a huge first trial: the first search fails at step 0; the next iteration
    # cannot use the old direction and restarts from -g
    x = torch.tensor([-1.2, 1.0], dtype=DT, requires_grad=True)
    opt = ts.ConjugateGradient([x], max_iter=1, max_ls=1, lr=1e6)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = rosenbrock(x)
        loss.backward()
        return loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        opt.step(closure)
        st = opt.state[x]
        assert float(st["ls_step"]) == 0.0 and not bool(st["has_direction"])
        opt.param_groups[0]["max_ls"] = 25  # (every group shares it)
        opt.step(closure)
    assert int(st["restarts"]) == 2 and int(st["n_iter"]) == 2


def test_conjugacy_beta_zero_denominator_is_zero() -> None:
    g = torch.tensor([1.0, 2.0], dtype=DT)
    zero = torch.zeros(2, dtype=DT)
    for kind in ("FR", "PR", "PR+"):
        assert conjugacy_beta(kind, g, zero, g) == 0.0
    # HS / DY: dᵀy = 0 with y = g - g_prev = (1, 0), d = (0, 1)
    g_prev = torch.tensor([0.0, 2.0], dtype=DT)
    d = torch.tensor([0.0, 1.0], dtype=DT)
    for kind in ("HS", "DY"):
        assert conjugacy_beta(kind, g, g_prev, d) == 0.0


# --------------------------------------------------------------------------- strong Wolfe search

ONE = torch.tensor([1.0], dtype=DT)


def _cubic_uphill(t: float) -> tuple[float, Tensor, Any]:
    """φ(t) = -t + 2.00015 t² - 1.0001 t³: φ'(0) = -1, a minimum at t ≈ 1/3, and at t = 1 a
    flat point (φ' = 0) slightly *above* φ(0) (φ(1) = 5e-5 < c1 = 1e-4 in size)."""
    f = -t + 2.00015 * t * t - 1.0001 * t**3
    g = -1.0 + 4.0003 * t - 3.0003 * t * t
    return f, torch.tensor([g], dtype=DT), t


def test_strong_wolfe_rejects_an_uphill_step_whose_slope_is_flat() -> None:
    f1, g1, _ = _cubic_uphill(1.0)
    assert f1 > 0.0 and abs(float(g1)) < 1e-12  # the trial step 1 is uphill and flat
    res = strong_wolfe(_cubic_uphill, 0.0, -ONE, 0.0, ONE, 1.0, c1=1e-4, c2=0.9,
                       max_evals=25, tolerance_change=1e-12)
    assert res.success, res.message
    f, g, _ = _cubic_uphill(res.step)
    assert f <= 0.0 + 1e-4 * res.step * -1.0  # Armijo
    assert abs(float(g)) <= 0.9  # strong curvature
    assert 0.0 < res.step < 1.0 and res.loss == f < 0.0
    assert res.evals == 2  # the uphill trial, then the cubic's minimiser of the bracket


def test_newton_never_accepts_an_uphill_first_trial() -> None:
    # the same cubic as the objective of Newton (c2 = 0.9 by default): from 0 the Newton
    # direction is 1/4.0003; a first trial step of 4.0003 lands on the flat point x = 1
    def f(x: Tensor) -> Tensor:
        return (-x + 2.00015 * x**2 - 1.0001 * x**3).sum()

    x0 = torch.zeros(1, dtype=DT)
    x, st, visited = _run(ts.Newton, f, x0, max_iter=1, lr=4.0003, adapt_damping=False)
    assert float(visited[1]) == pytest.approx(1.0, abs=1e-12)  # the uphill, flat trial
    assert float(f(x)) < float(f(x0)) + 1e-4 * float(st["ls_step"]) * -1.0 / 4.0003
    assert bool(st["ls_success"]) and int(st["ls_evals"]) == 2


def test_strong_wolfe_zooms_back_when_a_trial_overshoots_uphill_in_slope() -> None:
    # φ(t) = (t - 1)² from t = 1.9: Armijo holds (0.81 < 1) but the slope there is +1.8, far
    # above c2 |φ'(0)| = 0.2: the minimum lies between 0 and 1.9, not further out
    trials: list[float] = []

    def phi(t: float) -> tuple[float, Tensor, Any]:
        trials.append(t)
        return (t - 1.0) ** 2, torch.tensor([2.0 * (t - 1.0)], dtype=DT), t

    res = strong_wolfe(phi, 1.0, torch.tensor([-2.0], dtype=DT), 0.0, ONE, 1.9, c1=1e-4,
                       c2=0.1, max_evals=25, tolerance_change=1e-12)
    assert res.success and res.step == pytest.approx(1.0, abs=1e-12)
    assert trials == [1.9, pytest.approx(1.0, abs=1e-12)]


def test_strong_wolfe_brackets_when_an_extrapolated_trial_is_higher_than_the_last() -> None:
    # φ(t) = -t + k max(0, t - 1.2)^1.5: linear (slope -1) up to 1.2, a minimum near 2.6.
    # The trial at 1 is still steep, so the search extrapolates (linear data: to the middle of
    # [1.01, 10], 5.505), where φ = -0.505 is above φ(1) = -1 although Armijo and the curvature
    # condition (|φ'| = 0.74 <= 0.9) hold there: the minimum lies between, so it must bracket.
    k = 0.5598

    def phi(t: float) -> tuple[float, Tensor, Any]:
        s = max(0.0, t - 1.2)
        return -t + k * s**1.5, torch.tensor([-1.0 + 1.5 * k * s**0.5], dtype=DT), t

    f2, g2, _ = phi(5.505)
    assert -1.0 < f2 <= -1e-4 * 5.505 and abs(float(g2)) <= 0.9
    res = strong_wolfe(phi, 0.0, -ONE, 0.0, ONE, 1.0, c1=1e-4, c2=0.9, max_evals=25,
                       tolerance_change=1e-12)
    assert res.success and res.loss < -1.0 and 1.0 < res.step < 5.505


def test_cubic_interpolation_and_its_fallbacks() -> None:
    # f = (t - 0.3)² on [0, 1]: the interpolating cubic is the parabola, minimum 0.3
    f = lambda t: (t - 0.3) ** 2  # noqa: E731
    g = lambda t: 2.0 * (t - 0.3)  # noqa: E731
    assert _cubic_minimizer(0.0, f(0.0), g(0.0), 1.0, f(1.0), g(1.0), 0.0, 1.0) == \
        pytest.approx(0.3, abs=1e-12)
    # clamped to the interval it is given
    assert _cubic_minimizer(0.0, f(0.0), g(0.0), 1.0, f(1.0), g(1.0), 0.5, 1.0) == 0.5
    # no minimiser (both slopes negative, concave data) or non-finite data: the midpoint
    assert _cubic_minimizer(0.0, 0.0, -1.0, 1.0, -10.0, -30.0, 0.0, 2.0) == 1.0
    assert _cubic_minimizer(0.0, 0.0, -1.0, 1.0, math.inf, math.nan, 0.0, 0.4) == 0.2


def test_cg_stops_when_the_slope_underflows_to_zero() -> None:
    # g = 1e-170 per entry is not zero (tolerance_grad=0 lets it through), but gᵀd = -3e-340
    # underflows to 0: no descent can be measured, so the iteration stops before a search
    def f(x: Tensor) -> Tensor:
        return 1e-170 * x.sum()

    x0 = torch.ones(3, dtype=DT)
    assert float(_grad(f, x0) @ -_grad(f, x0)) == 0.0
    x, st, visited = _run(ts.ConjugateGradient, f, x0, max_iter=5, tolerance_grad=0.0)
    assert int(st["n_iter"]) == 0 and len(visited) == 1 and torch.equal(x, x0)


def test_strong_wolfe_treats_a_non_finite_trial_as_too_far() -> None:
    def phi(t: float) -> tuple[float, Tensor, Any]:
        if t > 2.0:
            return math.nan, torch.tensor([math.nan], dtype=DT), t
        return (t - 1.0) ** 2, torch.tensor([2.0 * (t - 1.0)], dtype=DT), t

    res = strong_wolfe(phi, 1.0, torch.tensor([-2.0], dtype=DT), 0.0, ONE, 100.0, c1=1e-4,
                       c2=0.1, max_evals=25, tolerance_change=1e-12)
    assert res.success and math.isfinite(res.loss)
    assert abs(res.step - 1.0) <= 0.1


def test_strong_wolfe_extrapolates_at_most_tenfold() -> None:
    trials: list[float] = []

    def phi(t: float) -> tuple[float, Tensor, Any]:  # minimum far away at t = 1e4
        trials.append(t)
        return (t - 1e4) ** 2, torch.tensor([2.0 * (t - 1e4)], dtype=DT), t

    strong_wolfe(phi, 1e8, torch.tensor([-2e4], dtype=DT), 0.0, ONE, 1.0, c1=1e-4, c2=0.1,
                 max_evals=25, tolerance_change=1e-12)
    assert trials[:3] == [1.0, 10.0, 100.0]


def test_strong_wolfe_failure_returns_the_best_point_it_saw() -> None:
    # budget of 2 evaluations on the uphill cubic: the second trial is the best (below φ(0))
    res = strong_wolfe(_cubic_uphill, 0.0, -ONE, 0.0, ONE, 1.0, c1=1e-4, c2=0.9, max_evals=1,
                       tolerance_change=1e-12)
    assert not res.success and res.step == 0.0 and res.payload == 0.0 and res.evals == 1
    # narrow bracket: tolerance_change larger than the bracket width stops the zoom
    res = strong_wolfe(_cubic_uphill, 0.0, -ONE, 0.0, ONE, 1.0, c1=1e-4, c2=0.9, max_evals=25,
                       tolerance_change=10.0)
    assert not res.success and "narrower" in res.message and res.evals == 1


# --------------------------------------------------------------------------- evaluation budgets

BUDGET_PROBLEMS: dict[str, tuple[Callable[[Tensor], Tensor], Tensor]] = {
    "quadratic20": (quadratic, torch.zeros(20, dtype=DT)),
    "rosenbrock2": (rosenbrock, torch.tensor([-1.2, 1.0], dtype=DT)),
    "rosenbrock10": (rosenbrock, torch.zeros(10, dtype=DT)),
    "logistic": (logistic, torch.zeros(6, dtype=DT)),
}

# (problem, method) -> (iterations, closure evaluations, curvature products)
BUDGETS: dict[tuple[str, type], tuple[int, int, int]] = {
    ("quadratic20", ts.Newton): (1, 2, 20),
    ("quadratic20", ts.NewtonCG): (9, 11, 119),
    ("quadratic20", ts.ConjugateGradient): (44, 94, 0),
    ("rosenbrock2", ts.Newton): (22, 29, 44),
    ("rosenbrock2", ts.NewtonCG): (30, 50, 67),
    ("rosenbrock2", ts.ConjugateGradient): (33, 99, 0),
    ("rosenbrock10", ts.Newton): (25, 30, 250),
    ("rosenbrock10", ts.NewtonCG): (33, 48, 145),
    ("rosenbrock10", ts.ConjugateGradient): (102, 220, 0),
    ("logistic", ts.Newton): (6, 7, 36),
    ("logistic", ts.NewtonCG): (6, 7, 23),
    ("logistic", ts.ConjugateGradient): (12, 37, 0),
}


@pytest.mark.parametrize(
    ("problem", "cls"), list(BUDGETS), ids=[f"{p}-{c.__name__}" for p, c in BUDGETS]
)
def test_evaluation_budget(problem: str, cls: type) -> None:
    f, x0 = BUDGET_PROBLEMS[problem]
    x, st, visited = _run(cls, f, x0, max_iter=1000, tolerance_grad=1e-9,
                          tolerance_change=1e-14)
    assert float(_grad(f, x).abs().max()) <= 1e-6  # converged: cheap because it stopped early
    iters, evals, products = BUDGETS[(problem, cls)]
    assert int(st["n_iter"]) <= iters
    assert int(st["func_evals"]) <= evals
    assert int(st["func_evals"]) == len(visited)  # the counter counts every closure call
    assert int(st["hvp_evals"]) <= products
    if cls is ts.Newton:  # one Hessian (n products) per iteration
        assert int(st["hvp_evals"]) == x0.numel() * int(st["n_iter"])
    if cls is ts.ConjugateGradient:
        assert int(st["hvp_evals"]) == 0


def test_gauss_newton_evaluation_budget_on_logistic_regression() -> None:
    w = torch.zeros(6, dtype=DT, requires_grad=True)
    opt = ts.NewtonCG([w], curvature="gauss_newton", max_iter=1000, tolerance_grad=1e-9,
                      tolerance_change=1e-14)
    calls = 0

    def closure() -> tuple[Tensor, Tensor]:
        nonlocal calls
        calls += 1
        opt.zero_grad()
        out = LX @ w
        loss = F.binary_cross_entropy_with_logits(out, LY) + 0.5e-2 * (w @ w)
        loss.backward()
        return loss, out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        opt.step(closure)
    st = opt.state[w]
    assert float(_grad(logistic, w.detach()).abs().max()) <= 1e-6
    assert int(st["func_evals"]) == calls
    assert int(st["n_iter"]) <= 18 and calls <= 19 and int(st["hvp_evals"]) <= 75
