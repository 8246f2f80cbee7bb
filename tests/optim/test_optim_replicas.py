"""Per-replica hyperparameters: a stacked run of N replicas equals the N runs done alone.

Every optimizer, on the forloop, foreach and fused (C) paths: parameters stacked along dim 0,
float hyperparameters given as [N] tensors; each replica must follow exactly the trajectory of
a run of that replica alone with its own float values (float64: 1e-10; float32: FLOAT32_TOL).
The Triton kernels get the same check under the interpreter (``test_fused_triton.py`` calls
:func:`helpers.replica_cases.stacked_vs_alone`). Vectorised training itself (vmap over
replicas, each seed with its own data order, batch 1 included) is checked in the sweep tests.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from helpers.replica_cases import CASES, FLOAT32_TOL, PATHS, N, case_id, stacked_vs_alone

import torchopt_survey.optim as O


@pytest.mark.parametrize("path", PATHS, ids=["forloop", "foreach", "fused"])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_each_replica_equals_its_run_alone(case: Any, path: dict[str, Any]) -> None:
    cls, varied, shared = case
    assert stacked_vs_alone(cls, varied, shared, path, torch.float64) <= 1e-10
    worst32 = stacked_vs_alone(cls, varied, shared, path, torch.float32)
    assert worst32 <= FLOAT32_TOL["atol"] + FLOAT32_TOL["rtol"], worst32


def test_replicas_really_differ() -> None:
    """The check above is not vacuous: different values give different replicas."""
    params = [torch.ones(N, 4, requires_grad=True)]
    opt = O.Adam(params, lr=torch.tensor([0.1, 0.01, 0.001]), foreach=True)
    params[0].grad = torch.ones(N, 4)
    opt.step()
    assert len({round(v, 6) for v in params[0][:, 0].tolist()}) == N


def test_capturable_path() -> None:
    # capturable: tensor scalars (step) on the device; with per-replica values these run
    # per tensor, since foreach's per-parameter step tensors do not broadcast against them
    worst = stacked_vs_alone(O.Adam, CASES[7][1], {}, {"capturable": True, "foreach": False},
                             torch.float64)
    # (the step count is a float32 tensor there: alone, 1 - beta**step is float32 arithmetic;
    # with [N] float64 betas type promotion makes it float64 -- more precise, not equal)
    assert worst <= 1e-6, worst
    assert stacked_vs_alone(O.Adadelta, CASES[5][1], {}, {"capturable": True},
                            torch.float64) <= 1e-10


def test_lr_changed_in_place_between_steps() -> None:
    """A scheduler scaling the [N] lr tensor in place is seen by every path."""
    for path in PATHS:
        lr = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
        p = torch.zeros(N, 2, dtype=torch.float64, requires_grad=True)
        opt = O.SGD([p], lr=lr, **path)
        for _ in range(2):
            p.grad = torch.ones_like(p)
            opt.step()
            opt.param_groups[0]["lr"].mul_(0.5)
        expected = -torch.tensor([0.15, 0.3, 0.45], dtype=torch.float64)
        torch.testing.assert_close(p[:, 0].detach(), expected, atol=1e-15, rtol=0)


def test_kernel_copy_of_a_host_value_is_renewed_only_after_a_change() -> None:
    """The GPU kernel's copy of a host lr (a per-replica [N] tensor kept on the CPU): made
    once, not every step (a blocking copy and a stream sync), and again after an in-place
    change. (The meta device stands in for the GPU; a CUDA test checks the values.)"""
    from torchopt_survey.optim.core.emit_triton import _kernel_copy

    lr = torch.tensor([0.1, 0.2, 0.3])
    p = torch.zeros(N, 2, requires_grad=True)
    group_lr = O.SGD([p], lr=lr).param_groups[0]["lr"]  # (the group's view of the user's lr)
    device = torch.device("meta")
    first = _kernel_copy(group_lr, device, True)
    assert first.device == device and first.shape == (N,)
    assert _kernel_copy(group_lr, device, True) is first
    lr.mul_(0.5)  # a scheduler, in place on the user's tensor
    renewed = _kernel_copy(group_lr, device, True)
    assert renewed is not first
    assert _kernel_copy(group_lr, device, True) is renewed
    assert _kernel_copy(lr, torch.device("cpu"), True) is not lr  # (a reshaped view: same data)
    assert _kernel_copy(lr, torch.device("cpu"), True).data_ptr() == lr.data_ptr()


# ------------------------------------------------------------------------------------------
# bad input: a clear ValueError naming the hyperparameter and the shapes
# ------------------------------------------------------------------------------------------
def test_shape_must_match_every_parameter() -> None:
    params = [torch.zeros(3, 2, requires_grad=True), torch.zeros(4, requires_grad=True)]
    with pytest.raises(ValueError, match=r"lr has shape \[3\].*params\[1\] has shape \(4,\)"):
        O.Adam(params, lr=torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"eps has shape \[2\] but .*lr has shape \[3\]"):
        O.Adam(params[:1], lr=torch.tensor([0.1, 0.2, 0.3]), eps=torch.tensor([1e-8, 1e-6]))
    with pytest.raises(ValueError, match=r"0-d|shape \(\)"):
        O.SGD([torch.zeros((), requires_grad=True)], lr=torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"1-element, or 1-d with one value per replica"):
        O.SGD([torch.zeros(2, 2, requires_grad=True)], lr=torch.ones(2, 2))


def test_shape_checked_again_at_step() -> None:
    p = torch.zeros(3, 2, requires_grad=True)
    opt = O.SGD([p], lr=0.1)
    opt.param_groups[0]["lr"] = torch.tensor([0.1, 0.2])  # e.g. a scheduler
    p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=r"lr has shape \[2\].*params\[0\] has shape \(3, 2\)"):
        opt.step()


def test_each_value_is_checked() -> None:
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"lr\[replica 1\]: -0.1\d* \(must be >= 0\)"):
        O.SGD([p], lr=torch.tensor([0.1, -0.1, 0.2]))
    with pytest.raises(ValueError, match=r"betas\[1\]\[replica 2\]"):
        O.Adam([p], betas=(0.9, torch.tensor([0.9, 0.99, 1.0])))
    with pytest.raises(ValueError, match=r"initial_accumulator_value cannot have one value"):
        O.Adagrad([p], initial_accumulator_value=torch.tensor([0.0, 0.1, 0.2]))


def test_branches_must_agree() -> None:
    """SGD without momentum is another update: replicas on both sides of 0 are refused."""
    for path in PATHS:
        p = torch.zeros(3, 2, requires_grad=True)
        with pytest.raises(ValueError, match=r"different branch"):
            opt = O.SGD([p], lr=0.1, momentum=torch.tensor([0.0, 0.9, 0.9]), **path)
            p.grad = torch.ones_like(p)
            opt.step()


@pytest.mark.parametrize("path", PATHS, ids=["forloop", "foreach", "fused"])
def test_scalar_state_cannot_depend_on_replicas(path: dict[str, Any]) -> None:
    """NAdam's mu_product (one number per parameter) depends on beta1 and momentum_decay."""
    p = torch.zeros(3, 2, requires_grad=True)
    for kwargs, name in [({"betas": (torch.tensor([0.9, 0.8, 0.7]), 0.999)}, "betas.0"),
                         ({"momentum_decay": torch.tensor([4e-3, 1e-3, 1e-2])},
                          "momentum_decay")]:
        opt = O.NAdam([p], **kwargs, **path)
        p.grad = torch.ones_like(p)
        with pytest.raises(ValueError, match=rf"'mu_product' depends on per-replica {name}"):
            opt.step()


def test_state_dict_round_trip() -> None:
    p = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    opt = O.Adam([p], lr=torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    p.grad = torch.ones_like(p)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())  # (loading shares the state tensors otherwise)
    q = p.detach().clone().requires_grad_()
    other = O.Adam([q], lr=0.5)
    other.load_state_dict(saved)
    for o, t in ((opt, p), (other, q)):
        t.grad = torch.ones_like(t)
        o.step()
    torch.testing.assert_close(p, q, atol=0, rtol=0)
