"""A run's settings, typed: :class:`RunSpec`, what one run trains (the harness's unit of work).

A task's ``expand`` turns a validated config into run specs; a sweep turns each into one per
grid point (:meth:`RunSpec.at`); the run writer stores :meth:`RunSpec.to_dict` in the run's
checkpoints and ``result.json`` and compares it on ``--resume``. Each value is stored once:
a sweep's setting (its learning rate among them) lives in :attr:`RunSpec.sweep` only, and the
run's optimizer arguments and variant name are derived from it. The optimizer's paper
defaults are merged into the spec once, when the task expands its config
(``optimizer_hparams``).

On disk a spec keeps the dict form runs have always written (a sweep's learning rate in its
optimizer arguments, its setting and its variant name), so run ids and older run folders stay
valid. Task modules read their own settings through the read-only mapping interface
(``spec["dataset"]``); the harness reads the typed attributes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .technique_options import TechniqueOptions

#: the keys every run spec has (besides the task's own settings)
COMMON_KEYS = ("experiment", "variant", "optimizer", "optimizer_kwargs", "seed", "epochs")


def setting_label(setting: Mapping[str, Any]) -> str:
    """A sweep setting as its run's variant spells it, e.g. ``lr=0.01,momentum=0.9``."""
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in setting.items())


def _plain(value: Any) -> Any:
    """A fresh copy of a JSON-like value (dicts and lists; tuples become lists)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class SweepPoint:
    """The grid point a sweep's run trains: the base run it varies and the setting.

    Args:
        base (str): the base run's variant (the sweep's tables group its settings under it).
        setting (Mapping[str, Any]): the optimizer arguments the grid sets, the learning
            rate first: ``{"lr": 0.01, ...}``.
    """

    base: str
    setting: Mapping[str, Any]

    @property
    def label(self) -> str:
        """The setting as the run's variant spells it, e.g. ``lr=0.01,momentum=0.9``."""
        return setting_label(self.setting)

    @classmethod
    def of(cls, stored: Mapping[str, Any]) -> SweepPoint:
        """The point of a stored spec's ``sweep`` entry.

        Args:
            stored (Mapping[str, Any]): ``{"base": ..., "setting": ...}``.

        Returns:
            SweepPoint: the point.
        """
        return cls(str(stored["base"]), _plain(stored["setting"]))

    @property
    def lr(self) -> float:
        return float(self.setting["lr"])


@dataclass(frozen=True, eq=False)
class RunSpec(Mapping[str, Any]):
    """What one run trains: its task, variant, optimizer, seed, epochs and the task's own
    settings (technique options included, those that differ from their defaults).

    A task's config expands into run specs; a sweep derives one per grid point
    (:meth:`at`). Equal to another spec, or to a dict, with the same :meth:`to_dict` (the
    form checkpoints and ``result.json`` store); read-only, also as a mapping of that form
    (``spec["dataset"]``).

    Args:
        experiment (str): the task's name (the first part of the run id).
        base_variant (str): the variant before any sweep setting, e.g. ``mnist-minibatch``.
        optimizer (str): the optimizer's registry name.
        base_kwargs (Mapping[str, Any]): the optimizer's constructor arguments (paper
            defaults merged) without those a sweep's setting sets.
        seed (int): the run's seed.
        epochs (int): passes over the training set.
        settings (Mapping[str, Any], optional): the task's own settings: every other key of
            the stored spec (default: none).
        task (str or None, optional): a task defined outside the package: its module path,
            ``package.module:Class`` (default ``None``: a built-in task).
        sweep (SweepPoint or None, optional): the grid point of a sweep's run (default
            ``None``: not a sweep's run).
    """

    experiment: str
    base_variant: str
    optimizer: str
    base_kwargs: Mapping[str, Any]
    seed: int
    epochs: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    task: str | None = None
    sweep: SweepPoint | None = None
    _stored: dict[str, Any] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        # own copies (nobody else's dict can change the spec); the on-disk form, kept
        object.__setattr__(self, "base_kwargs", _plain(self.base_kwargs))
        object.__setattr__(self, "settings", _plain(self.settings))
        object.__setattr__(self, "_stored", self._build_dict())

    # -- derived values (each stored once)
    @property
    def variant(self) -> str:
        """The run's variant, a sweep's setting appended to the base run's."""
        if self.sweep is None:
            return self.base_variant
        return f"{self.base_variant}-sweep~{self.sweep.label}"

    @property
    def optimizer_kwargs(self) -> dict[str, Any]:
        """The optimizer's constructor arguments (a sweep's setting over the base run's)."""
        kwargs = _plain(self.base_kwargs)
        if self.sweep is not None:
            kwargs.update(_plain(self.sweep.setting))
        return kwargs

    @property
    def lr(self) -> float | None:
        """The learning rate, or None when the optimizer takes none."""
        lr = self.optimizer_kwargs.get("lr")
        return None if lr is None else float(lr)

    @property
    def run_id(self) -> str:
        """Relative run folder, e.g. ``mnist/mnist-minibatch/adam/seed0``."""
        return f"{self.experiment}/{self.variant}/{self.optimizer}/seed{self.seed}"

    @property
    def techniques(self) -> TechniqueOptions:
        """The run's §V options (the ones the spec does not set: their defaults)."""
        return TechniqueOptions.of(self.settings)

    # -- derived specs
    def at(self, setting: Mapping[str, Any]) -> RunSpec:
        """The sweep's run of this (base) spec at a grid point.

        Args:
            setting (Mapping[str, Any]): the optimizer arguments the point sets,
                ``{"lr": 0.01, ...}``.

        Returns:
            RunSpec: the run of the point; its variant ends with ``-sweep~<setting>``.
        """
        if self.sweep is not None:
            raise ValueError(f"{self.run_id}: already a sweep's run")
        base = {k: v for k, v in self.base_kwargs.items() if k not in setting}
        return replace(self, base_kwargs=base,
                       sweep=SweepPoint(self.base_variant, _plain(setting)))

    def with_settings(self, **settings: Any) -> RunSpec:
        """This spec with some of the task's settings replaced (keyword arguments)."""
        return replace(self, settings={**_plain(self.settings), **settings})

    # -- the on-disk form
    def to_dict(self) -> dict[str, Any]:
        """The spec as runs store it in checkpoints and ``result.json`` (a fresh dict)."""
        return _plain(self._stored)

    def _build_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"experiment": self.experiment}
        if self.task is not None:
            out["task"] = self.task
        out.update({"variant": self.variant, "optimizer": self.optimizer,
                    "optimizer_kwargs": self.optimizer_kwargs, "seed": self.seed,
                    "epochs": self.epochs})
        out.update(_plain(self.settings))
        if self.sweep is not None:
            out["sweep"] = {"base": self.sweep.base, "setting": _plain(self.sweep.setting)}
        return out

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> RunSpec:
        """The spec of its stored (dict) form.

        Args:
            spec (Mapping[str, Any]): a stored spec (without ``optimizer_kwargs``: none), or
                a :class:`RunSpec` (returned as it is).

        Returns:
            RunSpec: the spec.

        Raises:
            ValueError: a common key missing, or a variant that does not spell its sweep
                setting.
        """
        if isinstance(spec, RunSpec):
            return spec
        stored = {**spec, "optimizer_kwargs": dict(spec.get("optimizer_kwargs", {}))}
        missing = [k for k in COMMON_KEYS if k not in stored]
        if missing:
            raise ValueError(f"run spec: missing {', '.join(missing)}")
        kwargs = dict(stored["optimizer_kwargs"])
        sweep, variant = None, str(spec["variant"])
        raw = spec.get("sweep")
        if isinstance(raw, Mapping):
            sweep = SweepPoint.of(raw)
            variant = sweep.base
            for k, v in raw["setting"].items():  # (stored once: in the setting)
                if kwargs.get(k) == v:
                    del kwargs[k]
        out = cls(experiment=str(spec["experiment"]), base_variant=variant,
                  optimizer=str(spec["optimizer"]), base_kwargs=kwargs, seed=int(spec["seed"]),
                  epochs=int(spec["epochs"]),
                  settings={k: v for k, v in spec.items()
                            if k not in (*COMMON_KEYS, "task", "sweep")},
                  task=spec.get("task"), sweep=sweep)
        if out.to_dict() != stored:  # e.g. a stored variant that is not base + setting
            raise ValueError(f"run spec {spec.get('variant')!r}: its variant, optimizer "
                             "arguments and sweep setting disagree")
        return out

    def normalised(self) -> RunSpec:
        """The spec after a JSON round trip (as checkpoints and result files give it back)."""
        return RunSpec.of(json.loads(json.dumps(self.to_dict(), sort_keys=True)))

    # -- read-only mapping of the on-disk form (what task modules read their settings from)
    def __getitem__(self, key: str) -> Any:
        return _plain(self._stored[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RunSpec):
            return self._stored == other._stored
        if isinstance(other, Mapping):
            return self._stored == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # (mutable-looking: compared by contents)

    def __repr__(self) -> str:
        return f"RunSpec({self.run_id})"
