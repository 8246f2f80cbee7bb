"""The fused-kernel cases: every method with the flags that change its traced graph, seeded
parameters and gradients, and the comparison of a fused run with its forloop reference at each
dtype's tolerance. Shared by the CPU (C), Triton-interpreter and CUDA fused suites.
"""

from __future__ import annotations

from typing import Any

import torch

import torchopt_survey.optim as O

#: (class, constructor kwargs): every method and the flags that change its traced graph
CASES: list[tuple[type, dict[str, Any]]] = [
    (O.SGD, {"lr": 0.1}),
    (O.SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1}),
    (O.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True, "maximize": True}),
    (O.Momentum, {"lr": 0.1}),
    (O.Momentum, {"lr": 0.1, "momentum_form": "survey", "nesterov": True}),
    (O.NAG, {"lr": 0.1}),
    (O.Adagrad, {"lr": 0.1, "lr_decay": 0.1, "weight_decay": 0.1,
                 "initial_accumulator_value": 0.1}),
    (O.Adagrad, {"lr": 0.1, "eps": 0.5, "eps_inside_sqrt": True}),
    (O.Adadelta, {"weight_decay": 0.5}),
    (O.RMSprop, {"lr": 0.01}),
    (O.RMSprop, {"lr": 0.05, "centered": True, "momentum": 0.5, "weight_decay": 0.1}),
    (O.RMSprop, {"lr": 0.01, "eps": 0.1, "eps_inside_sqrt": True, "momentum": 0.5}),
    (O.Adam, {"lr": 0.01}),
    (O.Adam, {"lr": 0.01, "weight_decay": 0.5, "maximize": True}),
    (O.Adam, {"lr": 0.05, "amsgrad": True, "bias_correction": False}),
    (O.AdamW, {"lr": 0.01}),
    (O.AMSGrad, {"lr": 0.01, "weight_decay": 0.5}),
    (O.NAdam, {"lr": 0.01}),
    (O.NAdam, {"lr": 0.01, "weight_decay": 0.5, "decoupled_weight_decay": True}),
    (O.Adamax, {"lr": 0.01, "weight_decay": 0.5}),
]
#: steps of every fused-vs-forloop comparison (enough for every switch above to show)
STEPS = 6

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
TOL = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float64: {"atol": 1e-10, "rtol": 1e-10},
    torch.float16: {"atol": 3e-3, "rtol": 3e-3},
    torch.bfloat16: {"atol": 2e-2, "rtol": 2e-2},
}
SHAPES = [(37,), (5, 7), (3,)]


def case_id(case: tuple[type, dict[str, Any]]) -> str:
    cls, kwargs = case
    flags = ",".join(f"{k}={v}" for k, v in kwargs.items() if k != "lr")
    return f"{cls.__name__}({flags})"


def make_params(dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).to(device=device, dtype=dtype).requires_grad_()
            for s in SHAPES]


def make_grads(params: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=gen).to(device=p.device, dtype=p.dtype)
            for p in params]


def run(cls: type, kwargs: dict[str, Any], params: list[torch.Tensor], steps: int,
        round_to: torch.dtype | None = None, **flags: Any) -> Any:
    """``steps`` steps on seeded gradients (rounded through ``round_to`` first, if given)."""
    opt = cls(params, **kwargs, **flags)
    for step in range(steps):
        for p, g in zip(params, make_grads(params, step)):
            p.grad = (g if round_to is None else g.to(round_to)).to(p.dtype)
        opt.step()
    return opt


def assert_state_close(a: Any, b: Any, **tol: Any) -> None:
    # (empty entries are ignored: the forloop path leaves ``{}`` for stateless SGD)
    sa = {k: v for k, v in a.state_dict()["state"].items() if v}
    sb = {k: v for k, v in b.state_dict()["state"].items() if v}
    assert sa.keys() == sb.keys()
    for index in sa:
        assert sa[index].keys() == sb[index].keys()
        for name in sa[index]:
            x, y = sa[index][name].float().cpu(), sb[index][name].float().cpu()
            # low-precision state: sums of terms of mixed sign carry the rounding error of
            # their largest terms, so the absolute tolerance scales with the tensor's magnitude
            scaled = dict(tol, atol=tol["atol"] * max(1.0, y.abs().max().item()))
            torch.testing.assert_close(x, y, **scaled, msg=f"state {index}.{name}")


def assert_run_close(params: list[torch.Tensor], opt: Any, ref_params: list[torch.Tensor],
                     ref: Any, dtype: torch.dtype) -> None:
    """Parameters and state of a run in ``dtype`` against a reference run, at ``TOL[dtype]``."""
    for p, q in zip(params, ref_params):
        assert p.dtype == dtype
        torch.testing.assert_close(p.detach().float(), q.detach().float(), **TOL[dtype])
    assert_state_close(opt, ref, **TOL[dtype])
