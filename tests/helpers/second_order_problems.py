"""Fixed float64 problems shared by the second-order tests: an SPD quadratic (condition number
100), the Rosenbrock function and an L2-regularised logistic regression."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

DT = torch.float64


def spd_quadratic(n: int = 20, cond: float = 100.0) -> tuple[Tensor, Tensor]:
    """(A, b) of ``0.5 x^T A x - b^T x``: A symmetric positive definite with eigenvalues
    log-spaced from 1 to ``cond``."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT))
    a = q @ torch.diag(torch.logspace(0, math.log10(cond), n, dtype=DT)) @ q.T
    return 0.5 * (a + a.T), torch.randn(n, generator=gen, dtype=DT)


A, B = spd_quadratic()


def quadratic(x: Tensor) -> Tensor:
    return 0.5 * x @ A @ x - B @ x


def rosenbrock(x: Tensor) -> Tensor:
    return ((1 - x[:-1]) ** 2).sum() + 100 * ((x[1:] - x[:-1] ** 2) ** 2).sum()


def _logistic_data() -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 6, generator=gen, dtype=DT)
    w = torch.randn(6, generator=gen, dtype=DT)
    y = (x @ w + 0.5 * torch.randn(200, generator=gen, dtype=DT) > 0).to(DT)
    return x, y


LX, LY = _logistic_data()


def logistic(w: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(LX @ w, LY) + 0.5e-2 * (w @ w)
