"""Newton, NewtonCG and ConjugateGradient (float64), with scipy.optimize as the independent
reference: the SPD quadratic, Rosenbrock in 2 and 10 dimensions, L2-regularised logistic
regression; state-dict round trips, parameter groups, the curvature products, the line search
and bad input.

The side-by-side iteration counts (ours vs scipy) are printed by ``test_matches_scipy``:
``pytest tests/optim/test_second_order.py -k scipy -rP``.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from helpers.second_order_problems import DT, LX, LY, A, B, logistic, quadratic, rosenbrock
from torch import Tensor
from torch.nn import functional as F

import torchopt_survey as ts
from torchopt_survey.optim.conjugate_gradient import conjugacy_beta
from torchopt_survey.optim.core.curvature import CurvatureOperator, evaluate_with_graph
from torchopt_survey.optim.core.line_search import strong_wolfe
from torchopt_survey.optim.core.second_order import adapt_damping

scipy_optimize = pytest.importorskip("scipy.optimize")

CLASSES = [ts.Newton, ts.NewtonCG, ts.ConjugateGradient]

# --------------------------------------------------------------------------- problems




PROBLEMS: dict[str, tuple[Callable[[Tensor], Tensor], Tensor]] = {
    "quadratic20": (quadratic, torch.zeros(20, dtype=DT)),
    "rosenbrock2": (rosenbrock, torch.tensor([-1.2, 1.0], dtype=DT)),
    "rosenbrock10": (rosenbrock, torch.zeros(10, dtype=DT)),
    "logistic": (logistic, torch.zeros(6, dtype=DT)),
}


def minimise(
    cls: type, f: Callable[[Tensor], Tensor], x0: Tensor, **kwargs: Any
) -> tuple[Tensor, dict[str, Any]]:
    """One ``step()`` of ``cls`` from x0 (max_iter given in kwargs); final x and its state."""
    x = x0.clone().requires_grad_()
    opt = cls([x], **kwargs)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        return loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # failed searches at the noise floor
        opt.step(closure)
    return x.detach(), opt.state[x]


def _np(f: Callable[[Tensor], Tensor]) -> dict[str, Callable[..., Any]]:
    """fun/jac/hess/hessp of f for scipy, through torch autograd in float64."""

    def fun(z: np.ndarray) -> float:
        return float(f(torch.from_numpy(z)))

    def jac(z: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(z).requires_grad_()
        (g,) = torch.autograd.grad(f(x), x)
        return g.numpy()

    def hess(z: np.ndarray) -> np.ndarray:
        return torch.autograd.functional.hessian(f, torch.from_numpy(z)).numpy()

    def hessp(z: np.ndarray, p: np.ndarray) -> np.ndarray:
        return hess(z) @ p

    return {"fun": fun, "jac": jac, "hess": hess, "hessp": hessp}


# --------------------------------------------------------------------------- the quadratic


def test_newton_one_step_on_quadratic() -> None:
    x, st = minimise(ts.Newton, quadratic, torch.zeros(20, dtype=DT), max_iter=1)
    x_star = torch.linalg.solve(A, B)
    torch.testing.assert_close(x, x_star, rtol=0, atol=1e-12)
    assert int(st["n_iter"]) == 1 and int(st["hvp_evals"]) == 20
    assert int(st["func_evals"]) == 2  # the start and the one line-search trial (step 1)
    assert float(st["damping"]) == 0.0 and float(st["rho"]) == pytest.approx(1.0)


@pytest.mark.parametrize("beta", ["FR", "PR", "PR+", "HS", "DY"])
def test_cg_converges_on_quadratic(beta: str) -> None:
    n = 20
    x, st = minimise(
        ts.ConjugateGradient, quadratic, torch.zeros(n, dtype=DT), max_iter=3 * n, beta=beta,
        tolerance_grad=1e-9, tolerance_change=0.0,
    )
    x_star = torch.linalg.solve(A, B)
    assert float((x - x_star).norm() / x_star.norm()) < 1e-7
    # nonlinear CG with an inexact (c2 = 0.1) search loses exact conjugacy: a few n, not n
    assert int(st["n_iter"]) <= 3 * n, f"{beta}: {int(st['n_iter'])} iterations"


def test_newton_cg_converges_on_quadratic() -> None:
    # default forcing term min(1/2, sqrt(|g|)): loose inner solves first, then superlinear
    x, st = minimise(
        ts.NewtonCG, quadratic, torch.zeros(20, dtype=DT), max_iter=10, tolerance_grad=1e-10,
        tolerance_change=0.0,
    )
    x_star = torch.linalg.solve(A, B)
    torch.testing.assert_close(x, x_star, rtol=0, atol=1e-9)
    assert int(st["n_iter"]) <= 10


# --------------------------------------------------------------------------- scipy reference

SCIPY_METHOD = {ts.ConjugateGradient: "CG", ts.NewtonCG: "Newton-CG", ts.Newton: "trust-exact"}


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_matches_scipy(cls: type, problem: str) -> None:
    f, x0 = PROBLEMS[problem]
    x, st = minimise(cls, f, x0, max_iter=1000, tolerance_grad=1e-9, tolerance_change=1e-14)
    method = SCIPY_METHOD[cls]
    fns = _np(f)
    extra: dict[str, Any] = {"jac": fns["jac"]}
    if method == "Newton-CG":
        extra["hessp"] = fns["hessp"]
        options = {"xtol": 1e-12}
    elif method == "trust-exact":
        extra["hess"] = fns["hess"]
        options = {"gtol": 1e-9}
    else:
        options = {"gtol": 1e-9}
    ref = scipy_optimize.minimize(fns["fun"], x0.numpy(), method=method, options=options, **extra)
    ours_nit, ours_nfev = int(st["n_iter"]), int(st["func_evals"])
    print(
        f"\n{problem:13s} {cls.__name__:18s} iterations {ours_nit:4d} (scipy {method} "
        f"{ref.nit:4d})  function evaluations {ours_nfev:4d} (scipy {ref.nfev:4d})  "
        f"Hessian-vector products {int(st['hvp_evals']):4d}"
    )
    x_ref = torch.from_numpy(ref.x)
    torch.testing.assert_close(x, x_ref, rtol=0, atol=1e-5)
    grad = torch.from_numpy(fns["jac"](x.numpy()))
    assert float(grad.abs().max()) < 1e-6
    # not much slower than scipy's implementation of the same method
    assert ours_nit <= 2 * ref.nit + 10, (ours_nit, ref.nit)


# --------------------------------------------------------------------------- state and groups


def _run_steps(opt: torch.optim.Optimizer, params: list[Tensor], f: Callable, steps: int) -> None:
    def closure() -> Tensor:
        opt.zero_grad()
        loss = f(torch.cat([p.reshape(-1) for p in params]))
        loss.backward()
        return loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(steps):
            opt.step(closure)


CONFIGS = [
    (ts.Newton, {"damping": 1e-2}),
    (ts.NewtonCG, {"damping": 1e-2}),
    (ts.NewtonCG, {"line_search_fn": None, "lr": 0.5, "cg_max_iter": 3}),
    (ts.ConjugateGradient, {"beta": "HS"}),
    (ts.ConjugateGradient, {"line_search_fn": None, "lr": 1e-3}),
]


@pytest.mark.parametrize(
    ("cls", "kwargs"), CONFIGS, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(CONFIGS)]
)
def test_state_dict_round_trip_continues_identically(cls: type, kwargs: dict[str, Any]) -> None:
    x = torch.zeros(10, dtype=DT, requires_grad=True)
    opt = cls([x], max_iter=2, **kwargs)
    _run_steps(opt, [x], rosenbrock, 3)
    saved = copy.deepcopy(opt.state_dict())
    x2 = x.detach().clone().requires_grad_()
    opt2 = cls([x2], max_iter=2, **kwargs)
    opt2.load_state_dict(saved)
    assert all(isinstance(v, Tensor) for v in saved["state"][0].values())
    _run_steps(opt, [x], rosenbrock, 4)
    _run_steps(opt2, [x2], rosenbrock, 4)
    assert torch.equal(x, x2)
    for key, value in opt.state[x].items():
        assert torch.equal(value, opt2.state[x2][key]), key


@pytest.mark.parametrize(
    ("cls", "kwargs"), CONFIGS, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(CONFIGS)]
)
def test_groups_equal_one_group(cls: type, kwargs: dict[str, Any]) -> None:
    a1, b1 = torch.zeros(4, dtype=DT, requires_grad=True), torch.zeros(6, dtype=DT,
                                                                        requires_grad=True)
    a2, b2 = a1.detach().clone().requires_grad_(), b1.detach().clone().requires_grad_()
    one = cls([a1, b1], max_iter=3, **kwargs)
    two = cls([{"params": [a2]}, {"params": [b2]}], max_iter=3, **kwargs)
    _run_steps(one, [a1, b1], rosenbrock, 3)
    _run_steps(two, [a2, b2], rosenbrock, 3)
    assert float(a1.detach().abs().sum()) > 0  # it moved
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert int(one.state[a1]["func_evals"]) == int(two.state[a2]["func_evals"])


# --------------------------------------------------------------------------- curvature products


def _tiny_net() -> tuple[torch.nn.Module, Tensor, Tensor]:
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    net.double()
    return net, torch.randn(5, 3, dtype=DT), torch.tensor([0, 1, 1, 0, 1])


def test_hessian_and_gauss_newton_products_match_explicit_matrices() -> None:
    net, xb, yb = _tiny_net()
    params = list(net.parameters())
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.detach().reshape(-1) for p in params])

    def unflat(v: Tensor) -> dict[str, Tensor]:
        out, i = {}, 0
        for name, shape in zip(names, shapes):
            k = math.prod(shape)
            out[name] = v[i : i + k].view(shape)
            i += k
        return out

    def outputs(v: Tensor) -> Tensor:
        return torch.func.functional_call(net, unflat(v), (xb,))

    def loss_of(v: Tensor) -> Tensor:
        return F.cross_entropy(outputs(v), yb)

    h_ref = torch.autograd.functional.hessian(loss_of, flat0)
    jac = torch.autograd.functional.jacobian(outputs, flat0).reshape(10, -1)
    out0 = outputs(flat0).detach()
    h_out = torch.autograd.functional.hessian(lambda o: F.cross_entropy(o.view(5, 2), yb),
                                              out0.reshape(-1))
    ggn_ref = jac.T @ h_out @ jac

    def closure() -> tuple[Tensor, Tensor]:
        out = net(xb)
        loss = F.cross_entropy(out, yb)
        loss.backward()
        return loss, out

    v = torch.randn(flat0.numel(), dtype=DT, generator=torch.Generator().manual_seed(5))
    ev = evaluate_with_graph(lambda: closure()[0], params, "test", "hessian")
    op = CurvatureOperator(params, ev, "hessian")
    torch.testing.assert_close(op.matrix(), h_ref)  # vmapped rows (Newton)
    torch.testing.assert_close(op(v), h_ref @ v)  # one product (NewtonCG)
    ev = evaluate_with_graph(closure, params, "test", "gauss_newton")
    op = CurvatureOperator(params, ev, "gauss_newton")
    torch.testing.assert_close(op.matrix(), ggn_ref)
    assert op.products == flat0.numel()
    torch.testing.assert_close(op(v), ggn_ref @ v)
    # the gradient is set as backward would, and it carries no graph (no reference cycle)
    for p in params:
        assert p.grad is not None and p.grad.grad_fn is None and not p.grad.requires_grad


def test_gauss_newton_newton_cg_matches_scipy_on_logistic_regression() -> None:
    w = torch.zeros(6, dtype=DT, requires_grad=True)
    opt = ts.NewtonCG([w], curvature="gauss_newton", max_iter=50, tolerance_grad=1e-10,
                      tolerance_change=0.0)

    def closure() -> tuple[Tensor, Tensor]:
        opt.zero_grad()
        out = LX @ w
        loss = F.binary_cross_entropy_with_logits(out, LY) + 0.5e-2 * (w @ w)
        loss.backward()
        return loss, out

    opt.step(closure)
    fns = _np(logistic)
    ref = scipy_optimize.minimize(fns["fun"], np.zeros(6), jac=fns["jac"], hess=fns["hess"],
                                  method="trust-exact", options={"gtol": 1e-10})
    # the L2 term is not in the Gauss-Newton part (it is not a function of the outputs), so this
    # is an inexact Newton method: it still converges to the same minimiser
    torch.testing.assert_close(w.detach(), torch.from_numpy(ref.x), rtol=0, atol=1e-6)


def test_newton_raises_damping_when_hessian_is_indefinite() -> None:
    def f(x: Tensor) -> Tensor:  # saddle at the origin, minima at (0, ±1/√2)
        return x[0] ** 2 - x[1] ** 2 + x[1] ** 4

    x, st = minimise(ts.Newton, f, torch.tensor([0.5, 0.1], dtype=DT), max_iter=1)
    assert float(st["damping"]) > 0.0  # Cholesky of H = diag(2, -2 + 0.12) failed: λ raised
    assert float(f(x)) < float(f(torch.tensor([0.5, 0.1], dtype=DT)))
    x, _ = minimise(ts.Newton, f, torch.tensor([0.5, 0.1], dtype=DT), max_iter=100,
                    tolerance_grad=1e-10, tolerance_change=0.0)
    torch.testing.assert_close(x, torch.tensor([0.0, 1 / math.sqrt(2)], dtype=DT))


def test_newton_cg_negative_curvature_exit_uses_steepest_descent() -> None:
    def f(x: Tensor) -> Tensor:  # Hessian -2 I at the origin side: negative along -g at once
        return -(x**2).sum() + (x**4).sum()

    x0 = torch.tensor([0.1, -0.2], dtype=DT)
    x, st = minimise(ts.NewtonCG, f, x0, max_iter=1, warm_start=False)
    assert bool(st["negative_curvature"]) and int(st["cg_iters"]) == 0
    assert float(f(x)) < float(f(x0))


def test_newton_cg_on_the_survey_mlp() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(784, 500), torch.nn.ReLU(),
                                torch.nn.Linear(500, 10))
    xb, yb = torch.rand(256, 784), torch.randint(0, 10, (256,))
    opt = ts.NewtonCG(model.parameters(), max_iter=1, cg_max_iter=10, damping=1.0,
                      curvature="gauss_newton")

    def closure() -> tuple[Tensor, Tensor]:
        opt.zero_grad()
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        loss.backward()
        return loss, out

    first = float(opt.step(closure))
    for _ in range(2):
        opt.step(closure)
    assert float(closure()[0].detach()) < first - 0.1
    st = opt.state[next(model.parameters())]
    assert int(st["hvp_evals"]) > 0 and int(st["n_iter"]) == 3


def test_beta_formulas_by_hand() -> None:
    g, g_prev, d_prev = (torch.tensor(v, dtype=DT) for v in ([1.0, 2.0], [2.0, 0.0], [-2.0, 0.0]))
    # y = (-1, 2): gᵀg = 5, gᵀy = 3, g₋ᵀg₋ = 4, d₋ᵀy = 2
    expected = {"FR": 5 / 4, "PR": 3 / 4, "PR+": 3 / 4, "HS": 3 / 2, "DY": 5 / 2}
    for kind, value in expected.items():
        assert conjugacy_beta(kind, g, g_prev, d_prev) == pytest.approx(value), kind
    g = torch.tensor([1.0, 0.0], dtype=DT)  # y = (-1, 0): PR = -1/4 < 0, clipped by PR+
    assert conjugacy_beta("PR", g, g_prev, d_prev) == pytest.approx(-0.25)
    assert conjugacy_beta("PR+", g, g_prev, d_prev) == 0.0


def test_cg_restarts_when_direction_is_not_descent() -> None:
    x = torch.tensor([1.0, 1.0], dtype=DT, requires_grad=True)
    opt = ts.ConjugateGradient([x], beta="FR", max_iter=1)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = x[0] ** 2 + 10 * x[1] ** 2
        loss.backward()
        return loss

    opt.step(closure)  # one steepest-descent iteration creates the state
    st = opt.state[x]
    restarts = int(st["restarts"])
    g = torch.tensor([2.0, 20.0], dtype=DT) * x.detach()
    # a previous direction pointing uphill with a tiny previous gradient: β d₋ dominates, gᵀd > 0
    st["d_prev"].copy_(g)
    st["g_prev"].fill_(1e-6)
    before = float(closure().detach())
    opt.step(closure)
    assert int(st["restarts"]) == restarts + 1
    assert float(closure().detach()) < before


def test_damping_rule_constants() -> None:
    assert adapt_damping(1.0, 0.1) == 1.5 and adapt_damping(1.0, math.nan) == 1.5
    assert adapt_damping(0.0, 0.1) == 1e-3
    assert adapt_damping(1.0, 0.9) == pytest.approx(2 / 3)
    assert adapt_damping(1.0, 0.5) == 1.0

    def huber(x: Tensor) -> Tensor:  # the Newton step from x = 2 overshoots to x = -8
        return torch.sqrt(1 + x**2).sum()

    _, st = minimise(ts.Newton, huber, torch.tensor([2.0], dtype=DT), max_iter=1,
                     line_search_fn=None, damping=0.0)
    assert float(st["rho"]) < 0 and float(st["damping"]) == 1e-3
    _, st = minimise(ts.Newton, quadratic, torch.zeros(20, dtype=DT), max_iter=1, damping=0.3)
    assert float(st["rho"]) == pytest.approx(1.0) and float(st["damping"]) == pytest.approx(0.2)


def test_newton_cg_keeps_its_solution_for_the_warm_start() -> None:
    x0 = torch.zeros(10, dtype=DT)
    x, st = minimise(ts.NewtonCG, rosenbrock, x0, max_iter=1)
    step = float(st["ls_step"])
    assert step > 0
    torch.testing.assert_close(st["cg_solution"] * step, x - x0)


# --------------------------------------------------------------------------- line search


def test_strong_wolfe_satisfies_both_conditions() -> None:
    d = torch.tensor([1.0], dtype=DT)

    def phi(t: float) -> tuple[float, Tensor, Any]:
        x = torch.tensor([t], dtype=DT, requires_grad=True)
        f = (x - 3.0) ** 4 + x
        (g,) = torch.autograd.grad(f.sum(), x)
        return float(f), g, None

    f0, g0, _ = phi(0.0)
    for start in (1e-3, 1.0, 50.0):
        res = strong_wolfe(phi, f0, g0, None, -g0 / g0.abs(), start, c1=1e-4, c2=0.1,
                           max_evals=30, tolerance_change=1e-12)
        # the direction is -sign(g0) = +1 here
        assert res.success, res.message
        f_t, g_t, _ = phi(res.step)
        assert f_t <= f0 + 1e-4 * res.step * float(g0 * d)
        assert abs(float(g_t)) <= 0.1 * abs(float(g0))


def test_failed_line_search_leaves_best_point_and_says_so() -> None:
    x = torch.tensor([-1.2, 1.0], dtype=DT, requires_grad=True)
    opt = ts.ConjugateGradient([x], max_iter=1, max_ls=1, lr=1e6)  # one far trial only

    def closure() -> Tensor:
        opt.zero_grad()
        loss = rosenbrock(x)
        loss.backward()
        return loss

    with pytest.warns(RuntimeWarning, match="line search failed.*best point"):
        opt.step(closure)
    st = opt.state[x]
    assert not bool(st["ls_success"]) and int(st["ls_evals"]) == 1
    assert float(st["ls_step"]) == 0.0  # nothing better than the start: parameters unchanged
    assert torch.equal(x.detach(), torch.tensor([-1.2, 1.0], dtype=DT))


# --------------------------------------------------------------------------- bad input


def _p() -> Tensor:
    return torch.zeros(3, dtype=DT, requires_grad=True)


CONSTRUCTOR_CASES = [
    (ts.Newton, {"lr": 0.0}, ValueError, r"\blr\b"),
    (ts.Newton, {"lr": math.nan}, ValueError, r"\blr\b"),
    (ts.Newton, {"max_iter": 0}, ValueError, r"max_iter"),
    (ts.Newton, {"max_iter": 2.5}, TypeError, r"max_iter"),
    (ts.Newton, {"max_iter": True}, TypeError, r"max_iter"),
    (ts.Newton, {"damping": -1.0}, ValueError, r"damping"),
    (ts.Newton, {"damping": math.inf}, ValueError, r"damping"),
    (ts.Newton, {"adapt_damping": 1}, TypeError, r"adapt_damping"),
    (ts.Newton, {"max_params": 0}, ValueError, r"max_params"),
    (ts.Newton, {"tolerance_grad": -1e-7}, ValueError, r"tolerance_grad"),
    (ts.NewtonCG, {"tolerance_change": math.nan}, ValueError, r"tolerance_change"),
    (ts.NewtonCG, {"line_search_fn": "armijo"}, ValueError, r"line_search_fn"),
    (ts.NewtonCG, {"c1": 0.0}, ValueError, r"\bc1\b"),
    (ts.NewtonCG, {"c2": 1.0}, ValueError, r"\bc2\b"),
    (ts.NewtonCG, {"c1": 0.5, "c2": 0.4}, ValueError, r"\bc2\b"),
    (ts.NewtonCG, {"max_ls": 0}, ValueError, r"max_ls"),
    (ts.NewtonCG, {"curvature": "fisher"}, ValueError, r"curvature"),
    (ts.NewtonCG, {"cg_max_iter": 0}, ValueError, r"cg_max_iter"),
    (ts.NewtonCG, {"cg_tol": 1.5}, ValueError, r"cg_tol"),
    (ts.NewtonCG, {"cg_tol": "0.1"}, TypeError, r"cg_tol"),
    (ts.NewtonCG, {"warm_start": None}, TypeError, r"warm_start"),
    (ts.ConjugateGradient, {"beta": "pr+"}, ValueError, r"\bbeta\b"),
    (ts.ConjugateGradient, {"beta": None}, ValueError, r"\bbeta\b"),
    (ts.ConjugateGradient, {"restart": 0}, ValueError, r"restart"),
    (ts.ConjugateGradient, {"restart": 1.0}, TypeError, r"restart"),
    (ts.ConjugateGradient, {"lr": "1"}, TypeError, r"\blr\b"),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "exc", "match"),
    CONSTRUCTOR_CASES,
    ids=[f"{c.__name__}-{'-'.join(k)}" for c, k, _, _ in CONSTRUCTOR_CASES],
)
def test_bad_hyperparameters(cls: type, kwargs: dict[str, Any], exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        cls([_p()], **kwargs)
    # the same value arriving through add_param_group names the group
    opt = cls([_p()])
    with pytest.raises(exc, match=r"param_groups\[1\]\." + match.removeprefix(r"\b")):
        opt.add_param_group({"params": [_p()], **kwargs})


def _closure_for(opt: torch.optim.Optimizer, x: Tensor, f: Callable[[Tensor], Any]) -> Callable:
    def closure() -> Any:
        opt.zero_grad()
        loss = f(x)
        if isinstance(loss, Tensor) and loss.requires_grad:
            loss.sum().backward()
        return loss

    return closure


STEP_CASES = [
    ("non-scalar", lambda x: x * 2, ValueError, r"scalar"),
    ("nan", lambda x: (x * math.nan).sum(), ValueError, r"non-finite"),
    ("inf", lambda x: (x.sum() + math.inf), ValueError, r"non-finite"),
    ("not-a-tensor", lambda x: "loss", TypeError, r"Tensor"),
    ("pair-without-gauss-newton", lambda x: ((x**2).sum(), x), TypeError, r"gauss_newton"),
]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize(("case", "f", "exc", "match"), STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_bad_closures(cls: type, case: str, f: Callable, exc: type, match: str) -> None:
    x = _p()
    opt = cls([x])
    with pytest.raises(exc, match=match):
        opt.step(_closure_for(opt, x, f))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_step_without_closure(cls: type) -> None:
    with pytest.raises(TypeError, match=r"step\(\) needs a closure"):
        cls([_p()]).step()


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_sparse_gradients_refused(cls: type) -> None:
    emb = torch.nn.Embedding(5, 2, sparse=True).double()
    opt = cls(emb.parameters())

    def closure() -> Tensor:
        opt.zero_grad()
        loss = (emb(torch.tensor([1, 2])) ** 2).sum()
        loss.backward()
        return loss

    with pytest.raises(ValueError, match=r"params\[0\] has a sparse gradient"):
        opt.step(closure)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_group_with_other_hyperparameters_refused(cls: type) -> None:
    with pytest.raises(ValueError, match=r"param_groups\[1\]\.max_iter.*share"):
        cls([{"params": [_p()]}, {"params": [_p()], "max_iter": 3}])


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_mixed_dtypes_and_complex_refused(cls: type) -> None:
    with pytest.raises(TypeError, match=r"params\[1\] is torch.float32"):
        cls([_p(), torch.zeros(2, requires_grad=True)])
    with pytest.raises(TypeError, match=r"complex"):
        cls([torch.zeros(2, dtype=torch.complex64, requires_grad=True)])


def test_cg_closure_without_backward_refused() -> None:
    x = _p()
    opt = ts.ConjugateGradient([x])
    with pytest.raises(ValueError, match=r"loss.backward"):
        opt.step(lambda: (x**2).sum())


def test_gauss_newton_closure_must_return_outputs() -> None:
    x = _p()
    opt = ts.NewtonCG([x], curvature="gauss_newton")
    with pytest.raises(TypeError, match=r"\(loss, outputs\)"):
        opt.step(_closure_for(opt, x, lambda x: (x**2).sum()))


def test_newton_refuses_the_survey_mlp_with_sizes() -> None:
    big = torch.empty(397_510, requires_grad=True)
    with pytest.raises(ValueError, match=r"397,510 values.*632\.\d GB.*max_params=10,000"):
        ts.Newton([big])
    ts.Newton([torch.empty(100, requires_grad=True)], max_params=100)  # at the limit: fine


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_frozen_parameter_is_left_alone(cls: type) -> None:
    x = torch.zeros(10, dtype=DT, requires_grad=True)
    frozen = torch.ones(2, dtype=DT)  # requires_grad=False, as a frozen layer's weight
    # (fixed damping: what is checked below is that no singular row forces it up)
    opt = cls([x, frozen], max_iter=5,
              **({} if cls is ts.ConjugateGradient else {"adapt_damping": False}))
    _run_steps(opt, [x, frozen], lambda v: rosenbrock(v[:10]) + (v[10:] ** 2).sum(), 1)
    assert torch.equal(frozen, torch.ones(2, dtype=DT))
    assert float(rosenbrock(x.detach())) < 9.0  # moved from f(0) = 9
    if cls is not ts.ConjugateGradient:  # frozen entries add no singular rows: no damping
        assert float(opt.state[x]["damping"]) == 0.0


def test_closure_calling_autograd_backward_gets_a_clear_error() -> None:
    x = _p()
    opt = ts.NewtonCG([x])

    def closure() -> Tensor:
        loss = (x**2).sum() + x.sum()
        torch.autograd.backward(loss)  # not deferred: the graph is freed
        return loss

    with pytest.raises(RuntimeError, match=r"Call loss.backward\(\)"):
        opt.step(closure)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_cuda_matches_cpu(cls: type) -> None:
    x_cpu, _ = minimise(cls, rosenbrock, torch.zeros(10, dtype=DT), max_iter=30)
    x_gpu = torch.zeros(10, dtype=DT, device="cuda", requires_grad=True)
    opt = cls([x_gpu], max_iter=30)
    _run_steps(opt, [x_gpu], rosenbrock, 1)
    torch.testing.assert_close(x_gpu.detach().cpu(), x_cpu, rtol=0, atol=1e-8)
