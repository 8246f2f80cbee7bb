"""A sweep's tables: per run, per setting (seed mean and std), and each optimizer's best."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..report.stats import fmt, mean_std, pm
from ..report.sweep import claims_two_protocols, target_table
from ..runtime.files import save_json
from ..runtime.labels import relabel
from ..tasks.optimizers import OPTIMIZERS, PAPER_LR
from ..tasks.registry import BUILTIN, sweep_metric


def read_runs_csv(path: str | Path) -> list[dict[str, Any]]:
    """The per-run rows of a committed ``sweep_runs.csv`` (what the tables are made from)."""
    import csv

    rows = []
    with open(path, newline="") as f:
        for cells in csv.DictReader(f):
            row: dict[str, Any] = dict(cells)
            for key in ("val", "test", "wall_time_s", "seconds_to_target"):
                row[key] = float(cells[key]) if cells[key] not in ("", "nan") else (
                    math.nan if cells[key] == "nan" else None)
            for key in ("seed", "vectorized", "steps_to_target"):
                row[key] = int(cells[key]) if cells[key] else None
            row["lr"] = parse_setting(cells["setting"])["lr"]
            rows.append(row)
    return rows


def settings_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (base, optimizer, setting): seed mean/std of val and test, failures."""
    by: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by[(r["experiment"], r["base"], r["optimizer"], r["setting"])].append(r)
    out = []
    for (exp, base, opt, setting), runs in by.items():
        ok = [r for r in runs if r["status"] == "ok"]
        val_m, val_s = mean_std([r["val"] for r in ok])
        test_m, test_s = mean_std([r["test"] for r in ok])
        out.append({"experiment": exp, "base": base, "optimizer": opt, "setting": setting,
                    "lr": runs[0]["lr"], "seeds": len(ok), "failed": len(runs) - len(ok),
                    "val_mean": val_m, "val_std": val_s, "test_mean": test_m,
                    "test_std": test_s, "tests": [r["test"] for r in ok]})
    return out


def parse_setting(setting: str) -> dict[str, Any]:
    """``lr=0.0001,momentum=0.9`` -> ``{"lr": 0.0001, "momentum": 0.9}`` (numbers as floats)."""
    out: dict[str, Any] = {}
    for part in setting.split(","):
        key, _, value = part.partition("=")
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


def grid_edges(chosen: str, settings: Sequence[str]) -> list[tuple[str, str, float]]:
    """The swept numbers of the ``chosen`` setting that sit at an edge of their grid:
    ``(key, "lowest" | "highest", value)``; the best value may lie beyond it."""
    points = [parse_setting(s) for s in settings]
    edges = []
    for key, value in parse_setting(chosen).items():
        grid = sorted({p[key] for p in points if isinstance(p.get(key), float)})
        if len(grid) < 2 or not isinstance(value, float):
            continue
        if value == grid[0]:
            edges.append((key, "lowest", value))
        elif value == grid[-1]:
            edges.append((key, "highest", value))
    return edges


def edge_note(edges: Sequence[tuple[str, str, float]]) -> str:
    """``lowest lr in the grid`` for a table cell ('' when the optimum is inside the grid)."""
    return "; ".join(f"{where} {key} in the grid" for key, where, _ in edges)


def widen_advice(best: Sequence[dict[str, Any]]) -> list[str]:
    """One line per (task, base run, hyperparameter, edge): which optimizers were tuned at the
    edge of the grid, and which way to widen it."""
    by: dict[tuple[str, str, str, str, float], list[str]] = defaultdict(list)
    for b in best:
        for key, where, value in b.get("edges", []):
            by[(b["experiment"], relabel(b["base"]), key, where, value)].append(b["optimizer"])
    flag = {"lr": "--lr-grid"}
    return [f"{exp} {base}: {', '.join(opts)} tuned at the {where} {key} of the grid "
            f"({value:g}); widen {flag.get(key, '--grid ' + key)} "
            f"{'below' if where == 'lowest' else 'above'} {value:g}"
            for (exp, base, key, where, value), opts in by.items()]


def _grid_text(settings: Sequence[str]) -> str:
    """``lr 0.0001, 0.01, 1`` (one part per swept key, values in increasing order)."""
    points = [parse_setting(x) for x in settings]
    keys = list(dict.fromkeys(k for p in points for k in p))

    def order(v: Any) -> tuple[bool, float, str]:
        return (not isinstance(v, float), v if isinstance(v, float) else 0.0, str(v))

    return "; ".join(f"{k} " + ", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                                         for v in sorted({p[k] for p in points if k in p},
                                                         key=order))
                     for k in keys)


def grid_differences(settings: Sequence[dict[str, Any]]) -> list[str]:
    """Where the optimizers of one (task, base run) ran different grids: one line per grid
    with the optimizers that ran it (none when they all ran the same one). Each optimizer is
    tuned, and its edges found, on the grid it ran."""
    by: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for s in settings:
        by[(s["experiment"], s["base"])][s["optimizer"]].append(s["setting"])
    lines = []
    for (exp, base), per_opt in by.items():
        grids: dict[str, list[str]] = defaultdict(list)
        for opt, ran in per_opt.items():
            grids[_grid_text(ran)].append(opt)
        if len(grids) > 1:
            lines += [f"{exp} {relabel(base)}: {', '.join(opts)}: {grid}"
                      for grid, opts in grids.items()]
    return lines


def best_table(settings: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (base, optimizer): the setting with the best seed-mean validation metric (settings
    with a failed seed are not eligible), and the paper's lr 0.01 where it was swept."""
    by: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for s in settings:
        by[(s["experiment"], s["base"], s["optimizer"])].append(s)
    out = []
    for (exp, base, opt), cands in by.items():
        eligible = [c for c in cands if c["failed"] == 0 and c["seeds"]
                    and not math.isnan(c["val_mean"])]
        paper = [c for c in cands if c["setting"] == f"lr={PAPER_LR:g}"]
        row: dict[str, Any] = {"experiment": exp, "base": base, "optimizer": opt}
        if eligible:
            best = max(eligible, key=lambda c: c["val_mean"])
            row.update({"best_setting": best["setting"], "seeds": best["seeds"],
                        "val_mean": best["val_mean"], "test_mean": best["test_mean"],
                        "test_std": best["test_std"], "tests": best["tests"],
                        "edges": grid_edges(best["setting"], [c["setting"] for c in cands])})
        else:
            row.update({"best_setting": "(all failed)", "seeds": 0})
        if paper and paper[0]["seeds"]:
            row.update({"paper_test_mean": paper[0]["test_mean"],
                        "paper_test_std": paper[0]["test_std"],
                        "paper_tests": paper[0]["tests"]})
        out.append(row)
    order = {n: i for i, n in enumerate(OPTIMIZERS)}
    out.sort(key=lambda r: (r["experiment"], r["base"], -r.get("test_mean", -1.0),
                            order.get(r["optimizer"], 99)))
    return out


_RUN_COLS = ["experiment", "base", "optimizer", "setting", "seed", "status", "val", "test",
             "wall_time_s", "vectorized", "steps_to_target", "seconds_to_target", "error"]


def _csv(rows: Sequence[dict[str, Any]], cols: Sequence[str], exact: bool = False) -> str:
    """``exact``: floats in full (``repr``), so the tables regenerate from the file."""
    def cell(v: Any) -> str:
        text = repr(v) if exact and isinstance(v, float) else fmt(v)
        return f'"{text}"' if "," in text else text

    return "\n".join([",".join(cols)] + [",".join(cell(r.get(c)) for c in cols)
                                         for r in rows]) + "\n"


def _frac(v: Any) -> str:
    """A metric in [0, 1] for the per-run table: 4 decimals in every row."""
    return "" if v is None else f"{v:.4f}"


def _pct(v: Any) -> str:
    """A seed-mean metric as a percentage: 2 decimals in every row."""
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _pm(m: Any, s: Any) -> str:
    return "-" if isinstance(m, float) and math.isnan(m) else pm(m, s)


def write_tables(rows: Sequence[dict[str, Any]], timing: dict[str, Any], out: Path,
                 ) -> list[Path]:
    """sweep_runs.{csv,md}, sweep_settings.csv, sweep_best.{csv,md}, sweep.json."""
    out.mkdir(parents=True, exist_ok=True)
    settings = settings_table(rows)
    best = best_table(settings)
    paths = []

    def write(name: str, text: str) -> None:
        path = out / name
        path.write_text(text)
        paths.append(path)

    write("sweep_runs.csv", _csv([{**r, "base": relabel(r["base"])} for r in rows], _RUN_COLS,
                                 exact=True))
    md = ["| experiment | base | optimizer | setting | seed | status | val | test | "
          "steps to target | error |", "|---|---|---|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        md.append(f"| {r['experiment']} | {relabel(r['base'])} | {r['optimizer']} | "
                  f"{r['setting']} | {r['seed']} | {r['status']} | {_frac(r['val'])} | "
                  f"{_frac(r['test'])} | "
                  f"{fmt(r['steps_to_target'])} | {r['error']} |")
    write("sweep_runs.md", "\n".join(md) + "\n")
    write("sweep_settings.csv", _csv(
        [{**r, "base": relabel(r["base"])} for r in settings],
        ["experiment", "base", "optimizer", "setting", "seeds", "failed", "val_mean",
         "val_std", "test_mean", "test_std"]))
    write("sweep_best.csv", _csv([{**b, "base": relabel(b["base"]),
                                   "grid_edge": edge_note(b.get("edges", []))} for b in best],
                                 ["experiment", "base", "optimizer", "best_setting", "seeds",
                                  "val_mean", "test_mean", "test_std", "paper_test_mean",
                                  "paper_test_std", "grid_edge"]))
    md = ["| rank | experiment | base | optimizer | tuned setting (on validation) | "
          "val/metric (seed mean, %) | test, tuned (mean ± std, %) | test at lr 0.01 (%) |",
          "|---:|---|---|---|---|---:|---:|---:|"]
    rank: dict[tuple, int] = defaultdict(int)
    for b in best:
        rank[(b["experiment"], b["base"])] += 1
        edge = edge_note(b.get("edges", []))
        setting = f"{b['best_setting']} (edge: {edge})" if edge else b["best_setting"]
        md.append(f"| {rank[(b['experiment'], b['base'])]} | {b['experiment']} | "
                  f"{relabel(b['base'])} | {b['optimizer']} | {setting} | "
                  f"{_pct(b.get('val_mean'))} | "
                  f"{_pm(b.get('test_mean'), b.get('test_std'))} | "
                  f"{_pm(b.get('paper_test_mean'), b.get('paper_test_std'))} |")
    md.append("")
    tasks = dict.fromkeys([*BUILTIN, *(r["experiment"] for r in rows)])
    metrics = ", ".join(f"{m.description} ({m.val_tag} selects)"
                        for m in map(sweep_metric, tasks))
    md.append(f"Metric: {metrics}. Settings with a failed seed are not eligible. (edge: …): "
              "the tuned value is the lowest or highest of its grid, so the best may lie "
              "beyond it.")
    differ = grid_differences(settings)
    if differ:
        md += ["", "Grids differ per optimizer (each is tuned, and its edges marked, on the grid "
               "it ran):", "", *(f"- {line}" for line in differ)]
    advice = widen_advice(best)
    if advice:
        md += ["", "Grids to widen:", "", *(f"- {line}" for line in advice)]
    write("sweep_best.md", "\n".join(md) + "\n")
    save_json(out / "sweep.json", {"timing": timing, "rows": rows, "best": best})
    paths.append(out / "sweep.json")
    return paths


def rewrite_from_csv(folder: Path, out: Path | None = None) -> list[Path]:
    """A committed sweep's tables (``sweep_settings.csv``, ``sweep_best.{csv,md}``,
    ``sweep_claims.md``, ``sweep_targets.md``) made again from its ``sweep_runs.csv`` into
    ``out`` (default: the same folder). Figures are not redrawn."""
    out = folder if out is None else out
    rows = read_runs_csv(folder / "sweep_runs.csv")
    paths = [p for p in write_tables(rows, {}, out) if p.name not in ("sweep.json",
                                                                        "sweep_runs.md")]
    for name in ("sweep.json", "sweep_runs.md"):
        (out / name).unlink()
    best = best_table(settings_table(rows))
    for name, text in (("sweep_claims.md", claims_two_protocols(best)),
                       ("sweep_targets.md", target_table(rows, best))):
        (out / name).write_text(text)
        paths.append(out / name)
    return paths
