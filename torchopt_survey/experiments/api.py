"""The command line as Python functions: ``run``, ``sweep`` and ``report`` with the flags as
keyword arguments (``lr_grid="1e-3:1e-1:3"`` for ``--lr-grid``), checked as the CLI checks
them; a bad value raises the ValueError the CLI turns into exit 2.

How a keyword becomes flags: ``True`` gives the bare flag (``resume=True``: ``--resume``);
``False`` and ``None`` leave the flag out (its default applies); a list gives one flag with
several values (``seeds=[0, 1]``: ``--seeds 0 1``), except for ``config``, ``set``, ``grid``
and ``claim``, which are repeated once per value (``set=["l2=1e-4", "epochs=3"]``).

>>> from torchopt_survey.experiments import api
>>> results = api.run("regression_task:Regression", seeds=[0, 1], logdir="runs/r")  # doctest: +SKIP
>>> api.report("runs/r", claim=["adam>sgd"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cli import build_parser
from .report.results import load_results
from .tasks.registry import BUILTIN

__all__ = ["report", "run", "sweep"]

#: flags that may be given several times (a list: one flag per value)
_REPEATED = ("config", "set", "grid", "claim")


def _argv(command: str, options: dict[str, Any]) -> list[str]:
    argv = [command]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif key in _REPEATED:
            for item in [value] if isinstance(value, str) else value:
                argv += [flag, str(item)]
        elif isinstance(value, Sequence) and not isinstance(value, str):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def _call(command: str, options: dict[str, Any]) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(_argv(command, options))
    if extra:
        raise TypeError(f"{command}: unexpected argument(s) {' '.join(extra)}")
    args.handler(args)


def _results(logdir: str, experiment: str | None = None) -> list[dict[str, Any]]:
    return [r for r in load_results(logdir)
            if experiment is None or r["spec"]["experiment"] == experiment]


def run(task: str, logdir: str = "runs", **options: Any) -> list[dict[str, Any]]:
    """Every run of ``task`` with the options of ``python -m torchopt_survey.experiments run``
    (or of a built-in task's own command, or of ``all``, for built-in tasks).

    Args:
        task (str): a task of your own as ``package.module:Class`` (importable; see
            :class:`~torchopt_survey.experiments.Task`), or a built-in task's name (the
            commands ``--help`` lists beside ``run``), or ``"all"`` (every built-in task).
        logdir (str, optional): the runs' root folder, ``--logdir`` (default ``"runs"``).
        **options: the command's other flags as keyword arguments, e.g. ``optimizers=["sgd",
            "adam"]``, ``seeds=[0, 1, 2]``, ``epochs=3``, ``resume=True``,
            ``set=["l2=1e-4"]``, ``workers=2`` (every flag: the command-line reference).

    Returns:
        list[dict[str, Any]]: every finished run's ``result.json`` under ``logdir`` (earlier
        runs there included), each with its ``spec`` and per-epoch ``history``.

    Raises:
        ValueError: an invalid value (the CLI's exit 2), or a task that breaks the contract.
        TypeError: a keyword the command does not take.
        SystemExit: a value argparse itself rejects (a flag's type or choices), after
            printing the usage, as the CLI does.
    """
    if task in (*BUILTIN, "all"):
        _call(task, {**options, "logdir": logdir})
    else:
        _call("run", {"task": task, **options, "logdir": logdir})
    return _results(logdir)


def sweep(task: str, lr_grid: str, logdir: str = "runs", **options: Any,
          ) -> list[dict[str, Any]]:
    """``sweep --task`` (or ``sweep --experiment`` for a built-in task): tune each optimizer's
    learning rate (and more) on validation, over seeds.

    Args:
        task (str): a task of your own as ``package.module:Class``, or a built-in task's
            name.
        lr_grid (str): the learning rates, ``--lr-grid``: ``"LO:HI:N"`` (``N`` values spaced
            logarithmically from ``LO`` to ``HI``, both included), e.g. ``"1e-3:1e-1:3"``,
            or a comma list of such parts and single values (their union), e.g.
            ``"2.15443e-5,1e-4:1:7"``.
        logdir (str, optional): the root folder, ``--logdir`` (default ``"runs"``); the sweep
            writes under ``LOGDIR/sweep``.
        **options: the command's other flags as keyword arguments, e.g. ``optimizers``,
            ``seeds``, ``epochs``, ``grid=["weight_decay=0,1e-4"]``, ``backend="ray"``.

    Returns:
        list[dict[str, Any]]: the sweep's rows (``LOGDIR/sweep/sweep.json``): one per run
        (optimizer, setting and seed), with its status and final validation and test values
        of the task's selected metric; the tables beside it aggregate them.

    Raises:
        ValueError: an invalid value (the CLI's exit 2).
        TypeError: a keyword the command does not take.
        SystemExit: a value argparse itself rejects (a flag's type or choices).
    """
    what = {"experiment": task} if task in BUILTIN else {"task": task}
    _call("sweep", {**what, "lr_grid": lr_grid, **options, "logdir": logdir})
    return json.loads((Path(logdir) / "sweep" / "sweep.json").read_text())["rows"]


def report(logdir: str = "runs", out: str | None = None, **options: Any) -> list[Path]:
    """``report``: figures, the results table and the claims' verdicts of the runs under
    ``logdir``.

    Args:
        logdir (str, optional): the runs' root folder, ``--logdir`` (default ``"runs"``).
        out (str or None, optional): where the report is written, ``--out`` (default
            ``None``: ``LOGDIR/report``).
        **options: the command's other flags, e.g. ``claim=["adam>sgd", "adam,nadam>sgd"]``
            (``--claim WINNERS>LOSERS``, tested by Welch's t-test over seeds), or
            ``runs="experiments/results/second_order/runs.json"`` (``--runs``: rebuild a
            report from its raw per-run data instead of ``logdir``; give ``out``).

    Returns:
        list[pathlib.Path]: the files in ``out``, sorted.

    Raises:
        ValueError: ``logdir`` holds no runs, or an invalid value (the CLI's exit 2).
        TypeError: a keyword the command does not take.
    """
    _call("report", {"logdir": logdir, "out": out, "quiet": True, **options})
    return sorted(Path(out or f"{logdir}/report").iterdir())
