"""The first survey's results: finished runs -> figures (paper Figs. 1-4), a results table and
claim verdicts."""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..runs.folder import RESULT, normalise
from ..runtime.files import load_json
from ..tasks.optimizers import OPTIMIZER_NAMES
from ..tasks.protocol import Claim
from ..tasks.registry import entry
from .plotting import figure
from .stats import ALPHA, TEST_NAME, claim_verdict, mean_std, pm


def load_results(logdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every finished run (``result.json``) under ``logdir``."""
    root = Path(logdir)
    if not root.is_dir():
        raise ValueError(f"--logdir: {root} does not exist; run an experiment first")
    out = []
    for path in sorted(root.rglob(RESULT)):
        try:
            res = load_json(path)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"{path}: unreadable result file ({exc}); delete it and rerun"
            ) from exc
        res["spec"] = normalise(res["spec"])
        out.append(res)
    if not out:
        raise ValueError(f"--logdir: no finished runs (no {RESULT}) under {root}")
    return out


Group = dict[tuple[str, str, str], list[dict[str, Any]]]


def group_runs(results: Iterable[dict[str, Any]]) -> Group:
    """(experiment, variant, optimizer) -> runs over seeds."""
    groups: Group = defaultdict(list)
    for r in results:
        s = r["spec"]
        groups[(s["experiment"], s["variant"], s["optimizer"])].append(r)
    return dict(groups)


def opt_order(name: str) -> int:
    """Position of an optimizer in the surveys' tables (others last)."""
    return OPTIMIZER_NAMES.index(name) if name in OPTIMIZER_NAMES else len(OPTIMIZER_NAMES)


def summarize(groups: Group) -> list[dict[str, Any]]:
    """One table row per (experiment, variant, optimizer)."""
    rows = []
    for (exp, variant, opt), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], opt_order(kv[0][2]))
    ):
        row: dict[str, Any] = {
            "experiment": exp,
            "variant": variant,
            "optimizer": opt,
            "seeds": len(runs),
            "epochs": runs[0]["spec"]["epochs"],
        }
        for metric in entry(exp).report_metrics:
            label, tag = metric.key, metric.tag
            final = [r["history"][tag][-1] for r in runs]
            best = [max(r["history"][tag]) for r in runs]
            row[f"final_{label}_mean"], row[f"final_{label}_std"] = mean_std(final)
            row[f"best_{label}_mean"], row[f"best_{label}_std"] = mean_std(best)
        row["final_train_loss_mean"], row["final_train_loss_std"] = mean_std(
            [r["history"]["train/loss_epoch"][-1] for r in runs]
        )
        row["wall_time_s_mean"], row["wall_time_s_std"] = mean_std(
            [r["wall_time_s"] for r in runs]
        )
        rows.append(row)
    return rows


CSV_FIELDS = (
    "experiment", "variant", "optimizer", "seeds", "epochs",
    "final_test_accuracy_mean", "final_test_accuracy_std",
    "best_test_accuracy_mean", "best_test_accuracy_std",
    "final_test_auc_mean", "final_test_auc_std", "best_test_auc_mean", "best_test_auc_std",
    "final_train_loss_mean", "final_train_loss_std", "wall_time_s_mean", "wall_time_s_std",
)  # fmt: skip


def read_table_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows :func:`table_csv` wrote, read back (numbers as numbers, empty cells left out):
    the committed ``results.csv`` regenerates ``results.md`` and ``claims.md``."""
    rows = []
    with open(path, newline="") as f:
        for cells in csv.DictReader(f):
            row: dict[str, Any] = {}
            for key, value in cells.items():
                if value == "":
                    continue
                if key in ("seeds", "epochs"):
                    row[key] = int(value)
                elif key in ("experiment", "variant", "optimizer"):
                    row[key] = value
                else:
                    row[key] = float(value)
            rows.append(row)
    return rows


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The summary rows as CSV: the built-in tasks' columns, then any other task's metrics."""
    extra = [k for r in rows for k in r if k not in CSV_FIELDS]
    fields = [*CSV_FIELDS, *dict.fromkeys(extra)]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: row.get(k, "") for k in fields})
    return buf.getvalue()


def _pm(row: dict[str, Any], key: str, scale: float = 100.0, digits: int = 2) -> str:
    if f"{key}_mean" not in row:
        return ""
    return pm(row[f"{key}_mean"], row[f"{key}_std"], scale, digits)


def table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = []
    by_variant: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_variant[(row["experiment"], row["variant"])].append(row)
    for (exp, variant), vrows in by_variant.items():
        seeds = sorted({r["seeds"] for r in vrows})
        lines.append(f"### {exp}: {variant} ({'/'.join(map(str, seeds))} seeds, mean ± std)\n")
        metrics = entry(exp).report_metrics
        head = "| optimizer |" + "".join(f" final {m.label} % | best {m.label} % |"
                                         for m in metrics)
        sep = "|---|" + "---:|---:|" * len(metrics)
        head += " final train loss | wall time s |"
        sep += "---:|---:|"
        lines += [head, sep]
        for r in vrows:
            cells = [r["optimizer"]]
            for m in metrics:
                cells += [_pm(r, f"final_{m.key}"), _pm(r, f"best_{m.key}")]
            cells += [_pm(r, "final_train_loss", 1.0, 4), _pm(r, "wall_time_s", 1.0, 1)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def claims_markdown(rows: Sequence[dict[str, Any]], extra: Sequence[Claim] = ()) -> str:
    """One verdict row per claim and data set (see :func:`claim_verdict` for the rule): each
    task's own claims, then ``extra`` (the user's comparisons) on every task."""
    out = ["| claim | data | metric (seed mean, %) | verdict | evidence |", "|---|---|---|---|---|"]
    by_variant: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_variant[(r["experiment"], r["variant"])].append(r)
    for (exp, variant), vrows in by_variant.items():
        task = entry(exp)
        for claim in (*task.claims, *extra):
            if not variant.endswith(claim.variant_suffix):
                continue
            for key, label in claim.metrics or [(f"final_{m.key}", f"final {m.label}")
                                                for m in task.report_metrics]:
                res = claim_verdict(vrows, claim.winners, claim.losers, key)
                if res is not None:
                    out.append(f"| {claim.text} | {exp} {variant} | {label} | **{res[0]}** | "
                               f"{res[1]} |")
    out.append(
        f"\nA pair (winner, loser) holds when the winner's seed mean is higher and {TEST_NAME} "
        f"gives p < {ALPHA}; reversed when the loser's is significantly higher; otherwise "
        "within noise. confirmed: every pair holds; mostly confirmed: >= 2/3; mixed: > 1/3; "
        "within noise: no pair differs significantly; cannot decide: one seed. Each pair is "
        "tested on its own (no correction for the number of pairs)."
    )
    return "\n".join(out) + "\n"


def write_figures(groups: Group, out: Path) -> list[Path]:
    paths: list[Path] = []
    variants: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(dict)
    for (exp, variant, opt), runs in groups.items():
        variants[(exp, variant)][opt] = runs
    # The tasks' overview figures (MNIST: Fig. 1, the regimes of plain SGD), then each
    # variant's own figure.
    covered: set[tuple[str, str]] = set()
    for exp in sorted({e for e, _ in variants}):
        task = entry(exp)
        if task.overview is None:
            continue
        names = [v for (e, v) in variants if e == exp]
        for name, title, wanted in task.overview.figures(names):
            series = [(label, runs) for label, v, o in wanted
                      if (runs := variants.get((exp, v), {}).get(o))]
            if series:
                p = out / name
                figure(p, title, series, task.figures.panels)
                paths.append(p)
        covered |= {(exp, v) for v in names
                    if task.overview.covers(v, sorted(variants[(exp, v)], key=opt_order))}
    for (exp, variant), by_opt in sorted(variants.items()):
        series = [(o, by_opt[o]) for o in sorted(by_opt, key=opt_order)]
        if (exp, variant) in covered:
            continue  # already in an overview figure
        look = entry(exp).figures
        p = out / look.names.get(variant, f"fig_{variant}.png")
        figure(p, look.title.format(variant=variant), series, look.panels)
        paths.append(p)
    return paths
