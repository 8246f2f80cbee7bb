"""fused=True on CPU (generated C kernels) against the forloop path, for every method and dtype.

The reference for float16/bfloat16 parameters is the forloop path run on float32 copies: the
fused kernels compute in float32 and round once per stored value, as torch's fused optimizers do,
so that is the behaviour they should approximate (within the low-precision rounding).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from helpers.fused_cases import (
    CASES,
    DTYPES,
    STEPS,
    TOL,
    assert_run_close,
    assert_state_close,
    case_id,
    make_grads,
    make_params,
    run,
)

import torchopt_survey.optim as O
from torchopt_survey.optim.core import emit_c as _codegen_c


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_switch_of_the_cases_shows(case: tuple[type, dict[str, Any]],
                                         dtype: torch.dtype) -> None:
    """A kernel that ignored any one setting of a case must fail ``test_fused_matches_forloop``.

    For each setting, the forloop run without it (the default instead) must differ from the run
    with it by more than that test's tolerance -- in every dtype, after ``STEPS`` steps.
    """
    cls, kwargs = case
    ref_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype

    def reference(config: dict[str, Any]) -> tuple[list[torch.Tensor], Any]:
        params = [p.detach().to(ref_dtype).requires_grad_() for p in make_params(dtype)]
        return params, run(cls, config, params, STEPS, round_to=dtype, foreach=False)

    ref_params, ref = reference(kwargs)
    for key in [k for k in kwargs if k != "lr"]:
        if cls is O.SGD and key == "momentum" and kwargs.get("nesterov"):
            continue  # (nesterov needs momentum: dropping it is an invalid configuration)
        # what a kernel ignoring ``key`` would produce (rounded to ``dtype`` as it stores)
        params, opt = reference({k: v for k, v in kwargs.items() if k != key})
        ignored = [p.detach().to(dtype) for p in params]
        with pytest.raises(AssertionError):
            assert_run_close(ignored, opt, ref_params, ref, dtype)
            pytest.fail(f"dropping {key}={kwargs[key]!r} stays within the {dtype} tolerance")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fused_matches_forloop(case: tuple[type, dict[str, Any]], dtype: torch.dtype) -> None:
    cls, kwargs = case
    reference_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    # same (rounded) starting point and gradients, float32 arithmetic in the reference
    ref_params = [p.detach().to(reference_dtype).requires_grad_() for p in make_params(dtype)]
    ref = run(cls, kwargs, ref_params, STEPS, round_to=dtype, foreach=False)
    params = make_params(dtype)
    opt = run(cls, kwargs, params, STEPS, fused=True)
    assert_run_close(params, opt, ref_params, ref, dtype)
    for p in params:
        for name, value in opt.state[p].items():
            if value.dim() == 0:
                assert value.dtype == torch.float32, name
            else:
                assert value.dtype == dtype, name


def test_every_method_has_a_fused_case() -> None:
    covered = {cls for cls, _ in CASES}
    # the closure-based second-order methods have no elementwise update to fuse
    assert covered >= {getattr(O, name) for name in O.__all__ if name not in (
        "StateSpec", "SurveyOptimizer", "Newton", "NewtonCG", "ConjugateGradient")}


def test_fused_flags_amp_scaling() -> None:
    opt = O.NAdam(make_params(torch.float32), fused=True)
    assert opt._step_supports_amp_scaling
    assert opt.param_groups[0]["fused"] is True


def test_hooks_run_with_fused() -> None:
    params = make_params(torch.float32)
    ref_params = make_params(torch.float32)
    calls: list[str] = []

    def pre(opt: Any, args: Any, kwargs: Any) -> None:
        calls.append("pre")
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad.mul_(0.5)  # a pre-hook may edit gradients: the kernel must see it

    def post(opt: Any, args: Any, kwargs: Any) -> None:
        calls.append("post")

    opt = O.Adamax(params, lr=0.01, fused=True)
    opt.register_step_pre_hook(pre)
    opt.register_step_post_hook(post)
    ref = O.Adamax(ref_params, lr=0.01, foreach=False)
    ref.register_step_pre_hook(pre)
    for step in range(3):
        for p, q, g in zip(params, ref_params, make_grads(params, step)):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    assert calls.count("post") == 3 and calls.count("pre") == 6
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q)
    # state_dict hooks too
    seen = []
    opt.register_state_dict_post_hook(lambda o, sd: seen.append(len(sd["state"])))
    opt.state_dict()
    assert seen == [len(params)]


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in (O.SGD, O.NAdam, O.Adagrad)][:4],
                         ids=case_id)
def test_state_dict_moves_between_fused_and_forloop(case: tuple[type, dict[str, Any]]) -> None:
    cls, kwargs = case
    ref_params = make_params(torch.float32)
    ref = cls(ref_params, **kwargs, foreach=False)
    params = make_params(torch.float32)
    current = cls(params, **kwargs, fused=True)
    for step in range(6):
        for p, q, g in zip(params, ref_params, make_grads(params, step)):
            p.grad, q.grad = g.clone(), g.clone()
        current.step()
        ref.step()
        # move the state to the other path every step: fused -> forloop -> foreach -> fused
        flags = [{"foreach": False}, {"foreach": True}, {"fused": True}][step % 3]
        moved = cls(params, **kwargs, **flags)
        moved.load_state_dict(copy.deepcopy(current.state_dict()))
        current = moved
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
    assert_state_close(current, ref, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cls", [O.Adam, O.NAdam, O.SGD, O.RMSprop])
def test_tensor_lr_scheduler_between_steps_no_recompile(cls: type) -> None:
    params = make_params(torch.float32)
    ref_params = make_params(torch.float32)
    kwargs: dict[str, Any] = {"momentum": 0.9} if cls is O.SGD else {}
    opt = cls(params, lr=torch.tensor(0.05), fused=True, **kwargs)
    ref = cls(ref_params, lr=torch.tensor(0.05), foreach=False, **kwargs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5**e)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda e: 0.5**e)
    compiled_before = None
    for step in range(5):
        for p, q, g in zip(params, ref_params, make_grads(params, step)):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        sched.step()
        ref_sched.step()
        if step == 1:
            compiled_before = len(_codegen_c.COMPILE_LOG)
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)
    assert opt.param_groups[0]["lr"].item() == pytest.approx(0.05 * 0.5**5)
    assert len(_codegen_c.COMPILE_LOG) == compiled_before, "a changed lr recompiled the kernel"
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q)


def test_float_lr_changes_do_not_recompile() -> None:
    params = make_params(torch.float32)
    opt = O.Adam(params, lr=0.01, fused=True)
    for step in range(2):
        for p, g in zip(params, make_grads(params, step)):
            p.grad = g
        opt.step()
    before = len(_codegen_c.COMPILE_LOG)
    for lr, betas in [(0.02, (0.8, 0.99)), (0.001, (0.5, 0.9))]:
        opt.param_groups[0]["lr"] = lr
        opt.param_groups[0]["betas"] = betas
        opt.step()
    assert len(_codegen_c.COMPILE_LOG) == before


#: group edits between steps, each after steps that took the reused-launch fast path: a new
#: float lr, a structural change (weight decay from 0: a term appears), a flag, a new tuple
EDITS: list[dict[str, Any]] = [{"lr": 0.02}, {"weight_decay": 0.1}, {"maximize": True},
                               {"betas": (0.5, 0.9)}, {"lr": 0.02}, {"weight_decay": 0.0}]


@pytest.mark.parametrize("cls", [O.Adam, O.NAdam, O.Adamax])
def test_group_edits_between_reused_steps_take_effect(cls: type) -> None:
    params, ref_params = make_params(torch.float32), make_params(torch.float32)
    opt = cls(params, lr=0.01, fused=True)
    ref = cls(ref_params, lr=0.01, foreach=False)
    for p, q in zip(params, ref_params):
        p.grad, q.grad = torch.zeros_like(p), torch.zeros_like(q)
    for step in range(3 * len(EDITS)):
        if step % 3 == 2:
            for group in (opt.param_groups[0], ref.param_groups[0]):
                group.update(EDITS[step // 3])
        for p, q, g in zip(params, ref_params, make_grads(params, step)):
            p.grad.copy_(g)  # same addresses: steps reuse the prepared launch
            q.grad.copy_(g)
        opt.step()
        ref.step()
        for p, q in zip(params, ref_params):
            torch.testing.assert_close(p, q, msg=lambda m, s=step: f"step {s}: {m}")


def _amp_setup(cls: type, kwargs: dict[str, Any]) -> tuple[Any, list[torch.Tensor]]:
    params = make_params(torch.float32)
    return cls(params, **kwargs, fused=True), params


@pytest.mark.parametrize("case", [CASES[1], CASES[12], CASES[17], CASES[9]], ids=case_id)
def test_grad_scaler_on_cpu(case: tuple[type, dict[str, Any]]) -> None:
    cls, kwargs = case
    opt, params = _amp_setup(cls, kwargs)
    ref_params = make_params(torch.float32)
    ref = cls(ref_params, **kwargs, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1000)
    for step in range(3):
        grads = make_grads(params, step)
        scaler.scale(torch.ones(()))  # (initialises the scale, as scaling a loss would)
        for p, q, g in zip(params, ref_params, grads):
            p.grad = g * scaler.get_scale()  # as backward of a scaled loss would produce
            q.grad = g.clone()
        scaler.step(opt)  # fused: grad_scale/found_inf go to the kernel
        scaler.update()
        ref.step()
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6,
                                   rtol=1e-6)  # written back unscaled, as torch does
    assert_state_close(opt, ref, atol=1e-6, rtol=1e-5)

    # an inf in one gradient: the step is skipped, nothing changes (step counts included)
    before_params = [p.detach().clone() for p in params]
    before_state = copy.deepcopy(opt.state_dict())
    scaler.scale(torch.ones(()))
    for p, g in zip(params, make_grads(params, 9)):
        p.grad = g * scaler.get_scale()
    params[1].grad[0, 0] = float("inf")
    scale = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < scale
    for p, b in zip(params, before_params):
        assert torch.equal(p.detach(), b)
    after_state = opt.state_dict()
    for index, entries in before_state["state"].items():
        for name, value in entries.items():
            assert torch.equal(after_state["state"][index][name], value), name


def test_found_inf_on_first_step_creates_no_lazy_state() -> None:
    params = make_params(torch.float32)
    opt = O.SGD(params, lr=0.1, momentum=0.9, fused=True)
    for p, g in zip(params, make_grads(params, 0)):
        p.grad = g
    opt.grad_scale = torch.tensor([2.0])
    opt.found_inf = torch.tensor([1.0])
    before = [p.detach().clone() for p in params]
    opt.step()
    assert all(len(opt.state[p]) == 0 for p in params)
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))


def test_complex_params_fused() -> None:
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(6, 3, dtype=torch.complex64, generator=gen).requires_grad_()]
    ref_params = [params[0].detach().clone().requires_grad_()]
    opt = O.Adam(params, lr=0.01, fused=True)
    ref = O.Adam(ref_params, lr=0.01, foreach=False)
    for _ in range(3):
        g = torch.randn(6, 3, dtype=torch.complex64, generator=gen)
        params[0].grad, ref_params[0].grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(params[0], ref_params[0])
    assert opt.state[params[0]]["exp_avg"].is_complex()


def test_channels_last_and_noncontiguous() -> None:
    base = torch.randn(2, 3, 4, 5)
    p1 = base.clone().to(memory_format=torch.channels_last).requires_grad_()
    p2 = torch.randn(6, 4).t().contiguous().t().requires_grad_()  # a transposed layout
    q1, q2 = p1.detach().clone().requires_grad_(), p2.detach().clone().requires_grad_()
    opt = O.RMSprop([p1, p2], lr=0.01, momentum=0.5, fused=True)
    ref = O.RMSprop([q1, q2], lr=0.01, momentum=0.5, foreach=False)
    for _ in range(3):
        g1, g2 = torch.randn_like(p1), torch.randn(4, 6).t()  # g2's layout differs from p2's
        p1.grad, q1.grad = g1.clone(), g1.clone()
        p2.grad, q2.grad = g2.clone(), g2.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(p1, q1)
    torch.testing.assert_close(p2, q2)


def test_mixed_dtypes_groups_and_missing_grads() -> None:
    params = make_params(torch.float32) + make_params(torch.bfloat16, seed=1)
    ref_params = [p.detach().float().clone().requires_grad_() for p in params]
    groups = [{"params": params[:4]}, {"params": params[4:], "lr": 0.003, "betas": (0.8, 0.9)}]
    ref_groups = [{"params": ref_params[:4]},
                  {"params": ref_params[4:], "lr": 0.003, "betas": (0.8, 0.9)}]
    opt = O.Adam(groups, lr=0.01, fused=True)
    ref = O.Adam(ref_groups, lr=0.01, foreach=False)
    for step in range(3):
        for i, (p, q, g) in enumerate(zip(params, ref_params, make_grads(ref_params, step))):
            if i == 2:
                continue  # no gradient: untouched, no state
            p.grad, q.grad = g.to(p.dtype), g.to(p.dtype).float()
        opt.step()
        ref.step()
    assert len(opt.state[params[2]]) == 0
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p.float(), q, **TOL[p.dtype])


def test_sparse_gradients_are_refused() -> None:
    p = torch.randn(5, 3, requires_grad=True)
    p.grad = torch.randn(5, 3).to_sparse()
    opt = O.Adagrad([p], fused=True)
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_compile_is_cached_per_configuration() -> None:
    params = make_params(torch.float32)
    opt = O.Adadelta(params, fused=True)
    for step in range(2):
        for p, g in zip(params, make_grads(params, step)):
            p.grad = g
        opt.step()
    n = len(_codegen_c.COMPILE_LOG)
    other = O.Adadelta(make_params(torch.float32, seed=5), lr=0.5, fused=True)
    for p, g in zip(other.param_groups[0]["params"], make_grads(params, 0)):
        p.grad = g
    other.step()
    assert len(_codegen_c.COMPILE_LOG) == n  # same structure, new values: same kernel


def test_reused_launch_plan_follows_tensor_changes() -> None:
    """Steps with unchanged tensor addresses reuse the prepared launch; any change rebuilds."""
    params = make_params(torch.float32)
    ref_params = make_params(torch.float32)
    opt = O.Adam(params, lr=0.01, fused=True)
    ref = O.Adam(ref_params, lr=0.01, foreach=False)
    for p, q in zip(params, ref_params):
        p.grad, q.grad = torch.zeros_like(p), torch.zeros_like(q)
    for step in range(6):
        for p, q, g in zip(params, ref_params, make_grads(params, step)):
            p.grad.copy_(g)  # same addresses: the fast path
            q.grad.copy_(g)
        if step == 3:  # new state tensors (same values) must invalidate the plan
            opt.load_state_dict(copy.deepcopy(opt.state_dict()))
        opt.step()
        ref.step()
    assert opt._fused_plans
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q)
    assert_state_close(opt, ref, **TOL[torch.float32])


# ---------------------------------------------------------------------------------------------
# threads: the CPU kernel splits the group's elements across torch.get_num_threads() threads
# ---------------------------------------------------------------------------------------------
THREAD_SHAPES = [(1000,), (517, 3), (1,), (0,), (70,)]  # ranges cut tensors mid-way


@pytest.fixture
def small_grain(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Let tiny groups use several threads (the default grain keeps them on one)."""
    monkeypatch.setattr(_codegen_c, "GRAIN", 64)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _threaded_run(cls: type, kwargs: dict[str, Any], dtype: torch.dtype,
                  threads: int) -> list[torch.Tensor]:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(dtype).requires_grad_() for s in THREAD_SHAPES]
    opt = cls(params, **kwargs, fused=True)
    for step in range(5):
        for p, g in zip(params, make_grads(params, step)):
            p.grad = g
        opt.step()
    states = [v for p in params for v in opt.state[p].values()]
    return [p.detach() for p in params] + states


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_thread_count_does_not_change_results(case: tuple[type, dict[str, Any]],
                                              dtype: torch.dtype, small_grain: Any) -> None:
    cls, kwargs = case
    one = _threaded_run(cls, kwargs, dtype, 1)
    for threads in (2, 3):
        many = _threaded_run(cls, kwargs, dtype, threads)
        for a, b in zip(one, many, strict=True):
            assert torch.equal(a, b), f"{threads} threads differ from 1"


def test_kernel_uses_torch_thread_count(small_grain: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from torchopt_survey.optim.core import fused

    monkeypatch.setattr(fused, "_CPU_KERNELS", {})
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in THREAD_SHAPES]
    opt = O.Adam(params, fused=True)
    for p in params:
        p.grad = torch.ones_like(p)
    used = []
    for threads in (2, 1, 3):
        torch.set_num_threads(threads)
        opt.step()
        (entry,) = fused._CPU_KERNELS.values()
        used.append(_codegen_c.threads_used(entry[0]))
    assert used == [2, 1, 3]
    monkeypatch.setattr(_codegen_c, "GRAIN", 32768)  # a small group stays on one thread
    opt.step()
    assert _codegen_c.threads_used(entry[0]) == 1
