"""``step_in_backward``: the update inside backward, checked against the ordinary loop.

Every first-order class x configuration x path (forloop, foreach, fused C kernel; the Triton
kernels under ``TRITON_INTERPRET=1`` in a subprocess) must give the ordinary ``step()``
trajectory bit for bit, with one optimizer whose state dict, schedulers and hooks are the
ordinary ones; what cannot be done inside backward must be refused.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

import pytest
import torch
from helpers.conformance_problem import groups, loss_fn, make_params, problem
from helpers.optim_cases import BY_NAME, CASE_IDS, CASES, OPTIMS
from helpers.processes import interpreted_report

import torchopt_survey.optim as O

STEPS = 12
PATHS = {"forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _loss(params, targets, weights, optimizer):
    sign = -1.0 if optimizer.param_groups[0].get("maximize", False) else 1.0
    return sign * loss_fn(params, targets, weights)


def ordinary(optimizer, params, targets, weights, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        _loss(params, targets, weights, optimizer).backward()
        optimizer.step()


def in_backward(optimizer, params, targets, weights, steps):
    for _ in range(steps):
        _loss(params, targets, weights, optimizer).backward()
        assert all(p.grad is None for p in params)  # freed as soon as it was used


def assert_same(params_a, params_b, opt_a, opt_b):
    for index, (a, b) in enumerate(zip(params_a, params_b)):
        assert torch.equal(a, b), f"param {index}: max diff {(a - b).abs().max().item()}"
    for a, b in zip(params_a, params_b):
        state_a, state_b = opt_a.state[a], opt_b.state[b]
        assert list(state_a) == list(state_b)
        for key in state_a:
            assert torch.equal(state_a[key], state_b[key]), key


#: each parameter at once; buckets of a few (the problem's gradients are 4-140 bytes); the
#: default (every parameter of this problem waits for the end of backward)
BUCKETS = {"each": 0, "64B": 64, "default": None}


@pytest.mark.parametrize("bucket", list(BUCKETS))
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize(("info", "config"), CASES, ids=CASE_IDS)
def test_bitwise_equal_to_ordinary_loop(info, config, path, bucket) -> None:
    targets, weights = problem()
    ref_params, params = make_params(), make_params()
    flags = {**info.base, **config, **PATHS[path]}
    ref = info.cls(groups(ref_params), **flags)
    opt = info.cls(groups(params), **flags)
    size = BUCKETS[bucket]
    opt.step_in_backward(params, **({} if size is None else {"bucket_bytes": size}))
    ordinary(ref, ref_params, targets, weights, STEPS)
    in_backward(opt, params, targets, weights, STEPS)
    assert_same(params, ref_params, opt, ref)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))


def _data(n: int = 4):
    generator = torch.Generator().manual_seed(3)
    return [(torch.randn(8, 6, generator=generator), torch.randn(8, 3, generator=generator))
            for _ in range(n)]


def _mse(model, x, y):
    return torch.nn.functional.mse_loss(model(x), y)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_gradient_accumulation_steps_on_the_last_micro_batch(info, path) -> None:
    ref_model, model = _model(), _model()
    ref = info.cls(ref_model.parameters(), **info.base, **PATHS[path])
    opt = info.cls(model.parameters(), **info.base, **PATHS[path])
    opt.step_in_backward(model, accumulation_steps=3)
    batches = _data(6)
    for start in (0, 3):
        ref.zero_grad()
        for x, y in batches[start:start + 3]:
            _mse(ref_model, x, y).backward()
        ref.step()
    for step, (x, y) in enumerate(batches):
        _mse(model, x, y).backward()
        last = step % 3 == 2
        # earlier micro-batches keep their gradients; the last one steps and frees them
        assert all((p.grad is None) == last for p in model.parameters())
    assert_same(list(model.parameters()), list(ref_model.parameters()), opt, ref)


def test_shared_parameter_used_twice_in_one_forward() -> None:
    """Autograd sums a tied weight's contributions before its hook: one correct update."""
    def run(step_in_backward: bool):
        torch.manual_seed(0)
        weight = torch.nn.Parameter(torch.randn(5, 5))
        opt = O.Adam([weight], lr=0.1)
        if step_in_backward:
            opt.step_in_backward([weight])
        x = torch.randn(3, 5)
        for _ in range(4):
            opt.zero_grad()
            ((x @ weight).tanh() @ weight).sum().backward()
            if not step_in_backward:
                opt.step()
        return weight.detach()

    assert torch.equal(run(True), run(False))


def _phases(info, modes, tmp_path):
    """Steps in phases, each in a fresh optimizer loaded (weights_only) from the previous
    phase's checkpoint; ``modes`` says which phases step inside backward."""
    targets, weights = problem()
    params = make_params()
    tmp_path.mkdir()
    state = None
    for phase, (mode, steps) in enumerate(modes):
        opt = info.cls(groups(params), **info.base)
        if state is not None:
            opt.load_state_dict(torch.load(state, weights_only=True))
        if mode == "in_backward":
            handle = opt.step_in_backward(params)
            in_backward(opt, params, targets, weights, steps)
            handle.remove()
        else:
            ordinary(opt, params, targets, weights, steps)
            opt.zero_grad()
        state = tmp_path / f"phase{phase}.pt"
        torch.save(opt.state_dict(), state)
    return params, opt


@pytest.mark.parametrize("info", OPTIMS, ids=[i.name for i in OPTIMS])
def test_checkpoint_moves_between_in_backward_and_ordinary(info, tmp_path) -> None:
    params, opt = _phases(
        info, [("in_backward", 3), ("ordinary", 2), ("in_backward", 2)], tmp_path / "a")
    ref_params, ref = _phases(
        info, [("ordinary", 3), ("ordinary", 2), ("ordinary", 2)], tmp_path / "b")
    assert_same(params, ref_params, opt, ref)


@pytest.mark.parametrize("path", list(PATHS))
def test_scheduler_hooks_and_zero_grad(path) -> None:
    ref_model, model = _model(), _model()
    ref = O.Adam(ref_model.parameters(), lr=0.05, **PATHS[path])
    opt = O.Adam(model.parameters(), lr=0.05, **PATHS[path])
    calls: list[str] = []
    opt.register_step_pre_hook(lambda *_: calls.append("pre"))
    opt.register_step_post_hook(lambda *_: calls.append("post"))
    opt.step_in_backward(model)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=2, gamma=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for x, y in _data(5):
            ref.zero_grad()
            _mse(ref_model, x, y).backward()
            ref.step()
            ref_sched.step()
            opt.zero_grad()  # harmless: the gradients are already gone
            _mse(model, x, y).backward()
            sched.step()
    assert_same(list(model.parameters()), list(ref_model.parameters()), opt, ref)
    assert opt.param_groups[0]["lr"] == ref.param_groups[0]["lr"] == 0.05 * 0.5**2
    assert calls == ["pre", "post"] * 5  # once per optimizer step
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()  # harmless too: no gradient is left to step on
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_remove_goes_back_to_step() -> None:
    model = _model()
    opt = O.SGD(model.parameters(), lr=0.1)
    handle = opt.step_in_backward(model)
    x, y = _data(1)[0]
    _mse(model, x, y).backward()
    assert all(p.grad is None for p in model.parameters())
    handle.remove()
    _mse(model, x, y).backward()
    assert all(p.grad is not None for p in model.parameters())
    opt.step_in_backward(model)  # may be installed again once removed


# ------------------------------------------------------------------------------------------
# refusals
# ------------------------------------------------------------------------------------------
def test_refuses_global_norm_clipping() -> None:
    model = _model()
    with pytest.raises(ValueError, match="max_grad_norm.*global-norm"):
        O.Adam(model.parameters()).step_in_backward(model, max_grad_norm=1.0)


def test_refuses_closures() -> None:
    model = _model()
    opt = O.Adam(model.parameters())
    opt.step_in_backward(model)
    x, y = _data(1)[0]
    with pytest.raises(RuntimeError, match="closure"):
        opt.step(lambda: _mse(model, x, y))


@pytest.mark.parametrize("cls", [O.Newton, O.NewtonCG, O.ConjugateGradient])
def test_refuses_second_order(cls) -> None:
    model = _model()
    with pytest.raises(RuntimeError, match="second-order.*closure"):
        cls(model.parameters()).step_in_backward(model)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_refuses_bad_accumulation_steps(bad) -> None:
    model = _model()
    with pytest.raises(ValueError, match="accumulation_steps"):
        O.Adam(model.parameters()).step_in_backward(model, accumulation_steps=bad)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1MB"])
def test_refuses_bad_bucket_bytes(bad) -> None:
    model = _model()
    with pytest.raises(ValueError, match="bucket_bytes"):
        O.Adam(model.parameters()).step_in_backward(model, bucket_bytes=bad)


def _waiting_gradient_bytes(bucket_bytes: int) -> list[int]:
    """For each gradient's arrival (in a 6-layer MLP of 16-wide layers: weights 1024 bytes,
    biases 64), the bytes of the *other* parameters' gradients that exist at that moment."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(16, 16) for _ in range(6)])
    params = list(model.parameters())
    seen: list[int] = []

    def observe(param: torch.Tensor) -> None:  # (registered first: runs before the update)
        seen.append(sum(p.grad.numel() * p.grad.element_size() for p in params
                        if p is not param and p.grad is not None))

    for param in params:
        param.register_post_accumulate_grad_hook(observe)
    O.Adam(params, lr=0.1, fused=True).step_in_backward(model, bucket_bytes=bucket_bytes)
    for _ in range(2):
        model(torch.randn(4, 16)).sum().backward()
        assert all(p.grad is None for p in params)
    return seen


def test_gradients_wait_in_buckets_of_at_most_bucket_bytes() -> None:
    """Each gradient is freed before the next arrives with ``bucket_bytes=0``; with a bucket,
    a bias's gradient (which arrives first) waits for its layer's weight's (never
    ``bucket_bytes`` or more), and
    with one larger than the model every gradient waits for the end of backward."""
    assert max(_waiting_gradient_bytes(0)) == 0
    waiting = _waiting_gradient_bytes(1000)
    assert max(waiting) == 64 and 0 in waiting  # a bias waits; a weight goes with it
    assert max(_waiting_gradient_bytes(1 << 20)) == 5 * 1024 + 6 * 64  # all but the last


def test_refuses_foreign_parameters_twice_installed_and_differentiable() -> None:
    model = _model()
    opt = O.Adam(list(model.parameters())[:2])
    with pytest.raises(ValueError, match="not in Adam's param_groups"):
        opt.step_in_backward(model)
    opt.step_in_backward(list(model.parameters())[:2])
    with pytest.raises(RuntimeError, match="already installed"):
        opt.step_in_backward(list(model.parameters())[:2])
    with pytest.raises(ValueError, match="differentiable"):
        O.Adam(model.parameters(), differentiable=True).step_in_backward(model)


def test_refuses_a_gradient_arriving_twice_in_one_backward() -> None:
    """Reentrant checkpointing runs a shared parameter's accumulation once per segment."""
    from torch.utils.checkpoint import checkpoint

    class Shared(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 4)

        def forward(self, x):
            x = checkpoint(self.layer, x, use_reentrant=True)
            return checkpoint(self.layer, x.tanh(), use_reentrant=True)

    model = Shared()
    O.SGD(model.parameters(), lr=0.1).step_in_backward(model)
    x = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="twice in one backward"):
        model(x).sum().backward()


def test_refuses_distributed_data_parallel(tmp_path) -> None:
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        model = torch.nn.parallel.DistributedDataParallel(_model())
        with pytest.raises(RuntimeError, match="DistributedDataParallel.*step\\(\\)"):
            O.Adam(model.parameters()).step_in_backward(model)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------
# the Triton kernels (interpreted on CPU, in a subprocess: see test_fused_triton.py)
# ------------------------------------------------------------------------------------------
TRITON_NAMES = ["SGD", "Momentum", "Adagrad", "Adadelta", "RMSprop", "Adam", "NAdam", "Adamax"]


def test_triton_kernels_in_backward_under_interpreter() -> None:
    pytest.importorskip("triton")
    report = interpreted_report(__file__)
    assert report["checked"] == len(TRITON_NAMES) + 2, report
    assert not report["failures"], "\n\n".join(report["failures"])


def _interpreted() -> dict:
    from torchopt_survey.optim.core import fused

    assert fused.BACKEND == "triton"
    failures = []

    def compare(label: str, make: Any) -> None:
        """3 steps in backward against 3 ordinary steps, both on the fused Triton path."""
        try:
            targets, weights = problem(dtype=torch.float32)
            ref_params, params = make_params(torch.float32), make_params(torch.float32)
            ref, opt = make(groups(ref_params)), make(groups(params))
            opt.step_in_backward(params)
            ordinary(ref, ref_params, targets, weights, 3)
            in_backward(opt, params, targets, weights, 3)
            assert_same(params, ref_params, opt, ref)
        except Exception as error:  # noqa: BLE001 -- reported, the run goes on
            failures.append(f"{label}: {error!r}")

    for name in TRITON_NAMES:
        info = BY_NAME[name]
        compare(name, lambda param_groups, info=info: info.cls(param_groups, **info.base,
                                                                fused=True))
    for dtype in ("bfloat16", "int8"):  # compact state around the Triton kernels
        compare(f"Adam state_dtype={dtype}",
                lambda param_groups, dtype=dtype: O.Adam(param_groups, fused=True,
                                                         state_dtype=dtype))
    return {"checked": len(TRITON_NAMES) + 2, "failures": failures}


if __name__ == "__main__" and "--interpret" in sys.argv:
    print("REPORT " + json.dumps(_interpreted()))


def test_refuses_fsdp2_sharded_parameters(tmp_path) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        param = torch.nn.Parameter(distribute_tensor(torch.randn(4, 4), mesh, [Shard(0)]))
        with pytest.raises(RuntimeError, match="DTensor.*FSDP2"):
            O.Adam([param]).step_in_backward([param])
    finally:
        dist.destroy_process_group()
