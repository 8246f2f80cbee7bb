"""The tasks by name: the one place that maps an experiment name to its code.

The built-in tasks are registered here; a task of the public :class:`.protocol.Task` protocol
defined outside the package is registered when it is loaded (:func:`load`), from its module
path (``package.module:Class``), which run specs and results record so that a later process
(``report``, ``--resume``, a worker) finds it again.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import custom, karate, mnist, mnist_vectorized, schema
from .protocol import Claim, Figures, LossCurve, Overview, ReportMetric, SweepMetric
from .spec import RunSpec
from .technique_options import COMMON_OPTIONS

Spec = Mapping[str, Any]


@dataclass(frozen=True)
class Entry:
    """What the harness needs of a task, by experiment name."""

    #: the object that trains one run: ``make(spec, device, data_dir)``
    make: Callable[[Spec, torch.device, str | None], Any]
    #: a validated config -> its run specs
    expand: Callable[[dict[str, Any]], Sequence[Spec]]
    #: read the data of a config once (a missing file stops the command before any run)
    check_data: Callable[[dict[str, Any], str | None], None]
    #: a run's rough relative cost (the pool starts the longest first)
    expected_cost: Callable[[Spec], float]
    sweep_metric: SweepMetric
    report_metrics: tuple[ReportMetric, ...]
    claims: tuple[Claim, ...]
    figures: Figures
    #: the stacked program of several runs: ``stacked(specs, device, data_dir)``, or None
    stacked: Callable[[Sequence[Spec], torch.device, str | None], Any] | None = None
    #: what runs must share to be one stacked program (None: the run trains alone)
    group_key: Callable[[Spec], tuple[Any, ...] | None] | None = None
    #: why a run trains alone
    why_not: Callable[[Spec], str | None] = lambda spec: None
    #: the task's config defaults and their validation (None: the built-in config schema)
    config: custom.CustomConfig | None = None
    #: the task's own flags on its commands, and how they enter its config
    add_flags: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    apply_flags: Callable[[argparse.Namespace, dict[str, Any], dict[str, Any]],
                          dict[str, Any]] = lambda args, cfg, upd: cfg
    #: a sweep's defaults for the task's flags, and its config turned into a sweep's
    #: (``prepare_sweep(cfg, --val-split)``)
    sweep_flags: Callable[[argparse.Namespace], dict[str, Any]] = lambda args: {}
    prepare_sweep: Callable[[dict[str, Any], float | None], dict[str, Any]] = \
        lambda cfg, val_split: cfg
    #: what the task's command does (its --help)
    help: str = ""
    #: every optimizer a validated config runs
    optimizers_of: Callable[[dict[str, Any]], list[str]] = lambda cfg: list(cfg["optimizers"])
    #: a built-in task's default config and the check of its own keys (in place)
    defaults: dict[str, Any] | None = None
    validate_own: Callable[[dict[str, Any]], None] = lambda cfg: None
    #: the §V technique options the task takes (the HParams dashboard shows each)
    technique_options: tuple[str, ...] = COMMON_OPTIONS
    #: how the second-order section reads a run's training loss per iteration
    loss_curve: LossCurve = LossCurve()
    #: the report's section on §V technique runs reads the task's runs (per-layer gradient
    #: norms need ``weight_names``: its Linear weights' parameter names, input layer first)
    weight_names: Callable[[Spec], list[str]] | None = None
    #: the report's figures that compare the task's variants (``overview(variants, out,
    #: draw)``) and which variants' own figures they replace
    overview: Overview | None = None
    #: why the second-order section has no Newton runs of the task ("": none given)
    no_newton: str = ""
    #: ``resume_as(stored, spec)``: the spec a run of ``spec`` continues as from a checkpoint
    #: saved under the spec ``stored`` (an older release's), and the note saying so; None:
    #: the checkpoint is of another run (set aside)
    resume_as: Callable[[Any, RunSpec], tuple[RunSpec, str] | None] = \
        lambda stored, spec: None


def _builtin(module: Any, cls: Any, **more: Any) -> Entry:
    """A built-in task: its module's config schema, flags and help, its class's hooks."""
    return Entry(make=cls, expand=module.expand, check_data=cls.check_data,
                 expected_cost=cls.expected_cost, sweep_metric=cls.sweep_metric,
                 report_metrics=cls.report_metrics, claims=cls.claims, figures=cls.figures,
                 defaults=module.DEFAULTS, validate_own=module.validate_config,
                 technique_options=module.TECHNIQUE_OPTIONS, add_flags=module.add_flags,
                 apply_flags=module.apply_flags, help=module.HELP, **more)


TASKS: dict[str, Entry] = {
    mnist.NAME: _builtin(mnist, mnist.MnistTask, stacked=mnist_vectorized.VectorMnist,
                         group_key=mnist_vectorized.group_key, why_not=mnist_vectorized.why_not,
                         sweep_flags=mnist.sweep_flags, prepare_sweep=mnist.prepare_sweep,
                         optimizers_of=mnist.optimizers_of, weight_names=mnist.weight_names,
                         overview=mnist.OVERVIEW, no_newton=mnist.NO_NEWTON,
                         resume_as=mnist.resume_as),
    karate.NAME: _builtin(karate, karate.KarateTask, why_not=karate.why_not,
                          loss_curve=karate.LOSS_CURVE),
}


def load(path: str) -> str:
    """Load the task at ``package.module:Class`` (checked against the protocol; ValueError
    naming the task and the problem) and register it; returns its experiment name."""
    task = custom.load_task(path)
    entry = TASKS.get(task.name)
    if entry is not None and (entry.config is None or entry.config.path != path):
        raise ValueError(f"--task {path}: its name {task.name!r} is already taken by another "
                         "task; give it another name")
    config = custom.CustomConfig(task, path)
    TASKS[task.name] = Entry(
        make=config.make_run, expand=config.expand, check_data=config.check_data,
        expected_cost=config.expected_cost, sweep_metric=config.sweep_metric(),
        report_metrics=config.report_metrics(), claims=tuple(getattr(task, "claims", ())),
        figures=config.figures(),
        stacked=config.make_stacked, group_key=config.group_key, why_not=config.why_not,
        config=config)
    return task.name


def entry(experiment: str, task_path: str | None = None) -> Entry:
    """The registered task of ``experiment`` (loading ``task_path`` if not yet loaded)."""
    if experiment not in TASKS and task_path:
        load(task_path)
    if experiment not in TASKS:
        raise ValueError(f"experiment {experiment!r}: no such task; built-in tasks: "
                         f"{', '.join(BUILTIN)}; or give a task's module path (--task)")
    return TASKS[experiment]


BUILTIN = tuple(TASKS)


def of(spec: Spec) -> Entry:
    """The task of a run spec (or a config)."""
    return entry(spec["experiment"], spec.get("task"))


def resume_as(stored: Any, spec: RunSpec) -> tuple[RunSpec, str] | None:
    """The spec the run of ``spec`` continues as from a checkpoint (or result) saved under the
    spec ``stored`` that differs from it, and why; None when the task does not resume it."""
    return of(spec).resume_as(stored, spec)


def make_task(spec: Spec, device: torch.device, data_dir: str | None) -> Any:
    """The object that trains the run of ``spec``."""
    return of(spec).make(spec, device, data_dir)


def expand(cfg: dict[str, Any]) -> list[RunSpec]:
    """One run spec per run of a validated config."""
    return [RunSpec.of(spec) for spec in of(cfg).expand(cfg)]


def check_data(cfg: dict[str, Any], data_dir: str | None) -> None:
    of(cfg).check_data(cfg, data_dir)


def expected_cost(spec: Spec) -> float:
    return of(spec).expected_cost(spec)


def replica_group(spec: Spec) -> tuple[Any, ...] | None:
    """What runs must share to train as stacked replicas of one program (None: it trains
    alone)."""
    e = of(spec)
    return None if e.group_key is None or e.stacked is None else e.group_key(spec)


def why_not_stacked(spec: Spec) -> str:
    """Why the run of ``spec`` trains alone, for the sweep's message."""
    return of(spec).why_not(spec) or "not vectorised"


def make_stacked(specs: Sequence[Spec], device: torch.device, data_dir: str | None) -> Any:
    """The program that trains the runs of ``specs`` (one :func:`replica_group`) together."""
    stacked = of(specs[0]).stacked
    assert stacked is not None
    return stacked(specs, device, data_dir)


def sweep_metric(experiment: str) -> SweepMetric:
    """The metric sweeps of ``experiment`` tune on and report."""
    return entry(experiment).sweep_metric


def default_config(experiment: str) -> dict[str, Any]:
    """A fresh copy of the default configuration of ``experiment``."""
    e = entry(experiment)
    if e.config is not None:
        return e.config.default_config()
    assert e.defaults is not None
    return copy.deepcopy(e.defaults)


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check every value of a config (ValueError naming the key); returns a normalised copy."""
    if cfg.get("experiment") not in TASKS and not cfg.get("task"):
        schema.check_choice("experiment", cfg.get("experiment"), BUILTIN)
    e = of(cfg)
    if e.config is not None:
        return e.config.validate(cfg)
    return schema.validate(cfg, e.validate_own, e.optimizers_of)
