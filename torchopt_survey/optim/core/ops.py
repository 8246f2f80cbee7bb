"""Tensor-op backends that the one-source update math is written against.

Each optimizer writes its update once, as a function ``update(ops, param, grad, state, hp)`` that
only calls methods of ``ops`` (and plain Python arithmetic on scalars). The backend decides what a
"tensor" is and whether operations happen in place:

* :class:`TensorOps` -- one tensor at a time, in place (the forloop path);
* :class:`FunctionalOps` -- one tensor at a time, out of place, so autograd can differentiate
  through ``step()`` (``differentiable=True``);
* :class:`ForeachOps` -- a list of tensors at a time through ``torch._foreach_*`` kernels.

Every method returns its result, and the update math always rebinds names to what an op returns
(``m = ops.lerp_(m, g, w)``). In place backends return the mutated input; the functional backend
returns a new tensor. That one convention lets the same source run in place, out of place, over
lists, or be traced symbolically (the fused code generators).

Scalars (learning rate, bias corrections, ...) may be Python numbers, 0-d tensors (capturable or
compiled steps), or -- in the foreach backend -- 1-d tensors holding one value per tensor of the
list.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

# what the torch._foreach_* functions return (their stubs say tuple, they build lists)
Tensors = list[Tensor] | tuple[Tensor, ...]

Scalar = Any  # float | int | Tensor (0-d, or 1-d per-tensor values in ForeachOps)

_FLOAT32 = struct.Struct("f")


def _round_to(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype`` (to nearest, as a tensor of that dtype would hold it)."""
    if dtype is torch.float32:
        try:
            return _FLOAT32.unpack(_FLOAT32.pack(value))[0]
        except OverflowError:  # beyond float32's range: a float32 tensor holds +-inf
            return math.copysign(math.inf, value)
    return torch.tensor(value, dtype=dtype).item()


class StoredScalar(float):
    """A scalar state entry (``step``, ``mu_product``) read from its 0-d tensor as a Python
    float that remembers the tensor's dtype.

    The forloop and foreach paths read scalar state once per step as Python numbers; plain
    arithmetic on it is double precision, exactly as torch.optim's ``_get_value(t)``. Only
    where torch.optim updates the state *tensor* itself (``mu_product *= mu``) does the
    precision of the tensor matter: :func:`stored_mul` reproduces that. The base class hands
    out a ``StoredScalar`` only for tensors that are not float64.
    """

    __slots__ = ("dtype",)

    def __new__(cls, value: float, dtype: torch.dtype) -> StoredScalar:
        self = super().__new__(cls, value)
        self.dtype = dtype
        return self


def stored_mul(stored: Any, factor: Any) -> Any:
    """``stored * factor`` as torch.optim's in-place ``state_tensor.mul_(factor)`` computes it.

    A 0-d tensor multiplied by a Python number works in the tensor's dtype: the number is
    rounded to it first and the product is rounded again. For a :class:`StoredScalar` this
    returns that rounded value (a float); tensors (capturable or compiled steps) and traced
    values (the fused code generators) are simply multiplied.
    """
    if isinstance(stored, StoredScalar) and isinstance(factor, (int, float)):
        dtype = stored.dtype
        return _round_to(float(stored) * _round_to(float(factor), dtype), dtype)
    own = getattr(type(stored), "stored_mul", None)
    if own is not None:  # a value type that knows how its state is stored rounds by itself
        return own(stored, factor)
    return stored * factor


class TensorOps:
    """Single-tensor, in-place backend (the forloop path)."""

    # out of place -------------------------------------------------------------------------
    @staticmethod
    def clone(x: Tensor) -> Tensor:
        return x.detach().clone()

    # (ops that only forward are the tensor methods themselves: no Python frame per op, which
    # on a small model is a visible part of the step)
    neg = staticmethod(Tensor.neg)
    abs = staticmethod(Tensor.abs)
    sqrt = staticmethod(Tensor.sqrt)

    @staticmethod
    def add(x: Tensor, y: Tensor | Scalar, alpha: Scalar = 1) -> Tensor:
        if isinstance(alpha, Tensor):
            return x + y * alpha
        if alpha == 1:  # the same sum, without parsing an alpha argument (a third of the call)
            return x.add(y)
        return x.add(y, alpha=alpha)

    mul = staticmethod(Tensor.mul)
    div = staticmethod(Tensor.div)

    @staticmethod
    def addcmul(x: Tensor, a: Tensor, b: Tensor, value: Scalar = 1) -> Tensor:
        if isinstance(value, Tensor):
            return x + a * b * value
        return torch.addcmul(x, a, b, value=value)

    # in place -----------------------------------------------------------------------------
    @staticmethod
    def add_(x: Tensor, y: Tensor | Scalar, alpha: Scalar = 1) -> Tensor:
        if isinstance(alpha, Tensor):
            return x.add_(y * alpha)
        if alpha == 1:
            return x.add_(y)
        return x.add_(y, alpha=alpha)

    mul_ = staticmethod(Tensor.mul_)
    div_ = staticmethod(Tensor.div_)
    sqrt_ = staticmethod(Tensor.sqrt_)
    lerp_ = staticmethod(Tensor.lerp_)

    @staticmethod
    def maximum_(x: Tensor, y: Tensor) -> Tensor:
        return torch.maximum(x, y, out=x)

    @staticmethod
    def addcmul_(x: Tensor, a: Tensor, b: Tensor, value: Scalar = 1) -> Tensor:
        if isinstance(value, Tensor):
            return x.addcmul_(a, b * value)
        return x.addcmul_(a, b, value=value)

    @staticmethod
    def addcdiv_(x: Tensor, a: Tensor, b: Tensor, value: Scalar = 1) -> Tensor:
        if isinstance(value, Tensor):
            return x.addcdiv_(a * value, b)
        return x.addcdiv_(a, b, value=value)


#: CPU dtypes whose kernels read a scalar operand as the tensor's own dtype
_OPERAND_DTYPES = (torch.float32, torch.float64)
#: tensor types that accept a plain 0-d tensor where a number was (DTensor, for one, refuses
#: to mix with plain tensors)
_PLAIN_TYPES = (Tensor, torch.nn.Parameter)
_operands: dict[tuple[float, torch.dtype], Tensor] = {}


def _operand(x: Tensor, y: Any) -> Any:
    """``y`` as :class:`EagerOps` passes it with ``x``: a float as a cached 0-d tensor of
    ``x``'s dtype (plain float32/float64 CPU tensors), anything else as it is."""
    if (not isinstance(y, float) or y == 0 or type(x) not in _PLAIN_TYPES
            or x.dtype not in _OPERAND_DTYPES or not x.is_cpu):
        return y  # (zero: 0.0 and -0.0 are one dict key but different multipliers)
    key = (y, x.dtype)
    cached = _operands.get(key)
    if cached is None:
        if len(_operands) >= 256:  # values that change every step (a schedule) stay bounded
            _operands.clear()
        with torch.inference_mode(False), torch.no_grad():
            cached = _operands[key] = torch.tensor(y, dtype=x.dtype)
    return cached


class EagerOps(TensorOps):
    """:class:`TensorOps` for an eager step whose scalars are Python numbers (the default
    forloop path).

    torch wraps a Python number into a fresh tensor on every call, which on a small tensor
    costs more than the arithmetic (``x.mul_(0.9)`` takes about twice ``x.mul_(t)``). Here a
    float multiplies, divides or is added as a cached 0-d tensor of the operand's dtype. For
    float32/float64 CPU tensors the kernel takes the same path either way (a CPU scalar of
    that dtype), so the results are bitwise those of the number; other tensors get the number.
    """

    @staticmethod
    def add(x: Tensor, y: Tensor | Scalar, alpha: Scalar = 1) -> Tensor:
        if alpha == 1:
            return x.add(_operand(x, y))
        return TensorOps.add(x, y, alpha)

    @staticmethod
    def mul(x: Tensor, y: Tensor | Scalar) -> Tensor:
        return x.mul(_operand(x, y))

    @staticmethod
    def div(x: Tensor, y: Tensor | Scalar) -> Tensor:
        return x.div(_operand(x, y))

    @staticmethod
    def add_(x: Tensor, y: Tensor | Scalar, alpha: Scalar = 1) -> Tensor:
        if alpha == 1:
            return x.add_(_operand(x, y))
        return TensorOps.add_(x, y, alpha)

    @staticmethod
    def mul_(x: Tensor, y: Tensor | Scalar) -> Tensor:
        return x.mul_(_operand(x, y))

    @staticmethod
    def div_(x: Tensor, y: Tensor | Scalar) -> Tensor:
        return x.div_(_operand(x, y))


class FunctionalOps(TensorOps):
    """Single-tensor, out-of-place backend: every op builds a new tensor (differentiable=True)."""

    @staticmethod
    def clone(x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def add_(x: Tensor, y: Tensor | Scalar, alpha: Scalar = 1) -> Tensor:
        return TensorOps.add(x, y, alpha)

    @staticmethod
    def mul_(x: Tensor, y: Tensor | Scalar) -> Tensor:
        return x.mul(y)

    @staticmethod
    def div_(x: Tensor, y: Tensor | Scalar) -> Tensor:
        return x.div(y)

    @staticmethod
    def sqrt_(x: Tensor) -> Tensor:
        return x.sqrt()

    @staticmethod
    def lerp_(x: Tensor, y: Tensor, weight: Scalar) -> Tensor:
        return x.lerp(y, weight)

    @staticmethod
    def maximum_(x: Tensor, y: Tensor) -> Tensor:
        return torch.maximum(x, y)

    @staticmethod
    def addcmul_(x: Tensor, a: Tensor, b: Tensor, value: Scalar = 1) -> Tensor:
        return TensorOps.addcmul(x, a, b, value)

    @staticmethod
    def addcdiv_(x: Tensor, a: Tensor, b: Tensor, value: Scalar = 1) -> Tensor:
        if isinstance(value, Tensor):
            return x + a * value / b
        return torch.addcdiv(x, a, b, value=value)


def _scaled(y: Scalar, alpha: Scalar) -> Scalar:
    """``y * alpha`` for scalars, skipping the multiply for the literal 1."""
    if isinstance(alpha, (int, float)) and alpha == 1:
        return y
    return y * alpha


#: set while a foreach pass runs with per-replica values (see :func:`broadcast_scalars`)
_BROADCAST: ContextVar[bool] = ContextVar("torchopt_survey_broadcast", default=False)


@contextmanager
def broadcast_scalars() -> Iterator[None]:
    """Within this block a tensor scalar of :class:`ForeachOps` is shared by every list entry
    and broadcast against it (per-replica values shaped ``[N, 1, ..., 1]``), instead of
    holding one value per entry (capturable steps)."""
    token = _BROADCAST.set(True)
    try:
        yield
    finally:
        _BROADCAST.reset(token)


def _per_tensor(s: Tensor, n: int) -> list[Tensor]:
    """A tensor scalar as one tensor per list entry (1-d: one value each; 0-d or per-replica
    values: shared)."""
    if s.dim() == 0 or _BROADCAST.get():
        return [s] * n
    return list(s.unbind(0))


class ForeachOps:
    """List backend through the ``torch._foreach_*`` multi-tensor kernels.

    A "tensor" is a list of tensors. A scalar is a Python number (one value for the whole list:
    the fast, common case), or a tensor: 0-d (shared) or 1-d with one value per list entry
    (capturable or compiled steps, where per-parameter step counts live on the device).
    """

    # out of place -------------------------------------------------------------------------
    @staticmethod
    def clone(xs: list[Tensor]) -> Tensors:
        return [x.detach().clone() for x in xs]

    @staticmethod
    def neg(xs: list[Tensor]) -> Tensors:
        return torch._foreach_neg(xs)

    @staticmethod
    def abs(xs: list[Tensor]) -> Tensors:
        return torch._foreach_abs(xs)

    @staticmethod
    def sqrt(xs: list[Tensor]) -> Tensors:
        return torch._foreach_sqrt(xs)

    @staticmethod
    def add(xs: list[Tensor], y: Any, alpha: Scalar = 1) -> Tensors:
        if isinstance(y, (list, tuple)):
            if isinstance(alpha, Tensor):
                return torch._foreach_add(xs, torch._foreach_mul(y, _per_tensor(alpha, len(y))))
            return torch._foreach_add(xs, y, alpha=alpha)
        if isinstance(y, Tensor):
            return torch._foreach_add(xs, _per_tensor(_scaled(y, alpha), len(xs)))
        return torch._foreach_add(xs, _scaled(y, alpha))

    @staticmethod
    def mul(xs: list[Tensor], y: Any) -> Tensors:
        if isinstance(y, Tensor):
            y = _per_tensor(y, len(xs))
        return torch._foreach_mul(xs, y)

    @staticmethod
    def div(xs: list[Tensor], y: Any) -> Tensors:
        if isinstance(y, Tensor):
            y = _per_tensor(y, len(xs))
        return torch._foreach_div(xs, y)

    @staticmethod
    def addcmul(xs: list[Tensor], a: list[Tensor], b: list[Tensor], value: Scalar = 1):
        if isinstance(value, Tensor):
            return torch._foreach_addcmul(xs, a, torch._foreach_mul(b, _per_tensor(value, len(b))))
        return torch._foreach_addcmul(xs, a, b, value=value)

    # in place -----------------------------------------------------------------------------
    @staticmethod
    def add_(xs: list[Tensor], y: Any, alpha: Scalar = 1) -> Tensors:
        if isinstance(y, (list, tuple)):
            if isinstance(alpha, Tensor):
                torch._foreach_add_(xs, torch._foreach_mul(y, _per_tensor(alpha, len(y))))
            else:
                torch._foreach_add_(xs, y, alpha=alpha)
        elif isinstance(y, Tensor):
            torch._foreach_add_(xs, _per_tensor(_scaled(y, alpha), len(xs)))
        else:
            torch._foreach_add_(xs, _scaled(y, alpha))
        return xs

    @staticmethod
    def mul_(xs: list[Tensor], y: Any) -> Tensors:
        if isinstance(y, Tensor):
            y = _per_tensor(y, len(xs))
        torch._foreach_mul_(xs, y)
        return xs

    @staticmethod
    def div_(xs: list[Tensor], y: Any) -> Tensors:
        if isinstance(y, Tensor):
            y = _per_tensor(y, len(xs))
        torch._foreach_div_(xs, y)
        return xs

    @staticmethod
    def sqrt_(xs: list[Tensor]) -> Tensors:
        torch._foreach_sqrt_(xs)
        return xs

    @staticmethod
    def lerp_(xs: list[Tensor], ys: list[Tensor], weight: Scalar) -> Tensors:
        if isinstance(weight, Tensor):
            # lerp has no tensor-scalar overload: x + w * (y - x), same math.
            diff = torch._foreach_sub(ys, xs)
            torch._foreach_mul_(diff, _per_tensor(weight, len(xs)))
            torch._foreach_add_(xs, diff)
        else:
            torch._foreach_lerp_(xs, ys, weight)
        return xs

    @staticmethod
    def maximum_(xs: list[Tensor], ys: list[Tensor]) -> Tensors:
        torch._foreach_maximum_(xs, ys)
        return xs

    @staticmethod
    def addcmul_(xs, a, b, value: Scalar = 1) -> Tensors:
        if isinstance(value, Tensor):
            torch._foreach_addcmul_(xs, a, torch._foreach_mul(b, _per_tensor(value, len(b))))
        else:
            torch._foreach_addcmul_(xs, a, b, value=value)
        return xs

    @staticmethod
    def addcdiv_(xs, a, b, value: Scalar = 1) -> Tensors:
        if isinstance(value, Tensor):
            torch._foreach_addcdiv_(xs, torch._foreach_mul(a, _per_tensor(value, len(a))), b)
        else:
            torch._foreach_addcdiv_(xs, a, b, value=value)
        return xs
