"""``report``: finished runs -> figures, results tables and claim verdicts.

Layers inside: :mod:`.stats` (seed statistics, the one Welch test, the claim rule) and
:mod:`.plotting` at the bottom; the section writers above them (:mod:`.results`,
:mod:`.techniques`, :mod:`.second_order`, :mod:`.sweep`); this module alone imports the
sections and puts a report together.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..runs.folder import RESULT
from ..runtime.files import save_text
from ..tasks.protocol import Claim
from ..tasks.registry import entry
from . import techniques
from .results import (
    claims_markdown,
    group_runs,
    load_results,
    summarize,
    table_csv,
    table_markdown,
    write_figures,
)
from .second_order import write_second_order
from .sweep import write_sweep_report

__all__ = ["write_report", "write_sweep_report"]


def write_report(logdir: str | os.PathLike[str], out: str | os.PathLike[str],
                 claims: Sequence[Claim] = ()) -> list[Path]:
    """Write figures, ``results.md``, ``results.csv`` and ``claims.md`` into ``out``; for a
    sweep under ``logdir`` also its sensitivity figures, two-protocol claims and targets.
    ``claims``: the user's own comparisons, tested beside each task's claims."""
    outp = Path(out)
    every = load_results(logdir)
    for r in every:  # tasks defined outside the package: loaded from the path runs record
        entry(r["spec"]["experiment"], r["spec"].get("task"))
    sweep_paths: list[Path] = []
    sweep_json = Path(logdir) / "sweep" / "sweep.json"
    if sweep_json.is_file():
        sweep_paths = write_sweep_report(sweep_json, outp, claims)
    # (a sweep's runs are summarised by the sweep's own tables, not one row per setting)
    results = [r for r in every if "sweep" not in r["spec"]]
    if not results:
        if sweep_paths:
            return sweep_paths
        raise ValueError(f"--logdir: no finished runs (no {RESULT}) under {logdir}")
    # Runs with §V technique options get their own figures and claim tables.
    tech_paths, tech_claims = techniques.write(results, outp)
    groups = group_runs(r for r in results if not techniques.is_technique_run(r))
    rows = summarize(groups)
    paths = sweep_paths + write_figures(groups, outp)
    texts = [("claims.md", (claims_markdown(rows, claims) if rows else "") + tech_claims)]
    if rows:
        texts = [("results.csv", table_csv(rows)), ("results.md", table_markdown(rows)), *texts]
    for name, text in texts:
        save_text(outp / name, text)
        paths.append(outp / name)
    # Cost to a target loss and the claims about Newton and CG.
    paths += write_second_order(groups, outp)
    return paths + tech_paths
