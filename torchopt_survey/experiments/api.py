"""The command line as Python functions: ``run``, ``sweep`` and ``report`` with the flags as
keyword arguments (``lr_grid="1e-3:1e-1:3"`` for ``--lr-grid``), checked as the CLI checks
them; a bad value raises the ValueError the CLI turns into exit 2.

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
    """Every run of ``task`` (``package.module:Class``, or ``mnist``/``karate``/``all``) with
    the options of ``python -m torchopt_survey.experiments run``; returns the results under
    ``logdir``."""
    if task in (*BUILTIN, "all"):
        _call(task, {**options, "logdir": logdir})
    else:
        _call("run", {"task": task, **options, "logdir": logdir})
    return _results(logdir)


def sweep(task: str, lr_grid: str, logdir: str = "runs", **options: Any,
          ) -> list[dict[str, Any]]:
    """``sweep --task`` (or ``--experiment`` for a built-in task); returns the sweep's rows
    (``LOGDIR/sweep/sweep.json``)."""
    what = {"experiment": task} if task in BUILTIN else {"task": task}
    _call("sweep", {**what, "lr_grid": lr_grid, **options, "logdir": logdir})
    return json.loads((Path(logdir) / "sweep" / "sweep.json").read_text())["rows"]


def report(logdir: str = "runs", out: str | None = None, **options: Any) -> list[Path]:
    """``report``; returns the files written into ``out`` (default ``LOGDIR/report``)."""
    _call("report", {"logdir": logdir, "out": out, "quiet": True, **options})
    return sorted(Path(out or f"{logdir}/report").iterdir())
