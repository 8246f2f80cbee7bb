"""Per-replica hyperparameters: one value per stacked replica, broadcast along dim 0.

When a group's parameters hold N replicas of a model stacked along a leading dimension
(``torch.func.stack_module_state``), a float hyperparameter may be a 1-d tensor of N values:
replica ``r`` is updated exactly as a run with that hyperparameter's ``r``-th value would be.
The method's update math does not change: the machinery hands it the hyperparameter reshaped
to ``[N, 1, ..., 1]`` for each parameter (forloop/foreach), or indexes it by replica inside the
generated kernels (``fused=True``).

The math branches on a few hyperparameters compared with 0 (``momentum == 0``); a
:class:`Replicas` answers such a comparison when every replica agrees and raises otherwise, so
a run never silently takes one replica's branch for all.
"""

from __future__ import annotations

import operator
from typing import Any, TypeGuard

import torch
from torch import Tensor

_COMPARE = {"==": operator.eq, "!=": operator.ne, ">": operator.gt, "<": operator.lt,
            ">=": operator.ge, "<=": operator.le}


class Replicas(Tensor):
    """A per-replica hyperparameter (a view of the user's tensor: in-place changes show).

    Arithmetic on it gives plain tensors (torch function disabled, as for ``nn.Parameter``);
    comparing it with a Python number gives a Python bool when all replicas agree.
    """

    # as nn.Parameter does (torch's own stubs declare the attribute as a classmethod)
    __torch_function__ = torch._C._disabled_torch_function_impl  # pyright: ignore
    __hash__ = Tensor.__hash__

    @staticmethod
    def wrap(value: Tensor) -> Replicas:
        return value if isinstance(value, Replicas) else Tensor._make_subclass(
            Replicas, value.detach(), False)

    def _agree(self, other: Any, op: str) -> Any:
        if isinstance(other, bool) or not isinstance(other, (int, float)):
            # (a tensor comparison stays elementwise)
            return _COMPARE[op](self.as_subclass(Tensor), other)
        values = self.as_subclass(Tensor).reshape(-1).tolist()
        answers = {_COMPARE[op](v, other) for v in values}
        if len(answers) != 1:
            raise ValueError(
                f"per-replica hyperparameter {values}: the update takes a different "
                f"branch for replicas with value {op} {other} and the others; put those "
                "replicas in separate parameter groups"
            )
        return answers.pop()

    def __eq__(self, other: Any) -> Any:  # type: ignore[override]
        return self._agree(other, "==")

    def __ne__(self, other: Any) -> Any:  # type: ignore[override]
        return self._agree(other, "!=")

    def __gt__(self, other: Any) -> Any:
        return self._agree(other, ">")

    def __lt__(self, other: Any) -> Any:
        return self._agree(other, "<")

    def __ge__(self, other: Any) -> Any:
        return self._agree(other, ">=")

    def __le__(self, other: Any) -> Any:
        return self._agree(other, "<=")

    def __bool__(self) -> bool:
        # ("if momentum:" in a method's checks means "momentum != 0", for every replica)
        return bool(self._agree(0, "!="))

    def __repr__(self) -> str:
        return f"Replicas({self.as_subclass(Tensor).tolist()})"

    def __reduce_ex__(self, protocol: int) -> Any:
        # saved (torch.save, deepcopy) as a plain tensor: wrapped again where it is used
        return self.as_subclass(Tensor).clone().__reduce_ex__(protocol)

    def __deepcopy__(self, memo: dict) -> Replicas:
        return Replicas.wrap(self.as_subclass(Tensor).clone())


def is_replicas(value: Any) -> TypeGuard[Tensor]:
    """A 1-d tensor of more than one value: one hyperparameter value per replica."""
    return isinstance(value, Tensor) and value.dim() == 1 and value.numel() > 1


def wrap_group(group: dict[str, Any]) -> None:
    """Wrap every per-replica value of ``group`` (betas pairs included) in place."""
    for key, value in group.items():
        if key == "params":
            continue
        if is_replicas(value):
            group[key] = Replicas.wrap(value)
        elif isinstance(value, tuple) and any(is_replicas(v) for v in value):
            group[key] = tuple(Replicas.wrap(v) if is_replicas(v) else v for v in value)


def replica_keys(group: dict[str, Any]) -> list[tuple[str, int | None, int]]:
    """``(key, tuple index or None, N)`` of every per-replica value of ``group``."""
    found = []
    for key, value in group.items():
        if key == "params":
            continue
        if isinstance(value, tuple):
            found.extend((key, i, v.numel()) for i, v in enumerate(value) if is_replicas(v))
        elif is_replicas(value):
            found.append((key, None, value.numel()))
    return found


def replica_count(group: dict[str, Any], params: list[Tensor], where: str = "") -> int | None:
    """The group's number of replicas N (None: no per-replica value), checked.

    Every per-replica value must have N entries and every parameter a leading dim of N.
    """
    keys = replica_keys(group)
    if not keys:
        return None
    key0, index0, n = keys[0]
    name0 = key0 if index0 is None else f"{key0}[{index0}]"
    for key, index, count in keys[1:]:
        if count != n:
            name = key if index is None else f"{key}[{index}]"
            raise ValueError(
                f"{where}{name} has shape [{count}] but {where}{name0} has shape [{n}]: "
                "per-replica hyperparameters of a group need one value per replica each"
            )
    for j, param in enumerate(params):
        if param.dim() == 0 or param.shape[0] != n:
            raise ValueError(
                f"{where}{name0} has shape [{n}] (one value per replica), but "
                f"{where}params[{j}] has shape {tuple(param.shape)}: every parameter of the "
                f"group must stack {n} replicas along dim 0"
            )
    return n


def per_ndim(hp: dict[str, Any], ndim: int) -> dict[str, Any]:
    """``hp`` with every per-replica value reshaped to ``[N, 1, ..., 1]`` (``ndim`` dims)."""
    def shaped(value: Any) -> Any:
        if isinstance(value, Replicas):
            return Replicas.wrap(value.as_subclass(Tensor).reshape((-1,) + (1,) * (ndim - 1)))
        return value

    out = {}
    for key, value in hp.items():
        if isinstance(value, tuple):
            out[key] = tuple(shaped(v) for v in value)
        else:
            out[key] = shaped(value)
    return out
