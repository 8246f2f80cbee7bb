"""``sweep``: each optimizer tuned over a learning-rate grid (and more) on validation, over seeds.

Protocol (DeepOBS, Choi et al. 2019, AlgoPerf): every (optimizer, hyperparameters, seed) is a
normal run; an optimizer's setting is chosen by the seed-mean of its final *validation* metric
(MNIST: ``val/accuracy`` on the ``val_split`` fraction of the training set; Karate: ``val/auc``),
and reported on the *test* set as mean +- std over seeds at that setting. Runs of one
architecture are trained N at a time as one vectorised program where possible
(:mod:`.vectorized`); a run that crashes is recorded as failed, with its error, and the others
go on.
"""

from __future__ import annotations

import inspect
import itertools
import math
import re
import sys
import time
import traceback
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import save_json
from .registry import OPTIMIZERS, PAPER_LR
from .report import mean_std, save_figure

#: selection and report metric per experiment: (validation tag, test tag, label)
METRICS = {"mnist": ("val/accuracy", "test/accuracy", "accuracy"),
           "karate": ("val/auc", "test/auc", "ROC-AUC")}
#: default validation fraction of an MNIST sweep (10,000 of the 60,000 training images; the
#: paper has no validation split)
MNIST_VAL_SPLIT = 1 / 6
#: targets for time/steps-to-target (AlgoPerf style), on the validation metric
TARGETS = {"mnist": 0.90, "karate": 0.80}


# ------------------------------------------------------------------------------ parsing
def parse_lr_grid(text: str) -> list[float]:
    """``LO:HI:N`` -> N values evenly spaced in log scale from LO to HI (both included)."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"--lr-grid: expected LO:HI:N (e.g. 1e-4:1:7), got {text!r}")
    try:
        lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
    except ValueError:
        raise ValueError(f"--lr-grid: expected LO:HI:N with numbers, got {text!r}") from None
    if n < 1:
        raise ValueError(f"--lr-grid: N must be >= 1 (an empty grid), got {text!r}")
    if not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        raise ValueError(f"--lr-grid: expected 0 < LO <= HI, got {text!r}")
    if n == 1:
        return [lo]
    step = (math.log10(hi) - math.log10(lo)) / (n - 1)
    # rounded to 6 significant digits: run folders and tables show them exactly
    return [float(f"{10 ** (math.log10(lo) + i * step):.6g}") for i in range(n)]


def _number_or_word(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise ValueError(text)


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``KEY=V1,V2,...`` (repeatable) -> {key: values}."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--grid: expected KEY=V1,V2,..., got {item!r}")
        if key == "lr":
            raise ValueError("--grid: give learning rates with --lr-grid, not --grid lr=...")
        raw = [v.strip() for v in values.split(",") if v.strip()]
        if not raw:
            raise ValueError(f"--grid {key}: empty list of values in {item!r}")
        parsed = []
        for v in raw:
            try:
                parsed.append(_number_or_word(v))
            except ValueError:
                raise ValueError(
                    f"--grid {key}: cannot parse value {v!r} (numbers or true/false)"
                ) from None
        grid[key] = parsed
    return grid


def check_grid(optimizers: Sequence[str], grid: dict[str, list[Any]]) -> None:
    """Every grid key must be a constructor argument of every optimizer swept."""
    for name in optimizers:
        cls = OPTIMIZERS[name][0]
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}
        for key in grid:
            if key not in accepted:
                raise ValueError(
                    f"--grid {key}: optimizer {name!r} ({cls.__name__}) takes no {key!r}; "
                    f"it takes {', '.join(sorted(accepted))}"
                )


def setting_label(hp: dict[str, Any]) -> str:
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in hp.items())


def expand_sweep(base_specs: Sequence[dict[str, Any]], lrs: Sequence[float],
                 grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """One spec per (base spec, grid point): the setting is part of the run's variant."""
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*grid.values())] or [{}]
    specs = []
    for spec in base_specs:
        for lr in lrs:
            for point in points:
                hp = {"lr": lr, **point}
                kwargs = {**spec["optimizer_kwargs"], **hp}
                specs.append({**spec, "optimizer_kwargs": kwargs,
                              "variant": f"{spec['variant']}-sweep~{setting_label(hp)}",
                              "sweep": {"base": spec["variant"], "setting": hp}})
    return specs


# ------------------------------------------------------------------------------ running
def plan_units(specs: Sequence[dict[str, Any]], vectorize: bool, log: Callable[[str], None],
               ) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """(vectorised groups, runs one by one); says why runs are not vectorised."""
    from .vectorized import group_key, plan_groups, why_not

    if not vectorize:
        log("sweep: --no-vectorize: every run separately")
        return [], list(specs)
    groups, alone = plan_groups(specs)
    for reason in sorted({why_not(s) for s in alone if group_key(s) is None}):
        log(f"sweep: not vectorised, run one by one: {reason}")
    return groups, alone


def _run_group(group: Sequence[dict[str, Any]], opts: Any, log: Callable[[str], None],
               results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One vectorised program into ``results``; returns the runs left to do one by one."""
    from .runner import run_id
    from .vectorized import execute_vectorized

    log(f"sweep: {len(group)} runs of {group[0]['optimizer']} as one vectorised program")
    try:
        for res in execute_vectorized(group, opts):
            results[res["run_id"]] = {"status": "ok", **res}
    except Exception as exc:  # noqa: BLE001 -- the group's runs are retried one by one
        log(f"sweep: vectorised program failed ({type(exc).__name__}: {exc}); "
            "its runs go one by one")
        return [s for s in group if run_id(s) not in results]
    return []


def run_unit(unit: Sequence[dict[str, Any]], opts: Any, log: Callable[[str], None],
             ) -> list[dict[str, Any]]:
    """Rows of one unit of work, as :func:`run_sweep` does it: a vectorised group (falling
    back to its runs one by one) or a single run. What one Ray trial does."""
    from .runner import run_id

    results: dict[str, dict[str, Any]] = {}
    rest = _run_group(unit, opts, log, results) if len(unit) > 1 else list(unit)
    for spec in rest:
        results[run_id(spec)] = _guarded(spec, opts)
    return [_row(spec, results[run_id(spec)]) for spec in unit]


def run_sweep(specs: Sequence[dict[str, Any]], opts: Any, vectorize: bool, workers: int,
              log: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run every spec (vectorised groups first); returns (rows, timing)."""
    from .runner import run_id

    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    groups, alone = plan_units(specs, vectorize, log)
    for group in groups:
        alone.extend(_run_group(group, opts, log, results))
    if workers > 1 and len(alone) > 1:
        _run_pool(alone, opts, workers, results)
    else:
        for spec in alone:
            results[run_id(spec)] = _guarded(spec, opts)
    wall = time.perf_counter() - t0
    rows = [_row(spec, results[run_id(spec)]) for spec in specs]
    return rows, {"wall_time_s": wall, "vectorized_programs": len(groups),
                  "runs": len(specs)}


def _failed(spec: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    from .runner import run_id

    message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return {"status": "failed", "error": message.splitlines()[-1][:300], "run_id": run_id(spec),
            "spec": spec}


def _guarded(spec: dict[str, Any], opts: Any) -> dict[str, Any]:
    from .runner import execute_run

    try:
        return {"status": "ok", **execute_run(spec, opts)}
    except Exception as exc:  # noqa: BLE001 -- recorded, the others go on
        return _failed(spec, exc)


def _run_pool(specs: Sequence[dict[str, Any]], opts: Any, workers: int,
              results: dict[str, dict[str, Any]]) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from .runner import _worker_init, run_id

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_worker_init, initargs=(opts.threads or 1,)) as pool:
        futures = {pool.submit(_guarded, s, opts): s for s in specs}
        for fut, spec in futures.items():
            try:
                res = fut.result()
            except Exception as exc:  # noqa: BLE001 -- a dead worker fails its run only
                res = _failed(spec, exc)
            results[run_id(spec)] = res


def _steps_to_target(res: dict[str, Any], tag: str, target: float) -> tuple[Any, Any]:
    """(steps, seconds) until the validation metric first reached ``target`` (None: never)."""
    history = res.get("history", {})
    values = history.get(tag, [])
    spe = res.get("loss_curve", {}).get("steps_per_epoch", 1)
    times = history.get("time/epoch_seconds", [])
    for epoch, value in enumerate(values, 1):
        if value >= target:
            return epoch * spe, sum(times[:epoch])
    return None, None


def _row(spec: dict[str, Any], res: dict[str, Any]) -> dict[str, Any]:
    exp = spec["experiment"]
    val_tag, test_tag, _ = METRICS[exp]
    final = res.get("final", {})
    steps, seconds = _steps_to_target(res, val_tag, TARGETS[exp]) if res["status"] == "ok" \
        else (None, None)
    return {
        "experiment": exp, "base": spec["sweep"]["base"], "optimizer": spec["optimizer"],
        "setting": setting_label(spec["sweep"]["setting"]), "lr": spec["sweep"]["setting"]["lr"],
        "seed": spec["seed"], "status": res["status"], "val": final.get(val_tag),
        "test": final.get(test_tag), "wall_time_s": res.get("wall_time_s"),
        "vectorized": res.get("vectorized", 1), "steps_to_target": steps,
        "seconds_to_target": seconds, "error": res.get("error", ""),
        "val_curve": res.get("history", {}).get(val_tag, []), "run_id": res["run_id"],
    }


# ------------------------------------------------------------------------------ tables

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


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v).replace(",", ";") if isinstance(v, str) and "," in v and "=" not in v \
        else str(v)


def _csv(rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> str:
    def cell(v: Any) -> str:
        text = _fmt(v)
        return f'"{text}"' if "," in text else text

    return "\n".join([",".join(cols)] + [",".join(cell(r.get(c)) for c in cols)
                                         for r in rows]) + "\n"


def _pm(m: Any, s: Any) -> str:
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "-"
    return f"{100 * m:.2f} ± {100 * s:.2f}"


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
                  f"{r['seed']} | {r['status']} | {_fmt(r['val'])} | {_fmt(r['test'])} | "
                  f"{_fmt(r['steps_to_target'])} | {r['error']} |")
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
                  f"{_fmt(100 * b['val_mean']) if 'val_mean' in b else '-'} | "
                  f"{_pm(b.get('test_mean'), b.get('test_std'))} | "
                  f"{_pm(b.get('paper_test_mean'), b.get('paper_test_std'))} |")
    md.append("")
    md.append("Metric: MNIST accuracy (val/accuracy selects), Karate ROC-AUC (val/auc selects). "
              "Settings with a failed seed are not eligible.")
    write("sweep_best.md", "\n".join(md) + "\n")
    save_json(out / "sweep.json", {"timing": timing, "rows": rows, "best": best})
    paths.append(out / "sweep.json")
    return paths


def default_log(message: str) -> None:
    print(message, file=sys.stderr)


# ------------------------------------------------------------------------------ report
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


def claims_two_protocols(best: Sequence[dict[str, Any]]) -> str:
    """The first survey's claims at the paper's lr 0.01 and at each optimizer's tuned setting,
    with the report's Welch-test verdicts."""
    from .report import ADAPTIVE, ALPHA, MNIST_LOSERS, MNIST_WINNERS, TEST_NAME, claim_verdict

    out = ["| claim | data | protocol | verdict | evidence (test, seed mean %) |",
           "|---|---|---|---|---|"]
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for b in best:
        by[(b["experiment"], b["base"])].append(b)
    for (exp, base), rows in sorted(by.items()):
        if exp == "mnist":
            claim, winners, losers = ("Adagrad/AMSGrad/Adam beat Momentum/NAG/RMSProp",
                                      MNIST_WINNERS, MNIST_LOSERS)
        else:
            claim, winners, losers = ("adaptive methods win (ROC-AUC)", ADAPTIVE,
                                      ("sgd", "momentum", "nag"))
        for label, prefix in (("paper (lr 0.01)", "paper_test"),
                              ("tuned on validation", "test")):
            res = claim_verdict(_claim_rows(rows, prefix), winners, losers, "final_test")
            if res is not None:
                out.append(f"| {claim} | {exp} {base} | {label} | **{res[0]}** | {res[1]} |")
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
        out.append(f"| {exp} | {base} | {opt} | {setting} | {TARGETS[exp]} | "
                   f"{len(hit)}/{len(runs)} | {_fmt(steps)} | {_fmt(secs)} |")
    out.append("\nSteps and seconds until the validation metric first reaches the target "
               "(checked once per epoch; seconds of a vectorised run are its share, 1/N, of "
               "the program's time).")
    return "\n".join(out) + "\n"


def sensitivity_figure(rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """Final validation metric against learning rate, one curve per optimizer, band over
    seeds (mean ± std), one figure per (experiment, base)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import _color

    paths = []
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["status"] == "ok" and r["val"] is not None and r["setting"].count("=") == 1:
            by[(r["experiment"], r["base"])].append(r)  # lr-only settings
    for (exp, base), runs in sorted(by.items()):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        opts = [o for o in OPTIMIZERS if any(r["optimizer"] == o for r in runs)]
        for opt in opts:
            per_lr: dict[float, list[float]] = defaultdict(list)
            for r in runs:
                if r["optimizer"] == opt and math.isfinite(r["val"]):
                    per_lr[r["lr"]].append(r["val"])
            lrs = sorted(per_lr)
            stats = [mean_std(per_lr[lr]) for lr in lrs]
            mean = [m for m, _ in stats]
            color = _color(opt)
            ax.plot(lrs, mean, marker="o", ms=3, label=opt, color=color)
            ax.fill_between(lrs, [m - s for m, s in stats], [m + s for m, s in stats],
                            color=color, alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"final {METRICS[exp][0]}")
        # long floats in a variant's name (val_split0.16666666666666666) cut the title off
        label = re.sub(r"\d+\.\d{4,}", lambda m: f"{float(m.group()):.3g}", base)
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


def write_sweep_report(sweep_json: Path, out: Path) -> list[Path]:
    """Figures and tables of a finished sweep (``LOGDIR/sweep/sweep.json``) into ``out``."""
    from .checkpoint import load_json

    data = load_json(sweep_json)
    rows, best = data["rows"], data["best"]
    out.mkdir(parents=True, exist_ok=True)
    paths = sensitivity_figure(rows, out)
    for name, text in (("sweep_claims.md", claims_two_protocols(best)),
                       ("sweep_targets.md", target_table(rows, best))):
        (out / name).write_text(text)
        paths.append(out / name)
    return paths
