"""A sweep's report: learning-rate sensitivity figures, the claims under two protocols (the
paper's lr and each optimizer's tuned setting), and steps/time to the validation target."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..runtime.files import load_json
from ..runtime.labels import relabel
from ..tasks.optimizers import OPTIMIZERS, PAPER_LR
from ..tasks.protocol import Claim
from ..tasks.registry import entry, sweep_metric
from .plotting import color, pyplot, save_figure
from .stats import ALPHA, TEST_NAME, claim_verdict, mean_std


def _claim_rows(best: Sequence[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """Rows in :func:`report.claim_verdict`'s shape for one protocol (``test`` or
    ``paper_test``)."""
    rows = []
    for b in best:
        if f"{prefix}_mean" not in b:
            continue
        tests = b.get("tests" if prefix == "test" else "paper_tests", [])
        rows.append({"optimizer": b["optimizer"], "seeds": len(tests),
                     "final_test_mean": b[f"{prefix}_mean"],
                     "final_test_std": b[f"{prefix}_std"]})
    return rows


def claims_two_protocols(best: Sequence[dict[str, Any]], extra: Sequence[Claim] = ()) -> str:
    """The first survey's claims at the paper's lr 0.01 and at each optimizer's tuned setting,
    with the report's Welch-test verdicts."""
    out = ["| claim | data | protocol | verdict | evidence (test, seed mean %) |",
           "|---|---|---|---|---|"]
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for b in best:
        by[(b["experiment"], b["base"])].append(b)
    for (exp, base), rows in sorted(by.items()):
        for claim in (*entry(exp).claims, *extra):
            for label, prefix in (("paper (lr 0.01)", "paper_test"),
                                  ("tuned on validation", "test")):
                res = claim_verdict(_claim_rows(rows, prefix), claim.winners, claim.losers,
                                    "final_test")
                if res is not None:
                    out.append(f"| {claim.sweep_text or claim.text} | {exp} {relabel(base)} | "
                               f"{label} | "
                               f"**{res[0]}** | {res[1]} |")
    out.append(f"\nVerdicts as in claims.md: a pair holds when the winner's mean is higher and "
               f"{TEST_NAME} gives p < {ALPHA}. Tuned: each optimizer at the setting with the "
               "best seed-mean validation metric; both protocols report test metrics.")
    return "\n".join(out) + "\n"


def target_table(rows: Sequence[dict[str, Any]], best: Sequence[dict[str, Any]]) -> str:
    """Time and steps to the validation target per optimizer at its tuned setting."""
    chosen = {(b["experiment"], b["base"], b["optimizer"]): b.get("best_setting")
              for b in best}
    out = ["| experiment | base | optimizer | setting | target (val) | reached | "
           "steps to target (mean) | seconds to target (mean) |",
           "|---|---|---|---|---:|---:|---:|---:|"]
    by: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["status"] == "ok" and chosen.get((r["experiment"], r["base"], r["optimizer"])) \
                == r["setting"]:
            by[(r["experiment"], r["base"], r["optimizer"], r["setting"])].append(r)
    for (exp, base, opt, setting), runs in sorted(by.items()):
        hit = [r for r in runs if r["steps_to_target"] is not None]
        steps = mean_std([r["steps_to_target"] for r in hit])[0] if hit else math.nan
        secs = mean_std([r["seconds_to_target"] for r in hit])[0] if hit else math.nan
        out.append(f"| {exp} | {relabel(base)} | {opt} | {setting} | "
                   f"{sweep_metric(exp).target} | {len(hit)}/{len(runs)} | "
                   f"{'-' if math.isnan(steps) else f'{steps:.1f}'} | "
                   f"{'-' if math.isnan(secs) else f'{secs:.3f}'} |")
    out.append("\nSteps and seconds until the validation metric first reaches the target "
               "(checked once per epoch; seconds of a vectorised run are its share, 1/N, of "
               "the program's time).")
    return "\n".join(out) + "\n"


def sensitivity_figure(rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Final validation metric against learning rate, one curve per optimizer, band over
    seeds (mean ± std), one figure per (experiment, base)."""
    paths = []
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["status"] == "ok" and r["val"] is not None and r["setting"].count("=") == 1:
            by[(r["experiment"], r["base"])].append(r)  # lr-only settings
    for (exp, base), runs in sorted(by.items()):
        fig, ax = pyplot().subplots(figsize=(7, 4.5))
        opts = [o for o in OPTIMIZERS if any(r["optimizer"] == o for r in runs)]
        for opt in opts:
            per_lr: dict[float, list[float]] = defaultdict(list)
            for r in runs:
                if r["optimizer"] == opt and math.isfinite(r["val"]):
                    per_lr[r["lr"]].append(r["val"])
            lrs = sorted(per_lr)
            stats = [mean_std(per_lr[lr]) for lr in lrs]
            mean = [m for m, _ in stats]
            c = color(opt)
            ax.plot(lrs, mean, marker="o", ms=3, label=opt, color=c)
            ax.fill_between(lrs, [m - s for m, s in stats], [m + s for m, s in stats],
                            color=c, alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"final {sweep_metric(exp).val_tag}")
        # long floats in a variant's name (val_split0.16666666666666666) cut the title off
        label = relabel(base)
        ax.set_title(f"{label}: learning-rate sensitivity\n(mean ± std over seeds; dotted: the "
                     f"paper's lr {PAPER_LR})", fontsize=10)
        ax.axvline(PAPER_LR, color="grey", lw=0.8, ls=":")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out / f"sensitivity_{exp}_{base}.png"
        save_figure(fig, path)
        paths.append(path)
    return paths


def write_sweep_report(sweep_json: Path, out: Path, claims: Sequence[Claim] = ()) -> list[Path]:
    """Figures and tables of a finished sweep (``LOGDIR/sweep/sweep.json``) into ``out``."""
    data = load_json(sweep_json)
    rows, best = data["rows"], data["best"]
    out.mkdir(parents=True, exist_ok=True)
    paths = sensitivity_figure(rows, out)
    for name, text in (("sweep_claims.md", claims_two_protocols(best, claims)),
                       ("sweep_targets.md", target_table(rows, best))):
        (out / name).write_text(text)
        paths.append(out / name)
    return paths
