"""fused=True on CUDA (generated Triton kernels): skipped without a GPU.

Covers fused vs forloop for every method and dtype, per-replica ([N]) hyperparameters,
GradScaler with an injected inf, CUDA-graph
capture and replay with a tensor lr changed between replays, and state_dict moves CPU <-> CUDA.
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
from helpers.replica_cases import CASES as REPLICA_CASES
from helpers.replica_cases import FLOAT32_TOL, stacked_vs_alone
from helpers.replica_cases import case_id as replica_case_id

import torchopt_survey.optim as O

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cuda_fused_matches_forloop(case: tuple[type, dict[str, Any]], dtype: torch.dtype) -> None:
    cls, kwargs = case
    ref_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    ref_params = [p.detach().to(ref_dtype).requires_grad_() for p in make_params(dtype, "cuda")]
    ref = run(cls, kwargs, ref_params, STEPS, round_to=dtype, foreach=False)
    params = make_params(dtype, "cuda")
    opt = run(cls, kwargs, params, STEPS, fused=True)
    assert_run_close(params, opt, ref_params, ref, dtype)
    step = next(iter(opt.state.values()), {}).get("step")  # (plain SGD keeps no state)
    if step is not None:
        assert step.device.type == "cuda" and step.dtype == torch.float32


@pytest.mark.parametrize("case", REPLICA_CASES, ids=[replica_case_id(c) for c in REPLICA_CASES])
def test_cuda_fused_per_replica_hyperparameters(case: Any) -> None:
    cls, varied, shared = case
    path = {"fused": True}
    assert stacked_vs_alone(cls, varied, shared, path, torch.float64, device="cuda") <= 1e-10
    worst32 = stacked_vs_alone(cls, varied, shared, path, torch.float32, device="cuda")
    assert worst32 <= FLOAT32_TOL["atol"] + FLOAT32_TOL["rtol"], worst32


@pytest.mark.parametrize("offset", [0, 1, 2, 4], ids=lambda o: f"offset{o}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_views_at_any_alignment(offset: int, dtype: torch.dtype) -> None:
    # views ``offset`` elements into their storage: only 16-byte aligned addresses may take the
    # vectorised kernel (a wrong alignment hint is a misaligned-address fault on the device)
    gen = torch.Generator(device="cuda").manual_seed(0)
    params = [torch.randn(n + offset, generator=gen, device="cuda", dtype=dtype)[offset:]
              .detach().requires_grad_() for n in ((1 << 16) + 5, 4096, 3)]
    ref_params = [p.detach().float().requires_grad_() for p in params]
    opt, ref = O.Adam(params, fused=True), O.Adam(ref_params, foreach=False)
    for _ in range(3):
        for p, q in zip(params, ref_params):
            g = torch.randn(p.shape, generator=gen, device="cuda").to(dtype)
            p.grad, q.grad = g, g.float()
        opt.step()
        ref.step()
        for q in ref_params:
            q.data = q.data.to(dtype).float()  # the reference rounds its parameters as we do
    torch.cuda.synchronize()
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p.float(), q, **TOL[dtype])


def test_cuda_large_tensor_many_programs() -> None:
    gen = torch.Generator().manual_seed(0)
    shapes = [(1 << 20) + 3, 4097, 1]
    params = [torch.randn(s, generator=gen).cuda().requires_grad_() for s in shapes]
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    opt = O.NAdam(params, fused=True)
    ref = O.NAdam(ref_params, foreach=True)
    for _ in range(3):
        for p, q in zip(params, ref_params):
            g = torch.randn_like(p)
            p.grad, q.grad = g, g.clone()
        opt.step()
        ref.step()
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q)
    assert all(opt.state[p]["step"].item() == 3 for p in params)


@pytest.mark.parametrize("case", [CASES[1], CASES[12], CASES[17], CASES[19]], ids=case_id)
def test_cuda_grad_scaler_with_injected_inf(case: tuple[type, dict[str, Any]]) -> None:
    cls, kwargs = case
    model = torch.nn.Linear(8, 4).cuda()
    ref_model = copy.deepcopy(model)
    opt = cls(model.parameters(), **kwargs, fused=True)
    ref = cls(ref_model.parameters(), **kwargs, foreach=False)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10, growth_interval=1000)
    x = torch.randn(16, 8, device="cuda")
    for _ in range(3):
        for m, o in ((model, opt), (ref_model, ref)):
            o.zero_grad()
            loss = m(x).square().mean()
            if o is opt:
                scaler.scale(loss).backward()
                scaler.step(o)
                scaler.update()
            else:
                loss.backward()
                o.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)
    before = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict()["state"])
    opt.zero_grad()
    scaler.scale(model(x).square().mean()).backward()
    model.weight.grad[0, 0] = float("inf")
    scale = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < scale
    assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))
    after = opt.state_dict()["state"]
    for index, entries in state.items():
        for name, value in entries.items():
            assert torch.equal(after[index][name], value), name


@pytest.mark.parametrize("cls", [O.Adam, O.NAdam, O.Adadelta, O.RMSprop, O.SGD])
def test_cuda_graph_capture_and_replay_with_tensor_lr(cls: type) -> None:
    params = make_params(torch.float32, "cuda")
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    kwargs: dict[str, Any] = {"momentum": 0.9} if cls is O.SGD else {}
    lr = torch.tensor(0.01, device="cuda")
    opt = cls(params, lr=lr, fused=True, **kwargs)
    ref = cls(ref_params, lr=0.01, foreach=False, **kwargs)
    grads = [torch.zeros_like(p) for p in params]
    for p, g in zip(params, grads):
        p.grad = g
    # warm up on a side stream (first step creates lazy state and compiles), as torch requires
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for p, q, g in zip(params, ref_params, make_grads(params, 0)):
            p.grad.copy_(g)
            q.grad = g.clone()
        opt.step()
    torch.cuda.current_stream().wait_stream(stream)
    ref.step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for step in range(1, 5):
        new_lr = 0.01 * 0.5**step
        lr.fill_(new_lr)  # a scheduler writing the tensor in place: replay must see it
        ref.param_groups[0]["lr"] = new_lr
        for p, q, g in zip(params, ref_params, make_grads(params, step)):
            p.grad.copy_(g)
            q.grad = g.clone()
        graph.replay()
        ref.step()
    torch.cuda.synchronize()
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    assert_state_close(opt, ref, atol=1e-6, rtol=1e-5)


def test_cuda_fused_host_lr_changed_in_place_between_steps() -> None:
    """A per-replica lr kept on the host (as the vectorised experiments keep it): the kernel's
    device copy follows a scheduler's in-place change."""
    lr = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    p = torch.zeros(3, 2, dtype=torch.float64, device="cuda", requires_grad=True)
    opt = O.SGD([p], lr=lr, fused=True)
    for _ in range(3):
        p.grad = torch.ones_like(p)
        opt.step()
        lr.mul_(0.5)
    expected = -1.75 * torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64, device="cuda")
    torch.testing.assert_close(p[:, 0].detach(), expected, atol=1e-15, rtol=0)


@pytest.mark.parametrize("case", [CASES[1], CASES[17], CASES[6]], ids=case_id)
def test_state_dict_moves_cpu_cuda(case: tuple[type, dict[str, Any]]) -> None:
    cls, kwargs = case
    cpu_params = make_params(torch.float32)
    ref_params = make_params(torch.float32)
    ref = run(cls, kwargs, ref_params, 2, foreach=False)
    cpu_opt = run(cls, kwargs, cpu_params, 2, fused=True)
    cuda_params = [p.detach().cuda().requires_grad_() for p in cpu_params]
    cuda_opt = cls(cuda_params, **kwargs, fused=True)
    cuda_opt.load_state_dict(cpu_opt.state_dict())
    for step in range(2, 4):
        for p, q, g in zip(cuda_params, ref_params, make_grads(ref_params, step)):
            p.grad, q.grad = g.cuda(), g.clone()
        cuda_opt.step()
        ref.step()
    back = [p.detach().cpu().requires_grad_() for p in cuda_params]
    back_opt = cls(back, **kwargs, foreach=False)
    back_opt.load_state_dict(cuda_opt.state_dict())
    for p, q in zip(back, ref_params):
        torch.testing.assert_close(p, q)
    assert_state_close(back_opt, ref, **TOL[torch.float32])
