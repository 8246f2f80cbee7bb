"""Optimizer registry: lowercase name -> (optimizer class, paper default kwargs).

Every entry is one of torchopt_survey's drop-in ``torch.optim.Optimizer`` subclasses; the
default kwargs are the survey settings (lr 0.01 everywhere, momentum 0.9 for Momentum/NAG).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

import torchopt_survey as _tos

PAPER_LR = 0.01

# Order is the order of the surveys' tables and of our figures' legends.
#: The first-order methods: lowercase name -> (optimizer class, the surveys' constructor
#: keyword arguments: ``lr=0.01``; ``momentum=0.9`` for Momentum, and ``nesterov=True`` too
#: for NAG). The second-order ``newton``, ``newton_cg`` and ``cg`` are named separately.
OPTIMIZERS: Mapping[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (_tos.SGD, {"lr": PAPER_LR}),
    "momentum": (_tos.Momentum, {"lr": PAPER_LR, "momentum": 0.9}),
    "nag": (_tos.NAG, {"lr": PAPER_LR, "momentum": 0.9, "nesterov": True}),
    "adagrad": (_tos.Adagrad, {"lr": PAPER_LR}),
    "adadelta": (_tos.Adadelta, {"lr": PAPER_LR}),
    "rmsprop": (_tos.RMSprop, {"lr": PAPER_LR}),
    "adam": (_tos.Adam, {"lr": PAPER_LR}),
    "adamw": (_tos.AdamW, {"lr": PAPER_LR}),
    "amsgrad": (_tos.AMSGrad, {"lr": PAPER_LR}),
    "nadam": (_tos.NAdam, {"lr": PAPER_LR}),
    "adamax": (_tos.Adamax, {"lr": PAPER_LR}),
}

#: The keys of :data:`OPTIMIZERS` in the surveys' order: what ``"all"`` expands to.
OPTIMIZER_NAMES: tuple[str, ...] = tuple(OPTIMIZERS)

# Second-order methods (issue #8): closure-based, full-batch. Not part of "all" (they need the
# closure training step and full-batch regimes); lr is their first line-search trial, not 0.01.
# max_iter=1: one outer iteration per step(), so an epoch is one outer iteration.
SECOND_ORDER_OPTIMIZERS: Mapping[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "newton": (_tos.Newton, {"lr": 1.0, "max_iter": 1}),
    "newton_cg": (
        _tos.NewtonCG,
        {"lr": 1.0, "max_iter": 1, "curvature": "gauss_newton", "cg_max_iter": 10},
    ),
    "cg": (_tos.ConjugateGradient, {"lr": 1.0, "max_iter": 1}),
}
SECOND_ORDER_NAMES: tuple[str, ...] = tuple(SECOND_ORDER_OPTIMIZERS)
ALL_OPTIMIZER_NAMES: tuple[str, ...] = OPTIMIZER_NAMES + SECOND_ORDER_NAMES


def _entry(name: str) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    return OPTIMIZERS[name] if name in OPTIMIZERS else SECOND_ORDER_OPTIMIZERS[name]


def resolve_optimizer_names(names: str | Iterable[str]) -> list[str]:
    """Expand ``"all"`` and validate names (case-insensitive), dropping repeats.

    Args:
        names (str or Iterable[str]): one name or several: a key of :data:`OPTIMIZERS`, a
            second-order method (``newton``, ``newton_cg``, ``cg``), or ``"all"`` (every name
            of :data:`OPTIMIZER_NAMES`, not the second-order ones).

    Returns:
        list[str]: the lowercase names, in the order first given.

    Raises:
        ValueError: an unknown name, or no name at all; the message lists the valid choices.
        TypeError: an element that is not a string.
    """
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for raw in names:
        if not isinstance(raw, str):
            raise TypeError(f"optimizers: expected optimizer names (str), got {raw!r}")
        name = raw.lower()
        if name == "all":
            out.extend(n for n in OPTIMIZER_NAMES if n not in out)
        elif name in OPTIMIZERS or name in SECOND_ORDER_OPTIMIZERS:
            if name not in out:
                out.append(name)
        else:
            raise ValueError(
                f"optimizers: unknown optimizer {raw!r}; valid choices: all, "
                + ", ".join(ALL_OPTIMIZER_NAMES)
            )
    if not out:
        raise ValueError(
            "optimizers: empty list; valid choices: all, " + ", ".join(OPTIMIZER_NAMES)
        )
    return out


def build_optimizer(
    name: str,
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    overrides: Mapping[str, Any] | None = None,
) -> torch.optim.Optimizer:
    """Instantiate optimizer ``name`` with the surveys' settings updated by ``overrides``.

    Args:
        name (str): a key of :data:`OPTIMIZERS` or a second-order method (``newton``,
            ``newton_cg``, ``cg``; their ``lr=1.0`` is the first line-search trial and
            ``max_iter=1``), case-insensitive.
        params (Iterable[torch.Tensor] or Iterable[dict[str, Any]]): parameters or parameter
            groups, as for every ``torch.optim`` optimizer.
        overrides (Mapping[str, Any] or None, optional): constructor keyword arguments that
            replace or add to the surveys' settings (default ``None``: none).

    Returns:
        torch.optim.Optimizer: the torchopt_survey optimizer.

    Raises:
        ValueError: ``name`` is unknown (or a constructor argument is invalid).
        TypeError: ``overrides`` has an argument the optimizer does not take.
    """
    (name,) = resolve_optimizer_names([name])
    cls, defaults = _entry(name)
    kwargs = {**defaults, **(overrides or {})}
    return cls(params, **kwargs)


def optimizer_hparams(name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The effective constructor kwargs of ``name`` (for logging)."""
    _, defaults = _entry(name)
    return {**defaults, **(overrides or {})}
