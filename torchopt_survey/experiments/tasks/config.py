"""Experiment configuration: defaults = the surveys' settings, YAML files, CLI overrides.

A config is a plain mapping validated against the defaults below: unknown keys or values raise
``ValueError`` naming the key and listing the valid choices (the CLI turns that into exit code 2).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .data import DATASETS
from .models import ACTIVATIONS, LINK_MODELS
from .optimizers import ALL_OPTIMIZER_NAMES, SECOND_ORDER_NAMES, resolve_optimizer_names
from .techniques import (
    KARATE_TECHNIQUE_DEFAULTS,
    MNIST_TECHNIQUE_DEFAULTS,
    check_hidden,
    validate_techniques,
)

EXPERIMENTS = ("mnist", "karate")

# Keys shared by both experiments.
_COMMON: dict[str, Any] = {
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

MNIST_DEFAULTS: dict[str, Any] = {
    **_COMMON,
    "experiment": "mnist",
    "dataset": "mnist",
    "hidden": 500,
    "activation": "linear",
    "train_subset": None,
    "test_subset": None,
    "eval_batch_size": 10000,
    # the compiled training step (torchopt_survey.compile_step): "auto" where it was measured
    # to win (CPU, batches smaller than the training set), true wherever the run allows it,
    # false: eager everywhere
    "compile": "auto",
    # Regimes of the first survey, all with the same optimizer options: batch_size "full" is
    # full-batch gradient descent (one step per epoch).
    "regimes": {
        "gd": {"batch_size": "full", "optimizers": ["sgd"]},
        "sgd": {"batch_size": 1, "optimizers": ["sgd"], "log_every": 100},
        "minibatch": {"batch_size": 64, "optimizers": ["all"]},
    },
    # §V techniques (init, norm, dropout, l1/l2, clipping, val_split/early_stopping, ...).
    **MNIST_TECHNIQUE_DEFAULTS,
}

# Keys a regime may set; missing ones fall back to the top level.
REGIME_KEYS = ("batch_size", "optimizers", "epochs", "log_every", "lr")

KARATE_DEFAULTS: dict[str, Any] = {
    **_COMMON,
    "experiment": "karate",
    "seeds": list(range(10)),
    "epochs": 100,
    "edge_list": None,  # None: PyG's built-in KarateClub
    "models": ["paper", "gcn"],
    "decoder": "dot",
    "embedding_dim": 16,
    "channels": 16,
    "hidden": 32,
    "val_ratio": 0.1,
    "test_ratio": 0.2,
    **KARATE_TECHNIQUE_DEFAULTS,
}

DEFAULTS: dict[str, dict[str, Any]] = {"mnist": MNIST_DEFAULTS, "karate": KARATE_DEFAULTS}


def default_config(experiment: str) -> dict[str, Any]:
    """A fresh copy of the paper configuration of ``experiment``."""
    if experiment not in DEFAULTS:
        raise ValueError(
            f"experiment: unknown experiment {experiment!r}; "
            f"valid choices: {', '.join(EXPERIMENTS)}"
        )
    return copy.deepcopy(DEFAULTS[experiment])


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


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file or packaged preset (a mapping with an ``experiment`` key)."""
    p = resolve_config(path)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"--config: {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or "experiment" not in data:
        raise ValueError(
            f"--config: {p} must be a mapping with an 'experiment' key "
            f"(one of: {', '.join(EXPERIMENTS)})"
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


def _check_int(cfg: Mapping[str, Any], key: str, minimum: int = 1) -> None:
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{key}: expected an integer >= {minimum}, got {v!r}")


def _check_choice(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise ValueError(f"{key}: unknown value {value!r}; valid choices: {', '.join(choices)}")


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check every value and normalise lists; returns the (copied) config."""
    exp = cfg.get("experiment")
    _check_choice("experiment", exp, EXPERIMENTS)
    cfg = validate_common(cfg)
    if exp == "mnist":
        # torchvision's spelling too: FashionMNIST, Fashion-MNIST, KMNIST ...
        dataset = str(cfg["dataset"]).lower().replace("-", "").replace("_", "")
        _check_choice("dataset", dataset, tuple(DATASETS))
        cfg["dataset"] = dataset
        _check_choice("activation", cfg["activation"], tuple(ACTIVATIONS))
        check_hidden(cfg["hidden"])
        _check_int(cfg, "eval_batch_size")
        for key in ("train_subset", "test_subset"):
            if cfg[key] is not None:
                _check_int(cfg, key)
        if not (isinstance(cfg["compile"], bool) or cfg["compile"] == "auto"):
            raise ValueError(f"compile: expected auto, true or false, got {cfg['compile']!r}")
        if cfg["compile"] is True and cfg["step_in_backward"]:
            raise ValueError("compile: the compiled step cannot run the update inside backward "
                             "(step_in_backward=true); set compile=false or compile=auto")
        regimes = cfg["regimes"]
        if not isinstance(regimes, dict) or not regimes:
            raise ValueError("regimes: expected a non-empty mapping {name: {batch_size: ...}}")
        for rname, spec in regimes.items():
            if not isinstance(spec, dict):
                raise ValueError(f"regimes.{rname}: expected a mapping with keys {REGIME_KEYS}")
            for k in spec:
                if k not in REGIME_KEYS:
                    raise ValueError(
                        f"config: unknown key 'regimes.{rname}.{k}'; valid keys: "
                        + ", ".join(REGIME_KEYS)
                    )
            bs = spec.get("batch_size", 64)
            if bs != "full" and (isinstance(bs, bool) or not isinstance(bs, int) or bs < 1):
                raise ValueError(
                    f"regimes.{rname}.batch_size: expected a positive integer or 'full', got {bs!r}"
                )
            spec["batch_size"] = bs
            spec["optimizers"] = resolve_optimizer_names(spec.get("optimizers", cfg["optimizers"]))
            for k in ("epochs", "log_every"):
                if k in spec:
                    sub = {k: spec[k]}
                    _check_int(sub, k)
    else:
        models = cfg["models"]
        if isinstance(models, str):
            models = [models]
        if not isinstance(models, list) or not models:
            raise ValueError(f"models: expected a non-empty list, got {cfg['models']!r}")
        for m in models:
            _check_choice("models", m, LINK_MODELS)
        cfg["models"] = list(dict.fromkeys(models))
        _check_choice("decoder", cfg["decoder"], ("dot", "mlp"))
        for key in ("embedding_dim", "channels", "hidden"):
            _check_int(cfg, key)
        for key in ("val_ratio", "test_ratio"):
            v = cfg[key]
            if not isinstance(v, int | float) or not 0 < v < 0.5:
                raise ValueError(f"{key}: expected a fraction in (0, 0.5), got {v!r}")
        if cfg["edge_list"] is not None:
            cfg["edge_list"] = str(cfg["edge_list"])
    validate_techniques(cfg)
    _check_memory_options(cfg)
    return cfg


def _check_memory_options(cfg: dict[str, Any]) -> None:
    """``step_in_backward`` and ``state_dtype`` are first-order optimizers' options."""
    names = cfg["optimizers"] if cfg["experiment"] != "mnist" else [
        o for r in cfg["regimes"].values() for o in r["optimizers"]]
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
    _check_int(cfg, "epochs")
    if cfg["lr"] is not None and (not isinstance(cfg["lr"], int | float) or cfg["lr"] <= 0):
        raise ValueError(f"lr: expected a positive number or null, got {cfg['lr']!r}")
    okw = cfg["optimizer_kwargs"] or {}
    if not isinstance(okw, dict):
        raise ValueError("optimizer_kwargs: expected a mapping {optimizer: {kwarg: value}}")
    for name, kw in okw.items():
        _check_choice("optimizer_kwargs", name, ALL_OPTIMIZER_NAMES)
        if not isinstance(kw, dict):
            raise ValueError(f"optimizer_kwargs.{name}: expected a mapping of keyword arguments")
    cfg["optimizer_kwargs"] = okw
    if not isinstance(cfg["fused"], bool):
        raise ValueError(f"fused: expected true or false, got {cfg['fused']!r}")
    return cfg
