"""Per-replica hyperparameters: the cases (every float hyperparameter a method takes, varied
across N stacked replicas) and :func:`stacked_vs_alone`, which runs a stacked optimizer and the N
runs alone side by side. Shared by the CPU, Triton-interpreter and CUDA suites.
"""

from __future__ import annotations

from typing import Any

import torch

import torchopt_survey.optim as O

N = 3
STEPS = 4
#: float32: the stacked step and the one-replica step run the same elementwise ops, but a
#: per-replica value is a tensor where the alone run has a Python float, so torch picks other
#: kernels (x.add_(y * a) against x.add_(y, alpha=a)): a few ulps per step
FLOAT32_TOL = {"atol": 1e-6, "rtol": 1e-5}

#: (class, per-replica values, shared keyword arguments): every float hyperparameter a method
#: takes varies across replicas, except those its scalar state depends on (tested below)
CASES: list[tuple[type, dict[str, Any], dict[str, Any]]] = [
    (O.SGD, {"lr": [0.1, 0.01, 0.05], "weight_decay": [0.0, 0.1, 0.01]}, {}),
    (O.SGD, {"lr": [0.1, 0.01, 0.05], "momentum": [0.5, 0.9, 0.8],
             "dampening": [0.0, 0.1, 0.3]}, {}),
    (O.Momentum, {"lr": [0.1, 0.01, 0.05], "momentum": [0.5, 0.9, 0.99],
                  "weight_decay": [0.0, 0.1, 0.01]}, {}),
    (O.NAG, {"lr": [0.1, 0.01, 0.05], "momentum": [0.5, 0.9, 0.99]}, {}),
    (O.Adagrad, {"lr": [0.1, 0.01, 0.05], "lr_decay": [0.0, 0.1, 0.01],
                 "eps": [1e-10, 1e-3, 1e-6], "weight_decay": [0.0, 0.1, 0.01]}, {}),
    (O.Adadelta, {"lr": [1.0, 0.5, 0.1], "rho": [0.9, 0.5, 0.99], "eps": [1e-6, 1e-3, 1e-4],
                  "weight_decay": [0.0, 0.1, 0.01]}, {}),
    (O.RMSprop, {"lr": [0.01, 0.001, 0.005], "alpha": [0.99, 0.9, 0.5],
                 "eps": [1e-8, 1e-3, 1e-5], "momentum": [0.5, 0.9, 0.1]}, {"centered": True}),
    (O.Adam, {"lr": [0.01, 0.001, 0.1], "betas": ([0.9, 0.5, 0.8], [0.999, 0.9, 0.99]),
              "eps": [1e-8, 1e-3, 1e-5], "weight_decay": [0.0, 0.1, 0.01]}, {}),
    (O.AdamW, {"lr": [0.01, 0.001, 0.1], "betas": ([0.9, 0.5, 0.8], [0.999, 0.9, 0.99]),
               "weight_decay": [0.0, 0.1, 0.01]}, {}),
    (O.AMSGrad, {"lr": [0.01, 0.001, 0.1], "betas": ([0.9, 0.5, 0.8], [0.999, 0.9, 0.99]),
                 "eps": [1e-8, 1e-3, 1e-5]}, {}),
    (O.NAdam, {"lr": [0.01, 0.001, 0.1], "betas": (0.9, [0.999, 0.9, 0.99]),
               "eps": [1e-8, 1e-3, 1e-5], "weight_decay": [0.0, 0.1, 0.01]}, {}),
    (O.Adamax, {"lr": [0.01, 0.001, 0.1], "betas": ([0.9, 0.5, 0.8], [0.999, 0.9, 0.99]),
                "eps": [1e-8, 1e-3, 1e-5], "weight_decay": [0.0, 0.1, 0.01]}, {}),
]
PATHS = [{"foreach": False}, {"foreach": True}, {"fused": True}]


def case_id(case: tuple[type, dict[str, Any], dict[str, Any]]) -> str:
    cls, varied, _ = case
    return f"{cls.__name__}[{','.join(varied)}]"


def _hp(values: Any, dtype: torch.dtype, replica: int | None, device: str = "cpu") -> Any:
    """A per-replica value as the stacked run gets it ([N] tensor) or replica ``replica``'s."""
    if isinstance(values, tuple):
        return tuple(_hp(v, dtype, replica, device) for v in values)
    if not isinstance(values, list):
        return values
    return (torch.tensor(values, dtype=dtype, device=device) if replica is None
            else values[replica])


def stacked_vs_alone(cls: type, varied: dict[str, Any], shared: dict[str, Any],
                     path: dict[str, Any], dtype: torch.dtype, steps: int = STEPS,
                     device: str = "cpu") -> float:
    """Largest difference between each replica of a stacked run and the same run alone.

    Parameters of three ranks (a [N, 4, 5] weight, a [N, 5] bias, a [N, 2, 3, 2] tensor) get
    gradients that differ per step and replica.
    """
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 5), (5,), (2, 3, 2)]
    start = [torch.randn((N, *s), generator=gen, dtype=dtype).to(device) for s in shapes]
    grads = [[torch.randn((N, *s), generator=gen, dtype=dtype).to(device) for s in shapes]
             for _ in range(steps)]
    stacked = [p.clone().requires_grad_() for p in start]
    opt = cls(stacked, **{k: _hp(v, dtype, None, device) for k, v in varied.items()}, **shared,
              **path)
    alone = [[p[r].clone().requires_grad_() for p in start] for r in range(N)]
    opts = [cls(alone[r], **{k: _hp(v, dtype, r) for k, v in varied.items()}, **shared, **path)
            for r in range(N)]
    for step in range(steps):
        for p, g in zip(stacked, grads[step]):
            p.grad = g.clone()
        opt.step()
        for r in range(N):
            for p, g in zip(alone[r], grads[step]):
                p.grad = g[r].clone()
            opts[r].step()
    worst = 0.0
    for r in range(N):
        for p, q in zip(stacked, alone[r]):
            assert torch.isfinite(q).all()
            scale = 1.0 if dtype == torch.float64 else 1.0 + q.abs().max().item()
            worst = max(worst, (p[r] - q).abs().max().item() / scale)
    return worst
