"""Edges where torch.optim accepts an input and so must the drop-ins, with the same result:
a 1-element 1-d tensor ``lr`` (one value, not per-replica values), ``RMSprop(alpha=0)`` and
``Adadelta(rho=0)`` (the closed end of their ranges), and sparse Adagrad with
``maximize=True`` (which torch's own test database never reaches without weight decay).
Each is compared step by step with the torch.optim class on the same inputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

import torchopt_survey as ts

STEPS = 5


def _trajectories(
    ours: Callable[[list[Tensor]], torch.optim.Optimizer],
    reference: Callable[[list[Tensor]], torch.optim.Optimizer],
) -> tuple[list[Tensor], list[Tensor]]:
    """The parameters after each of STEPS steps on a fixed least-squares problem, for both."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(8, 4, generator=gen)
    b = torch.randn(8, generator=gen)
    w0 = torch.randn(4, generator=gen)
    out = []
    for make in (ours, reference):
        w = w0.clone().requires_grad_()
        opt = make([w])
        path = []
        for _ in range(STEPS):
            opt.zero_grad()
            ((a @ w - b) ** 2).mean().backward()
            opt.step()
            path.append(w.detach().clone())
        out.append(path)
    return out[0], out[1]


def _assert_same_path(ours: list[Tensor], ref: list[Tensor], w0_moved: bool = True) -> None:
    for step, (x, y) in enumerate(zip(ours, ref, strict=True)):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7, msg=f"step {step + 1}")
    if w0_moved:
        assert not torch.equal(ours[0], ours[-1])  # the steps did something


PAIRS: list[tuple[type, type, dict[str, Any]]] = [
    (ts.SGD, torch.optim.SGD, {"momentum": 0.9}),
    (ts.Adagrad, torch.optim.Adagrad, {}),
    (ts.Adadelta, torch.optim.Adadelta, {}),
    (ts.RMSprop, torch.optim.RMSprop, {}),
    (ts.Adam, torch.optim.Adam, {}),
    (ts.AdamW, torch.optim.AdamW, {"weight_decay": 1e-2}),
    (ts.Adamax, torch.optim.Adamax, {}),
    (ts.NAdam, torch.optim.NAdam, {}),
]


@pytest.mark.parametrize(("ours", "ref", "kwargs"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_one_element_tensor_lr_is_one_value(ours: type, ref: type, kwargs: dict[str, Any]) -> None:
    lr = 0.05

    def make(cls: type) -> Callable[[list[Tensor]], torch.optim.Optimizer]:
        return lambda params: cls(params, lr=torch.tensor([lr]), foreach=False, **kwargs)

    path, ref_path = _trajectories(make(ours), make(ref))
    _assert_same_path(path, ref_path)
    # and the same as the plain float
    float_path, _ = _trajectories(lambda p: ours(p, lr=lr, foreach=False, **kwargs),
                                  make(ref))
    _assert_same_path(path, float_path)


@pytest.mark.parametrize(
    ("ours", "ref", "kwargs"),
    [
        (ts.RMSprop, torch.optim.RMSprop, {"alpha": 0.0, "lr": 1e-2}),
        (ts.RMSprop, torch.optim.RMSprop, {"alpha": 0.0, "lr": 1e-2, "momentum": 0.5}),
        (ts.Adadelta, torch.optim.Adadelta, {"rho": 0.0}),
        (ts.Adadelta, torch.optim.Adadelta, {"rho": 1.0}),
        (ts.RMSprop, torch.optim.RMSprop, {"alpha": 1.0}),
    ],
    ids=["RMSprop-alpha0", "RMSprop-alpha0-momentum", "Adadelta-rho0", "Adadelta-rho1",
         "RMSprop-alpha1"],
)
def test_closed_ends_of_the_decay_ranges_are_accepted(
    ours: type, ref: type, kwargs: dict[str, Any]
) -> None:
    # the constructor must accept what torch.optim accepts, and step identically
    ref([torch.zeros(1, requires_grad=True)], **kwargs)  # torch.optim takes it
    path, ref_path = _trajectories(lambda p: ours(p, **kwargs), lambda p: ref(p, **kwargs))
    # (rho = 1 / alpha = 1: the running averages stay at 0, and so may the parameters)
    _assert_same_path(path, ref_path, w0_moved=kwargs.get("rho", kwargs.get("alpha")) == 0.0)


@pytest.mark.parametrize("lr_decay", [0.0, 0.1])
def test_sparse_adagrad_maximize_ascends_like_torch(lr_decay: float) -> None:
    def run(cls: type) -> tuple[list[Tensor], list[float]]:
        torch.manual_seed(0)
        emb = torch.nn.Embedding(10, 3, sparse=True)
        opt = cls(emb.parameters(), lr=0.1, lr_decay=lr_decay, maximize=True)
        rows = torch.tensor([1, 4, 4, 7])  # row 4 twice: the sparse gradient is uncoalesced
        path, objective = [], []
        for _ in range(STEPS):
            opt.zero_grad()
            value = -((emb(rows) - 1.0) ** 2).sum()  # maximised at 1
            value.backward()
            assert emb.weight.grad is not None and emb.weight.grad.is_sparse
            opt.step()
            path.append(emb.weight.detach().clone())
            objective.append(float(value.detach()))
        return path, objective

    path, objective = run(ts.Adagrad)
    ref_path, _ = run(torch.optim.Adagrad)
    _assert_same_path(path, ref_path)
    assert objective == sorted(objective) and objective[-1] > objective[0]  # it ascends
    untouched = [0, 2, 3, 5, 6, 8, 9]
    torch.manual_seed(0)
    start = torch.nn.Embedding(10, 3).weight.detach()
    assert torch.equal(path[-1][untouched], start[untouched])
