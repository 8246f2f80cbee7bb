"""Argument checks shared by every optimizer: a clear ValueError/TypeError naming the argument.

torch.optim's own checks are the floor; these add type checks where torch fails late or with a
bare TypeError/IndexError (``lr='0.1'``, ``betas=(0.9,)``, ``momentum=None``, NaN values).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor

from .replicas import is_replicas

Check = Callable[[str, Any], None]


class FlagConflict(ValueError, RuntimeError):
    """Flags that cannot be combined (``fused`` with ``foreach`` or ``differentiable``).

    A ValueError naming them, like every bad input here, that is also the RuntimeError
    torch.optim raises for the same combinations: code catching either keeps working.
    """


def _number(name: str, value: Any, *, allow_tensor: bool) -> float:
    """Return ``value`` as a float, or raise TypeError naming ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number, not bool ({value!r})")
    if isinstance(value, Tensor):
        if not allow_tensor:
            raise TypeError(f"{name} must be a float, not a Tensor")
        if value.numel() != 1:
            raise ValueError(
                f"Tensor {name} must be 1-element, or 1-d with one value per replica, got "
                f"shape {tuple(value.shape)}"
            )
        if not value.is_floating_point():
            raise TypeError(f"Tensor {name} must have a floating dtype, got {value.dtype}")
        if value.requires_grad:
            return float(value.detach().item())
        return float(value.item())
    if not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"Invalid {name}: {value} (NaN)")
    return number


def _numbers(name: str, value: Any, *, allow_tensor: bool) -> list[tuple[str, float]]:
    """``(name, value)`` of each value to check: one, or one per replica (see ``replicas``)."""
    if is_replicas(value):  # any float hyperparameter may be per-replica
        if not value.is_floating_point():
            raise TypeError(f"Tensor {name} must have a floating dtype, got {value.dtype}")
        values = value.detach().tolist()
        if any(math.isnan(v) for v in values):
            raise ValueError(f"Invalid {name}: {values} (NaN)")
        return [(f"{name}[replica {r}]", v) for r, v in enumerate(values)]
    return [(name, _number(name, value, allow_tensor=allow_tensor))]


def non_negative(*, allow_tensor: bool = False, finite: bool = True) -> Check:
    """value >= 0 (and finite)."""

    def check(name: str, value: Any) -> None:
        for label, number in _numbers(name, value, allow_tensor=allow_tensor):
            shown = number if label != name else value
            if not number >= 0.0:
                raise ValueError(f"Invalid {label}: {shown} (must be >= 0)")
            if finite and math.isinf(number):
                raise ValueError(f"Invalid {label}: {shown} (must be finite)")

    return check


def unit_interval(*, closed_right: bool, allow_tensor: bool = False) -> Check:
    """0 <= value < 1 (or <= 1 when ``closed_right``)."""

    def check(name: str, value: Any) -> None:
        for label, number in _numbers(name, value, allow_tensor=allow_tensor):
            shown = number if label != name else value
            ok = 0.0 <= number <= 1.0 if closed_right else 0.0 <= number < 1.0
            if not ok:
                bound = "[0, 1]" if closed_right else "[0, 1)"
                raise ValueError(f"Invalid {label}: {shown} (must be in {bound})")

    return check


def betas(*, allow_tensor: bool = False) -> Check:
    """A pair (beta1, beta2), each in [0, 1)."""
    element = unit_interval(closed_right=False, allow_tensor=allow_tensor)

    def check(name: str, value: Any) -> None:
        if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
            raise TypeError(f"{name} must be a tuple of two numbers, got {value!r}")
        if len(value) != 2:
            raise ValueError(f"{name} must have exactly two elements (beta1, beta2), got {value!r}")
        for index, beta in enumerate(value):
            element(f"{name}[{index}]", beta)
        scalar_tensor = [isinstance(b, Tensor) and not is_replicas(b) for b in value]
        if any(scalar_tensor) and not all(isinstance(b, Tensor) for b in value):
            raise ValueError(f"{name} must be either both floats or both Tensors")

    return check


def boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")


def optional_boolean(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None, got {value!r}")


def one_of(*choices: Any) -> Check:
    def check(name: str, value: Any) -> None:
        if value not in choices:
            options = ", ".join(map(repr, choices))
            raise ValueError(f"Invalid {name}: {value!r} (choose from {options})")

    return check


# Flags every optimizer of this package takes, with torch.optim's meaning.
COMMON_FLAGS: dict[str, Check] = {
    "maximize": boolean,
    "foreach": optional_boolean,
    "differentiable": boolean,
    "fused": optional_boolean,
}


def check_params_dtype(params: list[Tensor]) -> None:
    """Only floating point and complex tensors can be optimized."""
    for index, param in enumerate(params):
        if not (param.is_floating_point() or param.is_complex()):
            raise TypeError(
                f"params[{index}] has dtype {param.dtype}: only floating point and complex "
                "tensors can be optimized"
            )


# --- checks used by the closure-based (second-order) methods


def positive_int(name: str, value: Any) -> None:
    """An int >= 1 (bools are refused: ``max_iter=True`` is a mistake, not 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < 1:
        raise ValueError(f"Invalid {name}: {value} (must be >= 1)")


def optional_positive_int(name: str, value: Any) -> None:
    if value is not None:
        positive_int(name, value)


def positive(name: str, value: Any) -> None:
    """A finite number > 0."""
    number = _number(name, value, allow_tensor=False)
    if not (0.0 < number < math.inf):
        raise ValueError(f"Invalid {name}: {value} (must be > 0 and finite)")


def open_unit_interval(name: str, value: Any) -> None:
    """0 < value < 1."""
    number = _number(name, value, allow_tensor=False)
    if not 0.0 < number < 1.0:
        raise ValueError(f"Invalid {name}: {value} (must be in (0, 1))")


def optional_open_unit_interval(name: str, value: Any) -> None:
    if value is not None:
        open_unit_interval(name, value)
