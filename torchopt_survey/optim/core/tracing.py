"""Symbolic tracing of the one-source update math, for the fused code generators.

The fused paths never get a hand-written kernel per method. Instead, a method's
``_preprocess`` + ``_update`` run once against :class:`SymOps`, an ``ops`` backend whose
"tensors" are nodes of an elementwise expression graph and whose scalars (learning rate, betas,
``step``, ``mu_product``...) are symbolic too. The resulting :class:`Graph` is straight-line SSA:
because the math always rebinds names to what an op returns, an in-place op is simply a new node,
and what the math leaves in ``state[...]`` (and returns for the parameter) are the outputs.

One walk (``emit``) turns a graph into one pass over the data, spelled in C for CPU
(``emit_c``) or Triton for CUDA (``emit_triton``). Scalar sub-expressions (bias corrections,
NAdam's momentum schedule) are computed once per tensor in float64 *inside* the kernel from the
stored ``step``, and every float hyperparameter is a runtime argument, so a scheduler changing
``lr`` -- a float or a tensor -- never recompiles anything.

What decides the graph (the "structure key"): the optimizer class, its boolean/string flags, the
*sign class* of numeric hyperparameters (the math branches only on ``momentum == 0``,
``weight_decay != 0``, ``momentum > 0``), and which lazy states exist yet. Comparing a symbolic
value with anything but 0 raises, so a method whose math would need another guard fails loudly
at trace time instead of silently baking a value in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from .replicas import Replicas, is_replicas

Number = int | float


@dataclass
class Node:
    """One SSA value: ``op`` applied to ``args`` (node ids, or Python numbers for constants)."""

    op: str
    args: tuple[Any, ...]
    is_tensor: bool
    name: str = ""  # leaves only: "param", "grad", "state:<name>", "hp:<key>" or "hp:<key>.<i>"


@dataclass
class Graph:
    """The traced update: nodes in creation (= topological) order plus its inputs and outputs."""

    nodes: list[Node] = field(default_factory=list)
    #: hyperparameter leaves as (group key, tuple index or None), in node order
    hp_leaves: list[tuple[str, int | None]] = field(default_factory=list)
    #: node id of each hyperparameter leaf, parallel to ``hp_leaves``
    hp_nodes: list[int] = field(default_factory=list)
    #: output name ("param" or a state name) -> node id or Python number
    outputs: dict[str, Any] = field(default_factory=dict)
    #: node ids of hyperparameter leaves with one value per replica
    replica_nodes: set[int] = field(default_factory=set)

    def depends_on(self, ref: Any, leaves: set[int]) -> bool:
        """Whether the value ``ref`` is computed from any of the nodes ``leaves``."""
        stack, seen = [ref] if _is_ref(ref) else [], set()
        while stack:
            index = stack.pop()
            if index in leaves:
                return True
            if index not in seen:
                seen.add(index)
                stack.extend(a for a in self.nodes[index].args if _is_ref(a))
        return False

    def add(self, op: str, args: tuple[Any, ...], is_tensor: bool, name: str = "") -> int:
        self.nodes.append(Node(op, args, is_tensor, name))
        return len(self.nodes) - 1

    def live(self) -> list[bool]:
        """Which nodes some output depends on (dead code is not emitted)."""
        keep = [False] * len(self.nodes)
        stack = [v for v in self.outputs.values() if _is_ref(v)]
        while stack:
            index = stack.pop()
            if keep[index]:
                continue
            keep[index] = True
            stack.extend(a for a in self.nodes[index].args if _is_ref(a))
        return keep

    def describe(self) -> str:
        """A readable listing (used in generated sources as a comment, and for debugging)."""
        lines = []
        for index, node in enumerate(self.nodes):
            kind = "T" if node.is_tensor else "S"
            args = ", ".join(f"%{a}" if _is_ref(a) else repr(a) for a in node.args)
            label = f" [{node.name}]" if node.name else ""
            lines.append(f"%{index} {kind} = {node.op}({args}){label}")
        lines.extend(f"out {k} = {'%' + str(v) if _is_ref(v) else v}" for k, v in
                     self.outputs.items())
        return "\n".join(lines)


class _Ref(int):
    """A node id (an int subclass, so constants and references can't be confused)."""


def _is_ref(value: Any) -> bool:
    return isinstance(value, _Ref)


class SVal:
    """A symbolic scalar: Python arithmetic on it records scalar nodes (constant-folded)."""

    __slots__ = ("graph", "ref", "sign")

    def __init__(self, graph: Graph, ref: _Ref, sign: int | None = None) -> None:
        self.graph = graph
        self.ref = ref
        self.sign = sign  # known sign class of a hyperparameter leaf, else None

    # arithmetic -----------------------------------------------------------------------------
    def _bin(self, op: str, a: Any, b: Any) -> Any:
        return _scalar_op(self.graph, op, a, b)

    def __add__(self, o: Any) -> Any:
        return self._bin("add", self, o)

    def __radd__(self, o: Any) -> Any:
        return self._bin("add", o, self)

    def __sub__(self, o: Any) -> Any:
        return self._bin("sub", self, o)

    def __rsub__(self, o: Any) -> Any:
        return self._bin("sub", o, self)

    def __mul__(self, o: Any) -> Any:
        return self._bin("mul", self, o)

    def __rmul__(self, o: Any) -> Any:
        return self._bin("mul", o, self)

    def __truediv__(self, o: Any) -> Any:
        return self._bin("div", self, o)

    def __rtruediv__(self, o: Any) -> Any:
        return self._bin("div", o, self)

    def __pow__(self, o: Any) -> Any:
        return self._bin("pow", self, o)

    def __rpow__(self, o: Any) -> Any:
        return self._bin("pow", o, self)

    def stored_mul(self, factor: Any) -> SVal:
        """``self * factor`` as torch's in-place multiply of a float32 state tensor computes it
        (both rounded to float32, product rounded): see ``ops.stored_mul``."""
        return SVal(self.graph, _Ref(self.graph.add("mul32", (self.ref, _operand(factor)),
                                                    False)))

    def __neg__(self) -> Any:
        return self._bin("sub", 0.0, self)

    def __pos__(self) -> SVal:
        return self

    @property
    def per_replica(self) -> bool:
        """A per-replica hyperparameter leaf (see :mod:`.replicas`)."""
        return isinstance(self.sign, Replicas)

    # comparisons: only against 0, decided by the sign class that is part of the cache key
    def _compare(self, other: Any, op: str) -> bool:
        if isinstance(self.sign, Replicas):  # per-replica: all replicas must take one branch
            return self.sign._agree(other, op)
        if self.sign is None or not isinstance(other, (int, float)) or other != 0:
            raise TypeError(
                "fused tracing: the update math compared a traced value "
                f"({self.graph.nodes[self.ref].name or 'an expression'} {op} {other!r}); only "
                "hyperparameters compared with 0 can be traced -- add the flag to the fused "
                "structure key"
            )
        s = self.sign
        return {"==": s == 0, "!=": s != 0, ">": s > 0, "<": s < 0, ">=": s >= 0,
                "<=": s <= 0}[op]

    def __eq__(self, o: object) -> bool:  # type: ignore[override]
        return self._compare(o, "==")

    def __ne__(self, o: object) -> bool:  # type: ignore[override]
        return self._compare(o, "!=")

    def __gt__(self, o: Any) -> bool:
        return self._compare(o, ">")

    def __lt__(self, o: Any) -> bool:
        return self._compare(o, "<")

    def __ge__(self, o: Any) -> bool:
        return self._compare(o, ">=")

    def __le__(self, o: Any) -> bool:
        return self._compare(o, "<=")

    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        raise TypeError("fused tracing: a traced scalar was used as a condition")


class TVal:
    """A symbolic elementwise tensor value (one element of every tensor of the group)."""

    __slots__ = ("graph", "ref")

    def __init__(self, graph: Graph, ref: _Ref) -> None:
        self.graph = graph
        self.ref = ref


def _operand(value: Any) -> Any:
    if isinstance(value, (SVal, TVal)):
        return value.ref
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"fused tracing: unsupported operand {value!r}")
    return float(value)


_FOLD = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a**b,
}


def _scalar_op(graph: Graph, op: str, a: Any, b: Any) -> Any:
    x, y = _operand(a), _operand(b)
    if not _is_ref(x) and not _is_ref(y):
        return _FOLD[op](x, y)
    # identities, so e.g. ``eps * 1`` does not become a node
    if not _is_ref(y) and ((op in ("mul", "div", "pow") and y == 1.0) or (
            op in ("add", "sub") and y == 0.0)):
        return a
    if not _is_ref(x) and ((op == "mul" and x == 1.0) or (op == "add" and x == 0.0)):
        return b
    return SVal(graph, _Ref(graph.add(op, (x, y), False)))


def _op(graph: Graph, op: str, *args: Any) -> Any:
    """An elementwise node; a tensor if any operand is one, with trivial identities folded."""
    refs = tuple(_operand(a) for a in args)
    if op == "mul" and refs[1] == 1.0 and not _is_ref(refs[1]):
        return args[0]
    if op == "add" and refs[1] == 0.0 and not _is_ref(refs[1]):
        return args[0]
    is_tensor = any(_is_ref(r) and graph.nodes[r].is_tensor for r in refs)
    if not is_tensor:
        if op in _FOLD:
            return _scalar_op(graph, op, *args)
        raise TypeError(f"fused tracing: {op} of a scalar")
    return TVal(graph, _Ref(graph.add(op, refs, True)))


class SymOps:
    """The ``ops`` backend that records the update instead of running it (see ``ops``).

    Each method mirrors :class:`~torchopt_survey.optim.core.ops.TensorOps`' semantics, in terms of
    the primitive elementwise nodes add/sub/mul/div/neg/abs/sqrt/max. In-place variants are the
    same as out-of-place ones: the graph is SSA and the math rebinds every result.
    """

    graph: Graph  # set per trace on a subclass

    @staticmethod
    def clone(x: TVal) -> TVal:
        return x

    @staticmethod
    def neg(x: TVal) -> TVal:
        return _op(x.graph, "neg", x)

    @staticmethod
    def abs(x: TVal) -> TVal:
        return _op(x.graph, "abs", x)

    @staticmethod
    def sqrt(x: TVal) -> TVal:
        return _op(x.graph, "sqrt", x)

    sqrt_ = sqrt

    @staticmethod
    def add(x: TVal, y: Any, alpha: Any = 1) -> TVal:
        return _op(x.graph, "add", x, _op(x.graph, "mul", y, alpha) if isinstance(
            y, TVal) else y * alpha)

    add_ = add

    @staticmethod
    def mul(x: TVal, y: Any) -> TVal:
        return _op(x.graph, "mul", x, y)

    mul_ = mul

    @staticmethod
    def div(x: TVal, y: Any) -> TVal:
        return _op(x.graph, "div", x, y)

    div_ = div

    @staticmethod
    def lerp_(x: TVal, y: TVal, weight: Any) -> TVal:
        g = x.graph
        return _op(g, "add", x, _op(g, "mul", _op(g, "sub", y, x), weight))

    @staticmethod
    def maximum_(x: TVal, y: TVal) -> TVal:
        return _op(x.graph, "max", x, y)

    @staticmethod
    def addcmul(x: TVal, a: TVal, b: TVal, value: Any = 1) -> TVal:
        g = x.graph
        return _op(g, "add", x, _op(g, "mul", _op(g, "mul", a, b), value))

    addcmul_ = addcmul

    @staticmethod
    def addcdiv_(x: TVal, a: TVal, b: TVal, value: Any = 1) -> TVal:
        g = x.graph
        return _op(g, "add", x, _op(g, "mul", _op(g, "div", a, b), value))


def _sign(value: float) -> int:
    return 0 if value == 0 else (1 if value > 0 else -1)


def _describe_value(value: Any) -> Any:
    """The part of a group value that shapes the traced graph (not its magnitude)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        if math.isnan(value):
            raise ValueError("fused: a hyperparameter is NaN")
        return ("n", _sign(value))
    if is_replicas(value):  # the signs of its values decide the branches, not its length
        return ("r", str(value.dtype), tuple(sorted({_sign(v) for v in value.tolist()})))
    if isinstance(value, Tensor):
        return ("t", str(value.dtype))
    if isinstance(value, tuple):
        return tuple(_describe_value(v) for v in value)
    return ("o", repr(value))


def structure_key(group: dict[str, Any], lazy_present: tuple[bool, ...]) -> tuple:
    """What the traced graph of a group depends on (see the module docstring)."""
    return tuple(
        # parameter names never reach the kernel: they must not key (or re-trace) it
        (key, _describe_value(value)) for key, value in group.items()
        if key not in ("params", "param_names")
    ) + (lazy_present,)


_ATOMS = (bool, int, float, str, type(None))


class StructureMemo:
    """:func:`structure_key` of one group, recomputed only when a value of the group changed.

    Describing every value costs more than a small fused step's other host work, and between
    steps the values rarely change. A value counts as unchanged if it is the same object, or an
    equal number or string (a scheduler writing a new float). A tensor hyperparameter edited in
    place keeps its dtype, all the key records of it -- except per-replica values, whose signs
    the key records: a group holding any is described again every step.
    """

    __slots__ = ("_values", "_key", "_volatile")

    def __init__(self) -> None:
        self._values: list[Any] | None = None
        self._key: tuple = ()
        self._volatile = True

    def key(self, group: dict[str, Any]) -> tuple:
        items = [(k, v) for k, v in group.items() if k not in ("params", "param_names")]
        if not self._volatile and self._values is not None and _same(items, self._values):
            return self._key
        self._key = structure_key(group, ())
        self._values = items
        self._volatile = any(
            is_replicas(v) or (isinstance(v, tuple) and any(is_replicas(u) for u in v))
            for _, v in items)
        return self._key


def _same(items: list[tuple[str, Any]], previous: list[tuple[str, Any]]) -> bool:
    """The same keys in the same order, each value unchanged (see :class:`StructureMemo`)."""
    if len(items) != len(previous):
        return False
    for (key, value), (old_key, old) in zip(items, previous):
        if key != old_key or (value is not old and (
                type(value) is not type(old) or type(value) not in _ATOMS or value != old)):
            return False
    return True


@dataclass
class Traced:
    """A traced update together with the state layout it was traced for."""

    graph: Graph
    #: state entries in spec order: (name, kind, present); kind "scalar" | "tensor" | "lazy"
    slots: list[tuple[str, str, bool]]
    key: tuple

    def scalar_state_depending_on_replicas(self) -> list[str]:
        """``"state 'x' depends on per-replica hp:y"`` for each such scalar state output."""
        graph = self.graph
        found = []
        for name, kind, _present in self.slots:
            ref = graph.outputs.get(name)
            if kind != "scalar" or ref is None:
                continue
            keys = [graph.nodes[leaf].name[3:] for leaf in sorted(graph.replica_nodes)
                    if graph.depends_on(ref, {leaf})]
            if keys:
                found.append(f"scalar state {name!r} depends on per-replica {', '.join(keys)}")
        return found


def hp_values(traced: Traced, group: dict[str, Any]) -> list[Any]:
    """The group's current value of each traced hyperparameter (floats or tensors)."""
    return [group[key] if index is None else group[key][index]
            for key, index in traced.graph.hp_leaves]


def trace_update(
    opt_cls: type, spec: list[Any], group: dict[str, Any], lazy_present: tuple[bool, ...]
) -> Traced:
    """Run ``opt_cls._preprocess`` + ``_update`` symbolically for ``group``'s configuration."""
    graph = Graph()
    hp: dict[str, Any] = {}

    def leaf(key: str, index: int | None, value: Any) -> Any:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return value
        if isinstance(value, (int, float, Tensor)):
            sign: Any = 1 if isinstance(value, Tensor) else _sign(value)
            if is_replicas(value):
                sign = Replicas.wrap(value)
                graph.replica_nodes.add(len(graph.nodes))
            name = f"hp:{key}" + ("" if index is None else f".{index}")
            ref = _Ref(graph.add("leaf", (), False, name))
            graph.hp_leaves.append((key, index))
            graph.hp_nodes.append(ref)
            return SVal(graph, ref, sign)
        return value

    for key, value in group.items():
        if key == "params":
            continue
        if isinstance(value, tuple):
            hp[key] = tuple(leaf(key, i, v) for i, v in enumerate(value))
        else:
            hp[key] = leaf(key, None, value)

    param = TVal(graph, _Ref(graph.add("leaf", (), True, "param")))
    grad = TVal(graph, _Ref(graph.add("leaf", (), True, "grad")))
    state: dict[str, Any] = {}
    slots: list[tuple[str, str, bool]] = []
    lazy_iter = iter(lazy_present)
    for entry in spec:
        if entry.kind == "scalar":
            state[entry.name] = SVal(graph, _Ref(graph.add("leaf", (), False,
                                                           f"state:{entry.name}")))
            slots.append((entry.name, "scalar", True))
        else:
            present = next(lazy_iter) if entry.kind == "lazy" else True
            state[entry.name] = (
                TVal(graph, _Ref(graph.add("leaf", (), True, f"state:{entry.name}")))
                if present else None
            )
            slots.append((entry.name, entry.kind, present))
    given = dict(state)

    work_param, work_grad = opt_cls._preprocess(SymOps, param, grad, hp)
    new_param = opt_cls._update(SymOps, work_param, work_grad, state, hp)

    def output(value: Any) -> Any:
        if isinstance(value, (SVal, TVal)):
            return value.ref
        return float(value)

    if not isinstance(new_param, TVal):
        raise TypeError("fused tracing: the update did not return a tensor value")
    if new_param.ref != param.ref:
        graph.outputs["param"] = new_param.ref
    for name, _kind, _present in slots:
        value = state[name]
        if value is None:
            continue
        if value is given[name]:
            continue  # unchanged: nothing to store
        graph.outputs[name] = output(value)
    return Traced(graph, slots, structure_key(group, lazy_present))
