"""N runs of one architecture as one program: stacked models and one optimizer over them.

The N models are built exactly as N separate runs build them (each under its own seed), then
stacked along a leading replica dimension (``torch.func.stack_module_state``); one forward
(``vmap`` over ``functional_call``) and one backward serve all N, and one optimizer step
updates the stacked tensors, with every hyperparameter that differs between the runs given as
a per-replica [N] tensor (see ``torchopt_survey.optim.core.replicas``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .optimizers import build_optimizer

#: spec keys that may differ between the replicas of one program (besides float hparams)
PER_REPLICA_KEYS = ("seed", "optimizer_kwargs", "variant", "sweep")  # (labels)


def float_hparams(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The numeric constructor arguments: the ones that may differ between replicas."""
    return {k: v for k, v in kwargs.items()
            if isinstance(v, float | int) and not isinstance(v, bool)}


def stacked_hparams(specs: Sequence[Mapping[str, Any]], dtype: torch.dtype) -> dict[str, Any]:
    """One optimizer's kwargs for all replicas: differing floats become [N] tensors."""
    first = specs[0]["optimizer_kwargs"]
    out: dict[str, Any] = {}
    for key, value in first.items():
        values = [s["optimizer_kwargs"][key] for s in specs]
        if key in float_hparams(first) and len(set(values)) > 1:
            out[key] = torch.tensor([float(v) for v in values], dtype=dtype)
        elif isinstance(value, list | tuple) and any(
            isinstance(v, float) for v in value
        ) and len({tuple(v) for v in values}) > 1:
            out[key] = tuple(
                torch.tensor([float(v[i]) for v in values], dtype=dtype)
                if len({v[i] for v in values}) > 1 else value[i]
                for i in range(len(value))
            )
        else:
            out[key] = value
    return out


def group_key(spec: Mapping[str, Any]) -> tuple[Any, ...]:
    """What runs must share to be one program: everything but the per-replica keys, and the
    optimizer's arguments other than numbers."""
    shared = {k: v for k, v in spec.items() if k not in PER_REPLICA_KEYS}
    kwargs = spec["optimizer_kwargs"]
    fixed = {k: v for k, v in kwargs.items() if k not in float_hparams(kwargs)}
    return (repr(sorted(shared.items())), repr(sorted(fixed.items())),
            tuple(sorted(float_hparams(kwargs))))


class StackedReplicas:
    """The models of ``specs`` (built as their separate runs build them) stacked, and the
    runs' optimizer over the stacked parameters. ``forward(params, buffers, x)`` takes one
    batch per replica ([N, B, ...]), ``forward_shared`` one batch for all ([B, ...])."""

    def __init__(self, specs: Sequence[Mapping[str, Any]], models: Sequence[nn.Module]) -> None:
        self.specs = list(specs)
        self.n = len(self.specs)
        self.skeleton = copy.deepcopy(models[0]).to("meta")
        params, buffers = stack_module_state(list(models))
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        self.buffers = buffers
        dtype = next(iter(self.params.values())).dtype
        self.optimizer = build_optimizer(
            self.specs[0]["optimizer"], list(self.params.values()),
            stacked_hparams(self.specs, dtype),
        )

        def one(p: dict[str, Any], b: dict[str, Any], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.skeleton, (p, b), (x,))

        self.forward: Any = vmap(one, in_dims=(0, 0, 0))
        self.forward_shared: Any = vmap(one, in_dims=(0, 0, None))

    def replica_state(self, r: int) -> dict[str, Any]:
        """Replica ``r``'s model and optimizer state as its separate run checkpoints them
        (the run's own hyperparameter values, not float32 copies)."""
        model = {k: v[r].detach().clone() for k, v in self.params.items()}
        model.update({k: v[r].clone() for k, v in self.buffers.items()})
        full = self.optimizer.state_dict()
        state = {i: {k: (v[r].clone() if isinstance(v, torch.Tensor) and v.dim() > 0
                         else (v.clone() if isinstance(v, torch.Tensor) else v))
                     for k, v in entries.items()} for i, entries in full["state"].items()}

        own = self.specs[r]["optimizer_kwargs"]  # the run's own values, not float32 copies

        def value_of(key: str, value: Any) -> Any:
            if key == "params" or key not in own:
                return value
            if not any(isinstance(v, torch.Tensor) and v.dim() == 1 and v.numel() == self.n
                       for v in (value if isinstance(value, tuple) else (value,))):
                return value
            return tuple(own[key]) if isinstance(value, tuple) else own[key]

        groups = [{k: value_of(k, v) for k, v in g.items()} for g in full["param_groups"]]
        return {"model": model, "optimizer": {"state": state, "param_groups": groups}}

    def load_replica_states(self, states: Sequence[dict[str, Any]]) -> None:
        """Stack the runs' checkpointed states (:meth:`replica_state`) into the program."""
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(torch.stack([s["model"][k] for s in states]))
        full = self.optimizer.state_dict()
        first = states[0]["optimizer"]["state"]
        stacked = {}
        for i, entries in first.items():
            stacked[i] = {}
            for k, v in entries.items():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    stacked[i][k] = torch.stack([s["optimizer"]["state"][i][k] for s in states])
                else:
                    stacked[i][k] = v
        self.optimizer.load_state_dict({"state": stacked, "param_groups": full["param_groups"]})
