"""The one walk over a traced graph that both kernel emitters share.

A traced update (see :mod:`.tracing`) is straight-line SSA: leaves (param, grad, state,
hyperparameters), scalar nodes (float64, computed once per tensor: bias corrections, NAdam's
schedule) and tensor nodes (one per element, in the kernel's compute type). Turning it into code
is the same walk for every language -- skip dead nodes, load leaves, cast a scalar once where a
tensor expression first uses it, emit each node, store the outputs -- and only the spelling
differs. :class:`Dialect` is that spelling; ``emit_c`` and ``emit_triton`` each provide one and
wrap :func:`walk`'s lines in their own function skeleton. A new op is added to the walk once and
spelled once per dialect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .tracing import Traced, _is_ref


class Dialect:
    """How one language spells the pieces of a kernel (override every method).

    ``wide`` says whether tensor arithmetic runs in float64 (float64 parameters) or float32;
    ``dtypes`` holds one storage dtype per slot (param, grad, each state; ``None`` if absent).
    """

    def __init__(self, dtypes: tuple[Any, ...], has_grad_scale: bool) -> None:
        self.dtypes = dtypes
        self.has_grad_scale = has_grad_scale
        self.wide = any(d == torch.float64 for d in dtypes[:2] if d is not None)

    # literals and conversions ---------------------------------------------------------------
    def tensor_const(self, value: float) -> str:
        """A constant in the tensor compute type."""
        raise NotImplementedError

    def scalar_const(self, value: float) -> str:
        """A float64 constant."""
        raise NotImplementedError

    def cast(self, index: int) -> str:
        """Statement defining ``c<index>``: scalar ``s<index>`` in the tensor compute type."""
        raise NotImplementedError

    # nodes ------------------------------------------------------------------------------
    def define_scalar(self, index: int, expr: str) -> str:
        raise NotImplementedError

    def define_tensor(self, index: int, expr: str) -> str:
        raise NotImplementedError

    def tensor_op(self, op: str, args: list[str]) -> str:
        """Expression of an elementwise node (operands already in the compute type)."""
        raise NotImplementedError

    def scalar_op(self, op: str, args: list[str], raw: tuple[Any, ...]) -> str:
        """Expression of a float64 scalar node (``raw``: node ids or Python constants)."""
        raise NotImplementedError

    # leaves and outputs -------------------------------------------------------------------
    def load_tensor(self, index: int, slot: int) -> list[str]:
        """Statements defining ``v<index>`` from slot ``slot`` (grad unscaling included)."""
        raise NotImplementedError

    def load_hp(self, index: int, position: int) -> str:
        """Statement defining ``s<index>`` from hyperparameter number ``position``."""
        raise NotImplementedError

    def load_scalar_state(self, index: int, slot: int) -> str:
        raise NotImplementedError

    def store_tensor(self, slot: int, expr: str) -> str:
        raise NotImplementedError

    def store_scalar_state(self, slot: int, expr: str) -> str:
        raise NotImplementedError


@dataclass
class Body:
    """The walk's output, for the emitter to place in its skeleton."""

    #: per tensor, before the element loop: hyperparameter/state scalar loads, scalar math
    scalar_lines: list[str] = field(default_factory=list)
    #: per element: loads and elementwise math
    tensor_lines: list[str] = field(default_factory=list)
    #: per element: stores of param and tensor states
    stores: list[str] = field(default_factory=list)
    #: per tensor, once every element is done: new scalar state (``step``...)
    scalar_stores: list[str] = field(default_factory=list)


def slot_layout(traced: Traced) -> tuple[dict[str, int], dict[str, str]]:
    """Slot number and kind ("tensor"/"scalar"/"lazy") of every named input."""
    slot_of = {"param": 0, "grad": 1}
    kinds = {"param": "tensor", "grad": "tensor"}
    for index, (name, kind, _present) in enumerate(traced.slots):
        slot_of[name] = 2 + index
        kinds[name] = kind
    return slot_of, kinds


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"fused: non-finite constant {value} in the traced update")
    return float(value)


def walk(traced: Traced, dialect: Dialect) -> Body:
    """Emit every live node of ``traced`` in ``dialect`` (see the module docstring)."""
    graph = traced.graph
    live = graph.live()
    slot_of, kinds = slot_layout(traced)
    hp_position = {ref: j for j, ref in enumerate(graph.hp_nodes)}
    body = Body()
    casts: set[int] = set()

    def operand(arg: Any, tensor_ctx: bool) -> str:
        if not _is_ref(arg):
            value = _finite(arg)
            return dialect.tensor_const(value) if tensor_ctx else dialect.scalar_const(value)
        if graph.nodes[arg].is_tensor:
            return f"v{arg}"
        if not tensor_ctx:
            return f"s{arg}"
        if arg not in casts:  # each scalar is converted once, where a tensor first needs it
            casts.add(arg)
            body.scalar_lines.append(dialect.cast(arg))
        return f"c{arg}"

    for index, node in enumerate(graph.nodes):
        if not live[index]:
            continue
        if node.op == "leaf":
            if node.is_tensor:
                slot = slot_of[node.name.split(":", 1)[-1]]
                body.tensor_lines.extend(dialect.load_tensor(index, slot))
            elif node.name.startswith("hp:"):
                body.scalar_lines.append(dialect.load_hp(index, hp_position[index]))
            else:
                slot = slot_of[node.name.split(":", 1)[1]]
                body.scalar_lines.append(dialect.load_scalar_state(index, slot))
        elif node.is_tensor:
            expr = dialect.tensor_op(node.op, [operand(a, True) for a in node.args])
            body.tensor_lines.append(dialect.define_tensor(index, expr))
        else:
            expr = dialect.scalar_op(node.op, [operand(a, False) for a in node.args], node.args)
            body.scalar_lines.append(dialect.define_scalar(index, expr))

    for name, value in graph.outputs.items():
        slot = slot_of[name]
        if kinds[name] == "scalar":
            body.scalar_stores.append(dialect.store_scalar_state(slot, operand(value, False)))
        else:
            body.stores.append(dialect.store_tensor(slot, operand(value, True)))
    return body
