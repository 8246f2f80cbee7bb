"""Training techniques of the second survey (§V) as experiment options.

Initialisation (Xavier/He), batch/layer normalisation, dropout, L1/L2 loss penalties, gradient
clipping, a seeded validation split with early stopping, input standardisation, deep MLPs,
learning-rate schedulers and per-parameter gradient-norm logging. Each piece is a small
function or class so the tasks (``mnist.py``, ``karate.py``) only call hooks.

Technique keys enter a run's spec only when they differ from their defaults, so the paper
runs keep their run ids, specs and checkpoints.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import nn

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


_MNIST_ONLY = ("norm", "val_split", "normalize_inputs", "eval_train")
# Keys every task takes, and the image classification task's (defaults: TechniqueOptions).
COMMON_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(TechniqueOptions)
                                   if f.name not in _MNIST_ONLY}
MNIST_EXTRA: dict[str, Any] = {f.name: f.default for f in fields(TechniqueOptions)
                               if f.name in _MNIST_ONLY}
MNIST_TECHNIQUE_DEFAULTS = {**COMMON_DEFAULTS, **MNIST_EXTRA}
KARATE_TECHNIQUE_DEFAULTS = dict(COMMON_DEFAULTS)


def technique_defaults(experiment: str) -> dict[str, Any]:
    return copy.deepcopy(
        MNIST_TECHNIQUE_DEFAULTS if experiment == "mnist" else KARATE_TECHNIQUE_DEFAULTS
    )


def technique_spec(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The technique keys of a validated config that differ from their defaults."""
    defaults = technique_defaults(cfg["experiment"])
    return {k: copy.deepcopy(cfg[k]) for k, d in defaults.items() if cfg.get(k, d) != d}


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
    exp = cfg["experiment"]
    if cfg["name"] is not None:
        name = str(cfg["name"])
        if not name or any(c in name for c in "/\\ ") or name.startswith("."):
            raise ValueError(f"name: expected a label without '/', '\\' or spaces, got {name!r}")
        cfg["name"] = name
    for key in ("init_gain", "dropout", "l1", "l2", "clip_grad_norm", "clip_grad_value"):
        _coerce(cfg, key)
    if exp == "mnist":
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
    if exp == "mnist":
        if cfg["norm"] not in NORMS:
            raise ValueError(
                f"norm: unknown value {cfg['norm']!r}; valid choices: {', '.join(NORMS)}"
            )
        vs = cfg["val_split"]
        if vs is not None:
            ok = isinstance(vs, int | float) and not isinstance(vs, bool) and 0 < vs < 1
            if not ok:
                raise ValueError(f"val_split: expected a fraction in (0, 1) or null, got {vs!r}")
        if es is not None and vs is None:
            raise ValueError("early_stopping: needs a validation set; set val_split (e.g. 0.1)")
        for key in ("normalize_inputs", "eval_train"):
            if not isinstance(cfg[key], bool):
                raise ValueError(f"{key}: expected true or false, got {cfg[key]!r}")


# torch.nn.init's name for each activation of models.ACTIVATIONS.
_Nonlinearity = Literal["linear", "relu", "tanh", "sigmoid"]
_NONLINEARITY: dict[str, _Nonlinearity] = {
    "linear": "linear", "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"
}


def init_weights(model: nn.Module, init: str, activation: str, gain: float = 1.0) -> nn.Module:
    """Re-initialise every Linear/Conv weight with ``init`` (gain matched to ``activation``,
    times ``gain``), biases to zero as in Glorot & Bengio / He et al. Embeddings and norm
    layers keep their own initialisation. ``default`` keeps torch's (times ``gain``)."""
    if init not in INITS:
        raise ValueError(f"init: unknown value {init!r}; valid choices: {', '.join(INITS)}")
    nl = _NONLINEARITY[activation]
    matched = nn.init.calculate_gain(nl)
    for mod in model.modules():
        weight = getattr(mod, "weight", None)
        if isinstance(mod, nn.Embedding | nn.BatchNorm1d | nn.LayerNorm) or weight is None:
            continue
        if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
            continue
        with torch.no_grad():
            if init == "xavier_uniform":
                nn.init.xavier_uniform_(weight, gain=matched * gain)
            elif init == "xavier_normal":
                nn.init.xavier_normal_(weight, gain=matched * gain)
            elif init in ("kaiming_uniform", "kaiming_normal"):
                fn = (
                    nn.init.kaiming_uniform_
                    if init == "kaiming_uniform"
                    else nn.init.kaiming_normal_
                )
                fn(weight, nonlinearity=nl)
                weight.mul_(gain)
            else:
                weight.mul_(gain)
            bias = getattr(mod, "bias", None)
            if init != "default" and isinstance(bias, torch.Tensor):
                bias.zero_()
    return model


# ----------------------------------------------------------------------------- the optimizer


def optimizer_arguments(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The run's optimizer keyword arguments, with ``state_dtype`` when the spec asks for it."""
    kwargs = dict(spec["optimizer_kwargs"])
    state_dtype = TechniqueOptions.of(spec).state_dtype
    if state_dtype is not None:
        kwargs["state_dtype"] = state_dtype
    return kwargs


def attach_step_in_backward(spec: Mapping[str, Any], model: nn.Module, optimizer: Any) -> Any:
    """With ``step_in_backward``, make ``optimizer`` update each parameter of ``model`` from its
    gradient hook (its ``step()`` then does nothing); returns the hooks' handle, else None."""
    opts = TechniqueOptions.of(spec)
    if not opts.step_in_backward:
        return None
    if opts.clip_grad_norm is not None or opts.clip_grad_value is not None:
        raise ValueError("step_in_backward: cannot be combined with gradient clipping (the "
                         "gradients are gone when backward returns); set step_in_backward=false")
    if not callable(getattr(optimizer, "step_in_backward", None)):
        raise ValueError(
            f"step_in_backward: {type(optimizer).__name__} cannot step inside backward "
            "(closure-based methods evaluate the loss several times per step); "
            "set step_in_backward=false"
        )
    try:
        return optimizer.step_in_backward(model)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ValueError(f"step_in_backward: {exc}") from exc


# ----------------------------------------------------------------------------- loss, gradients


def penalized_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights L1/L2 act on: every matrix/kernel (ndim >= 2), not biases or norm scales."""
    return [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]


def penalty(model: nn.Module, l1: float, l2: float) -> torch.Tensor | None:
    """``l1 * sum|w| + l2 / 2 * sum w^2`` over :func:`penalized_weights`; None when both are 0."""
    if not l1 and not l2:
        return None
    ws = penalized_weights(model)
    total = ws[0].new_zeros(())
    if l1:
        total = total + l1 * sum(w.abs().sum() for w in ws)
    if l2:
        total = total + 0.5 * l2 * sum(w.pow(2).sum() for w in ws)
    return total


def clip_gradients(
    params: Iterable[torch.Tensor], max_norm: float | None, max_value: float | None
) -> None:
    """``clip_grad_value_`` then ``clip_grad_norm_`` (both bounds then hold)."""
    params = [p for p in params if p.grad is not None]
    if max_value is not None:
        nn.utils.clip_grad_value_(params, max_value)
    if max_norm is not None:
        nn.utils.clip_grad_norm_(params, max_norm)


#: the scalar tag of a parameter's gradient norm is this prefix + the parameter's name: in the
#: ``train`` group, after the training loss (TensorBoard's Scalars tab sorts tag groups and
#: the tags in each by name, so ``test/`` and ``train/loss`` lead)
GRAD_NORM_TAG = "train/param_grad_norm/"
#: the prefix runs of earlier versions logged the same norms under
OLD_GRAD_NORM_TAG = "grad_norm/"


class GradNormTracker:
    """Per-parameter gradient L2 norms summed over an epoch's steps, on the device (no host
    sync per step); the epoch mean (over steps where the norm is finite) goes to TensorBoard
    as ``train/param_grad_norm/<parameter name>`` (:data:`GRAD_NORM_TAG`)."""

    def __init__(self, model: nn.Module) -> None:
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.sum: torch.Tensor | None = None
        self.count: torch.Tensor | None = None
        self.steps = 0
        self.last: dict[str, torch.Tensor] = {}
        self._grads: list[torch.Tensor] = []

    def record(self) -> None:
        grads = [p.grad for _, p in self.named if p.grad is not None]
        if len(grads) < len(self.named):  # e.g. an unused embedding row set: skip the step
            return
        self.record_norms(torch.stack(torch._foreach_norm(grads)).detach())
        self._grads = grads

    def record_norms(self, norms: torch.Tensor) -> None:
        """Add one step's norms (a 1-d tensor in the order of ``named``), e.g. the ones a
        compiled step computed without leaving gradients in ``.grad``."""
        # Mean over the steps with a finite norm: a run that diverges mid-epoch still shows
        # how large its gradients grew (nan when no step was finite).
        finite = torch.isfinite(norms)
        norms = torch.where(finite, norms, torch.zeros_like(norms))
        if self.sum is None or self.count is None:
            self.sum, self.count = norms, finite.to(norms.dtype)
        else:
            self.sum, self.count = self.sum + norms, self.count + finite
        self.steps += 1

    def epoch_metrics(self) -> dict[str, float]:
        """Mean gradient norm per parameter over the epoch's steps; resets the sums."""
        if self.sum is None or not self.steps:
            return {}
        assert self.count is not None
        means = (self.sum.double() / self.count.double()).cpu().tolist()  # 0/0 = nan
        # Gradient values of the epoch's last step (that left them in .grad), for histograms.
        self.last = {
            n: g.detach().flatten().cpu() for (n, _), g in zip(self.named, self._grads, strict=True)
        } if self._grads else {}
        self._grads = []
        self.sum, self.count, self.steps = None, None, 0
        return {f"{GRAD_NORM_TAG}{n}": m for (n, _), m in zip(self.named, means, strict=True)}

    def histograms(self) -> dict[str, torch.Tensor]:
        """Finite gradient values of the epoch's last step per parameter (a diverged run's
        nan/inf gradients have no histogram; its gradient-norm scalars show them)."""
        out = {}
        for n, t in self.last.items():
            t = t[torch.isfinite(t)]
            if t.numel():
                out[f"grad/{n}"] = t
        self.last = {}
        return out


def grad_norms_enabled(spec: Mapping[str, Any]) -> bool:
    """``auto``: on except for tiny batches (batch 1: a norm per step would cost about as
    much as the step itself)."""
    v = TechniqueOptions.of(spec).log_grad_norms
    if v != "auto":
        return bool(v)
    bs = spec.get("batch_size", "full")
    return bs in ("full", None) or int(bs) >= 16


# ----------------------------------------------------------------------------- validation split


def val_split_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of ``range(n)`` (a training set) into (train, validation) index tensors,
    each sorted; the same (n, fraction, seed) always gives the same split. The test set is
    never an input, so it can never leak into validation."""
    if not 0 < fraction < 1:
        raise ValueError(f"val_split: expected a fraction in (0, 1), got {fraction!r}")
    n_val = min(n - 1, max(1, round(n * fraction)))
    if n < 2:
        raise ValueError(f"val_split: need at least 2 training examples, got {n}")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    return perm[n_val:].sort().values, perm[:n_val].sort().values


# ----------------------------------------------------------------------------- early stopping


class EarlyStopping:
    """Stop when the validation loss has not improved for ``patience`` epochs; keeps a copy
    of the best weights to restore. ``step`` returns True on the epoch training should stop."""

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ValueError(f"early_stopping: expected a patience >= 1, got {patience!r}")
        self.patience = patience
        self.best_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.stopped_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None

    def step(self, epoch: int, val_loss: float, model: nn.Module) -> bool:
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                self.stopped_epoch = epoch
        return self.stopped_epoch is not None

    def restore(self, model: nn.Module) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped_epoch": self.stopped_epoch,
            "best_state": self.best_state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


# ----------------------------------------------------------------------------- the tasks' hooks


class Techniques:
    """What a task calls: ``loss`` (penalties), ``after_backward`` (grad norms, clipping),
    ``end_epoch`` (scheduler, early stopping), state for checkpoints."""

    def __init__(self, spec: Mapping[str, Any], model: nn.Module, optimizer: Any) -> None:
        self.spec = spec
        self.model = model
        opts = TechniqueOptions.of(spec)
        self.l1, self.l2 = float(opts.l1), float(opts.l2)
        self.clip_norm = opts.clip_grad_norm
        self.clip_value = opts.clip_grad_value
        self.tracker = GradNormTracker(model) if grad_norms_enabled(spec) else None
        self.scheduler = build_scheduler(opts.scheduler, optimizer)
        es = opts.early_stopping
        self.early = EarlyStopping(int(es)) if es is not None else None

    @property
    def stop(self) -> bool:
        return self.early is not None and self.early.stopped_epoch is not None

    def loss(self, data_loss: torch.Tensor) -> torch.Tensor:
        pen = penalty(self.model, self.l1, self.l2)
        return data_loss if pen is None else data_loss + pen

    def after_backward(self) -> None:
        # Norms of the raw gradient (before clipping): what vanishes or explodes.
        if self.tracker is not None:
            self.tracker.record()
        if self.clip_norm is not None or self.clip_value is not None:
            clip_gradients(self.model.parameters(), self.clip_norm, self.clip_value)

    def epoch_metrics(self) -> dict[str, float]:
        return self.tracker.epoch_metrics() if self.tracker is not None else {}

    def histograms(self) -> dict[str, torch.Tensor]:
        return self.tracker.histograms() if self.tracker is not None else {}

    def end_epoch(self, epoch: int, metrics: Mapping[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.scheduler is not None:
            from torch.optim.lr_scheduler import ReduceLROnPlateau

            if isinstance(self.scheduler, ReduceLROnPlateau):
                self.scheduler.step(metrics.get("val/loss", metrics["train/loss_epoch"]))
            else:
                self.scheduler.step()
            out["lr"] = float(self.scheduler.optimizer.param_groups[0]["lr"])
        if self.early is not None:
            self.early.step(epoch, metrics["val/loss"], self.model)
            out["early_stopping/best_epoch"] = float(self.early.best_epoch)
        return out

    def finish(self) -> dict[str, Any]:
        """Restore the best weights (early stopping); the result fields to record."""
        if self.early is None:
            return {}
        self.early.restore(self.model)
        return {
            "early_stopping": {
                "patience": self.early.patience,
                "stopped_epoch": self.early.stopped_epoch,
                "best_epoch": self.early.best_epoch,
                "best_val_loss": self.early.best_loss,
            }
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "early": self.early.state_dict() if self.early is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.early is not None and state.get("early") is not None:
            self.early.load_state_dict(state["early"])


def hparams(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Every technique option of a run (defaults included) for the HParams dashboard."""
    opts = TechniqueOptions.of(spec)
    out = {}
    for k in technique_defaults(spec["experiment"]):
        v = getattr(opts, k)
        out[k] = "none" if v is None else v
    return out


class TechniqueHooks:
    """What a task hands the runner for its §V options (``self.tech``), shared by both tasks.

    A mixin before ``ModelOptimizerState``: the technique state (early-stopping bookkeeping,
    best weights) travels in the checkpoint beside the model and optimizer.
    """

    tech: Techniques

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "techniques": self.tech.state_dict()}  # type: ignore[misc]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)  # type: ignore[misc]
        self.tech.load_state_dict(state.get("techniques", {}))

    @property
    def stop(self) -> bool:
        return self.tech.stop

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> dict[str, float]:
        return self.tech.end_epoch(epoch, metrics)

    def histograms(self) -> dict[str, torch.Tensor]:
        return self.tech.histograms()

    def finish(self) -> dict[str, Any]:
        extra = self.tech.finish()
        if extra:  # best weights restored (chosen on validation data): their metrics are final
            extra["final"] = self.evaluate()
        return extra
