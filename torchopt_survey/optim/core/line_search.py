"""One strong-Wolfe line search for all closure-based methods.

Along a descent direction d from x0, with phi(t) = f(x0 + t d), find t with

* sufficient decrease (Armijo): phi(t) <= phi(0) + c1 t phi'(0), and
* the strong curvature condition: |phi'(t)| <= c2 |phi'(0)|,

by bracketing then zooming (Nocedal & Wright, *Numerical Optimization*, Algorithms 3.5 and 3.6),
with safeguarded cubic interpolation. A trial value that is not finite (inf/NaN, e.g. an overflow
far along d) counts as "too far": the bracket shrinks towards the last good step.

If the evaluation budget runs out, or the bracket becomes narrower than ``tolerance_change``
along d, the search fails and returns the *best point it evaluated* (lowest finite phi, possibly
t = 0, i.e. x0 itself) with ``success=False``; callers move the parameters there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

# phi(t) -> (value, flat gradient at x0 + t d, anything the caller wants back for that point)
Phi = Callable[[float], tuple[float, Tensor, Any]]


@dataclass
class LineSearchResult:
    step: float
    loss: float
    grad: Tensor
    payload: Any
    evals: int
    success: bool
    message: str
    # set by callers when the parameters were written after ``payload`` was evaluated
    moved: bool = False
    # the first trial (the step the caller proposed) and its value
    first_step: float = math.nan
    first_loss: float = math.nan


def _cubic_minimizer(
    t1: float, f1: float, g1: float, t2: float, f2: float, g2: float, lo: float, hi: float
) -> float:
    """Minimiser of the cubic through (t1, f1, g1) and (t2, f2, g2), clamped to [lo, hi];
    the midpoint when the cubic has no minimiser or the data are not finite."""
    mid = 0.5 * (lo + hi)
    if not all(math.isfinite(v) for v in (f1, g1, f2, g2)) or t1 == t2:
        return mid
    d1 = g1 + g2 - 3.0 * (f1 - f2) / (t1 - t2)
    disc = d1 * d1 - g1 * g2
    if disc < 0.0:
        return mid
    d2 = math.copysign(math.sqrt(disc), t2 - t1)
    denom = g2 - g1 + 2.0 * d2
    if denom == 0.0:
        return mid
    t = t2 - (t2 - t1) * (g2 + d2 - d1) / denom
    if not math.isfinite(t):
        return mid
    return min(max(t, lo), hi)


def strong_wolfe(
    phi: Phi,
    loss0: float,
    grad0: Tensor,
    payload0: Any,
    direction: Tensor,
    step: float,
    *,
    c1: float,
    c2: float,
    max_evals: int,
    tolerance_change: float,
    max_step_growth: float = 10.0,
) -> LineSearchResult:
    """Search phi(t) = f(x0 + t d) starting at ``step``; see the module docstring.

    ``grad0``/``payload0`` describe t = 0, returned if no trial improves on it.
    """
    gtd0 = float(grad0.dot(direction))
    d_norm = float(direction.abs().max())
    evals = 0
    best = (0.0, loss0, grad0, payload0)
    first = (step, math.nan)

    def trial(t: float) -> tuple[float, Tensor, Any, float]:
        nonlocal evals, best, first
        f, g, payload = phi(t)
        evals += 1
        if not math.isfinite(f):
            f = math.inf
        if evals == 1:
            first = (t, f)
        if f < best[1]:
            best = (t, f, g, payload)
        gtd = float(g.dot(direction)) if math.isfinite(f) else math.nan
        return f, g, payload, gtd

    def done(t: float, f: float, g: Tensor, payload: Any) -> LineSearchResult:
        return LineSearchResult(t, f, g, payload, evals, True, "strong Wolfe conditions hold",
                                first_step=first[0], first_loss=first[1])

    def failed(why: str) -> LineSearchResult:
        t, f, g, payload = best
        return LineSearchResult(t, f, g, payload, evals, False, why, first_step=first[0],
                                first_loss=first[1])

    def armijo_fails(t: float, f: float) -> bool:
        return f > loss0 + c1 * t * gtd0

    # ---- bracketing phase
    t_prev, f_prev, gtd_prev = 0.0, loss0, gtd0
    t = step
    lo = hi = None  # bracket (each as (t, f, gtd)); lo is the end with the lower value
    while evals < max_evals:
        f, g, payload, gtd = trial(t)
        if armijo_fails(t, f) or (evals > 1 and f >= f_prev):
            lo, hi = (t_prev, f_prev, gtd_prev), (t, f, gtd)
            break
        if abs(gtd) <= -c2 * gtd0:
            return done(t, f, g, payload)
        if gtd >= 0.0:
            lo, hi = (t, f, gtd), (t_prev, f_prev, gtd_prev)
            break
        # still descending with a steep slope: extrapolate, at most max_step_growth times further
        t_next = _cubic_minimizer(
            t_prev, f_prev, gtd_prev, t, f, gtd, t + 0.01 * (t - t_prev), max_step_growth * t
        )
        t_prev, f_prev, gtd_prev = t, f, gtd
        t = t_next
    else:
        return failed(f"no bracket within {max_evals} evaluations")

    # ---- zoom phase: lo satisfies Armijo and has the lower value; the minimiser lies between
    while evals < max_evals:
        (t_lo, f_lo, g_lo), (t_hi, f_hi, g_hi) = lo, hi
        width = abs(t_hi - t_lo)
        if width * d_norm < tolerance_change:
            return failed(f"bracket narrower than tolerance_change after {evals} evaluations")
        a, b = min(t_lo, t_hi), max(t_lo, t_hi)
        # keep the trial away from the ends so the bracket shrinks by a fixed fraction
        t = _cubic_minimizer(t_lo, f_lo, g_lo, t_hi, f_hi, g_hi, a + 0.1 * width, b - 0.1 * width)
        f, g, payload, gtd = trial(t)
        if armijo_fails(t, f) or f >= f_lo:
            hi = (t, f, gtd)
        else:
            if abs(gtd) <= -c2 * gtd0:
                return done(t, f, g, payload)
            if gtd * (t_hi - t_lo) >= 0.0:
                hi = lo
            lo = (t, f, gtd)
    return failed(f"strong Wolfe conditions not met within {max_evals} evaluations")
