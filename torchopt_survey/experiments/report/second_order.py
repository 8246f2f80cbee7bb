"""The second-order section of ``report`` (issue #8): iterations, closure evaluations and wall
time to a target training loss, and verdicts on the survey's three claims about Newton's method
and conjugate gradient (§III).

Target per variant: the training loss that every seed of the best first-order method in the
variant reaches within its budget (min over first-order methods of the max over seeds of the
final training loss). A run's cost to the target is counted up to the first
epoch whose training loss is <= the target (Karate: ``train/loss`` on fixed negatives after the
epoch; MNIST full batch: ``train/loss_epoch``, the full training loss at the start of each
epoch). First-order methods evaluate one gradient per iteration; the second-order ones log their
cumulative closure evaluations and curvature products (``opt/*`` in the history).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from torchopt_survey import ConjugateGradient, Newton

from ..tasks.optimizers import SECOND_ORDER_NAMES
from ..tasks.registry import entry
from .plotting import pyplot, save_figure
from .stats import (
    ALPHA,
    MIN_SEEDS,
    RANK_TEST_NAME,
    TEST_NAME,
    CostTest,
    cost_test,
    mean_std,
    mean_test,
)

Run = dict[str, Any]



def _curve(run: Run) -> list[tuple[int, float, float, float, float]]:
    """(iterations done, training loss, closure evals, curvature products, train seconds)."""
    h, spec = run["history"], run["spec"]
    secs = list(torch.tensor(h["time/train_seconds"], dtype=torch.float64).cumsum(0).tolist())
    epochs = len(secs)
    second = spec["optimizer"] in SECOND_ORDER_NAMES
    evals = h.get("opt/func_evals", [float(i + 1) for i in range(epochs)])
    hvps = h.get("opt/hvp_evals", [0.0] * epochs)
    out = []
    curve = entry(spec["experiment"], spec.get("task")).loss_curve
    if curve.after_epoch:
        for i in range(epochs):
            out.append((i + 1, h[curve.tag][i], evals[i], hvps[i], secs[i]))
    else:  # loss at the start of epoch k+1 = after k iterations
        losses = h[curve.tag]
        out.append((0, losses[0], 0.0, 0.0, 0.0))
        for k in range(1, epochs):
            out.append((k, losses[k], evals[k - 1] if second else float(k), hvps[k - 1],
                        secs[k - 1]))
    return out


def _final_loss(run: Run) -> float:
    return _curve(run)[-1][1]


def _to_target(run: Run, target: float) -> tuple[float, float, float, float] | None:
    for it, loss, evals, hvps, secs in _curve(run):
        if loss <= target:
            return float(it), evals, hvps, secs
    return None


def _variants(groups: dict[tuple[str, str, str], list[Run]]) -> dict[tuple[str, str], dict]:
    by_variant: dict[tuple[str, str], dict[str, list[Run]]] = defaultdict(dict)
    for (exp, variant, opt), runs in groups.items():
        by_variant[(exp, variant)][opt] = runs
    return {k: v for k, v in by_variant.items() if any(o in SECOND_ORDER_NAMES for o in v)}


COSTS = ("iterations", "closure_evals", "hvps", "seconds")


def summarize_to_target(by_opt: dict[str, list[Run]]) -> tuple[float, list[dict[str, Any]]]:
    """Target and one row per optimizer: reached seeds, cost to target (mean ± std over the
    seeds that reached it) and, for the tests, each seed's cost and budget (``<cost>_seeds``:
    (cost or None, what the whole run spent)) and its loss after the common iteration count."""
    first = [o for o in by_opt if o not in SECOND_ORDER_NAMES]
    # the loss every seed of the best first-order method reaches within its budget
    worst_final = {o: max(_final_loss(r) for r in by_opt[o]) for o in by_opt}
    target = min(worst_final[o] for o in first) if first else min(worst_final.values())
    rows = []
    order = first + [o for o in SECOND_ORDER_NAMES if o in by_opt]
    # equal-iteration comparison: the loss after the smallest budget of the variant
    k = min(len(_curve(r)) for runs in by_opt.values() for r in runs)
    for opt in order:
        runs = by_opt[opt]
        per_seed = [_to_target(r, target) for r in runs]
        spent = [_curve(r)[-1] for r in runs]
        hits = [x for x in per_seed if x is not None]
        loss_k = [_curve(r)[k - 1][1] for r in runs]
        row: dict[str, Any] = {
            "optimizer": opt,
            "seeds": len(runs),
            "epochs": runs[0]["spec"]["epochs"],
            "reached": len(hits),
            "final_loss": mean_std([_final_loss(r) for r in runs]),
            "k": _curve(runs[0])[k - 1][0],
            "loss_at_k": mean_std(loss_k),
            "loss_at_k_seeds": loss_k,
        }
        # a curve entry is (iterations, loss, evals, hvps, seconds); a cost skips the loss
        for j, (key, col) in enumerate(zip(COSTS, (0, 2, 3, 4))):
            row[key] = mean_std([h[j] for h in hits])
            row[key + "_seeds"] = [(h[j] if h else None, float(end[col]))
                                   for h, end in zip(per_seed, spent)]
            # median over all seeds, a seed that never reached the target counting as infinite
            row[key + "_median"] = _median([h[j] if h else math.inf for h in per_seed])
        rows.append(row)
    return target, rows


def _median(xs: Sequence[float]) -> float:
    v = sorted(xs)
    n = len(v)
    if n == 0:
        return math.nan
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def _fmt(ms: tuple[float, float], digits: int = 1) -> str:
    m, s = ms
    return "—" if math.isnan(m) else f"{m:.{digits}f} ± {s:.{digits}f}"


def _cost(row: dict[str, Any] | None, key: str) -> float:
    """Median cost to target over seeds (a seed that did not reach it counts as infinite): only
    picks the first-order baseline; the verdicts come from :func:`stats.cost_test`."""
    if row is None:
        return math.inf
    return row[key + "_median"]


def conditioning_sweep(
    conds: Sequence[float] = (1e1, 1e2, 1e3, 1e4), seeds: Sequence[int] = (0, 1, 2), n: int = 100
) -> list[dict[str, Any]]:
    """CG (PR+, strong Wolfe) and Newton iterations to ‖g‖ <= 1e-6 ‖g₀‖ on SPD quadratics
    ½xᵀAx - bᵀx, A with eigenvalues log-spaced in [1, κ] (float64, n = 100)."""
    rows = []
    for cond in conds:
        counts: dict[str, list[float]] = {"cg": [], "newton": []}
        stalled = 0  # CG runs whose line search failed before the gradient tolerance
        for seed in seeds:
            gen = torch.Generator().manual_seed(seed)
            q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
            a = q @ torch.diag(torch.logspace(0, math.log10(cond), n, dtype=torch.float64)) @ q.T
            b = torch.randn(n, generator=gen, dtype=torch.float64)
            tol = 1e-6 * float(b.abs().max())
            for name, cls in (("cg", ConjugateGradient), ("newton", Newton)):
                x = torch.zeros(n, dtype=torch.float64, requires_grad=True)
                opt = cls([x], max_iter=20 * n, tolerance_grad=tol, tolerance_change=0.0)

                def closure(x: torch.Tensor = x, opt: Any = opt, a: torch.Tensor = a,
                            b: torch.Tensor = b) -> torch.Tensor:
                    opt.zero_grad()
                    loss = 0.5 * x @ a @ x - b @ x
                    loss.backward()
                    return loss

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # counted as stalled below
                    opt.step(closure)
                counts[name].append(float(opt.state[x]["n_iter"]))
                grad = a @ x.detach() - b
                if name == "cg" and float(grad.abs().max()) > tol:
                    stalled += 1
        rows.append({"cond": cond, "cg": mean_std(counts["cg"]), "cg_counts": counts["cg"],
                     "newton": mean_std(counts["newton"]), "cg_stalled": stalled,
                     "seeds": len(seeds)})
    return rows


_CLAIM_WORD = {"lower": "**confirmed**", "higher": "**refuted**"}


def _verdict(outcome: str) -> str:
    """A test's outcome as the verdict on a claim that side a costs less (or loses less)."""
    return _CLAIM_WORD.get(outcome, outcome)


def _fewer(mine: dict[str, Any], other: dict[str, Any], key: str) -> CostTest:
    return cost_test(mine[key + "_seeds"], other[key + "_seeds"])


def claims(variants: dict[tuple[str, str], tuple[float, list[dict[str, Any]]]],
           sweep: list[dict[str, Any]]) -> list[str]:
    out = ["| claim | data | verdict | test | evidence (seed mean ± std to the target loss) |",
           "|---|---|---|---|---|"]
    for (exp, variant), (target, rows) in variants.items():
        by = {r["optimizer"]: r for r in rows}
        first = [r for r in rows if r["optimizer"] not in SECOND_ORDER_NAMES]
        data = f"{exp} {variant} (target {target:.4f})"
        best_it = min(first, key=lambda r: _cost(r, "iterations")) if first else None
        best_s = min(first, key=lambda r: _cost(r, "seconds")) if first else None

        def ev(r: dict[str, Any], key: str, digits: int = 1) -> str:
            med = r[key + "_median"]
            return (f"{r['optimizer']} median {med:.{digits}f}, mean {_fmt(r[key], digits)} "
                    f"({r['reached']}/{r['seeds']} seeds reached)")

        for name, label in (("newton", "Newton"), ("newton_cg", "Newton-CG (Hessian-free)")):
            if name in by and best_it is not None:
                mine = by[name]
                test = _fewer(mine, best_it, "iterations")
                verdict, how = _verdict(test.verdict), f"rank test: {test.evidence()}"
                best_k = min(first, key=lambda r: r["loss_at_k"][0])
                if test.verdict.startswith("cannot decide (no seed reached"):
                    # the target lies beyond the budget: compare the loss at equal iterations
                    outcome, p = mean_test(mine["loss_at_k_seeds"], best_k["loss_at_k_seeds"])
                    verdict = _verdict(outcome) + " (at equal iterations; target out of budget)"
                    how = (f"Welch on the loss after {mine['k']} iterations: "
                           f"{'no test' if math.isnan(p) else f'p = {p:.3g}'}; "
                           f"{mine['seeds']} vs {best_k['seeds']} seeds")
                out.append(
                    f"| {label} converges in fewer iterations than first-order methods | "
                    f"{data} | {verdict} | {how} | iterations: {ev(mine, 'iterations')}, "
                    f"budget {mine['epochs']}, vs best first-order "
                    f"{ev(best_it, 'iterations')}; loss after {mine['k']} iterations: "
                    f"{name} {_fmt(mine['loss_at_k'], 3)} vs {best_k['optimizer']} "
                    f"{_fmt(best_k['loss_at_k'], 3)} |"
                )
        if "cg" in by and best_s is not None and best_it is not None:
            secs = _fewer(by["cg"], best_s, "seconds")
            its = _fewer(by["cg"], best_it, "iterations")
            in_its = {"lower": "fewer", "higher": "more"}.get(its.verdict, its.verdict)
            out.append(
                f"| CG converges faster than first-order methods | {data} | "
                f"{_verdict(secs.verdict)} (wall time; in iterations: {in_its}) | "
                f"rank test: wall time {secs.evidence()}; iterations {its.evidence()} | "
                f"wall s: {ev(by['cg'], 'seconds', 2)} vs fastest first-order "
                f"{ev(best_s, 'seconds', 2)}; iterations: {ev(by['cg'], 'iterations')} vs "
                f"{ev(best_it, 'iterations')}; closure evals: cg "
                f"{_fmt(by['cg']['closure_evals'])} |"
            )
        if "cg" in by:
            if "newton" in by:
                test = _fewer(by["cg"], by["newton"], "seconds")
                verdict, how = _verdict(test.verdict), f"rank test: {test.evidence()}"
                detail = (f"wall s: {ev(by['cg'], 'seconds', 2)} vs "
                          f"{ev(by['newton'], 'seconds', 2)}; Newton Hessian-vector products "
                          f"{_fmt(by['newton']['hvps'], 0)}")
            elif entry(exp).no_newton:
                verdict, how = "cannot decide (no Newton runs)", "none"
                detail = (f"{entry(exp).no_newton}; CG reached the target in "
                          f"{_fmt(by['cg']['seconds'], 2)} s")
            else:
                verdict, how, detail = "cannot decide (no Newton runs)", "none", "-"
            out.append(f"| CG is computationally more efficient than Newton | {data} | "
                       f"{verdict} | {how} | {detail} |")
    if sweep:
        lo, hi = sweep[0], sweep[-1]
        growth = hi["cg"][0] / lo["cg"][0]
        outcome, p = mean_test(hi["cg_counts"], lo["cg_counts"])
        verdict = _verdict({"higher": "lower", "lower": "higher"}.get(outcome, outcome))
        if outcome == "higher" and growth < 3.0:
            verdict = "**refuted** (significant but less than 3× more iterations)"
        steps = ", ".join(
            f"κ={r['cond']:.0e}: {_fmt(r['cg'])}"
            + (f" (stalled above the tolerance in {r['cg_stalled']}/{r['seeds']} seeds: "
               "line search at the round-off floor)" if r["cg_stalled"] else "")
            for r in sweep
        )
        p_txt = "no test" if math.isnan(p) else f"p = {p:.3g}"
        out.append(
            "| CG may perform poorly on ill-conditioned problems | SPD quadratics, n=100, "
            f"{hi['seeds']} seeds | {verdict} | Welch on CG iterations at κ={hi['cond']:.0e} vs "
            f"κ={lo['cond']:.0e}: {p_txt}, {hi['seeds']} vs {lo['seeds']} seeds; claimed: "
            f"significantly more and at least 3× | CG iterations to ‖g‖ ≤ 1e-6‖g₀‖: {steps} "
            f"({growth:.1f}× from κ={lo['cond']:.0e} to κ={hi['cond']:.0e}); Newton: "
            f"{_fmt(hi['newton'])} at every κ |"
        )
    out += ["", f"Tests: costs to the target by the {RANK_TEST_NAME}; losses and iteration "
            f"counts by {TEST_NAME}. A verdict needs p < {ALPHA} and at least {MIN_SEEDS} seeds "
            "per side (cannot decide otherwise); confirmed: the claimed side is significantly "
            "better; refuted: significantly worse; within noise: no significant difference. "
            "Each comparison is tested on its own (no correction for their number)."]
    return out


def _figure(path: Path, title: str, by_opt: dict[str, list[Run]], target: float) -> None:
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4))
    for opt, runs in by_opt.items():
        curves = [_curve(r) for r in runs]
        k = min(len(c) for c in curves)
        its = [curves[0][i][0] for i in range(k)]
        loss = [sum(c[i][1] for c in curves) / len(curves) for i in range(k)]
        secs = [sum(c[i][4] for c in curves) / len(curves) for i in range(k)]
        style = "-" if opt in SECOND_ORDER_NAMES else "--"
        axes[0].plot(its, loss, style, label=opt)
        timed = [(t, y) for t, y in zip(secs, loss) if t > 0.0]  # log axis: drop t = 0
        axes[1].plot([t for t, _ in timed], [y for _, y in timed], style, label=opt)
    for ax, xlabel in zip(axes, ("iterations (epochs)", "training wall time (s)")):
        ax.axhline(target, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("training loss (seed mean)")
        ax.set_yscale("log")
    axes[1].set_xscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def write_second_order(groups: dict[tuple[str, str, str], list[Run]], out: Path,
                       sweep: bool = True) -> list[Path]:
    """``second_order.md`` (cost-to-target tables and claim verdicts) and one figure per
    variant that has second-order runs; nothing when there are none."""
    variants = _variants(groups)
    if not variants:
        return []
    summaries = {k: summarize_to_target(v) for k, v in sorted(variants.items())}
    lines = ["# Second-order methods (issue #8)", "",
             "Cost to reach the target training loss = the loss every seed of the best "
             "first-order method in the variant reaches within its budget; mean ± std over the "
             "seeds that reached it. Verdicts come from tests over seeds (below the claims). "
             "Closure evaluations: one per iteration for first-order methods.", ""]
    paths = []
    for (exp, variant), (target, rows) in summaries.items():
        lines += [f"## {exp}: {variant} (target training loss {target:.4f})", "",
                  f"| optimizer | seeds | epochs | final train loss | train loss after "
                  f"{rows[0]['k']} iterations | reached | iterations | closure evals | "
                  "Hessian-vector products | wall time s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(
                f"| {r['optimizer']} | {r['seeds']} | {r['epochs']} | {_fmt(r['final_loss'], 4)}"
                f" | {_fmt(r['loss_at_k'], 4)} | {r['reached']}/{r['seeds']} | "
                f"{_fmt(r['iterations'])} | "
                f"{_fmt(r['closure_evals'])} | {_fmt(r['hvps'], 0)} | {_fmt(r['seconds'], 2)} |"
            )
        lines.append("")
        p = out / f"fig_second_order_{variant}.png"
        _figure(p, f"{variant}: training loss, second-order vs first-order",
                variants[(exp, variant)], target)
        paths.append(p)
    lines += ["## Claims (survey §III)", ""]
    lines += claims(summaries, conditioning_sweep() if sweep else [])
    text = "\n".join(lines) + "\n"
    md = out / "second_order.md"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)
    return [md, *paths]
