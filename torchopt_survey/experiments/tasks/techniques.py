"""Training techniques of the second survey (§V): what the options do while a run trains.

Initialisation (Xavier/He), L1/L2 loss penalties, gradient clipping, a seeded validation
split with early stopping, learning-rate schedulers and per-parameter gradient-norm logging
(batch/layer normalisation, dropout and deep MLPs are the models' own). Each piece is a small
function or class so the tasks (``mnist.py``, ``karate.py``) only call hooks. The options
themselves (schema, defaults, checks) are in :mod:`.technique_options`, re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import nn

from .technique_options import (
    COMMON_DEFAULTS,
    COMMON_OPTIONS,
    INITS,
    MODEL_OPTIONS,
    OPTION_DEFAULTS,
    STATE_DTYPES,
    TREATMENTS,
    TechniqueOptions,
    build_scheduler,
    check_hidden,
    hparams,
    scheduler_entry,
    technique_defaults,
    technique_spec,
    validate_techniques,
    variant_suffix,
)

__all__ = [
    "COMMON_DEFAULTS",
    "COMMON_OPTIONS",
    "EarlyStopping",
    "GradNormTracker",
    "INITS",
    "MODEL_OPTIONS",
    "OPTION_DEFAULTS",
    "STATE_DTYPES",
    "TREATMENTS",
    "TechniqueHooks",
    "TechniqueOptions",
    "Techniques",
    "attach_step_in_backward",
    "build_scheduler",
    "check_hidden",
    "clip_gradients",
    "grad_norms_enabled",
    "hparams",
    "init_weights",
    "optimizer_arguments",
    "penalized_weights",
    "penalty",
    "scheduler_entry",
    "technique_defaults",
    "technique_spec",
    "val_split_indices",
    "validate_techniques",
    "variant_suffix",
]


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
        """Gradient values of the epoch's last step per parameter (the run writer keeps their
        finite values: a diverged run's nan/inf gradients show in its gradient-norm scalars)."""
        out = {f"grad/{n}": t for n, t in self.last.items()}
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
