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

#: what a task of your own uses; the other classes here are the built-in tasks' own helpers
__all__ = ["Capabilities", "Claim", "Defaults", "Metric", "Task", "TaskData"]


@dataclass
class TaskData:
    """A task's examples as tensors (inputs ``x_*``, targets ``y_*``; first dimension: the
    examples). The validation split is what sweeps select on and early stopping watches.

    Returned by :meth:`Task.data`; mini-batches index the first dimension of ``x_train`` and
    ``y_train`` together, so each pair must have the same number of examples.

    Args:
        x_train (torch.Tensor): training inputs; the model's forward takes a batch of them.
        y_train (torch.Tensor): training targets; :meth:`Task.loss` takes a batch of them.
        x_val (torch.Tensor): validation inputs (evaluated whole after every epoch).
        y_val (torch.Tensor): validation targets.
        x_test (torch.Tensor): test inputs (evaluated whole after every epoch).
        y_test (torch.Tensor): test targets.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass(frozen=True)
class Metric:
    """A metric evaluated on the validation and test sets after every epoch.

    It is logged as ``val/<name>`` and ``test/<name>``. The loss is always logged too
    (``val/loss``, ``test/loss``; lower is better).

    Args:
        name (str): the tag suffix (``val/<name>``, ``test/<name>``) and the name
            :attr:`Task.select` and the report's columns use.
        fn (Callable[[torch.Tensor, torch.Tensor], float | torch.Tensor]): ``fn(outputs,
            targets)`` for one whole set: the model's outputs and the targets; returns a float
            or a 0-d tensor.
        higher_is_better (bool, optional): the direction of improvement (default ``True``).
            The metric a task selects on must be one where higher is better.
    """

    name: str
    fn: Callable[[torch.Tensor, torch.Tensor], float | torch.Tensor]
    higher_is_better: bool = True


@dataclass(frozen=True)
class Defaults:
    """The task's default training settings (flags and ``--set`` override them).

    Args:
        epochs (int, optional): passes over the training set per run (default ``10``);
            ``--epochs``.
        batch_size (int or None, optional): examples per step; ``None`` (default): the whole
            training set (full batch, one step per epoch); ``--batch-size``.
        seeds (tuple[int, ...], optional): one run per seed and optimizer (default ``(0,)``);
            ``--seeds``.
        lr (float or None, optional): the learning rate of every optimizer; ``None``
            (default): each optimizer's paper default (``0.01``; ``1.0`` for the second-order
            methods' first line-search trial); ``--lr``.
        optimizers (tuple[str, ...], optional): names from :data:`OPTIMIZER_NAMES` or the
            second-order ``newton``, ``newton_cg``, ``cg``, or ``"all"`` (default
            ``("sgd", "adam")``); ``--optimizers``.
    """

    epochs: int = 10
    batch_size: int | None = None
    seeds: tuple[int, ...] = (0,)
    lr: float | None = None
    optimizers: tuple[str, ...] = ("sgd", "adam")


@dataclass(frozen=True)
class Capabilities:
    """What the task supports beyond plain mini-batch training.

    Args:
        full_batch_closures (bool, optional): the second-order methods (Newton, NewtonCG, CG)
            can train it with full-batch closures (default ``True``).
        stacked_replicas (bool, optional): a sweep may train several seeds and learning rates
            as one program (``torch.func`` stacked replicas; default ``True``). Models with
            buffers that training updates (batch norm) cannot be stacked: set it ``False``.
        torchrun_sharding (bool, optional): under ``torchrun``, each global batch is sharded
            over the ranks (DDP; default ``True``).
    """

    full_batch_closures: bool = True
    stacked_replicas: bool = True
    torchrun_sharding: bool = True


@runtime_checkable
class Task(Protocol):
    """What a task provides; no base class is needed, and attributes may be class attributes.

    ``isinstance(obj, Task)`` checks that the attributes and methods exist (not their types);
    before any run starts, the harness checks the rest on four training examples. The guide
    with a complete example is ``docs/experiments-tasks.md``.

    Attributes:
        name (str): a short identifier (letters, digits, ``_``): the first part of every run
            id (``name/variant/optimizer/seedN``).
        metrics (Sequence[Metric]): evaluated on the validation and test sets every epoch.
        select (str): the name of the metric sweeps tune on (its validation value) and report
            (its test value); higher must be better.
        defaults (Defaults): epochs, batch size, seeds, learning rate and optimizers.
        capabilities (Capabilities): what the task supports beyond mini-batch training.
        target (float): optional (not part of the protocol's check): the validation value of
            ``select`` for a sweep's steps/time-to-target columns (absent: not reported).
        claims (Sequence[Claim]): optional (not part of the protocol's check): comparisons the
            report always tests (absent: none; ``--claim`` adds more).
    """

    name: str
    metrics: Sequence[Metric]
    select: str
    defaults: Defaults
    capabilities: Capabilities

    def data(self, device: torch.device) -> TaskData:
        """The task's examples on ``device`` (called once per run, and once per vectorised
        program).

        Args:
            device (torch.device): where the tensors must be.

        Returns:
            TaskData: the training, validation and test examples.
        """
        ...

    def model(self, seed: int) -> nn.Module:
        """A fresh model for ``seed`` (torch's RNG is already seeded with it).

        Args:
            seed (int): the run's seed.

        Returns:
            torch.nn.Module: a new model with freshly initialised parameters; the harness
            moves it to the run's device.
        """
        ...

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean loss of a batch: a 0-d tensor that ``backward()`` differentiates.

        Args:
            outputs (torch.Tensor): the model's outputs for a batch (or a whole split).
            targets (torch.Tensor): the batch's targets (from :class:`TaskData`).

        Returns:
            torch.Tensor: the 0-d mean loss.
        """
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
    (Welch's t-test over seeds per pair, on each metric of ``metrics``).

    A task lists its own in an optional ``claims`` attribute (see :class:`Task`);
    ``report --claim 'adam>sgd'`` adds more.

    Args:
        text (str): how the runs' claims table names it.
        winners (tuple[str, ...]): optimizer names (as in :data:`OPTIMIZER_NAMES`).
        losers (tuple[str, ...]): optimizer names each winner must beat.
        metrics (tuple[tuple[str, str], ...]): ``(summary key, label)`` of each metric it is
            tested on, e.g. ``("final_test_r2", "final test r2")`` (a task's metric ``m``:
            ``final_test_m`` or ``best_test_m``); empty: the final test value of every metric.
        variant_suffix (str, optional): the claim is about the runs whose variant ends so
            (default ``""``: every variant).
        sweep_text (str, optional): how a sweep's claims table names it (tested there on the
            sweep's metric; default ``""``: as ``text``).
    """

    text: str
    winners: tuple[str, ...]
    losers: tuple[str, ...]
    metrics: tuple[tuple[str, str], ...]
    variant_suffix: str = ""
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


@dataclass(frozen=True)
class LossCurve:
    """Where the report's second-order section reads a run's training loss per iteration."""

    #: the per-epoch history tag
    tag: str = "train/loss_epoch"
    #: True: the value after each epoch's step (a fixed evaluation); False: the loss over the
    #: epoch's first step, i.e. the loss at the epoch's start (full batch)
    after_epoch: bool = False


@dataclass(frozen=True)
class Overview:
    """Figures that compare some of a task's variants, drawn before each variant's own."""

    #: the task's variant names -> (file name, title, [(series label, variant, optimizer)])
    #: per figure; series without runs are left out, a figure without any is not drawn
    figures: Callable[[Sequence[str]], list[tuple[str, str, list[tuple[str, str, str]]]]]
    #: (variant, its optimizers) -> True when an overview already shows its figure
    covers: Callable[[str, Sequence[str]], bool] = lambda variant, optimizers: False
