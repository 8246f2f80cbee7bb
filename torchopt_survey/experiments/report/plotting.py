"""Figures: a fixed colour per optimizer, mean ± std bands over seeds, atomic PNG files."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..tasks.optimizers import OPTIMIZER_NAMES
from .stats import mean_std


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (imported when a figure is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: the PNG text key under which a figure keeps the digest of its plotted data
DATA_KEY = "Description"
_DATA_PREFIX = "plotted data sha256:"


def _floats(values: Any) -> list[float]:
    import numpy as np

    return np.asarray(values, dtype=float).ravel().tolist()


def plotted_data(fig: Any) -> dict[str, Any]:
    """What a figure shows, as plain data: per axes its labels and scales, every line's
    label and points, every band's corners (a polygon's distinct vertices, in sorted order)."""
    axes = []
    for ax in fig.axes:
        lines = [[ln.get_label(), _floats(ln.get_xdata()), _floats(ln.get_ydata())]
                 for ln in ax.get_lines()]
        bands = [sorted({(float(x), float(y)) for p in c.get_paths() for x, y in p.vertices})
                 for c in ax.collections]
        axes.append({"title": ax.get_title(), "xlabel": ax.get_xlabel(),
                     "ylabel": ax.get_ylabel(), "xscale": ax.get_xscale(),
                     "yscale": ax.get_yscale(), "lines": lines, "bands": bands})
    title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) is not None else ""
    return {"title": title, "axes": axes}


def data_digest(fig: Any) -> str:
    """SHA-256 of :func:`plotted_data` (floats written exactly), kept in the PNG's text."""
    text = json.dumps(plotted_data(fig), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def read_data_digest(path: str | os.PathLike[str]) -> str | None:
    """The plotted-data digest a PNG written by :func:`save_figure` keeps (None: none)."""
    from PIL import Image

    with Image.open(path) as img:
        text = getattr(img, "text", {}).get(DATA_KEY, "")
    return text[len(_DATA_PREFIX):] if text.startswith(_DATA_PREFIX) else None


def save_figure(fig: Any, path: Path) -> None:
    """Write a matplotlib figure atomically (a killed report leaves no half-written PNG), with
    the digest of its plotted data in the PNG's text (:func:`read_data_digest`), so a
    committed figure can be checked against its data without comparing pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp.png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, metadata={DATA_KEY: _DATA_PREFIX + data_digest(fig)})
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
        pyplot().close(fig)


def mean_band(curves: Sequence[Sequence[float]]) -> tuple[list[float], list[float], list[float]]:
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


def color(label: str) -> Any:
    """A fixed colour per optimizer across figures (tab10, then black for the 11th)."""
    import matplotlib

    if label in OPTIMIZER_NAMES:
        i = OPTIMIZER_NAMES.index(label)
        return matplotlib.colormaps["tab10"](i) if i < 10 else "black"
    return None


def rebin(xs: Sequence[float], ys: Sequence[float], bins: int = 200) -> tuple[list, list]:
    if len(xs) <= bins:
        return list(xs), list(ys)
    w = -(-len(xs) // bins)
    bx, by = [], []
    for i in range(0, len(xs), w):
        chunk = ys[i : i + w]
        bx.append(xs[min(i + w, len(xs)) - 1])
        by.append(sum(chunk) / len(chunk))
    return bx, by


def plot_series(
    ax: Any, x: Sequence[float], curves: Sequence[Sequence[float]], label: str, alpha: float = 0.2
) -> None:
    mean, lo, hi = mean_band(curves)
    x = list(x)[: len(mean)]
    (line,) = ax.plot(x, mean, label=label, lw=1.4, color=color(label))
    if len(curves) > 1:
        ax.fill_between(x, lo, hi, color=line.get_color(), alpha=alpha, lw=0)


def loss_curves(runs: Sequence[dict[str, Any]]) -> tuple[list[float], list[list[float]]]:
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
            bx, by = rebin(x, lc["loss"])
        xs = bx
        curves.append(by)
    return xs, curves


def figure(
    path: Path,
    title: str,
    series: Sequence[tuple[str, list[dict[str, Any]]]],
    panels: Sequence[tuple[str, str]],
) -> None:
    fig, axes = pyplot().subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, (tag, ylabel) in zip(axes[0], panels, strict=True):
        for label, runs in series:
            if tag == "train/loss":
                x, curves = loss_curves(runs)
            else:
                curves = [r["history"][tag] for r in runs]
                x = list(range(1, len(curves[0]) + 1))
            # Fainter bands when many optimizers share one panel, so the means stay readable.
            plot_series(ax, x, curves, label, alpha=0.2 if len(series) <= 4 else 0.07)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if tag == "train/loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
