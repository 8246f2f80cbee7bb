"""``report``: finished runs -> figures (paper Figs. 1-4), a results table and claim verdicts."""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import load_json
from .registry import OPTIMIZER_NAMES
from .runner import RESULT, normalise

# The surveys' claims, as optimizer groups compared on one metric.
MNIST_WINNERS = ("adagrad", "amsgrad", "adam")
MNIST_LOSERS = ("momentum", "nag", "rmsprop")
ADAPTIVE = ("adagrad", "adadelta", "rmsprop", "adam", "adamw", "amsgrad", "nadam", "adamax")
NON_ADAPTIVE = ("sgd", "momentum", "nag")


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (nan without data, std 0 for one)."""
    vals = [float(x) for x in xs]
    if not vals:
        return math.nan, math.nan
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in vals) / (len(vals) - 1))


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


def _opt_order(name: str) -> int:
    return OPTIMIZER_NAMES.index(name) if name in OPTIMIZER_NAMES else len(OPTIMIZER_NAMES)


def summarize(groups: Group) -> list[dict[str, Any]]:
    """One table row per (experiment, variant, optimizer)."""
    rows = []
    for (exp, variant, opt), runs in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], _opt_order(kv[0][2]))
    ):
        row: dict[str, Any] = {
            "experiment": exp,
            "variant": variant,
            "optimizer": opt,
            "seeds": len(runs),
            "epochs": runs[0]["spec"]["epochs"],
        }
        metrics = [("test_accuracy", "test/accuracy")]
        if exp == "karate":
            metrics.append(("test_auc", "test/auc"))
        for label, tag in metrics:
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


def _atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


CSV_FIELDS = (
    "experiment", "variant", "optimizer", "seeds", "epochs",
    "final_test_accuracy_mean", "final_test_accuracy_std",
    "best_test_accuracy_mean", "best_test_accuracy_std",
    "final_test_auc_mean", "final_test_auc_std", "best_test_auc_mean", "best_test_auc_std",
    "final_train_loss_mean", "final_train_loss_std", "wall_time_s_mean", "wall_time_s_std",
)  # fmt: skip


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure atomically (a killed report leaves no half-written PNG)."""
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp.png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
        plt.close(fig)


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: row.get(k, "") for k in CSV_FIELDS})
    return buf.getvalue()


def _pm(row: dict[str, Any], key: str, scale: float = 100.0, digits: int = 2) -> str:
    if f"{key}_mean" not in row:
        return ""
    return f"{row[key + '_mean'] * scale:.{digits}f} ± {row[key + '_std'] * scale:.{digits}f}"


def table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = []
    by_variant: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_variant[(row["experiment"], row["variant"])].append(row)
    for (exp, variant), vrows in by_variant.items():
        seeds = sorted({r["seeds"] for r in vrows})
        lines.append(f"### {exp}: {variant} ({'/'.join(map(str, seeds))} seeds, mean ± std)\n")
        head = "| optimizer | final test acc % | best test acc % |"
        sep = "|---|---:|---:|"
        if exp == "karate":
            head += " final test AUC % | best test AUC % |"
            sep += "---:|---:|"
        head += " final train loss | wall time s |"
        sep += "---:|---:|"
        lines += [head, sep]
        for r in vrows:
            cells = [r["optimizer"], _pm(r, "final_test_accuracy"), _pm(r, "best_test_accuracy")]
            if exp == "karate":
                cells += [_pm(r, "final_test_auc"), _pm(r, "best_test_auc")]
            cells += [_pm(r, "final_train_loss", 1.0, 4), _pm(r, "wall_time_s", 1.0, 1)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- claims


#: significance level of the per-pair test in :func:`claim_verdict`
ALPHA = 0.05
TEST_NAME = "Welch's t-test (unequal variances, two-sided) over seeds"


def _pair_test(a: dict[str, Any], b: dict[str, Any], key: str) -> tuple[int, float]:
    """Welch's t-test of row ``a`` against row ``b`` on the seeds behind ``key``'s mean/std.

    Returns ``(sign, p)``: sign +1/-1 when a's mean is higher/lower, 0 when equal. The test
    needs only each row's mean, std (ddof=1) and seed count, which is what the table keeps
    (``scipy.stats.ttest_ind_from_stats``: the same test as ``ttest_ind(equal_var=False)``).
    """
    from scipy.stats import ttest_ind_from_stats

    ma, mb = a[f"{key}_mean"], b[f"{key}_mean"]
    sign = (ma > mb) - (ma < mb)
    if sign == 0:
        return 0, 1.0
    _, p = ttest_ind_from_stats(
        ma, a[f"{key}_std"], a["seeds"], mb, b[f"{key}_std"], b["seeds"], equal_var=False
    )
    return sign, float(p) if math.isfinite(p) else 1.0


def claim_verdict(
    rows: Sequence[dict[str, Any]], winners: Sequence[str], losers: Sequence[str], key: str,
    alpha: float = ALPHA,
) -> tuple[str, str] | None:
    """Verdict on "every optimizer of ``winners`` beats every one of ``losers``" on ``key``.

    ``rows`` are :func:`summarize` rows (``seeds``, ``<key>_mean``, ``<key>_std``). A pair
    *holds* only when the winner's seed mean is higher **and** Welch's t-test over seeds gives
    p < ``alpha``; it is *reversed* when the loser is significantly higher, else *within noise*.
    Verdict: *confirmed* if every pair holds, *mostly confirmed* if >= 2/3 do, *mixed* if
    > 1/3 do; below that, *within noise* when no pair is reversed (the few pairs that hold do
    not carry the claim, and none contradicts it), else *not confirmed*. With fewer than 2
    seeds per optimizer there is no spread to test against: *cannot decide (one seed)*.
    Returns ``(verdict, evidence)``, or None without data.
    """
    by_name = {r["optimizer"]: r for r in rows if f"{key}_mean" in r}
    a = [o for o in winners if o in by_name]
    b = [o for o in losers if o in by_name]
    if not a or not b:
        return None
    pairs = [(w, l) for w in a for l in b]
    fmt = ", ".join(f"{o} {100 * by_name[o][f'{key}_mean']:.1f}" for o in a)
    fmt_b = ", ".join(f"{o} {100 * by_name[o][f'{key}_mean']:.1f}" for o in b)
    seeds = min(int(by_name[o]["seeds"]) for o in a + b)
    if seeds < 2:
        return "cannot decide (one seed)", f"no spread over seeds to test; {fmt} vs {fmt_b}"
    tests = [_pair_test(by_name[w], by_name[l], key) for w, l in pairs]
    held = sum(1 for sign, p in tests if sign > 0 and p < alpha)
    reversed_ = sum(1 for sign, p in tests if sign < 0 and p < alpha)
    n = len(pairs)
    if held == n:
        verdict = "confirmed"
    elif held >= 2 / 3 * n:
        verdict = "mostly confirmed"
    elif held > n / 3:
        verdict = "mixed"
    elif reversed_ == 0:
        verdict = "within noise"
    else:
        verdict = "not confirmed"
    detail = (
        f"{held}/{n} pairs hold, {reversed_} reversed, {n - held - reversed_} within noise "
        f"(p < {alpha}, >= {seeds} seeds); {fmt} vs {fmt_b}"
    )
    return verdict, detail


_compare = claim_verdict  # former name


def claims_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """One verdict row per survey claim and data set (see :func:`claim_verdict` for the rule)."""
    out = ["| claim | data | metric (seed mean, %) | verdict | evidence |", "|---|---|---|---|---|"]
    by_variant: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_variant[(r["experiment"], r["variant"])].append(r)
    for (exp, variant), vrows in by_variant.items():
        if exp == "mnist" and variant.endswith("-minibatch"):
            claim = "Adagrad/AMSGrad/Adam beat Momentum/NAG/RMSProp on MNIST"
            tests = [(MNIST_WINNERS, MNIST_LOSERS, "final_test_accuracy", "final test accuracy")]
        elif exp == "karate":
            claim = "adaptive methods win on link prediction"
            tests = [
                (ADAPTIVE, NON_ADAPTIVE, "final_test_auc", "final test ROC-AUC"),
                (ADAPTIVE, NON_ADAPTIVE, "final_test_accuracy", "final test accuracy"),
            ]
        else:
            continue
        for winners, losers, key, label in tests:
            res = claim_verdict(vrows, winners, losers, key)
            if res is not None:
                out.append(f"| {claim} | {exp} {variant} | {label} | **{res[0]}** | {res[1]} |")
    out.append(
        f"\nA pair (winner, loser) holds when the winner's seed mean is higher and {TEST_NAME} "
        f"gives p < {ALPHA}; reversed when the loser's is significantly higher; otherwise "
        "within noise. confirmed: every pair holds; mostly confirmed: >= 2/3; mixed: > 1/3; "
        "within noise: no pair differs significantly; cannot decide: one seed. Each pair is "
        "tested on its own (no correction for the number of pairs)."
    )
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- figures


def _mean_band(curves: Sequence[Sequence[float]]) -> tuple[list[float], list[float], list[float]]:
    """Mean and mean ± std per point; the lower edge never drops below the smallest seed, so
    the band stays positive on a log axis."""
    n = min(len(c) for c in curves)
    mean, lo, hi = [], [], []
    for i in range(n):
        vals = [c[i] for c in curves]
        m, s = mean_std(vals)
        mean.append(m)
        lo.append(max(m - s, min(vals)))
        hi.append(min(m + s, max(vals)))
    return mean, lo, hi


def _color(label: str) -> Any:
    """A fixed colour per optimizer across figures (tab10, then black for the 11th)."""
    import matplotlib

    if label in OPTIMIZER_NAMES:
        i = OPTIMIZER_NAMES.index(label)
        return matplotlib.colormaps["tab10"](i) if i < 10 else "black"
    return None


def _rebin(xs: Sequence[float], ys: Sequence[float], bins: int = 200) -> tuple[list, list]:
    if len(xs) <= bins:
        return list(xs), list(ys)
    w = -(-len(xs) // bins)
    bx, by = [], []
    for i in range(0, len(xs), w):
        chunk = ys[i : i + w]
        bx.append(xs[min(i + w, len(xs)) - 1])
        by.append(sum(chunk) / len(chunk))
    return bx, by


def _plot_series(
    ax: Any, x: Sequence[float], curves: Sequence[Sequence[float]], label: str, alpha: float = 0.2
) -> None:
    mean, lo, hi = _mean_band(curves)
    x = list(x)[: len(mean)]
    (line,) = ax.plot(x, mean, label=label, lw=1.4, color=_color(label))
    if len(curves) > 1:
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=alpha, lw=0)


def _loss_curves(runs: Sequence[dict[str, Any]]) -> tuple[list[float], list[list[float]]]:
    """Per-step training loss (window means) on an epoch axis, re-binned for plotting."""
    curves = []
    xs: list[float] = []
    for r in runs:
        lc = r["loss_curve"]
        spe = lc["steps_per_epoch"]
        x = [s / spe for s in lc["step"]]
        if spe == 1:  # one step per epoch: the curve is already per epoch
            bx, by = x, lc["loss"]
        else:
            bx, by = _rebin(x, lc["loss"])
        xs = bx
        curves.append(by)
    return xs, curves


def _figure(
    path: Path,
    title: str,
    series: Sequence[tuple[str, list[dict[str, Any]]]],
    panels: Sequence[tuple[str, str]],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, (tag, ylabel) in zip(axes[0], panels, strict=True):
        for label, runs in series:
            if tag == "train/loss":
                x, curves = _loss_curves(runs)
            else:
                curves = [r["history"][tag] for r in runs]
                x = list(range(1, len(curves[0]) + 1))
            # Fainter bands when many optimizers share one panel, so the means stay readable.
            _plot_series(ax, x, curves, label, alpha=0.2 if len(series) <= 4 else 0.07)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if tag == "train/loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def write_figures(groups: Group, out: Path) -> list[Path]:
    paths: list[Path] = []
    variants: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = defaultdict(dict)
    for (exp, variant, opt), runs in groups.items():
        variants[(exp, variant)][opt] = runs
    mnist_panels = [("train/loss", "training loss"), ("test/accuracy", "test accuracy")]
    karate_panels = [
        ("train/loss_epoch", "training loss"),
        ("test/accuracy", "test accuracy"),
        ("test/auc", "test ROC-AUC"),
    ]
    # Fig. 1: the GD / SGD / mini-batch regimes of plain SGD.
    datasets = sorted({v.rsplit("-", 1)[0] for (e, v) in variants if e == "mnist"})
    for ds in datasets:
        series = []
        for regime, label in (
            ("gd", "GD (full batch)"),
            ("sgd", "SGD (batch 1)"),
            ("minibatch", "MBGD"),
        ):
            runs = variants.get(("mnist", f"{ds}-{regime}"), {}).get("sgd")
            if runs:
                series.append((label, runs))
        if series:
            name = "fig1_mnist_regimes.png" if ds == "mnist" else f"fig1_{ds}_regimes.png"
            p = out / name
            _figure(p, f"{ds}: gradient descent regimes (SGD optimizer)", series, mnist_panels)
            paths.append(p)
    for (exp, variant), by_opt in sorted(variants.items()):
        series = [(o, by_opt[o]) for o in sorted(by_opt, key=_opt_order)]
        if exp == "mnist":
            regime = variant.rsplit("-", 1)[1]
            if regime in ("gd", "sgd"):
                if len(series) == 1 and series[0][0] == "sgd":
                    continue  # already in Fig. 1
            name = (
                "fig2_mnist_optimizers.png"
                if variant == "mnist-minibatch"
                else f"fig_{variant}.png"
            )
            title = f"{variant}: optimizers"
            panels = mnist_panels
        else:
            standard = {
                "karate-paper": "fig3_karate_paper.png",
                "karate-gcn": "fig4_karate_gcn.png",
            }
            name = standard.get(variant, f"fig_{variant}.png")
            title = f"link prediction {variant}: optimizers"
            panels = karate_panels
        p = out / name
        _figure(p, title, series, panels)
        paths.append(p)
    return paths


def write_report(logdir: str | os.PathLike[str], out: str | os.PathLike[str]) -> list[Path]:
    """Write figures, ``results.md``, ``results.csv`` and ``claims.md`` into ``out``; for a
    sweep under ``logdir`` also its sensitivity figures, two-protocol claims and targets."""
    from . import report_techniques

    outp = Path(out)
    sweep_paths: list[Path] = []
    sweep_json = Path(logdir) / "sweep" / "sweep.json"
    if sweep_json.is_file():
        from .sweep import write_sweep_report

        sweep_paths = write_sweep_report(sweep_json, outp)
    # (a sweep's runs are summarised by the sweep's own tables, not one row per setting)
    results = [r for r in load_results(logdir) if "sweep" not in r["spec"]]
    if not results:
        if sweep_paths:
            return sweep_paths
        raise ValueError(f"--logdir: no finished runs (no {RESULT}) under {logdir}")
    # Runs with §V technique options get their own figures and claim tables.
    tech_paths, tech_claims = report_techniques.write(results, outp)
    groups = group_runs(r for r in results if not report_techniques.is_technique_run(r))
    rows = summarize(groups)
    paths = sweep_paths + write_figures(groups, outp)
    texts = [("claims.md", (claims_markdown(rows) if rows else "") + tech_claims)]
    if rows:
        texts = [("results.csv", table_csv(rows)), ("results.md", table_markdown(rows)), *texts]
    for name, text in texts:
        _atomic_text(outp / name, text)
        paths.append(outp / name)
    # Issue #8: cost to a target loss and the claims about Newton and CG (own module).
    from .report_second_order import write_second_order

    paths += write_second_order(groups, outp)
    return paths + tech_paths
