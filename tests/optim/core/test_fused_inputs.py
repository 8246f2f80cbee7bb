"""What ``fused=True`` accepts and refuses before a kernel sees raw memory (issue #7, items 4-6).

* gradients are read-only: expanded (stride 0), transposed and sliced gradients give the forloop
  result and are left bit-identical, same tensor, same strides (AMP's unscaled write-back aside);
* tensors a kernel cannot address -- meta tensors, wrapper subclasses -- are refused with an
  error naming the parameter, before any compiler runs.
(The DTensor path is tested on two processes in ``test_distributed.py``.)
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import torchopt_survey.optim as O
from torchopt_survey.optim.core import kernel_cache

CASES: list[tuple[type, dict[str, Any]]] = [
    (O.SGD, {"lr": 0.1}),
    (O.SGD, {"lr": 0.1, "momentum": 0.9}),
    (O.Adam, {"lr": 0.01, "weight_decay": 0.1}),
    (O.Adagrad, {"lr": 0.1}),
    (O.RMSprop, {"lr": 0.01, "centered": True, "momentum": 0.5}),
]


def odd_grads(step: int) -> list[torch.Tensor]:
    """Gradients for params of shape (6, 8): expanded, transposed, a strided slice."""
    gen = torch.Generator().manual_seed(step)
    row = torch.randn(8, generator=gen)
    return [
        row.expand(6, 8),  # stride (0, 1): 48 elements, 8 memory locations
        torch.randn(8, 6, generator=gen).t(),  # transposed
        torch.randn(6, 16, generator=gen)[:, ::2],  # every other column
    ]


def _snapshot(g: torch.Tensor) -> tuple[Any, ...]:
    """Everything about a gradient a step must not change: identity, layout, memory contents."""
    storage = torch.tensor([], dtype=g.dtype).set_(g.untyped_storage())
    return (g.data_ptr(), g.stride(), g.shape, storage.clone())


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].__name__}{sorted(c[1])}")
def test_expanded_and_strided_grads_are_read_only(case: tuple[type, dict[str, Any]]) -> None:
    cls, kwargs = case
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(6, 8, generator=gen).requires_grad_() for _ in range(3)]
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    opt = cls(params, **kwargs, fused=True)
    ref = cls(ref_params, **kwargs, foreach=False)
    for step in range(5):
        grads = odd_grads(step)
        for p, q, g in zip(params, ref_params, grads):
            p.grad, q.grad = g, g.clone()
        before = [_snapshot(g) for g in grads]
        opt.step()
        ref.step()
        for p, g, (ptr, stride, shape, memory) in zip(params, grads, before):
            assert p.grad is g
            assert (g.data_ptr(), g.stride(), g.shape) == (ptr, stride, shape)
            assert torch.equal(_snapshot(g)[3], memory), "the step wrote into a gradient"
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)


def test_amp_with_expanded_and_strided_grads() -> None:
    """Under AMP torch leaves the unscaled gradient in .grad: done where memory allows it."""
    gen = torch.Generator().manual_seed(1)
    params = [torch.randn(6, 8, generator=gen).requires_grad_() for _ in range(3)]
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    opt = O.Adam(params, lr=0.01, fused=True)
    ref = O.Adam(ref_params, lr=0.01, foreach=False)
    for step in range(3):
        grads = odd_grads(step)
        for p, q, g in zip(params, ref_params, grads):
            p.grad, q.grad = g * 8.0, g.clone()  # (g * 8 keeps the layout; expand becomes dense)
        params[0].grad = grads[0] * 8.0 if step else (grads[0][:1] * 8.0).expand(6, 8)
        expanded = params[0].grad
        expanded_before = expanded.clone()
        opt.grad_scale, opt.found_inf = torch.tensor([8.0]), torch.tensor([0.0])
        opt.step()
        ref.step()
        if step == 0:  # an expanded gradient cannot hold 48 unscaled values: it stays as it was
            assert torch.equal(expanded, expanded_before)
        torch.testing.assert_close(params[1].grad, grads[1])  # transposed: unscaled in place
        torch.testing.assert_close(params[2].grad, grads[2])
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)


def _no_kernel(fn: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``fn`` with every way to a compiler or kernel launch made to fail loudly."""
    from torchopt_survey.optim.core import emit_c, emit_triton, fused

    def reached(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a compiler or kernel was reached")

    for module, name in [(fused, "_cpu_launcher"), (emit_c, "compile_c"),
                         (emit_triton, "run_triton"), (emit_triton, "load_kernel")]:
        monkeypatch.setattr(module, name, reached)
    logged = len(kernel_cache.COMPILE_LOG)
    fn()
    assert len(kernel_cache.COMPILE_LOG) == logged


@pytest.mark.parametrize("cls", [O.Adam, O.SGD, O.Adagrad])
def test_meta_tensors_are_refused_before_compiling(cls: type,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    params = [torch.randn(3, requires_grad=True),
              torch.empty(4, 5, device="meta", requires_grad=True)]
    for p in params:
        p.grad = torch.ones_like(p)
    opt = cls(params, fused=True)

    def step() -> None:
        with pytest.raises(RuntimeError,
                           match=r"\['params'\]\[1\] is a meta tensor of dtype torch.float32: "
                                 r"fused=True needs floating-point .*CPU or CUDA"):
            opt.step()

    _no_kernel(step, monkeypatch)
    assert torch.equal(params[0].grad, torch.ones(3))


def test_integer_gradient_is_refused() -> None:
    p = torch.randn(4, requires_grad=True)
    opt = O.SGD([p], lr=0.1, fused=True)
    p.grad = torch.ones(4)
    # (autograd never makes one; a hand-made integer gradient reaches fused_step only like this)
    with torch.no_grad():
        from torchopt_survey.optim.core import fused

        with pytest.raises(RuntimeError, match=r"gradient is a cpu tensor of dtype torch.int64"):
            fused.fused_step(opt, opt.param_groups[0], opt._state_spec(opt.param_groups[0]),
                             [p], [torch.ones(4, dtype=torch.int64)], [])


def test_wrapper_subclass_is_refused_naming_the_parameter(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.testing._internal.two_tensor import TwoTensor

    plain = torch.randn(3, requires_grad=True)
    wrapped = torch.nn.Parameter(TwoTensor(torch.randn(4), torch.randn(4)))
    opt = O.Adam([plain, wrapped], fused=True)
    plain.grad = torch.randn(3)
    wrapped.grad = TwoTensor(torch.randn(4), torch.randn(4))
    before = plain.detach().clone()

    def step() -> None:
        with pytest.raises(RuntimeError, match=r"param_groups\[0\]\['params'\]\[1\] is a "
                                               r"TwoTensor.*foreach=True"):
            opt.step()

    _no_kernel(step, monkeypatch)
    assert torch.equal(plain.detach(), before)  # refused before anything ran


def test_plain_parameter_subclass_is_accepted() -> None:
    class Tagged(torch.nn.Parameter):  # only Python-level additions: ordinary memory
        pass

    p = Tagged(torch.randn(5))
    q = p.detach().clone().requires_grad_()
    opt, ref = O.Adam([p], fused=True), O.Adam([q], foreach=False)
    for _ in range(3):
        g = torch.randn(5)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(p.detach(), q.detach())
