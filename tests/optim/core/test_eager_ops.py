"""EagerOps passes Python floats as cached 0-d tensors: results must be the number's, bitwise."""

from __future__ import annotations

import math

import pytest
import torch

from torchopt_survey.optim.core import ops as ops_module
from torchopt_survey.optim.core.ops import EagerOps, TensorOps

SCALARS = [0.9, -1e-3, 1e-8, 0.0, -0.0, 1.0, 1e40, -math.inf, math.nan, 1 / 3]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bytes (NaN equals NaN, 0.0 differs from -0.0)."""
    as_int = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
    return a.dtype == b.dtype and torch.equal(a.contiguous().view(as_int),
                                              b.contiguous().view(as_int))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", ["add", "mul", "div", "add_", "mul_", "div_"])
def test_same_bits_as_the_python_number(op: str, dtype: torch.dtype) -> None:
    base = torch.randn(37, generator=torch.Generator().manual_seed(0)).to(dtype)
    base[:4] = torch.tensor([0.0, -0.0, math.inf, 1e-30])
    for scalar in SCALARS:
        ours = getattr(EagerOps, op)(base.clone(), scalar)
        reference = getattr(TensorOps, op)(base.clone(), scalar)
        assert _bits_equal(ours, reference), (op, scalar)


def test_cache_stays_bounded_and_negative_zero_is_not_zero() -> None:
    x = torch.ones(3)
    for step in range(1000):  # a value that changes every step (a schedule)
        EagerOps.mul_(x, 1.0 + step * 1e-6)
    assert len(ops_module._operands) <= 256
    assert torch.equal(torch.signbit(EagerOps.mul(torch.ones(2), -0.0)), torch.tensor([True] * 2))


class _Subclass(torch.Tensor):
    pass


def test_numbers_reach_tensor_subclasses_unchanged() -> None:
    # a subclass (DTensor, a fake tensor under tracing) may refuse a plain 0-d tensor operand
    plain, sub = torch.ones(3), torch.ones(3).as_subclass(_Subclass)
    assert isinstance(ops_module._operand(plain, 0.5), torch.Tensor)
    assert ops_module._operand(torch.nn.Parameter(torch.ones(3)), 0.5).dim() == 0
    assert ops_module._operand(sub, 0.5) == 0.5 and type(ops_module._operand(sub, 0.5)) is float
