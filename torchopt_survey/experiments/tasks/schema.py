"""The configuration schema every task's config shares: the common keys and their checks.

The built-in tasks add their own keys and checks (``DEFAULTS`` and ``validate_config`` of
each task module); :func:`validate` puts the checks together in their order.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from .optimizers import ALL_OPTIMIZER_NAMES, SECOND_ORDER_NAMES, resolve_optimizer_names
from .technique_options import validate_techniques

#: keys every built-in task's config has (each task module adds its own and its defaults)
COMMON: dict[str, Any] = {
    "experiment": None,
    "optimizers": ["all"],
    "seeds": [0],
    "epochs": 10,
    "lr": None,  # None: the registry's paper default (0.01)
    "optimizer_kwargs": {},  # {optimizer name: {kwarg: value}}
    "deterministic": True,
    # torchopt_survey's fused kernels (generated C on CPU, Triton on CUDA): same update rule,
    # fewer passes over memory. Off in the paper configs (needs a C compiler on CPU).
    "fused": False,
}


def check_int(cfg: Mapping[str, Any], key: str, minimum: int = 1) -> None:
    """``cfg[key]`` is an integer >= ``minimum`` (ValueError naming the key)."""
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{key}: expected an integer >= {minimum}, got {v!r}")


def check_choice(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    """``value`` is one of ``choices`` (ValueError naming the key and listing them)."""
    if value not in choices:
        raise ValueError(f"{key}: unknown value {value!r}; valid choices: {', '.join(choices)}")


def validate(cfg: dict[str, Any], own: Callable[[dict[str, Any]], None],
             optimizers_of: Callable[[dict[str, Any]], list[str]]) -> dict[str, Any]:
    """Check every value of a built-in task's config and normalise lists; returns the (copied)
    config. ``own`` checks (and normalises in place) the task's own keys; ``optimizers_of``
    lists every optimizer the config runs."""
    cfg = validate_common(cfg)
    own(cfg)
    validate_techniques(cfg)
    _check_memory_options(cfg, optimizers_of(cfg))
    return cfg


def _check_memory_options(cfg: dict[str, Any], names: list[str]) -> None:
    """``step_in_backward`` and ``state_dtype`` are first-order optimizers' options."""
    closure = [o for o in names if o in SECOND_ORDER_NAMES]
    for key in ("step_in_backward", "state_dtype"):
        if cfg[key] not in (False, None) and closure:
            raise ValueError(
                f"{key}: {closure[0]} cannot take it (closure-based methods evaluate the loss "
                f"several times per step); run the first-order optimizers only, or drop {key}"
            )


def validate_common(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check the keys every task's config has (optimizers, seeds, epochs, lr, optimizer
    arguments, fused); returns a normalised copy."""
    cfg = copy.deepcopy(cfg)
    cfg["optimizers"] = resolve_optimizer_names(cfg["optimizers"])
    seeds = cfg["seeds"]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    ):
        raise ValueError(f"seeds: expected a non-empty list of integers >= 0, got {cfg['seeds']!r}")
    cfg["seeds"] = list(dict.fromkeys(seeds))
    check_int(cfg, "epochs")
    if cfg["lr"] is not None and (not isinstance(cfg["lr"], int | float) or cfg["lr"] <= 0):
        raise ValueError(f"lr: expected a positive number or null, got {cfg['lr']!r}")
    okw = cfg["optimizer_kwargs"] or {}
    if not isinstance(okw, dict):
        raise ValueError("optimizer_kwargs: expected a mapping {optimizer: {kwarg: value}}")
    for name, kw in okw.items():
        check_choice("optimizer_kwargs", name, ALL_OPTIMIZER_NAMES)
        if not isinstance(kw, dict):
            raise ValueError(f"optimizer_kwargs.{name}: expected a mapping of keyword arguments")
    cfg["optimizer_kwargs"] = okw
    if not isinstance(cfg["fused"], bool):
        raise ValueError(f"fused: expected true or false, got {cfg['fused']!r}")
    return cfg
