"""A sweep's tables: per run, per setting (seed mean and std), and each optimizer's best."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..report.stats import fmt, mean_std, pm
from ..runtime.files import save_json
from ..tasks.optimizers import OPTIMIZERS, PAPER_LR
from ..tasks.registry import BUILTIN, sweep_metric


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
                        "test_std": best["test_std"], "tests": best["tests"]})
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


def _csv(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> str:
    def cell(v: Any) -> str:
        text = fmt(v)
        return f'"{text}"' if "," in text else text

    return "\n".join([",".join(cols)] + [",".join(cell(r.get(c)) for c in cols)
                                         for r in rows]) + "\n"


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

    write("sweep_runs.csv", _csv(rows, _RUN_COLS))
    md = ["| experiment | base | optimizer | setting | seed | status | val | test | "
          "steps to target | error |", "|---|---|---|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        md.append(f"| {r['experiment']} | {r['base']} | {r['optimizer']} | {r['setting']} | "
                  f"{r['seed']} | {r['status']} | {fmt(r['val'])} | {fmt(r['test'])} | "
                  f"{fmt(r['steps_to_target'])} | {r['error']} |")
    write("sweep_runs.md", "\n".join(md) + "\n")
    write("sweep_settings.csv", _csv(settings, ["experiment", "base", "optimizer", "setting",
                                                "seeds", "failed", "val_mean", "val_std",
                                                "test_mean", "test_std"]))
    write("sweep_best.csv", _csv(best, ["experiment", "base", "optimizer", "best_setting",
                                        "seeds", "val_mean", "test_mean", "test_std",
                                        "paper_test_mean", "paper_test_std"]))
    md = ["| rank | experiment | base | optimizer | tuned setting (on validation) | "
          "val/metric (seed mean, %) | test, tuned (mean ± std, %) | test at lr 0.01 (%) |",
          "|---:|---|---|---|---|---:|---:|---:|"]
    rank: dict[tuple, int] = defaultdict(int)
    for b in best:
        rank[(b["experiment"], b["base"])] += 1
        md.append(f"| {rank[(b['experiment'], b['base'])]} | {b['experiment']} | {b['base']} | "
                  f"{b['optimizer']} | {b['best_setting']} | "
                  f"{fmt(100 * b['val_mean']) if 'val_mean' in b else '-'} | "
                  f"{_pm(b.get('test_mean'), b.get('test_std'))} | "
                  f"{_pm(b.get('paper_test_mean'), b.get('paper_test_std'))} |")
    md.append("")
    tasks = dict.fromkeys([*BUILTIN, *(r["experiment"] for r in rows)])
    metrics = ", ".join(f"{m.description} ({m.val_tag} selects)"
                        for m in map(sweep_metric, tasks))
    md.append(f"Metric: {metrics}. Settings with a failed seed are not eligible.")
    write("sweep_best.md", "\n".join(md) + "\n")
    save_json(out / "sweep.json", {"timing": timing, "rows": rows, "best": best})
    paths.append(out / "sweep.json")
    return paths
