"""Flat parameter views, closure evaluation with the autograd graph kept, and curvature-vector
products (exact Hessian, Gauss-Newton) for the closure-based methods.

The closure-based methods see all parameters of all groups as one flat vector ``x`` (the order of
``param_groups``, then of the tensors in each group). The helpers here move between that vector
and the parameter tensors, and turn a closure into ``f(x)``, ``g(x)`` and, for Newton and
Newton-CG, a curvature operator ``v -> H(x) v`` built on the same evaluation.

Hessian-vector products use double backward with ``torch.autograd.grad(..., create_graph=True)``
only: the graph of the gradient lives in local tensors, never in ``param.grad``, so no reference
cycle between a parameter and its own gradient's graph is created (which
``loss.backward(create_graph=True)`` does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

CurvatureKind = Literal["hessian", "gauss_newton"]


# --------------------------------------------------------------------------- flat views


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """One flat copy of ``tensors`` (detached)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def unflatten(vec: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Views of ``vec`` shaped like each tensor of ``like``."""
    out, offset = [], 0
    for t in like:
        n = t.numel()
        out.append(vec[offset : offset + n].view_as(t))
        offset += n
    return out


@torch.no_grad()
def set_params(params: Sequence[Tensor], vec: Tensor) -> None:
    """params <- vec (in place, so the model's tensors stay the same objects)."""
    for p, v in zip(params, unflatten(vec, params)):
        p.copy_(v)


def check_flat_params(params: Sequence[Tensor], owner: str) -> None:
    """A flat view needs one dtype and one device; complex numbers are not supported (the
    line search and the curvature model assume a real objective over real variables)."""
    first = params[0]
    for index, p in enumerate(params):
        if p.is_complex():
            raise TypeError(f"{owner}: params[{index}] is complex; only real tensors are supported")
        if p.dtype != first.dtype or p.device != first.device:
            raise TypeError(
                f"{owner}: all parameters must share one dtype and device (they form one flat "
                f"vector); params[0] is {first.dtype} on {first.device}, params[{index}] is "
                f"{p.dtype} on {p.device}"
            )


def grad_wrt(outputs: Any, params: Sequence[Tensor], **kwargs: Any) -> tuple[Tensor, ...]:
    """``torch.autograd.grad`` over ``params``; parameters that do not require grad (frozen)
    or that the outputs do not reach get zeros."""
    live = [p for p in params if p.requires_grad]
    got = iter(
        torch.autograd.grad(outputs, live, allow_unused=True, materialize_grads=True, **kwargs)
        if live
        else ()
    )
    return tuple(next(got) if p.requires_grad else torch.zeros_like(p) for p in params)


# --------------------------------------------------------------------------- closure evaluation


class _DeferBackward(TorchFunctionMode):
    """Records ``Tensor.backward`` calls made by a closure instead of running them, so the graph
    of the loss survives for the gradient-of-gradient products. Torch function modes are
    thread-local: other threads are not affected."""

    def __init__(self) -> None:
        super().__init__()
        self.called = False

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is Tensor.backward:
            self.called = True
            return None
        return func(*args, **(kwargs or {}))


@dataclass
class Evaluation:
    """One closure evaluation at the current parameters."""

    loss: float
    grad: Tensor  # flat, detached
    # kept only by evaluate_with_graph: what the curvature products differentiate
    loss_tensor: Tensor | None = None
    outputs: Tensor | None = None
    grads_graph: tuple[Tensor, ...] | None = None


def _split_result(result: Any, owner: str, want_outputs: bool) -> tuple[Any, Any]:
    if want_outputs:
        if not (isinstance(result, (tuple, list)) and len(result) == 2):
            raise TypeError(
                f"{owner}: with curvature='gauss_newton' the closure must return a pair "
                f"(loss, outputs), got {type(result).__name__}"
            )
        return result[0], result[1]
    if isinstance(result, (tuple, list)):
        raise TypeError(
            f"{owner}: the closure returned a {type(result).__name__}; it must return the loss "
            "(a pair (loss, outputs) is only for curvature='gauss_newton')"
        )
    return result, None


def check_loss(loss: Any, owner: str) -> float:
    """The closure's loss as a float; ValueError/TypeError for anything that is not one finite
    number."""
    if isinstance(loss, Tensor):
        if loss.numel() != 1:
            raise ValueError(
                f"{owner}: the closure must return a scalar loss, got a tensor of shape "
                f"{tuple(loss.shape)} (reduce it, e.g. with .mean())"
            )
        if loss.is_complex():
            raise ValueError(f"{owner}: the closure returned a complex loss")
        value = float(loss.detach())
    elif isinstance(loss, (int, float)) and not isinstance(loss, bool):
        value = float(loss)
    else:
        raise TypeError(
            f"{owner}: the closure must return the loss as a Tensor, got {type(loss).__name__}"
        )
    return value


def _check_grads(grads: Sequence[Tensor | None], owner: str) -> None:
    for index, g in enumerate(grads):
        if g is not None and g.is_sparse:
            raise ValueError(
                f"{owner}: params[{index}] has a sparse gradient; the second-order methods need "
                "dense gradients (use sparse=False in nn.Embedding)"
            )


def evaluate(closure: Callable[[], Any], params: Sequence[Tensor], owner: str) -> Evaluation:
    """Run an LBFGS-style closure (it calls ``backward``) and read ``param.grad``; parameters
    without a gradient count as zero gradient, as in LBFGS."""
    with torch.enable_grad():
        result = closure()
    loss, _ = _split_result(result, owner, want_outputs=False)
    value = check_loss(loss, owner)
    grads = [p.grad for p in params]
    _check_grads(grads, owner)
    if all(g is None for g in grads):
        raise ValueError(
            f"{owner}: no parameter has a gradient after the closure; the closure must call "
            "loss.backward() (as for torch.optim.LBFGS)"
        )
    flat = torch.cat(
        [
            (g.detach() if g is not None else torch.zeros_like(p)).reshape(-1)
            for p, g in zip(params, grads)
        ]
    )
    return Evaluation(value, flat, loss_tensor=loss.detach() if isinstance(loss, Tensor) else None)


def evaluate_with_graph(
    closure: Callable[[], Any],
    params: Sequence[Tensor],
    owner: str,
    kind: CurvatureKind,
) -> Evaluation:
    """Run the closure with its ``backward`` deferred, then take the gradient ourselves with the
    graph kept for :class:`CurvatureOperator`. ``param.grad`` is set as the closure's backward
    would have set it (replaced, not accumulated: the closure is expected to zero it)."""
    mode = _DeferBackward()
    with torch.enable_grad(), mode:
        result = closure()
    loss, outputs = _split_result(result, owner, want_outputs=kind == "gauss_newton")
    value = check_loss(loss, owner)
    if not isinstance(loss, Tensor) or loss.grad_fn is None:
        raise ValueError(
            f"{owner}: the closure's loss has no autograd graph (was it computed under "
            "torch.no_grad(), or detached?); the curvature products need it"
        )
    if kind == "gauss_newton" and (not isinstance(outputs, Tensor) or outputs.grad_fn is None):
        raise ValueError(
            f"{owner}: with curvature='gauss_newton' the closure must return (loss, outputs) "
            "where outputs is the network output tensor the loss was computed from"
        )
    try:
        grads = grad_wrt(loss, params, create_graph=kind == "hessian", retain_graph=True)
    except RuntimeError as exc:
        raise RuntimeError(
            f"{owner}: could not differentiate the closure's loss ({exc}). Call loss.backward() "
            "(or nothing) in the closure, not torch.autograd.backward/grad: the optimizer defers "
            "loss.backward() to keep the graph for the curvature products"
        ) from exc
    _check_grads(grads, owner)
    for p, g in zip(params, grads):
        p.grad = g.detach().clone()
    return Evaluation(
        value,
        flatten(grads),
        loss_tensor=loss,
        outputs=outputs,
        grads_graph=tuple(grads) if kind == "hessian" else None,
    )


# --------------------------------------------------------------------------- curvature products


class CurvatureOperator:
    """``v -> C v`` at one evaluation, with C the Hessian of the loss or its generalised
    Gauss-Newton matrix Jᵀ H_L J (J: Jacobian of the outputs, H_L: Hessian of the loss in the
    outputs). ``products`` counts the calls."""

    def __init__(self, params: Sequence[Tensor], ev: Evaluation, kind: CurvatureKind) -> None:
        self.params = list(params)
        self.ev = ev
        self.kind = kind
        self.products = 0
        if kind == "gauss_newton":
            self._prepare_ggn()

    @torch.enable_grad()
    def _prepare_ggn(self) -> None:
        ev = self.ev
        assert ev.outputs is not None and ev.loss_tensor is not None
        out = ev.outputs
        # Jᵀu is linear in u, so differentiating it in u gives Jv ("double backward" JVP).
        self._u = torch.zeros_like(out, requires_grad=True)
        self._jt_u = grad_wrt(out, self.params, grad_outputs=self._u, create_graph=True)
        (self._dl_dout,) = torch.autograd.grad(ev.loss_tensor, out, create_graph=True)

    @torch.enable_grad()
    def __call__(self, v: Tensor) -> Tensor:
        self.products += 1
        if self.kind == "hessian":
            return self._hvp(v)
        return self._ggn(v)

    def _hvp(self, v: Tensor) -> Tensor:
        assert self.ev.grads_graph is not None
        pieces = [
            (g * u).sum()
            for g, u in zip(self.ev.grads_graph, unflatten(v, self.params))
            if g.requires_grad
        ]
        if not pieces:  # gradient independent of the parameters: zero curvature
            return torch.zeros_like(v)
        out = grad_wrt(torch.stack(pieces).sum(), self.params, retain_graph=True)
        return flatten(out)

    def _ggn(self, v: Tensor) -> Tensor:
        jts = [(t, u) for t, u in zip(self._jt_u, unflatten(v, self.params)) if t.requires_grad]
        if not jts:
            return torch.zeros_like(v)
        (jv,) = torch.autograd.grad(
            [t for t, _ in jts], self._u, grad_outputs=[u for _, u in jts], retain_graph=True
        )
        if self._dl_dout.requires_grad:
            assert self.ev.outputs is not None  # a Gauss-Newton evaluation keeps its outputs
            (hjv,) = torch.autograd.grad(self._dl_dout, self.ev.outputs, grad_outputs=jv,
                                         retain_graph=True)
        else:  # loss linear in the outputs
            hjv = torch.zeros_like(jv)
        out = grad_wrt(self.ev.outputs, self.params, grad_outputs=hjv, retain_graph=True)
        return flatten(out)

    @torch.enable_grad()
    def matrix(self, chunk: int = 256) -> Tensor:
        """The full n x n matrix, row blocks of ``chunk`` products at a time (vmapped when the
        model's operations allow it, one product at a time otherwise)."""
        n = sum(p.numel() for p in self.params)
        first = self.params[0]
        eye = torch.eye(n, dtype=first.dtype, device=first.device)
        rows = []
        for start in range(0, n, chunk):
            block = eye[start : start + chunk]
            try:
                rows.append(self._batched(block))
                self.products += block.shape[0]
            except RuntimeError:
                rows.append(torch.stack([self(e) for e in block]))
        h = torch.cat(rows)
        return 0.5 * (h + h.T)  # exact in exact arithmetic; removes round-off asymmetry

    def _batched(self, block: Tensor) -> Tensor:
        if self.kind != "hessian":
            raise RuntimeError("batched products only for the Hessian")
        assert self.ev.grads_graph is not None
        used = [i for i, g in enumerate(self.ev.grads_graph) if g.requires_grad]
        if not used:
            return torch.zeros_like(block)
        flat_g = torch.cat([self.ev.grads_graph[i].reshape(-1) for i in used])
        offsets, pos = [], 0
        for p in self.params:
            offsets.append(pos)
            pos += p.numel()
        cols = torch.cat(
            [block[:, offsets[i] : offsets[i] + self.params[i].numel()] for i in used], dim=1
        )
        if not all(p.requires_grad for p in self.params):
            raise RuntimeError("batched rows need every parameter to require grad")
        out = torch.autograd.grad(
            flat_g, self.params, grad_outputs=cols, retain_graph=True, allow_unused=True,
            materialize_grads=True, is_grads_batched=True,
        )
        return torch.cat([o.reshape(block.shape[0], -1) for o in out], dim=1)
