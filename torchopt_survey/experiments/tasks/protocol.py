"""The public ``Task`` protocol: what a task provides so the harness can study it.

A task is an object with the attributes and methods of :class:`Task` (no base class needed):
its data, a model per seed, the loss, its metrics and defaults, and what it supports. The
harness does the rest for it, as for the built-in MNIST and Karate tasks: the training loop
(mini-batches in a seeded order, or full-batch closures for the second-order methods),
evaluation, TensorBoard (scalars, HParams, gradient norms), per-epoch checkpoints and
``--resume``, worker processes, ``torchrun`` sharding, Ray trials, the §V technique options
that apply to any model (L1/L2, clipping, early stopping, schedulers), sweeps (vectorised
replicas where the model stacks) and report verdicts (Welch's t-test over seeds).

Run one with ``python -m torchopt_survey.experiments run --task package.module:Class`` (or
``sweep --task ...``); see ``docs/experiments-tasks.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@dataclass
class TaskData:
    """A task's examples as tensors (inputs ``x_*``, targets ``y_*``; first dimension: the
    examples). The validation split is what sweeps select on and early stopping watches."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass(frozen=True)
class Metric:
    """A metric evaluated on the validation and test sets after every epoch.

    ``fn(outputs, targets)`` returns a number (a float or a 0-d tensor) for one whole set; it
    is logged as ``val/<name>`` and ``test/<name>``. The loss is always logged too
    (``val/loss``, ``test/loss``; lower is better)."""

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], float | torch.Tensor]
    higher_is_better: bool = True


@dataclass(frozen=True)
class Defaults:
    """The task's default training settings (flags and ``--set`` override them)."""

    epochs: int = 10
    #: examples per step; None: the whole training set (full batch, one step per epoch)
    batch_size: int | None = None
    seeds: tuple[int, ...] = (0,)
    #: learning rate for every optimizer; None: each optimizer's paper default (0.01)
    lr: float | None = None
    optimizers: tuple[str, ...] = ("sgd", "adam")


@dataclass(frozen=True)
class Capabilities:
    """What the task supports beyond plain mini-batch training."""

    #: the second-order methods (Newton, NewtonCG, CG) as full-batch closures
    full_batch_closures: bool = True
    #: several seeds/learning rates trained as one program (torch.func stacked replicas);
    #: models with buffers that training updates (batch norm) cannot be stacked
    stacked_replicas: bool = True
    #: under torchrun, each global batch sharded over the ranks (DDP)
    torchrun_sharding: bool = True


@runtime_checkable
class Task(Protocol):
    """What a task provides. Attributes may be class attributes.

    ``name``: a short identifier (letters, digits, ``_``): the first part of every run id.
    ``metrics``: evaluated every epoch; ``select``: the name of the one sweeps tune on (its
    validation value) and report (its test value). ``defaults`` and ``capabilities``: see
    :class:`Defaults` and :class:`Capabilities`.
    """

    name: str
    metrics: Sequence[Metric]
    select: str
    defaults: Defaults
    capabilities: Capabilities

    def data(self, device: torch.device) -> TaskData:
        """The task's examples on ``device`` (called once per run, and once per vectorised
        program)."""
        ...

    def model(self, seed: int) -> nn.Module:
        """A fresh model for ``seed`` (torch's RNG is already seeded with it)."""
        ...

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean loss of a batch: a 0-d tensor that ``backward()`` differentiates."""
        ...


class ModelOptimizerState:  # (a helper of the built-in tasks)
    """``state_dict``/``load_state_dict`` of a task that owns ``model`` and ``optimizer``."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])


@dataclass(frozen=True)
class SweepMetric:
    """The metric a sweep tunes on (its validation value) and reports (its test value)."""

    #: tag suffix: ``val/<name>`` selects, ``test/<name>`` is reported
    name: str
    #: how tables and figures name it
    label: str
    #: validation value for the steps/time-to-target columns (AlgoPerf style)
    target: float
    #: how the sweep's tables name the task's metric
    description: str = ""

    @property
    def val_tag(self) -> str:
        return f"val/{self.name}"

    @property
    def test_tag(self) -> str:
        return f"test/{self.name}"


@dataclass(frozen=True)
class Claim:
    """A claim a report tests: every optimizer of ``winners`` beats every one of ``losers``
    (Welch's t-test over seeds per pair, see :func:`..report.stats.claim_verdict`)."""

    #: how the runs' claims table names it
    text: str
    winners: tuple[str, ...]
    losers: tuple[str, ...]
    #: (summary key, label) of each metric it is tested on, e.g.
    #: ``("test_accuracy", "final test accuracy")``
    metrics: tuple[tuple[str, str], ...]
    #: the claim is about the runs whose variant ends so ("": every variant)
    variant_suffix: str = ""
    #: how a sweep's claims table names it (tested there on the sweep's metric)
    sweep_text: str = ""


@dataclass(frozen=True)
class Figures:
    """How the report draws a task's runs: one figure per variant, one panel per tag."""

    #: (TensorBoard tag, axis label) per panel; ``train/loss`` is the per-step loss curve
    panels: tuple[tuple[str, str], ...]
    #: the figure's title, ``{variant}`` filled in
    title: str = "{variant}: optimizers"
    #: file names of some variants' figures (others: ``fig_<variant>.png``)
    names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportMetric:
    """A metric the results table shows per optimizer (final and best epoch, mean ± std)."""

    #: key of the summary columns, e.g. ``test_accuracy``
    key: str
    #: TensorBoard tag it is read from, e.g. ``test/accuracy``
    tag: str
    #: column label, e.g. ``test acc``
    label: str
