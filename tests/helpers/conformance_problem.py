"""The conformance suite's problem: parameters of several shapes and ranks, a separable
non-quadratic loss whose gradients depend on the parameters, and two parameter groups.

Shared by the suite and by the suites of the optimizer options that must keep its trajectories
(compact state, the step inside backward).
"""

from __future__ import annotations

import torch

SHAPES = [(7, 5), (5,), (3, 4, 2), (6,), (1,)]


def make_params(dtype: torch.dtype = torch.float64, seed: int = 0, complex_: bool = False):
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in SHAPES:
        value = torch.randn(shape, generator=generator, dtype=torch.float64)
        if complex_:
            value = torch.complex(value, torch.randn(shape, generator=generator,
                                                     dtype=torch.float64))
        params.append(value.to(dtype).requires_grad_(True))
    return params


def problem(seed: int = 1, dtype: torch.dtype = torch.float64, complex_: bool = False):
    """Targets and curvatures of a separable, non-quadratic loss (gradients depend on params)."""
    generator = torch.Generator().manual_seed(seed)
    targets = [torch.randn(s, generator=generator, dtype=torch.float64) for s in SHAPES]
    weights = [torch.rand(s, generator=generator, dtype=torch.float64) + 0.1 for s in SHAPES]
    if complex_:
        targets = [torch.complex(t, t.flip(-1)) for t in targets]
    return [t.to(dtype) for t in targets], [w.to(dtype) for w in weights]


def loss_fn(params, targets, weights) -> torch.Tensor:
    loss = torch.zeros((), dtype=torch.float64)
    for param, target, weight in zip(params, targets, weights):
        diff = param - target
        if diff.is_complex():
            squared, wiggle = diff.abs() ** 2, torch.cos(diff.abs())
        else:  # smooth everywhere: a kink would make float32 trajectories chaotic near it
            squared, wiggle = diff**2, torch.cos(diff)
        loss = loss + (squared * weight).sum().double() + 0.1 * wiggle.sum().double()
    return loss


def groups(params, **second_group):
    """Two parameter groups: the second with its own lr (and whatever else is given)."""
    return [{"params": params[:3]}, {"params": params[3:], "lr": 0.02, **second_group}]


def run(optimizer, params, steps: int, targets, weights) -> list[torch.Tensor]:
    """``steps`` steps of ``optimizer`` on the problem; the parameters after them."""
    # maximize=True runs maximise -loss (concave), so they converge like the others instead of
    # growing to ~1e28, where a relative 1e-12 comparison would check little
    sign = -1.0 if optimizer.param_groups[0].get("maximize", False) else 1.0
    for _ in range(steps):
        optimizer.zero_grad()
        (sign * loss_fn(params, targets, weights)).backward()
        optimizer.step()
    return [p.detach().clone() for p in params]
