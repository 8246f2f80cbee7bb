"""Hyperparameters of N runs stacked into one optimizer (the vectorised replicas)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def float_hparams(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The numeric constructor arguments: the ones that may differ between replicas."""
    return {k: v for k, v in kwargs.items()
            if isinstance(v, float | int) and not isinstance(v, bool)}


def stacked_hparams(specs: Sequence[dict[str, Any]], dtype: torch.dtype) -> dict[str, Any]:
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
