"""Experiment configuration: defaults = the surveys' settings, YAML files, CLI overrides.

A config is a plain mapping validated against its task's defaults (each task module's
``DEFAULTS``; the shared keys in :mod:`.schema`): unknown keys or values raise ``ValueError``
naming the key and listing the valid choices (the CLI turns that into exit code 2).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .registry import BUILTIN, default_config, validate

__all__ = ["PRESETS", "apply_override", "default_config", "load_config_file", "merge",
           "parse_override", "presets", "resolve_config", "validate"]


#: the presets shipped with the package (``--config NAME``)
PRESETS = Path(__file__).resolve().parent.parent / "configs"


def presets() -> list[str]:
    """Names of the packaged presets."""
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def resolve_config(path: str | os.PathLike[str]) -> Path:
    """A config file: an existing path, else a packaged preset by name (``mnist_deep``, or
    ``configs/mnist_deep.yaml`` as the repository's command lines spell it)."""
    p = Path(path)
    if p.is_file():
        return p
    name = p.name.removesuffix(".yaml")
    if (PRESETS / f"{name}.yaml").is_file() and (p.parent == Path(".")
                                                 or p.parent.name == "configs"):
        return PRESETS / f"{name}.yaml"
    raise ValueError(f"--config: file not found: {p}; packaged presets: {', '.join(presets())}")


def load_config_file(path: str | os.PathLike[str],
                     experiments: Sequence[str] = BUILTIN) -> dict[str, Any]:
    """Read a YAML config file or packaged preset (a mapping with an ``experiment`` key, one of
    ``experiments``, the task names the error message lists)."""
    p = resolve_config(path)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"--config: {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or "experiment" not in data:
        raise ValueError(
            f"--config: {p} must be a mapping with an 'experiment' key "
            f"(one of: {', '.join(experiments)})"
        )
    return data


def merge(base: dict[str, Any], update: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``; unknown keys raise ValueError."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key not in out:
            if where.rstrip(".").split(".")[-1] in ("regimes", "optimizer_kwargs"):
                out[key] = copy.deepcopy(value)  # free-form sub-mappings
                continue
            valid = ", ".join(sorted(out))
            raise ValueError(f"config: unknown key {where + key!r}; valid keys: {valid}")
        if isinstance(out[key], dict) and isinstance(value, Mapping):
            out[key] = merge(out[key], value, where=f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], YAML-parsed value)."""
    if "=" not in text:
        raise ValueError(f"--set: expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ValueError(f"--set: empty key in {text!r}")
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        raise ValueError(f"--set: cannot parse value of {key!r}: {exc}") from exc
    return key.strip().split("."), value


def apply_override(cfg: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    """Set a dotted key (validated by :func:`merge`)."""
    nested: Any = value
    for part in reversed(path):
        nested = {part: nested}
    return merge(cfg, nested)


