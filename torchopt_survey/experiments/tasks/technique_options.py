"""The §V technique options of a run: their schema, defaults and checks.

:class:`TechniqueOptions` types them, each default written once; a config holds every
option its task takes (the common ones, and the model ones a task implements), a run spec only
those that differ from their defaults, so the paper runs keep their run ids, specs and
checkpoints. What the options do during training is in :mod:`.techniques`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..runtime.labels import number_label
from .models import NORMS

INITS = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal")
STATE_DTYPES = ("bfloat16", "int8")

@dataclass(frozen=True)
class TechniqueOptions:
    """A run's §V options, typed; each default (no technique: the paper's setting) is
    written here once. A run spec holds only the options that differ from it."""

    name: str | None = None  # label appended to the run's variant: option sets get own run ids
    init: str = "default"
    init_gain: float = 1.0  # extra factor on the matched gain (> 1: the exploding-gradient demo)
    dropout: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    early_stopping: int | None = None  # patience in epochs on validation loss
    scheduler: Any = None  # {"name": "StepLR", **kwargs} or a class name
    log_grad_norms: bool | str = "auto"
    # the image classification task's (MNIST) own
    norm: str = "none"
    val_split: float | None = None  # fraction of the training set held out for validation
    normalize_inputs: bool = False
    eval_train: bool = False  # also evaluate (eval mode) on the training set: train-test gap
    # how the run computes (not §V): the optimizer's memory options, subnormal flushing
    step_in_backward: bool = False  # update each parameter from its gradient hook
    state_dtype: str | None = None  # compact optimizer state: "bfloat16" or "int8"
    flush_denormal: bool = False  # torch.set_flush_denormal(True) while the run trains

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> TechniqueOptions:
        """The options of a run spec (absent keys: their defaults)."""
        return cls(**{f.name: spec[f.name] for f in fields(cls) if f.name in spec})


#: options that need the task's own model or data (a task lists the ones it implements)
MODEL_OPTIONS = ("norm", "val_split", "normalize_inputs", "eval_train")
#: options every task takes (the harness applies them to any model), in spec order
COMMON_OPTIONS = tuple(f.name for f in fields(TechniqueOptions) if f.name not in MODEL_OPTIONS)
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TechniqueOptions)}
#: every option's default, the common ones first (the order of a run spec's technique keys)
OPTION_DEFAULTS: dict[str, Any] = {k: _DEFAULTS[k] for k in (*COMMON_OPTIONS, *MODEL_OPTIONS)}
COMMON_DEFAULTS: dict[str, Any] = {k: _DEFAULTS[k] for k in COMMON_OPTIONS}


def technique_defaults(options: Iterable[str] = COMMON_OPTIONS) -> dict[str, Any]:
    """The defaults of the technique ``options`` a task takes (a fresh copy)."""
    return copy.deepcopy({k: _DEFAULTS[k] for k in options})


def technique_spec(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The technique keys of a validated config that differ from their defaults."""
    return {k: copy.deepcopy(cfg[k]) for k, d in OPTION_DEFAULTS.items()
            if k in cfg and cfg[k] != d}


# Options that change what is trained (the rest only change what is measured).
TREATMENTS = (
    "init", "init_gain", "norm", "dropout", "l1", "l2", "clip_grad_norm", "clip_grad_value",
    "early_stopping",
)  # fmt: skip
_SLUG_SKIP = ("name", "log_grad_norms", "eval_train")


def variant_suffix(cfg: Mapping[str, Any]) -> str:
    """``-<name>``, or without a name ``-<key><value>...`` of the non-default options, so runs
    with different techniques never share a run folder."""
    if cfg.get("name"):
        return f"-{cfg['name']}"
    parts = []
    for k, v in technique_spec(cfg).items():
        if k in _SLUG_SKIP:
            continue
        if k == "scheduler":
            entry = scheduler_entry(v)
            v = entry[0] if entry else v
        parts.append(f"{k}{number_label(v)}".replace("/", "_").replace(" ", ""))
    return "-" + "-".join(parts) if parts else ""


# ----------------------------------------------------------------------------- validation


def _coerce(cfg: dict[str, Any], key: str) -> None:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string: accept numeric strings for numbers."""
    v = cfg[key]
    if isinstance(v, str):
        try:
            cfg[key] = float(v)
        except ValueError:
            pass  # left as is: _number names the key


def _number(key: str, v: Any, lo: float, hi: float | None = None, lo_open: bool = False) -> None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ok = ok and (v > lo if lo_open else v >= lo) and (hi is None or v < hi)
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo}, {hi if hi is not None else 'inf'})"
        raise ValueError(f"{key}: expected a number in {rng}, got {v!r}")


def check_hidden(v: Any, key: str = "hidden") -> list[int] | int:
    """``hidden``: one width or a non-empty list of widths (a deep MLP)."""
    widths = v if isinstance(v, list) else [v]
    if not widths or not all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths
    ):
        raise ValueError(f"{key}: expected an integer >= 1 or a list of them, got {v!r}")
    return v


def scheduler_entry(value: Any) -> tuple[str, dict[str, Any]] | None:
    """``scheduler`` as (class name, kwargs); a bare string is a class without kwargs."""
    if value is None:
        return None
    if isinstance(value, str):
        return value, {}
    if isinstance(value, Mapping) and isinstance(value.get("name"), str):
        return value["name"], {k: v for k, v in value.items() if k != "name"}
    raise ValueError(
        f"scheduler: expected a torch.optim.lr_scheduler class name or a mapping "
        f"{{name: CLASS, kwarg: value}}, got {value!r}"
    )


def _scheduler_classes() -> list[str]:
    from torch.optim import lr_scheduler as ls

    return sorted(
        n
        for n, c in vars(ls).items()
        if isinstance(c, type)
        and issubclass(c, ls.LRScheduler | ls.ReduceLROnPlateau)
        and c not in (ls.LRScheduler, ls._LRScheduler)  # abstract bases
        and not n.startswith("_")
    )


def build_scheduler(value: Any, optimizer: torch.optim.Optimizer) -> Any:
    """Instantiate ``scheduler`` for ``optimizer``; bad names/kwargs raise ValueError."""
    entry = scheduler_entry(value)
    if entry is None:
        return None
    from torch.optim import lr_scheduler as ls

    name, kwargs = entry
    valid = _scheduler_classes()
    if name not in valid:
        raise ValueError(
            f"scheduler: unknown scheduler {name!r}; valid choices: {', '.join(valid)}"
        )
    try:
        return getattr(ls, name)(optimizer, **kwargs)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"scheduler: cannot build {name} with {kwargs!r}: {exc}") from exc


def validate_techniques(cfg: dict[str, Any]) -> None:
    """Check the technique keys of ``cfg`` in place (ValueError naming the key)."""
    if cfg["name"] is not None:
        name = str(cfg["name"])
        if not name or any(c in name for c in "/\\ ") or name.startswith("."):
            raise ValueError(f"name: expected a label without '/', '\\' or spaces, got {name!r}")
        cfg["name"] = name
    for key in ("init_gain", "dropout", "l1", "l2", "clip_grad_norm", "clip_grad_value"):
        _coerce(cfg, key)
    if "val_split" in cfg:  # (the options a task takes are the ones its config has)
        _coerce(cfg, "val_split")
    if cfg["init"] not in INITS:
        raise ValueError(f"init: unknown value {cfg['init']!r}; valid choices: {', '.join(INITS)}")
    _number("init_gain", cfg["init_gain"], 0.0, lo_open=True)
    _number("dropout", cfg["dropout"], 0.0, 1.0)
    _number("l1", cfg["l1"], 0.0)
    _number("l2", cfg["l2"], 0.0)
    for key in ("clip_grad_norm", "clip_grad_value"):
        if cfg[key] is not None:
            _number(key, cfg[key], 0.0, lo_open=True)
    es = cfg["early_stopping"]
    if es is not None and (isinstance(es, bool) or not isinstance(es, int) or es < 1):
        raise ValueError(
            f"early_stopping: expected a patience (integer >= 1 epochs) or null, got {es!r}"
        )
    lg = cfg["log_grad_norms"]
    if lg not in (True, False, "auto"):
        raise ValueError(f"log_grad_norms: expected true, false or auto, got {lg!r}")
    for key in ("step_in_backward", "flush_denormal"):
        if not isinstance(cfg[key], bool):
            raise ValueError(f"{key}: expected true or false, got {cfg[key]!r}")
    sd = cfg["state_dtype"]
    if sd is not None and sd not in STATE_DTYPES:
        raise ValueError(
            f"state_dtype: unknown value {sd!r}; valid choices: {', '.join(STATE_DTYPES)}, null"
        )
    if cfg["step_in_backward"]:
        for key in ("clip_grad_norm", "clip_grad_value"):
            if cfg[key] is not None:
                raise ValueError(
                    f"step_in_backward: cannot be combined with {key} (each parameter is "
                    "updated as soon as its gradient exists: there is no moment to clip them "
                    "all); set step_in_backward=false"
                )
    if cfg["scheduler"] is not None:
        probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        build_scheduler(cfg["scheduler"], probe)
    if "norm" in cfg:
        if cfg["norm"] not in NORMS:
            raise ValueError(
                f"norm: unknown value {cfg['norm']!r}; valid choices: {', '.join(NORMS)}"
            )
    if "val_split" in cfg:
        vs = cfg["val_split"]
        if vs is not None:
            ok = isinstance(vs, int | float) and not isinstance(vs, bool) and 0 < vs < 1
            if not ok:
                raise ValueError(f"val_split: expected a fraction in (0, 1) or null, got {vs!r}")
        if es is not None and vs is None:
            raise ValueError("early_stopping: needs a validation set; set val_split (e.g. 0.1)")
    for key in ("normalize_inputs", "eval_train"):
        if key in cfg and not isinstance(cfg[key], bool):
            raise ValueError(f"{key}: expected true or false, got {cfg[key]!r}")


def hparams(spec: Mapping[str, Any], options: Iterable[str] = COMMON_OPTIONS) -> dict[str, Any]:
    """Every technique option of a run that its task takes (``options``; defaults included)
    for the HParams dashboard."""
    opts = TechniqueOptions.of(spec)
    out = {}
    for k in options:
        v = getattr(opts, k)
        out[k] = "none" if v is None else v
    return out
