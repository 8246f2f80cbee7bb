"""A study's raw per-run data in one compact file (``runs.json``), which ``report`` writes
next to its tables and can start from instead of a log folder: the committed results
regenerate from it (``report --runs FILE``).

Each run keeps its spec, id, wall time, loss curve and the per-epoch values of the tags the
report's sections read (every tag for a §V technique run); event files, checkpoints and the
rest of ``result.json`` are left out. A second-order study also keeps the conditioning
sweep's per-seed iteration counts, so its claim does not depend on the machine's BLAS.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..runs.folder import current_tags, normalise
from ..runtime.files import save_text
from . import second_order, techniques
from .results import tags_read

#: the file name ``report`` writes into its output folder
RUNS_FILE = "runs.json"
#: version of the file's layout
FORMAT = 1


def compact(result: dict[str, Any]) -> dict[str, Any]:
    """What the report reads of one finished run (``result.json``)."""
    out = {k: result[k] for k in ("spec", "run_id", "wall_time_s") if k in result}
    history = result.get("history", {})
    if techniques.is_technique_run(result):  # (its section reads any tag and the final values)
        out["history"] = history
        out["final"] = result.get("final", {})
        out["loss_curve"] = result["loss_curve"]
    else:
        figure_tags = tags_read(result["spec"]["experiment"])
        keep = {*figure_tags, *second_order.TAGS_READ}
        out["history"] = {k: v for k, v in history.items() if k in keep}
        if "train/loss" in figure_tags:  # (the per-step loss panel)
            out["loss_curve"] = result["loss_curve"]
    return out


def dumps(results: Sequence[dict[str, Any]],
          conditioning: Sequence[dict[str, Any]] | None = None) -> str:
    """The file's text: one run per line (sorted by run id), so a rerun diffs run by run."""
    runs = sorted((compact(r) for r in results), key=lambda r: r["run_id"])
    head: dict[str, Any] = {"format": FORMAT}
    if conditioning is not None:
        head["conditioning_sweep"] = list(conditioning)
    text = json.dumps(head)[:-1] + ', "runs": [\n'
    text += ",\n".join(json.dumps(r, sort_keys=True) for r in runs)
    return text + "\n]}\n"


def save(path: str | os.PathLike[str], results: Sequence[dict[str, Any]],
         conditioning: Sequence[dict[str, Any]] | None = None) -> Path:
    save_text(path, dumps(results, conditioning))
    return Path(path)


def load(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The runs of a ``runs.json`` (specs normalised, tags renamed to today's) and its
    conditioning sweep rows (None when it has none)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--runs: cannot read {p} ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or "runs" not in data:
        raise ValueError(f"--runs: {p} is not a {RUNS_FILE} of format {FORMAT}")
    runs = []
    for r in data["runs"]:
        r = {**r, "spec": normalise(r["spec"])}
        for key in ("history", "final"):
            if isinstance(r.get(key), dict):
                r[key] = current_tags(r[key])
        runs.append(r)
    return runs, data.get("conditioning_sweep")
