"""``report`` section for the second survey's §V: gradient-norm and overfitting figures and a
verdict table per claim (Xavier/He, batch/layer norm, L1/L2, dropout, early stopping).

Runs are paired automatically: runs that share every spec value except the seed, the
run's label and the technique options (:data:`techniques.TREATMENTS`) form a *set-up*; in it
the runs without any technique option are the baseline, and each other option set is a
treatment compared with it over seeds (Welch's t-test, :func:`.stats.welch_p`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..tasks.registry import entry
from ..tasks.technique_options import OPTION_DEFAULTS, TREATMENTS
from ..tasks.techniques import GRAD_NORM_TAG
from .plotting import loss_curves, pyplot, save_figure
from .stats import ALPHA, mean_std, welch_p

Runs = list[dict[str, Any]]


def is_technique_run(result: dict[str, Any]) -> bool:
    """A run with any §V option (or a label) set: it belongs to this section."""
    return any(k in result["spec"] for k in OPTION_DEFAULTS)


def treatments(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: spec[k] for k in TREATMENTS if k in spec}


def _setup_key(spec: dict[str, Any]) -> str:
    skip = {"seed", "variant", "name", *TREATMENTS}
    return json.dumps({k: v for k, v in spec.items() if k not in skip}, sort_keys=True)


def _tkey(t: dict[str, Any]) -> str:
    return json.dumps(t, sort_keys=True)


def setups(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Runs]]:
    """set-up key -> treatment key -> runs (over seeds), for the technique runs of the tasks
    this section reads (those that name their weights: :attr:`.registry.Entry.weight_names`).
    Everything in a fixed order (set-ups by key, treatments fewest options first, runs by id),
    so the tables and figures do not depend on the order the runs were read in (a log
    folder's paths or ``runs.json``'s run ids)."""
    out: dict[str, dict[str, Runs]] = defaultdict(lambda: defaultdict(list))
    for r in sorted(results, key=lambda r: r["run_id"]):
        if _weight_names_of(r["spec"]) is not None and is_technique_run(r):
            out[_setup_key(r["spec"])][_tkey(treatments(r["spec"]))].append(r)
    return {
        k: dict(sorted(out[k].items(), key=lambda kv: (len(json.loads(kv[0])), kv[0])))
        for k in sorted(out)
    }


# ----------------------------------------------------------------------------- metrics


def _weight_names_of(spec: dict[str, Any]) -> Callable[[dict[str, Any]], list[str]] | None:
    return entry(spec["experiment"], spec.get("task")).weight_names


def linear_weight_names(spec: dict[str, Any]) -> list[str]:
    """Parameter names of the model's Linear weights, input layer first (depth order)."""
    names = _weight_names_of(spec)
    assert names is not None
    return names(spec)


def first_epoch_grad_norms(run: dict[str, Any]) -> list[float]:
    """Mean gradient norm of each Linear weight over the first epoch, by depth."""
    h = run["history"]
    return [float(h[f"{GRAD_NORM_TAG}{n}"][0]) for n in linear_weight_names(run["spec"])]


def _finite(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def log_first_over_last(run: dict[str, Any]) -> float:
    """log10(first layer's / last layer's first-epoch gradient norm): << 0 is vanishing."""
    g = first_epoch_grad_norms(run)
    if not all(_finite(x) and x > 0 for x in (g[0], g[-1])):
        return math.nan
    return math.log10(g[0] / g[-1])


def log_largest(run: dict[str, Any]) -> float:
    """log10 of the largest per-layer first-epoch gradient norm; inf when the first epoch's
    training loss overflowed to inf/nan (the gradients exploded past float range)."""
    g = first_epoch_grad_norms(run)
    if not _finite(run["history"]["train/loss_epoch"][0]) or not all(_finite(x) for x in g):
        return math.inf
    return math.log10(max(g))


def test_accuracy(run: dict[str, Any]) -> float:
    return float(run["final"]["test/accuracy"])


def gap(run: dict[str, Any]) -> float:
    """Train minus test accuracy (eval mode; restored weights for early stopping)."""
    return float(run["final"]["train/accuracy"]) - float(run["final"]["test/accuracy"])


Metric = tuple[str, Callable[[dict[str, Any]], float], bool, float]  # label, fn, higher, scale



def _fmt(xs: Sequence[float], scale: float) -> str:
    bad = sum(1 for x in xs if not _finite(x))
    fin = [x * scale for x in xs if _finite(x)]
    if not fin:
        return f"diverged ({bad}/{len(xs)})"
    m, s = mean_std(fin)
    return f"{m:.2f} ± {s:.2f}" + (f" ({bad} diverged)" if bad else "")


def improved(base: Sequence[float], treat: Sequence[float], higher: bool) -> tuple[bool, str]:
    """Is ``treat`` better than ``base`` (mean in the right direction and p < ALPHA)?
    Non-finite values (a diverged run) count as the worst possible; then, or when Welch's
    test is undefined (no spread), every treated seed must beat every baseline seed."""
    sign = 1.0 if higher else -1.0
    worst = -math.inf if higher else math.inf
    b = [x if _finite(x) else worst for x in base]
    t = [x if _finite(x) else worst for x in treat]
    if all(map(math.isfinite, b + t)):
        p = welch_p(list(t), list(b))
        if not math.isnan(p):
            better = sign * (mean_std(t)[0] - mean_std(b)[0]) > 0
            return better and p < ALPHA, f"p={p:.2g}"
    separated = min(sign * x for x in t) > max(sign * x for x in b)
    return separated, "all seeds separated" if separated else "seeds overlap"


def compare(base: Runs, treat: Runs, metrics: Sequence[Metric]) -> tuple[str, list[str]]:
    """Verdict for one treatment: confirmed if every metric improved, refuted if none did,
    mixed otherwise; plus one table cell per metric."""
    cells, wins = [], 0
    for _label, fn, higher, scale in metrics:
        bv, tv = [fn(r) for r in base], [fn(r) for r in treat]
        ok, how = improved(bv, tv, higher)
        wins += ok
        mark = "better" if ok else "not better"
        cells.append(f"{_fmt(bv, scale)} → **{_fmt(tv, scale)}** ({mark}, {how})")
    verdict = "confirmed" if wins == len(metrics) else ("refuted" if wins == 0 else "mixed")
    return verdict, cells


# ----------------------------------------------------------------------------- claims


def _label(t: dict[str, Any]) -> str:
    names = {
        "xavier_uniform": "Xavier (uniform)",
        "xavier_normal": "Xavier",
        "kaiming_uniform": "He (uniform)",
        "kaiming_normal": "He",
    }
    parts = []
    if "init" in t:
        init: str = t["init"]
        parts.append(names.get(init, init) + " init")
    if "init_gain" in t:
        parts.append(f"× gain {t['init_gain']:g}")
    if "norm" in t:
        parts.append(f"{t['norm']} norm")
    for k, lab in (("l1", "L1"), ("l2", "L2"), ("dropout", "dropout")):
        if k in t:
            parts.append(f"{lab} {t[k]:g}")
    if "clip_grad_norm" in t:
        parts.append(f"clip_grad_norm {t['clip_grad_norm']:g}")
    if "clip_grad_value" in t:
        parts.append(f"clip_grad_value {t['clip_grad_value']:g}")
    if "early_stopping" in t:
        parts.append(f"early stopping (patience {t['early_stopping']})")
    return " + ".join(parts) if parts else "default init, no technique"


def _setup_title(spec: dict[str, Any]) -> str:
    hidden = spec["hidden"] if isinstance(spec["hidden"], list) else [spec["hidden"]]
    widths = f"{len(hidden)}×{hidden[0]}" if len(set(hidden)) == 1 else "-".join(map(str, hidden))
    n = spec.get("train_subset") or 60000
    vs = spec.get("val_split")
    n_train = n - round(n * vs) if vs else n
    return (
        f"{spec['activation']} MLP {widths}, {spec['optimizer']} lr "
        f"{spec['optimizer_kwargs'].get('lr')}, {n_train} train images, {spec['epochs']} epochs"
    )


def _names(runs: Runs) -> str:
    return ", ".join(sorted({r["spec"]["variant"] for r in runs}))


VANISH: list[Metric] = [
    ("log10(first/last layer grad norm), epoch 1 (higher = less vanishing)",
     log_first_over_last, True, 1.0),
    ("final test accuracy %", test_accuracy, True, 100.0),
]  # fmt: skip
EXPLODE: list[Metric] = [
    ("log10(largest layer grad norm), epoch 1 (lower = less exploding)", log_largest, False, 1.0),
    ("final test accuracy %", test_accuracy, True, 100.0),
]  # fmt: skip
OVERFIT: list[Metric] = [
    ("train − test accuracy gap, points (lower = less overfitting)", gap, False, 100.0),
    ("final test accuracy %", test_accuracy, True, 100.0),
]  # fmt: skip

CLAIMS = (
    ("xavier_he", "§V.A: Xavier and He initialisation alleviate the vanishing gradient problem"),
    ("norm", "§V.A: batch and layer normalisation help against vanishing and exploding gradients"),
    ("l1_l2", "§V.C: L1 and L2 regularisation reduce overfitting"),
    ("dropout", "§V.C: dropout reduces overfitting"),
    ("early", "§V.C: early stopping reduces overfitting"),
)


def _claim_rows(groups: dict[str, dict[str, Runs]]) -> dict[str, list[dict[str, Any]]]:
    """claim id -> comparisons (set-up, baseline runs, treatment runs, metrics)."""
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for by_t in groups.values():
        decoded = {k: json.loads(k) for k in by_t}
        overfit = any("train/accuracy" in r["final"] for runs in by_t.values() for r in runs)
        base_key = _tkey({})
        # The exploding baseline: a large-gain init and nothing else.
        big = [
            k
            for k, t in decoded.items()
            if set(t) <= {"init", "init_gain"} and t.get("init_gain", 1) > 1
        ]
        for k, t in decoded.items():
            runs = by_t[k]
            if base_key in by_t and k != base_key and not overfit:
                if set(t) == {"init"} and t["init"].startswith(("xavier", "kaiming")):
                    rows["xavier_he"].append(
                        {"base": by_t[base_key], "treat": runs, "metrics": VANISH}
                    )
                if set(t) == {"norm"}:
                    rows["norm"].append({"base": by_t[base_key], "treat": runs, "metrics": VANISH})
            for bk in big:
                bt = decoded[bk]
                if set(t) - set(bt) == {"norm"} and all(t.get(x) == v for x, v in bt.items()):
                    rows["norm"].append({"base": by_t[bk], "treat": runs, "metrics": EXPLODE})
                if set(t) - set(bt) == {"clip_grad_norm"} and all(
                    t.get(x) == v for x, v in bt.items()
                ):
                    rows["clipping"].append({"base": by_t[bk], "treat": runs, "metrics": EXPLODE})
            if overfit and base_key in by_t and k != base_key:
                claim = {
                    "l1": "l1_l2",
                    "l2": "l1_l2",
                    "dropout": "dropout",
                    "early_stopping": "early",
                }
                if len(t) == 1 and next(iter(t)) in claim:
                    rows[claim[next(iter(t))]].append(
                        {"base": by_t[base_key], "treat": runs, "metrics": OVERFIT}
                    )
    return rows  # fmt: skip


def claims_markdown(results: Sequence[dict[str, Any]]) -> str:
    """One table per §V claim: each treatment against its baseline, seeds × mean ± std."""
    rows = _claim_rows(setups(results))
    if not rows:
        return ""
    out = [
        "## Second survey, §V: training techniques",
        "",
        "Each row compares a technique with the same set-up without it (same seeds); "
        f"*better* means the mean moved the right way with Welch's t-test p < {ALPHA} "
        "(a diverged run counts as the worst value). A row is **confirmed** when every "
        "metric is better, **refuted** when none is, **mixed** otherwise; a claim is "
        "confirmed/refuted when all its rows are, mixed otherwise.",
        "",
        "| claim | verdict | rows |",
        "|---|---|---|",
    ]
    sections = []
    for cid, text in (
        *CLAIMS,
        ("clipping", "Context (not a §V claim): gradient clipping on the exploding set-up"),
    ):
        comps = rows.get(cid, [])
        if not comps:
            if cid != "clipping":
                out.append(f"| {text} | not run | 0 |")
            continue
        verdicts = []
        lines = []
        for c in comps:
            verdict, cells = compare(c["base"], c["treat"], c["metrics"])
            verdicts.append(verdict)
            spec = c["treat"][0]["spec"]
            lines.append(
                f"| {_setup_title(spec)} | {_label(treatments(c['base'][0]['spec']))} → "
                f"{_label(treatments(spec))} | {len(c['base'])}/{len(c['treat'])} | "
                + " | ".join(cells)
                + f" | **{verdict}** | {_names(c['base'])} vs {_names(c['treat'])} |"
            )
        overall = verdicts[0] if len(set(verdicts)) == 1 else "mixed"
        if cid != "clipping":
            out.append(f"| {text} | **{overall}** | {len(comps)} |")
        sections.append((text, overall, comps[0]["metrics"], lines, comps))
    out.append("")
    for text, overall, _m, lines, comps in sections:
        out += [f"### {text}: **{overall}**", ""]
        by_metrics: dict[int, list[str]] = defaultdict(list)
        metric_sets: dict[int, list[Metric]] = {}
        for c, line in zip(comps, lines, strict=True):
            by_metrics[id(c["metrics"])].append(line)
            metric_sets[id(c["metrics"])] = c["metrics"]
        order = [id(m) for m in (VANISH, EXPLODE, OVERFIT)]  # (vanishing before exploding)
        for mid, mlines in sorted(by_metrics.items(), key=lambda kv: order.index(kv[0])):
            heads = " | ".join(m[0] for m in metric_sets[mid])
            out.append(f"| set-up | baseline → treatment | seeds | {heads} | verdict | runs |")
            out.append("|---|---|---:|" + "---|" * len(metric_sets[mid]) + "---|---|")
            out += mlines
            out.append("")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- figures


def _diverged(runs: Runs) -> str:
    bad = sum(not _finite(r["history"]["train/loss_epoch"][-1]) for r in runs)
    return f" (diverged: {bad}/{len(runs)} seeds)" if bad else ""


def _gradient_setups(
    groups: dict[str, dict[str, Runs]],
) -> list[tuple[str, list[tuple[str, Runs]]]]:
    """(title, [(label, runs)]) per set-up that logged gradient norms and is not an
    overfitting study, baseline first."""
    out = []
    for by_t in groups.values():
        any_run = next(iter(by_t.values()))[0]
        if (
            "train/accuracy" in any_run["final"]
            or GRAD_NORM_TAG + linear_weight_names(any_run["spec"])[0] not in any_run["history"]
        ):
            continue
        items = sorted(by_t.items(), key=lambda kv: (len(json.loads(kv[0])), kv[0]))
        series = [(_label(json.loads(k)) + _diverged(runs), runs) for k, runs in items]
        out.append((_setup_title(any_run["spec"]), series))
    # Vanishing set-ups (a plain default-init baseline) first.
    out.sort(key=lambda s: (s[1][0][0] != "default init, no technique", s[0]))
    return out  # fmt: skip


_COLORS = (
    ("clip", "tab:blue"), ("batch", "tab:red"), ("layer", "tab:purple"), ("Xavier", "tab:green"),
    ("He", "tab:orange"), ("dropout", "tab:green"), ("L1", "tab:orange"), ("L2", "tab:red"),
    ("early", "tab:purple"),
)  # fmt: skip


def _color(label: str, baseline: bool) -> str | None:
    """The same colour for a technique in every panel; the baseline of a panel in black."""
    if baseline:
        return "black"
    # Treatment labels extend the baseline's ("He init + × gain 2 + batch norm"): the last
    # part names the technique.
    last = label.split(" + ")[-1]
    return next((c for key, c in _COLORS if key in last), None)


def _suptitle(fig: Any, text: str, width_in: float) -> None:
    import textwrap

    fig.suptitle(textwrap.fill(text, width=max(40, int(width_in * 12))), fontsize=10)


def _band(
    ax: Any, x: Sequence[float], curves: Sequence[Sequence[float]], label: str, **kw: Any
) -> Any:
    import numpy as np

    arr = np.array([list(c)[: min(map(len, curves))] for c in curves], dtype=float)
    arr[~np.isfinite(arr)] = np.nan
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(arr, 0)
            lo, hi = np.nanmin(arr, 0), np.nanmax(arr, 0)
    xs = list(x)[: arr.shape[1]]
    (line,) = ax.plot(xs, mean, label=label, **kw)
    if arr.shape[0] > 1:
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    return line


def write_figures(results: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    plt = pyplot()
    groups = setups(results)
    paths: list[Path] = []
    grad = _gradient_setups(groups)
    if grad:
        width = 5.4 * len(grad)
        fig, axes = plt.subplots(1, len(grad), figsize=(width, 4.5), squeeze=False)
        for ax, (title, series) in zip(axes[0], grad, strict=True):
            for i, (label, runs) in enumerate(series):
                curves = [first_epoch_grad_norms(r) for r in runs]
                x = range(1, len(curves[0]) + 1)
                color = _color(label, i == 0)
                _band(ax, x, curves, label, marker="o", ms=3, lw=1.4, color=color)
            ax.set_yscale("log")
            ax.set_xlabel("layer (1 = input layer)")
            ax.set_ylabel("gradient norm of the weights, mean over epoch 1")
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        text = "Per-layer gradient norm by depth (mean over seeds, band = min–max)"
        _suptitle(fig, text, width)
        fig.tight_layout()
        p = out / "fig_grad_norm_by_depth.png"
        save_figure(fig, p)
        paths.append(p)
        fig, axes = plt.subplots(1, len(grad), figsize=(width, 4.5), squeeze=False)
        for ax, (title, series) in zip(axes[0], grad, strict=True):
            for i, (label, runs) in enumerate(series):
                x, curves = loss_curves(runs)
                _band(ax, x, curves, label, lw=1.3, color=_color(label, i == 0))
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_ylabel("training loss (a line that ends: diverged to nan)")
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
        _suptitle(fig, "Training loss of the same runs (mean over seeds, band = min–max)", width)
        fig.tight_layout()
        p = out / "fig_grad_training_loss.png"
        save_figure(fig, p)
        paths.append(p)
    over = [
        by_t
        for by_t in groups.values()
        if any("train/accuracy" in r["final"] for runs in by_t.values() for r in runs)
    ]
    for i, by_t in enumerate(over):
        items = sorted(by_t.items(), key=lambda kv: (len(json.loads(kv[0])), kv[0]))
        fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.5))
        for j, (k, runs) in enumerate(items):
            label = _label(json.loads(k)) if json.loads(k) else "no regularisation"
            # Several strengths of one technique may share this panel: one colour per series.
            color = "black" if j == 0 else matplotlib.colormaps["tab10"]((j - 1) % 10)
            test = [[100 * a for a in r["history"]["test/accuracy"]] for r in runs]
            train = [[100 * a for a in r["history"]["train/accuracy"]] for r in runs]
            gaps = [
                [a - b for a, b in zip(tr, te, strict=True)]
                for tr, te in zip(train, test, strict=True)
            ]
            for ax, curves in ((axes[0], test), (axes[1], gaps)):
                if len({len(c) for c in curves}) == 1:
                    line = _band(
                        ax, range(1, len(curves[0]) + 1), curves, label, lw=1.4, color=color
                    )
                else:  # early-stopped seeds end at different epochs: one line each
                    for s, c in enumerate(curves):
                        (line,) = ax.plot(
                            range(1, len(c) + 1),
                            c,
                            lw=1.0,
                            color=color,
                            label=label if s == 0 else None,
                        )
                        color = line.get_color()
                if any(r["spec"].get("early_stopping") for r in runs):
                    for c in curves:
                        ax.plot(len(c), c[-1], "x", color=line.get_color(), ms=8, mew=2)
                color = line.get_color()
        axes[0].set_ylabel("test accuracy %")
        axes[1].set_ylabel("train − test accuracy, points (eval mode)")
        for ax in axes:
            ax.set_xlabel("epoch  (× = early stop)")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=8)
        spec = next(iter(by_t.values()))[0]["spec"]
        text = f"Overfitting set-up: {_setup_title(spec)} (mean over seeds, band = min–max)"
        _suptitle(fig, text, 11.5)
        fig.tight_layout()
        p = out / ("fig_overfitting.png" if i == 0 else f"fig_overfitting_{i + 1}.png")
        save_figure(fig, p)
        paths.append(p)
    return paths


def write(results: Sequence[dict[str, Any]], out: Path) -> tuple[list[Path], str]:
    """Figures into ``out`` and the claims markdown (empty without technique runs)."""
    if not any(is_technique_run(r) for r in results):
        return [], ""
    return write_figures(results, out), claims_markdown(results)
