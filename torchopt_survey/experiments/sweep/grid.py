"""A sweep's grid: learning rates in log scale, other constructor arguments, and one run spec
per (base run, grid point)."""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Sequence
from typing import Any

from ..tasks.optimizers import OPTIMIZERS
from ..tasks.spec import RunSpec, setting_label

__all__ = ["check_grid", "expand_sweep", "parse_grid", "parse_lr_grid", "setting_label"]


def _log_points(part: str, text: str) -> list[float]:
    """One ``LO:HI:N`` part: N values evenly spaced in log scale from LO to HI."""
    parts = part.split(":")
    if len(parts) != 3:
        raise ValueError(f"--lr-grid: expected LO:HI:N (e.g. 1e-4:1:7), got {text!r}")
    try:
        lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(f"--lr-grid: expected LO:HI:N with numbers, got {text!r}") from None
    if n < 1:
        raise ValueError(f"--lr-grid: N must be >= 1 (an empty grid), got {text!r}")
    if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise ValueError(f"--lr-grid: expected 0 < LO <= HI, got {text!r}")
    if n == 1:
        return [lo]
    step = (math.log10(hi) - math.log10(lo)) / (n - 1)
    return [10 ** (math.log10(lo) + i * step) for i in range(n)]


def _value(part: str, text: str) -> list[float]:
    """One single learning rate of a comma list."""
    try:
        lr = float(part)
    except ValueError:
        raise ValueError(
            f"--lr-grid: expected LO:HI:N or a number in each comma-separated part, "
            f"got {part!r} in {text!r}") from None
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"--lr-grid: a learning rate must be > 0, got {part!r} in {text!r}")
    return [lr]


def parse_lr_grid(text: str) -> list[float]:
    """``LO:HI:N`` -> N values evenly spaced in log scale from LO to HI (both included), in
    increasing order, each rounded to 6 significant digits (the digits run ids and tables
    show).

    A comma-separated list of such parts and single values is their union, sorted, each value
    once: ``4.64159e-6,2.15443e-5,1e-4:1:7`` is the grid ``1e-4:1:7`` extended by two points of
    its own spacing below it, with the 7 old points exactly as ``1e-4:1:7`` gives them (a
    widened ``LO:HI:N`` from a rounded LO would shift every point in the last digits, and so
    every run id)."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise ValueError(f"--lr-grid: an empty part in {text!r}")
    values: set[float] = set()
    for part in parts:
        points = _log_points(part, text) if ":" in part else _value(part, text)
        values.update(float(f"{v:.6g}") for v in points)
    return sorted(values)


def _number_or_word(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise ValueError(text)


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``KEY=V1,V2,...`` (repeatable) -> {key: values}."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--grid: expected KEY=V1,V2,..., got {item!r}")
        if key == "lr":
            raise ValueError("--grid: give learning rates with --lr-grid, not --grid lr=...")
        raw = [v.strip() for v in values.split(",") if v.strip()]
        if not raw:
            raise ValueError(f"--grid {key}: empty list of values in {item!r}")
        parsed = []
        for v in raw:
            try:
                parsed.append(_number_or_word(v))
            except ValueError:
                raise ValueError(
                    f"--grid {key}: cannot parse value {v!r} (numbers or true/false)"
                ) from None
        grid[key] = parsed
    return grid


def check_grid(optimizers: Sequence[str], grid: dict[str, list[Any]]) -> None:
    """Every grid key must be a constructor argument of every optimizer swept."""
    for name in optimizers:
        cls = OPTIMIZERS[name][0]
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}
        for key in grid:
            if key not in accepted:
                raise ValueError(
                    f"--grid {key}: optimizer {name!r} ({cls.__name__}) takes no {key!r}; "
                    f"it takes {', '.join(sorted(accepted))}"
                )


def expand_sweep(base_specs: Sequence[RunSpec], lrs: Sequence[float],
                 grid: dict[str, list[Any]]) -> list[RunSpec]:
    """One spec per (base spec, grid point): the setting is part of the run's variant."""
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*grid.values())] or [{}]
    specs = []
    for spec in base_specs:
        for lr in lrs:
            for point in points:
                specs.append(RunSpec.of(spec).at({"lr": lr, **point}))
    return specs
