"""Independent textbook oracles for every optimizer and survey switch.

Each oracle below is a literal, float64 transcription of the published update rule (the
equation is in its docstring, with the reference), written with plain tensor arithmetic: no
torch.optim and nothing from ``torchopt_survey`` internals. One parametrised suite then checks
that our optimizers follow the oracles' trajectories step for step.

References:
  S1 = survey 1, "Bridging the Gap: The Interplay of Deep Learning and Optimization Techniques"
       (/work/shared/seeds/000_*.txt, §III, eqs. (1)-(9));
  S2 = survey 2, Shulman, "An overview of optimization methods in deep learning"
       (/work/shared/seeds/003_*.txt, §II and §IV);
  and the original papers: Duchi et al. 2011 (AdaGrad), Zeiler 2012 (Adadelta, Alg. 1),
  Tieleman & Hinton 2012 (RMSprop), Kingma & Ba 2015 (Adam Alg. 1, AdaMax §7.1),
  Reddi et al. 2018 (AMSGrad), Loshchilov & Hutter 2019 (AdamW), Dozat 2016 (NAdam, with
  torch.optim's documented momentum_decay schedule).

Conventions shared by every oracle (torch.optim's, which our optimizers promise to follow):
  * ``maximize`` negates the gradient first;
  * L2 ``weight_decay`` then adds ``lambda * theta`` to it (AdamW / decoupled: the parameter
    is shrunk by ``1 - lr * lambda`` before the step instead).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
import torch
from torch import Tensor

import torchopt_survey as ts

GradAt = Callable[[Tensor], Tensor]  # the (noisy) gradient of this step, at any point

STEPS = 200
SHAPES: tuple[tuple[int, ...], ...] = ((5,), (3, 4), (2, 3, 2))
# float64 all the way; the error left is rounding, amplified a little over 200 steps
RTOL = 1e-10
ATOL = 1e-12


@pytest.fixture(autouse=True)
def _float64_default() -> Iterator[None]:
    # torch.optim (and our drop-ins) keep scalar state such as NAdam's ``mu_product`` in the
    # default dtype; float32 there would round the product and swamp a 1e-10 comparison.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _signed_l2(g: Tensor, x: Tensor, weight_decay: float, maximize: bool) -> Tensor:
    """torch.optim's gradient preprocessing: g <- -g (maximize), then g <- g + lambda x."""
    if maximize:
        g = -g
    if weight_decay != 0:
        g = g + weight_decay * x
    return g


# ------------------------------------------------------------------------------------------
# Oracles: one instance per parameter tensor; ``step(x, grad_at)`` returns the new x.
# ------------------------------------------------------------------------------------------
class Oracle:
    lr: float

    def step(self, x: Tensor, grad_at: GradAt) -> Tensor:
        raise NotImplementedError


class SGDOracle(Oracle):
    """SGD with torch.optim's momentum (Sutskever et al. 2013; S1 eqs. (1)-(4), S2 §II-A).

    g_t = grad f(theta_t)                          (+ L2, maximize as above)
    momentum mu > 0:  b_1 = g_1,  b_t = mu b_{t-1} + (1 - dampening) g_t
                      d_t = g_t + mu b_t (nesterov)  else  d_t = b_t
    theta_{t+1} = theta_t - lr d_t
    """

    def __init__(self, x0: Tensor, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False,
                 maximize: bool = False) -> None:
        self.lr, self.mu, self.tau = lr, momentum, dampening
        self.wd, self.nesterov, self.maximize = weight_decay, nesterov, maximize
        self.b: Tensor | None = None

    def step(self, x: Tensor, grad_at: GradAt) -> Tensor:
        g = _signed_l2(grad_at(x), x, self.wd, self.maximize)
        if self.mu == 0:
            return x - self.lr * g
        self.b = g.clone() if self.b is None else self.mu * self.b + (1 - self.tau) * g
        d = g + self.mu * self.b if self.nesterov else self.b
        return x - self.lr * d


class SurveyMomentumOracle(Oracle):
    """Momentum exactly as S1 §III-D prints it (learning rate inside the velocity).

    v_t = gamma v_{t-1} + eta grad J(theta)     (5)      v_0 = 0
    theta = theta - v_t                          (6)
    """

    def __init__(self, x0: Tensor, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, maximize: bool = False) -> None:
        self.lr, self.gamma, self.wd, self.maximize = lr, momentum, weight_decay, maximize
        self.v = torch.zeros_like(x0)

    def step(self, x: Tensor, grad_at: GradAt) -> Tensor:
        g = _signed_l2(grad_at(x), x, self.wd, self.maximize)
        self.v = self.gamma * self.v + self.lr * g
        return x - self.v


class NAGLookaheadOracle(Oracle):
    """Nesterov's accelerated gradient with the true lookahead gradient (S1 §III-E, S2 §IV-A).

    v_{t+1} = mu v_t - eta grad f(x_t + mu v_t)          v_0 = 0
    x_{t+1} = x_t + v_{t+1}

    L2 weight decay is part of f, so its gradient is also taken at the lookahead point:
    grad f_reg(y) = grad f(y) + lambda y,  y = x_t + mu v_t.
    """

    def __init__(self, x0: Tensor, lr: float, momentum: float = 0.9,
                 weight_decay: float = 0.0, maximize: bool = False) -> None:
        self.lr, self.mu, self.wd, self.maximize = lr, momentum, weight_decay, maximize
        self.v = torch.zeros_like(x0)

    def step(self, x: Tensor, grad_at: GradAt) -> Tensor:
        y = x + self.mu * self.v
        g = _signed_l2(grad_at(y), y, self.wd, self.maximize)
        self.v = self.mu * self.v - self.lr * g
        return x + self.v


class AdagradOracle(Oracle):
    """AdaGrad (Duchi et al. 2011; S1 eq. (7); S2 §II-B; torch.optim's lr_decay).

    G_t = G_{t-1} + g_t^2                         G_0 = initial_accumulator_value
    eta_t = eta / (1 + (t - 1) lr_decay)
    theta_{t+1} = theta_t - eta_t g_t / (sqrt(G_t) + eps)       (S1 eq. (7), torch)
    theta_{t+1} = theta_t - eta_t g_t / sqrt(G_t + eps)         (S2 §II-B, eps_inside_sqrt)
    """

    def __init__(self, x0: Tensor, lr: float, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10,
                 maximize: bool = False, eps_inside_sqrt: bool = False) -> None:
        self.lr, self.lr_decay, self.wd, self.eps = lr, lr_decay, weight_decay, eps
        self.maximize, self.inside = maximize, eps_inside_sqrt
        self.G = torch.full_like(x0, initial_accumulator_value)
        self.t = 0

    def step(self, x: Tensor, grad_at: GradAt) -> Tensor:
        self.t += 1
        g = _signed_l2(grad_at(x), x, self.wd, self.maximize)
        eta_t = self.lr / (1 + (self.t - 1) * self.lr_decay)
        self.G = self.G + g * g
        denom = torch.sqrt(self.G + self.eps) if self.inside else torch.sqrt(self.G) + self.eps
        return x - eta_t * g / denom


class AdadeltaOracle(Oracle):
    """Adadelta, Zeiler 2012 Alg. 1 (S2 §II-C), times torch.optim's lr (1.0 = Zeiler).

    E[g^2]_t  = rho E[g^2]_{t-1} + (1 - rho) g_t^2
    dx_t      = - sqrt(E[dx^2]_{t-1} + eps) / sqrt(E[g^2]_t + eps) * g_t
    E[dx^2]_t = rho E[dx^2]_{t-1} + (1 - rho) dx_t^2
    x_{t+1}   = x_t + lr dx_t

    S2 prints the numerator as sqrt(dx_{t-1} + eps): a typo (dx can be negative, so that root
    is not even real); Zeiler's paper has the RMS of past updates, transcribed here.
    """

    def __init__(self, x0: Tensor, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, maximize: bool = False) -> None:
        self.lr, self.rho, self.eps, self.wd, self.maximize = lr, rho, eps, weight_decay, maximize
        self.Eg2 = torch.zeros_like(x0)
        self.Edx2 = torch.zeros_like(x0)

    def step(self, x: Tensor, grad_at: GradAt) -> Tensor:
        g = _signed_l2(grad_at(x), x, self.wd, self.maximize)
        self.Eg2 = self.rho * self.Eg2 + (1 - self.rho) * g**2
        dx = -torch.sqrt(self.Edx2 + self.eps) / torch.sqrt(self.Eg2 + self.eps) * g
        self.Edx2 = self.rho * self.Edx2 + (1 - self.rho) * dx**2
        return x + self.lr * dx


class RMSpropOracle(Oracle):
    """RMSprop (Tieleman & Hinton 2012; S1 eqs. (8)-(9); S2 §II-D; torch's centered/momentum).

    v_t = alpha v_{t-1} + (1 - alpha) g_t^2                                   (8)
    centered:  gbar_t = alpha gbar_{t-1} + (1 - alpha) g_t,  s_t = v_t - gbar_t^2  else s_t = v_t
    D_t = sqrt(s_t) + eps   (torch)      or   D_t = sqrt(s_t + eps)   (S1 (9), eps_inside_sqrt)
    momentum mu > 0:  b_t = mu b_{t-1} + g_t / D_t,  theta_{t+1} = theta_t - eta b_t
    else:             theta_{t+1} = theta_t - eta g_t / D_t                   (9)
    """

    def __init__(self, x0: Tensor, lr: float, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 maximize: bool = False, eps_inside_sqrt: bool = False) -> None:
        self.lr, self.alpha, self.eps, self.wd, self.mu = lr, alpha, eps, weight_decay, momentum
        self.centered, self.maximize, self.inside = centered, maximize, eps_inside_sqrt
        self.v = torch.zeros_like(x0)
        self.gbar = torch.zeros_like(x0)
        self.b = torch.zeros_like(x0)

    def step(self, x: Tensor, grad_at: GradAt) -> Tensor:
        g = _signed_l2(grad_at(x), x, self.wd, self.maximize)
        self.v = self.alpha * self.v + (1 - self.alpha) * g**2
        s = self.v
        if self.centered:
            self.gbar = self.alpha * self.gbar + (1 - self.alpha) * g
            s = self.v - self.gbar**2
        D = torch.sqrt(s + self.eps) if self.inside else torch.sqrt(s) + self.eps
        if self.mu > 0:
            self.b = self.mu * self.b + g / D
            return x - self.lr * self.b
        return x - self.lr * g / D


class AdamOracle(Oracle):
    """Adam, Kingma & Ba 2015 Alg. 1 (S1 §III-G); AMSGrad max as in torch.optim; AdamW.

    m_t = beta1 m_{t-1} + (1 - beta1) g_t
    v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
    amsgrad:  vmax_t = max(vmax_{t-1}, v_t), used in place of v_t below
    mhat_t = m_t / (1 - beta1^t),   vhat_t = v_t / (1 - beta2^t)
    theta_{t+1} = theta_t - alpha mhat_t / (sqrt(vhat_t) + eps)
    bias_correction=False:  theta_{t+1} = theta_t - alpha m_t / (sqrt(v_t) + eps)
    decoupled (AdamW, Loshchilov & Hutter 2019): theta_t <- theta_t (1 - alpha lambda) first,
    and no L2 term in g.
    """

    def __init__(self, x0: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                 maximize: bool = False, decoupled_weight_decay: bool = False,
                 bias_correction: bool = True) -> None:
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.amsgrad, self.maximize, self.decoupled = amsgrad, maximize, decoupled_weight_decay
        self.bias_correction = bias_correction
        self.m = torch.zeros_like(x0)
        self.v = torch.zeros_like(x0)
        self.vmax = torch.zeros_like(x0)
        self.t = 0

    def step(self, x: Tensor, grad_at: GradAt) -> Tensor:
        self.t += 1
        if self.decoupled:
            g = _signed_l2(grad_at(x), x, 0.0, self.maximize)
            x = x * (1 - self.lr * self.wd)
        else:
            g = _signed_l2(grad_at(x), x, self.wd, self.maximize)
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g**2
        v = self.v
        if self.amsgrad:
            self.vmax = torch.maximum(self.vmax, self.v)
            v = self.vmax
        if not self.bias_correction:
            return x - self.lr * self.m / (torch.sqrt(v) + self.eps)
        mhat = self.m / (1 - self.b1**self.t)
        vhat = v / (1 - self.b2**self.t)
        return x - self.lr * mhat / (torch.sqrt(vhat) + self.eps)


class AMSGradSurveyOracle(Oracle):
    """AMSGrad as S1 §III-H writes it (Reddi et al. 2018, Alg. 2, constant beta1 and eta).

    m_t = beta1 m_{t-1} + (1 - beta1) g_t
    v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
    vhat_t = max(vhat_{t-1}, v_t)          (the survey prints max(v_{t-1}, v_t); its text and
                                            Reddi et al. take the max over all past v)
    theta_{t+1} = theta_t - eta m_t / (sqrt(vhat_t) + eps)     -- no bias correction
    """

    def __init__(self, x0: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, maximize: bool = False) -> None:
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.maximize = maximize
        self.m = torch.zeros_like(x0)
        self.v = torch.zeros_like(x0)
        self.vhat = torch.zeros_like(x0)

    def step(self, x: Tensor, grad_at: GradAt) -> Tensor:
        g = _signed_l2(grad_at(x), x, self.wd, self.maximize)
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g**2
        self.vhat = torch.maximum(self.vhat, self.v)
        return x - self.lr * self.m / (torch.sqrt(self.vhat) + self.eps)


class NAdamOracle(Oracle):
    """NAdam, Dozat 2016, with torch.optim's documented momentum_decay (psi) schedule (S2 §IV).

    mu_t = beta1 (1 - 0.5 * 0.96^(t psi))
    m_t = beta1 m_{t-1} + (1 - beta1) g_t,   v_t = beta2 v_{t-1} + (1 - beta2) g_t^2
    vhat_t = v_t / (1 - beta2^t)
    theta_{t+1} = theta_t - gamma (1 - mu_t) / (1 - prod_{i<=t} mu_i) * g_t / (sqrt(vhat_t) + eps)
                          - gamma mu_{t+1} / (1 - prod_{i<=t+1} mu_i) * m_t / (sqrt(vhat_t) + eps)
    decoupled_weight_decay: theta_t <- theta_t (1 - gamma lambda) first (NAdamW).
    """

    def __init__(self, x0: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.psi, self.decoupled, self.maximize = momentum_decay, decoupled_weight_decay, maximize
        self.m = torch.zeros_like(x0)
        self.v = torch.zeros_like(x0)
        self.mu_prod = 1.0
        self.t = 0

    def _mu(self, t: int) -> float:
        return self.b1 * (1 - 0.5 * 0.96 ** (t * self.psi))

    def step(self, x: Tensor, grad_at: GradAt) -> Tensor:
        self.t += 1
        t = self.t
        if self.decoupled:
            g = _signed_l2(grad_at(x), x, 0.0, self.maximize)
            x = x * (1 - self.lr * self.wd)
        else:
            g = _signed_l2(grad_at(x), x, self.wd, self.maximize)
        mu_t, mu_next = self._mu(t), self._mu(t + 1)
        self.mu_prod *= mu_t
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g**2
        denom = torch.sqrt(self.v / (1 - self.b2**t)) + self.eps
        return (x - self.lr * (1 - mu_t) / (1 - self.mu_prod) * g / denom
                - self.lr * mu_next / (1 - self.mu_prod * mu_next) * self.m / denom)


class AdamaxOracle(Oracle):
    """AdaMax, Kingma & Ba 2015 §7.1 (S2 §IV-B), with torch.optim's eps inside the max.

    m_t = beta1 m_{t-1} + (1 - beta1) g_t
    u_t = max(beta2 u_{t-1}, |g_t| + eps)           (the paper: max(beta2 u_{t-1}, |g_t|))
    theta_{t+1} = theta_t - alpha / (1 - beta1^t) * m_t / u_t
    """

    def __init__(self, x0: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, maximize: bool = False) -> None:
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.maximize = maximize
        self.m = torch.zeros_like(x0)
        self.u = torch.zeros_like(x0)
        self.t = 0

    def step(self, x: Tensor, grad_at: GradAt) -> Tensor:
        self.t += 1
        g = _signed_l2(grad_at(x), x, self.wd, self.maximize)
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.u = torch.maximum(self.b2 * self.u, g.abs() + self.eps)
        return x - self.lr / (1 - self.b1**self.t) * self.m / self.u


# ------------------------------------------------------------------------------------------
# The test problem: separable noisy quadratics, one per tensor, gradients depend on the point.
# ------------------------------------------------------------------------------------------
@dataclass
class Problem:
    """f_i(x) = sign/2 * sum h_i (x - c_i)^2, observed with fixed per-step gradient noise.

    ``sign=-1`` makes it concave, so that ``maximize=True`` runs stay bounded.
    """

    sign: float = 1.0
    seed: int = 0
    x0: list[Tensor] = field(init=False)
    h: list[Tensor] = field(init=False)
    c: list[Tensor] = field(init=False)
    noise: list[Tensor] = field(init=False)

    def __post_init__(self) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        kw: dict[str, Any] = {"generator": gen, "dtype": torch.float64}
        self.x0 = [torch.randn(s, **kw) for s in SHAPES]
        self.h = [0.5 + 1.5 * torch.rand(s, **kw) for s in SHAPES]  # curvatures in [0.5, 2]
        self.c = [torch.randn(s, **kw) for s in SHAPES]
        self.noise = [0.3 * torch.randn((STEPS, *s), **kw) for s in SHAPES]

    def grad(self, i: int, x: Tensor, t: int) -> Tensor:
        return self.sign * self.h[i] * (x - self.c[i]) + self.noise[i][t]


def run_oracle(make: Callable[[Tensor], Oracle], problem: Problem,
               lr_at: Callable[[int], float] | None = None) -> Tensor:
    """The oracle's trajectory: all parameters flattened, one row per step."""
    xs = [x.clone() for x in problem.x0]
    oracles = [make(x) for x in xs]
    rows = []
    for t in range(STEPS):
        for i, oracle in enumerate(oracles):
            if lr_at is not None:
                oracle.lr = lr_at(t)
            xs[i] = oracle.step(xs[i], partial(problem.grad, i, t=t))
        rows.append(torch.cat([x.reshape(-1) for x in xs]))
    return torch.stack(rows)


def run_ours(cls: type[torch.optim.Optimizer], kwargs: dict[str, Any], problem: Problem,
             lr_at: Callable[[int], float] | None = None) -> Tensor:
    """Our optimizer's trajectory; gradients are always supplied through a closure, which is
    what NAG(lookahead=True) needs (it calls it at the lookahead point) and is harmless for
    the others."""
    params = [x.clone().requires_grad_(True) for x in problem.x0]
    opt = cls(params, **kwargs)
    rows = []
    for t in range(STEPS):
        if lr_at is not None:
            for group in opt.param_groups:
                group["lr"] = lr_at(t)

        def closure(t: int = t) -> Tensor:
            for i, p in enumerate(params):
                p.grad = problem.grad(i, p.detach(), t)
            return torch.zeros(())

        opt.step(closure)
        rows.append(torch.cat([p.detach().reshape(-1) for p in params]))
    return torch.stack(rows)


# ------------------------------------------------------------------------------------------
# The parametrised suite
# ------------------------------------------------------------------------------------------
def case(cls: type, oracle: Callable[..., Oracle], *, id: str, marks: Any = (),
         route: tuple[str, ...] = (), **kwargs: Any) -> Any:
    """One row: ``cls(**kwargs)`` must follow ``oracle(**kwargs minus the routing switches)``.

    ``route`` names the survey switches that select the oracle class instead of being one of
    its arguments (``momentum_form``, ``lookahead``).
    """
    oracle_kwargs = {k: v for k, v in kwargs.items() if k not in route}
    return pytest.param(cls, kwargs, partial(oracle, **oracle_kwargs), id=id, marks=marks)


CASES = [
    # --- SGD / Momentum / NAG: S1 §III-A..E, S2 §II-A, §IV-A
    case(ts.SGD, SGDOracle, id="SGD-plain", lr=0.1),
    case(ts.SGD, SGDOracle, id="SGD-weight_decay", lr=0.1, weight_decay=0.05),
    case(ts.SGD, SGDOracle, id="SGD-momentum-dampening", lr=0.05, momentum=0.9, dampening=0.3),
    case(ts.SGD, SGDOracle, id="SGD-nesterov-wd", lr=0.05, momentum=0.9, nesterov=True,
         weight_decay=0.01),
    case(ts.SGD, SGDOracle, id="SGD-momentum-maximize", lr=0.1, momentum=0.5, maximize=True),
    case(ts.Momentum, SGDOracle, id="Momentum-torch", lr=0.05, momentum=0.9),
    case(ts.Momentum, SurveyMomentumOracle, id="Momentum-survey", route=("momentum_form",),
         lr=0.05, momentum=0.9, momentum_form="survey"),
    case(ts.Momentum, SurveyMomentumOracle, id="Momentum-survey-wd-maximize",
         route=("momentum_form",), lr=0.05, momentum=0.8, weight_decay=0.02, maximize=True,
         momentum_form="survey"),
    case(ts.SGD, SurveyMomentumOracle, id="SGD-survey-form", route=("momentum_form",),
         lr=0.05, momentum=0.9, momentum_form="survey"),
    case(ts.NAG, SGDOracle, id="NAG-torch-reformulation", lr=0.05, momentum=0.9, nesterov=True),
    case(ts.NAG, NAGLookaheadOracle, id="NAG-lookahead", route=("lookahead",), lr=0.05,
         momentum=0.9, lookahead=True),
    case(ts.NAG, NAGLookaheadOracle, id="NAG-lookahead-maximize", route=("lookahead",),
         lr=0.05, momentum=0.7, maximize=True, lookahead=True),
    case(ts.NAG, NAGLookaheadOracle, id="NAG-lookahead-wd", route=("lookahead",),
         lr=0.05, momentum=0.9, weight_decay=0.1, lookahead=True),
    # --- AdaGrad: S1 eq. (7), S2 §II-B
    case(ts.Adagrad, AdagradOracle, id="Adagrad-plain", lr=0.1),
    case(ts.Adagrad, AdagradOracle, id="Adagrad-lr_decay-wd-init_acc", lr=0.2, lr_decay=0.01,
         weight_decay=0.01, initial_accumulator_value=0.1),
    case(ts.Adagrad, AdagradOracle, id="Adagrad-eps_inside_sqrt", lr=0.1, eps=1e-6,
         eps_inside_sqrt=True),
    case(ts.Adagrad, AdagradOracle, id="Adagrad-eps_inside-init_acc-maximize", lr=0.1,
         initial_accumulator_value=0.5, eps_inside_sqrt=True, maximize=True),
    # --- Adadelta: S2 §II-C, Zeiler Alg. 1
    case(ts.Adadelta, AdadeltaOracle, id="Adadelta-zeiler", lr=1.0),
    case(ts.Adadelta, AdadeltaOracle, id="Adadelta-lr-rho-wd-maximize", lr=0.5, rho=0.8,
         eps=1e-5, weight_decay=0.01, maximize=True),
    # --- RMSprop: S1 eqs. (8)-(9), S2 §II-D
    case(ts.RMSprop, RMSpropOracle, id="RMSprop-plain", lr=0.01),
    case(ts.RMSprop, RMSpropOracle, id="RMSprop-eps_inside_sqrt", lr=0.01, eps=1e-4,
         eps_inside_sqrt=True),
    case(ts.RMSprop, RMSpropOracle, id="RMSprop-centered", lr=0.01, centered=True),
    case(ts.RMSprop, RMSpropOracle, id="RMSprop-momentum", lr=0.005, momentum=0.9),
    case(ts.RMSprop, RMSpropOracle, id="RMSprop-centered-momentum-wd-maximize", lr=0.005,
         alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01, maximize=True),
    case(ts.RMSprop, RMSpropOracle, id="RMSprop-centered-eps_inside", lr=0.01, eps=1e-4,
         centered=True, eps_inside_sqrt=True),
    # --- Adam family: S1 §III-G/H, S2 §IV
    case(ts.Adam, AdamOracle, id="Adam-plain", lr=0.01),
    case(ts.Adam, AdamOracle, id="Adam-betas-wd-maximize", lr=0.01, betas=(0.8, 0.99),
         eps=1e-6, weight_decay=0.01, maximize=True),
    case(ts.Adam, AdamOracle, id="Adam-amsgrad", lr=0.01, amsgrad=True),
    case(ts.Adam, AdamOracle, id="Adam-no-bias-correction", lr=0.01, bias_correction=False),
    case(ts.AdamW, partial(AdamOracle, decoupled_weight_decay=True, weight_decay=1e-2),
         id="AdamW-default-wd", lr=0.01),
    case(ts.AdamW, partial(AdamOracle, decoupled_weight_decay=True), id="AdamW-wd-amsgrad",
         lr=0.01, weight_decay=0.1, amsgrad=True),
    case(ts.AMSGrad, partial(AdamOracle, amsgrad=True), id="AMSGrad-default-bias-corrected",
         lr=0.01),
    case(ts.AMSGrad, AMSGradSurveyOracle, id="AMSGrad-survey", route=("bias_correction",),
         lr=0.01, bias_correction=False),
    case(ts.AMSGrad, AMSGradSurveyOracle, id="AMSGrad-survey-wd-maximize",
         route=("bias_correction",), lr=0.01, betas=(0.85, 0.99), weight_decay=0.01,
         maximize=True, bias_correction=False),
    case(ts.NAdam, NAdamOracle, id="NAdam-plain", lr=0.01),
    case(ts.NAdam, NAdamOracle, id="NAdam-momentum_decay-wd", lr=0.01, momentum_decay=0.02,
         weight_decay=0.01),
    case(ts.NAdam, NAdamOracle, id="NAdamW-decoupled-maximize", lr=0.01, weight_decay=0.05,
         decoupled_weight_decay=True, maximize=True),
    case(ts.Adamax, AdamaxOracle, id="Adamax-plain", lr=0.01),
    case(ts.Adamax, AdamaxOracle, id="Adamax-betas-wd-maximize", lr=0.02, betas=(0.8, 0.95),
         eps=1e-6, weight_decay=0.01, maximize=True),
]


@pytest.mark.parametrize("foreach", [False, True], ids=["forloop", "foreach"])
@pytest.mark.parametrize(("cls", "kwargs", "oracle"), CASES)
def test_trajectory_matches_oracle(cls: type, kwargs: dict[str, Any],
                                   oracle: Callable[[Tensor], Oracle], foreach: bool) -> None:
    problem = Problem(sign=-1.0 if kwargs.get("maximize") else 1.0)
    expected = run_oracle(oracle, problem)
    actual = run_ours(cls, {**kwargs, "foreach": foreach}, problem)
    assert torch.isfinite(expected).all()
    # a trajectory that barely moves would make the comparison vacuous
    assert (expected[-1] - expected[0]).abs().max() > 1e-2
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL)


def test_cases_cover_every_optimizer_and_switch() -> None:
    covered = {(c.values[0].__name__, k, repr(v)) for c in CASES for k, v in c.values[1].items()}
    optimizers = [n for n in ts.__all__ if isinstance(getattr(ts, n), type)
                  and issubclass(getattr(ts, n), torch.optim.Optimizer)]
    assert len(optimizers) == 14  # the exported optimizers, nothing else of __all__
    for name in optimizers:
        if name in ("Newton", "NewtonCG", "ConjugateGradient"):
            continue  # scipy is their oracle: tests/optim/test_second_order.py
        assert any(n == name for n, _, _ in covered), name
    for switch, value in [("momentum_form", "'survey'"), ("lookahead", "True"),
                          ("eps_inside_sqrt", "True"), ("bias_correction", "False")]:
        assert any(k == switch and v == value for _, k, v in covered), switch


# ------------------------------------------------------------------------------------------
# Momentum: survey form == torch form at constant lr, and not after a scheduler changes it
# ------------------------------------------------------------------------------------------
def _step_lr(t: int) -> float:
    """StepLR(step_size=100, gamma=0.1) from 0.05, evaluated before step t."""
    return 0.05 * 0.1 ** (t // 100)


def test_momentum_survey_equals_torch_form_at_constant_lr() -> None:
    problem = Problem()
    torch_form = run_ours(ts.Momentum, {"lr": 0.05}, problem)
    survey_form = run_ours(ts.Momentum, {"lr": 0.05, "momentum_form": "survey"}, problem)
    # v_t = eta b_t exactly in real arithmetic; only rounding separates them
    torch.testing.assert_close(survey_form, torch_form, rtol=RTOL, atol=ATOL)


def test_momentum_forms_differ_after_lr_change() -> None:
    problem = Problem()
    torch_form = run_ours(ts.Momentum, {"lr": 0.05}, problem, lr_at=_step_lr)
    survey_form = run_ours(ts.Momentum, {"lr": 0.05, "momentum_form": "survey"}, problem,
                           lr_at=_step_lr)
    # identical up to the change, then the survey velocity keeps the old steps' size
    torch.testing.assert_close(survey_form[:100], torch_form[:100], rtol=RTOL, atol=ATOL)
    assert (survey_form[100:] - torch_form[100:]).abs().max() > 1e-3
    # ... and each still follows its own textbook oracle under the schedule
    torch.testing.assert_close(
        torch_form, run_oracle(partial(SGDOracle, lr=0.05, momentum=0.9), problem, _step_lr),
        rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(
        survey_form,
        run_oracle(partial(SurveyMomentumOracle, lr=0.05, momentum=0.9), problem, _step_lr),
        rtol=RTOL, atol=ATOL)


def test_momentum_with_real_scheduler_matches_manual_schedule() -> None:
    # the lr_at hook above writes group["lr"]; a real StepLR must give the same trajectory
    problem = Problem()
    params = [x.clone().requires_grad_(True) for x in problem.x0]
    opt = ts.Momentum(params, lr=0.05, momentum_form="survey")
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.1)
    rows = []
    for t in range(STEPS):
        for i, p in enumerate(params):
            p.grad = problem.grad(i, p.detach(), t)
        opt.step()
        sched.step()
        rows.append(torch.cat([p.detach().reshape(-1) for p in params]))
    manual = run_ours(ts.Momentum, {"lr": 0.05, "momentum_form": "survey"}, problem, _step_lr)
    torch.testing.assert_close(torch.stack(rows), manual, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------------------------------
# End to end: logistic regression on a fixed, nearly separable synthetic data set
# ------------------------------------------------------------------------------------------
def _logistic_data() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1234)
    X = torch.randn(256, 8, generator=gen, dtype=torch.float64)
    w_true = torch.randn(8, generator=gen, dtype=torch.float64)
    y = ((X @ w_true + 0.3 * torch.randn(256, generator=gen, dtype=torch.float64)) > 0)
    return X, y.to(torch.float64)


E2E_STEPS = 300
# initial loss ln 2 = 0.693; the optimum (L-BFGS) is 0.028; every optimizer below ends < 0.14
E2E_THRESHOLD = 0.15

E2E = [
    pytest.param(ts.SGD, {"lr": 1.0}, id="SGD"),
    pytest.param(ts.Momentum, {"lr": 0.2}, id="Momentum"),
    pytest.param(ts.Momentum, {"lr": 0.2, "momentum_form": "survey"}, id="Momentum-survey"),
    pytest.param(ts.NAG, {"lr": 0.2}, id="NAG"),
    pytest.param(ts.NAG, {"lr": 0.2, "lookahead": True}, id="NAG-lookahead"),
    pytest.param(ts.Adagrad, {"lr": 0.5}, id="Adagrad"),
    pytest.param(ts.Adagrad, {"lr": 0.5, "eps_inside_sqrt": True}, id="Adagrad-eps_inside"),
    pytest.param(ts.Adadelta, {"lr": 10.0}, id="Adadelta"),
    pytest.param(ts.RMSprop, {"lr": 0.02}, id="RMSprop"),
    pytest.param(ts.RMSprop, {"lr": 0.02, "eps_inside_sqrt": True}, id="RMSprop-eps_inside"),
    pytest.param(ts.Adam, {"lr": 0.05}, id="Adam"),
    pytest.param(ts.AdamW, {"lr": 0.05}, id="AdamW"),
    pytest.param(ts.AMSGrad, {"lr": 0.05}, id="AMSGrad"),
    pytest.param(ts.AMSGrad, {"lr": 0.01, "bias_correction": False}, id="AMSGrad-survey"),
    pytest.param(ts.NAdam, {"lr": 0.05}, id="NAdam"),
    pytest.param(ts.Adamax, {"lr": 0.1}, id="Adamax"),
]


@pytest.mark.parametrize(("cls", "kwargs"), E2E)
def test_logistic_regression_reaches_threshold(cls: type, kwargs: dict[str, Any]) -> None:
    X, y = _logistic_data()
    w = torch.zeros(8, dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = cls([w, b], **kwargs)

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(X @ w + b, y)
        loss.backward()
        return loss

    for _ in range(E2E_STEPS):
        opt.step(closure)
    with torch.no_grad():
        final = torch.nn.functional.binary_cross_entropy_with_logits(X @ w + b, y).item()
    assert math.isfinite(final)
    assert final < E2E_THRESHOLD, f"{cls.__name__}{kwargs}: loss {final:.4f} after {E2E_STEPS}"
