"""The experiments' decisions on scripted results with known answers: which setting the sweep
tunes to, which verdict goes under which protocol's label, the second-order section's target
and costs, and what ``--resume`` does with the files it finds. Each input is built so that the
wrong decision gives a different answer."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from torchopt_survey.experiments import cli
from torchopt_survey.experiments.report.results import (
    claims_markdown,
    group_runs,
    load_results,
    summarize,
)
from torchopt_survey.experiments.report.second_order import claims as second_order_claims
from torchopt_survey.experiments.report.second_order import summarize_to_target
from torchopt_survey.experiments.report.stats import pair_test as _pair_test
from torchopt_survey.experiments.report.sweep import (
    claims_two_protocols,
    sensitivity_figure,
    target_table,
)
from torchopt_survey.experiments.runs import folder as runner_module
from torchopt_survey.experiments.runs import pool as pool_module
from torchopt_survey.experiments.runs.folder import (
    clear_run_dir as _clear_run_dir,
)
from torchopt_survey.experiments.runs.folder import (
    downsample as _downsample,
)
from torchopt_survey.experiments.runs.folder import (
    run_id,
)
from torchopt_survey.experiments.runs.folder import (
    set_aside as _set_aside,
)
from torchopt_survey.experiments.runs.single import execute_run
from torchopt_survey.experiments.runtime.files import (
    load_checkpoint,
    save_checkpoint,
    save_json,
)
from torchopt_survey.experiments.runtime.process import RunOptions
from torchopt_survey.experiments.sweep import execute as sweep_execute
from torchopt_survey.experiments.sweep.execute import (
    _steps_to_target,
    plan_units,
    run_unit,
)
from torchopt_survey.experiments.sweep.tables import best_table, settings_table
from torchopt_survey.experiments.tasks import karate

# --------------------------------------------------------------------------- sweep rows


def _sweep_row(optimizer: str, lr: float, seed: int, val: float | None, test: float | None,
               status: str = "ok", steps: int | None = None, base: str = "mnist-minibatch",
               experiment: str = "mnist") -> dict[str, Any]:
    """One run of a sweep as ``sweep.json`` holds it (only what the tables read)."""
    return {"experiment": experiment, "base": base, "optimizer": optimizer,
            "setting": f"lr={lr:g}", "lr": lr, "seed": seed, "status": status, "val": val,
            "test": test, "steps_to_target": steps, "seconds_to_target": None if steps is None
            else float(steps), "wall_time_s": 1.0, "vectorized": 1, "error": "",
            "val_curve": [], "run_id": f"{optimizer}/{lr}/{seed}"}


def _best(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {b["optimizer"]: b for b in best_table(settings_table(rows))}


def test_a_setting_with_a_failed_seed_is_not_chosen() -> None:
    rows = [
        # lr 0.1: the best validation mean over the seeds that finished, but one seed failed
        _sweep_row("sgd", 0.1, 0, 0.99, 0.98), _sweep_row("sgd", 0.1, 1, None, None, "failed"),
        _sweep_row("sgd", 0.01, 0, 0.90, 0.89), _sweep_row("sgd", 0.01, 1, 0.92, 0.91),
        _sweep_row("sgd", 0.001, 0, 0.80, 0.79), _sweep_row("sgd", 0.001, 1, 0.82, 0.81),
    ]
    best = _best(rows)["sgd"]
    assert best["best_setting"] == "lr=0.01"
    assert best["seeds"] == 2 and best["val_mean"] == pytest.approx(0.91)
    assert best["tests"] == [0.89, 0.91]
    # every setting with a failure: nothing to choose
    rows = [_sweep_row("sgd", 0.1, 0, 0.99, 0.98), _sweep_row("sgd", 0.1, 1, None, None, "failed")]
    assert _best(rows)["sgd"]["best_setting"] == "(all failed)"


def test_tuning_selects_on_validation_not_test() -> None:
    rows = [
        # (the NaN setting first: max() would keep it, as nothing compares greater than NaN)
        _sweep_row("adam", 0.01, 0, math.nan, 0.99), _sweep_row("adam", 0.01, 1, math.nan, 0.99),
        _sweep_row("adam", 0.1, 0, 0.95, 0.80), _sweep_row("adam", 0.1, 1, 0.97, 0.82),
        _sweep_row("adam", 0.001, 0, 0.90, 0.99), _sweep_row("adam", 0.001, 1, 0.92, 0.97),
    ]
    best = _best(rows)["adam"]
    assert best["best_setting"] == "lr=0.1"  # val 0.96, not test 0.98 nor the NaN-val setting
    assert best["test_mean"] == pytest.approx(0.81)
    # the paper's lr is reported beside it, whatever its validation metric
    assert best["paper_test_mean"] == pytest.approx(0.99)


def test_best_table_ranks_by_tuned_test_metric() -> None:
    rows = [_sweep_row(o, 0.1, s, 0.9, t) for o, t in (("sgd", 0.7), ("adam", 0.9),
                                                         ("nag", 0.8)) for s in (0, 1)]
    order = [b["optimizer"] for b in best_table(settings_table(rows))]
    assert order == ["adam", "nag", "sgd"]


def _protocol_rows() -> list[dict[str, Any]]:
    """At the paper's lr 0.01 the adaptive winners are clearly ahead; at each optimizer's tuned
    setting (lr 0.1, the best on validation for all) the losers are clearly ahead."""
    rows = []
    for opt in ("adagrad", "amsgrad", "adam", "momentum", "nag", "rmsprop"):
        winner = opt in ("adagrad", "amsgrad", "adam")
        for seed, jitter in enumerate((0.0, 0.002, -0.002)):
            rows.append(_sweep_row(opt, 0.01, seed, 0.5, (0.95 if winner else 0.90) + jitter))
            rows.append(_sweep_row(opt, 0.1, seed, 0.9, (0.90 if winner else 0.95) + jitter))
    return rows


def test_paper_and_tuned_verdicts_carry_their_own_labels() -> None:
    text = claims_two_protocols(best_table(settings_table(_protocol_rows())))
    lines = {label: line for line in text.splitlines() for label in
             ("paper (lr 0.01)", "tuned on validation") if f"| {label} |" in line}
    assert "| **confirmed** | 9/9 pairs hold" in lines["paper (lr 0.01)"]
    assert "| **not confirmed** | 0/9 pairs hold, 9 reversed" in lines["tuned on validation"]
    assert "adam 95.0" in lines["paper (lr 0.01)"] and "adam 90.0" in lines["tuned on validation"]


def test_two_protocol_claims_count_seeds_per_protocol() -> None:
    # the tuned setting has one seed only (the other failed elsewhere); the paper's has three
    rows = _protocol_rows()
    rows = [r for r in rows if not (r["lr"] == 0.1 and r["seed"] > 0)]
    text = claims_two_protocols(best_table(settings_table(rows)))
    (tuned,) = [ln for ln in text.splitlines() if "| tuned on validation |" in ln]
    (paper,) = [ln for ln in text.splitlines() if "| paper (lr 0.01) |" in ln]
    assert "**cannot decide (one seed)**" in tuned
    assert "**confirmed**" in paper


def test_steps_to_target_is_the_first_epoch_reaching_it() -> None:
    res = {"history": {"val/accuracy": [0.5, 0.91, 0.85, 0.95],
                       "time/epoch_seconds": [1.0, 2.0, 4.0, 8.0]},
           "loss_curve": {"steps_per_epoch": 10}}
    assert _steps_to_target(res, "val/accuracy", 0.9) == (20, 3.0)
    assert _steps_to_target(res, "val/accuracy", 0.95) == (40, 15.0)  # >= counts
    assert _steps_to_target(res, "val/accuracy", 0.96) == (None, None)


def test_target_table_reports_the_tuned_setting_only() -> None:
    rows = [
        _sweep_row("sgd", 0.1, 0, 0.95, 0.9, steps=100), _sweep_row("sgd", 0.1, 1, 0.95, 0.9),
        _sweep_row("sgd", 0.01, 0, 0.80, 0.8, steps=7), _sweep_row("sgd", 0.01, 1, 0.80, 0.8,
                                                                   steps=9),
    ]
    text = target_table(rows, best_table(settings_table(rows)))
    (line,) = [ln for ln in text.splitlines() if ln.startswith("| mnist |")]
    cells = [c.strip() for c in line.split("|")]
    assert cells[4] == "lr=0.1" and cells[6] == "1/2" and cells[7] == "100.0"  # steps: 1 decimal


def test_sensitivity_figure_plots_learning_rate_only_settings(tmp_path: Path) -> None:
    # a base swept over lr alone gets a figure; one swept over lr x momentum does not (one
    # curve per optimizer against lr would mix the momentum values)
    rows = [_sweep_row("sgd", lr, s, 0.9, 0.9, base="a") for lr in (0.1, 0.01) for s in (0, 1)]
    grid = [{**_sweep_row("nag", lr, 0, 0.9, 0.9, base="b"), "setting": f"lr={lr:g},momentum=0.9"}
            for lr in (0.1, 0.01)]
    paths = sensitivity_figure(rows + grid, tmp_path)
    assert [p.name for p in paths] == ["sensitivity_mnist_a.png"]


def test_which_runs_are_vectorised_and_why_not() -> None:
    def spec(optimizer: str, lr: float, seed: int, **extra: Any) -> dict[str, Any]:
        return {"experiment": "mnist", "variant": f"v-lr{lr}", "optimizer": optimizer,
                "optimizer_kwargs": {"lr": lr}, "seed": seed, "batch_size": 8,
                "epochs": 1, **extra}

    adam = [spec("adam", lr, seed) for lr in (0.1, 0.01) for seed in (0, 1)]
    lone_batch = spec("adam", 0.1, 0, batch_size=16)  # its own group of one: run alone
    newton = spec("newton", 1.0, 0)
    karate = {**spec("adam", 0.1, 0), "experiment": "karate"}
    messages: list[str] = []
    groups, alone = plan_units([*adam, lone_batch, newton, karate], True, messages.append)
    assert groups == [adam]
    assert alone == [newton, karate, lone_batch]
    assert any("newton runs are not vectorised" in m for m in messages)
    assert any("karate runs are not vectorised" in m for m in messages)
    messages.clear()
    groups, alone = plan_units(adam, False, messages.append)
    assert groups == [] and alone == adam and "--no-vectorize" in messages[0]


def _unit_spec(seed: int) -> dict[str, Any]:
    return {"experiment": "mnist", "variant": "mnist-minibatch-sweep~lr=0.1",
            "optimizer": "adam", "seed": seed,
            "sweep": {"base": "mnist-minibatch", "setting": {"lr": 0.1}}}


def _fake_result(spec: dict[str, Any], vectorized: int = 1) -> dict[str, Any]:
    return {"run_id": runner_module.run_id(spec), "final": {"val/accuracy": 0.5 + spec["seed"],
                                                             "test/accuracy": 0.4},
            "history": {}, "loss_curve": {"steps_per_epoch": 1}, "vectorized": vectorized}


def test_a_failed_vectorised_program_falls_back_to_separate_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unit = [_unit_spec(seed) for seed in range(3)]
    alone: list[int] = []

    def vectorised(group: Sequence[dict[str, Any]], opts: Any) -> Any:
        yield _fake_result(group[0], vectorized=3)  # the first replica finished, then a crash
        raise RuntimeError("out of memory for the test")

    def separately(spec: dict[str, Any], opts: Any) -> dict[str, Any]:
        alone.append(spec["seed"])
        if spec["seed"] == 2:
            raise ValueError("diverged for the test")
        return _fake_result(spec)

    monkeypatch.setattr(sweep_execute, "execute_vectorized", vectorised)
    monkeypatch.setattr(pool_module, "execute_run", separately)
    messages: list[str] = []
    rows = run_unit(unit, None, messages.append)
    assert alone == [1, 2]  # only the runs the program did not finish
    assert [(r["seed"], r["status"], r["vectorized"]) for r in rows] == [
        (0, "ok", 3), (1, "ok", 1), (2, "failed", 1)]
    assert rows[1]["val"] == 1.5 and "diverged for the test" in rows[2]["error"]
    assert any("vectorised program failed" in m and "out of memory" in m for m in messages)


# --------------------------------------------------------------------------- report claims


def _result(optimizer: str, variant: str, seed: int, acc: float) -> dict[str, Any]:
    return {"spec": {"experiment": "mnist", "variant": variant, "optimizer": optimizer,
                     "seed": seed, "epochs": 2},
            "history": {"test/accuracy": [0.99, acc], "train/loss_epoch": [1.0, 0.5]},
            "wall_time_s": 1.0}


def test_summary_final_and_best_are_not_swapped_and_claims_use_final() -> None:
    # test accuracy peaks at epoch 1 (0.99 for everyone) and ends where the claim is decided
    runs = [_result(o, "mnist-minibatch", s, a + 0.002 * s)
            for o, a in (("adagrad", 0.80), ("adam", 0.80), ("amsgrad", 0.80),
                         ("momentum", 0.95), ("nag", 0.95), ("rmsprop", 0.95))
            for s in range(3)]
    rows = summarize(group_runs(runs))
    adam = next(r for r in rows if r["optimizer"] == "adam")
    assert adam["final_test_accuracy_mean"] == pytest.approx(0.802)
    assert adam["best_test_accuracy_mean"] == pytest.approx(0.99)
    text = claims_markdown(rows)
    assert "**not confirmed**" in text and "0/9 pairs hold, 9 reversed" in text


def test_mnist_claim_is_judged_on_the_minibatch_regime_only() -> None:
    runs = [_result(o, v, s, a) for v in ("mnist-gd", "mnist-minibatch")
            for o, a in (("adagrad", 0.95), ("adam", 0.95), ("momentum", 0.9), ("nag", 0.9))
            for s, a in enumerate((a, a + 0.002, a - 0.002))]
    text = claims_markdown(summarize(group_runs(runs)))
    assert "mnist mnist-minibatch" in text and "mnist mnist-gd" not in text


def test_pair_test_with_equal_means_is_no_difference() -> None:
    a = {"seeds": 3, "k_mean": 0.9, "k_std": 0.0}
    assert _pair_test(a, dict(a), "k") == (0, 1.0)
    assert _pair_test({**a, "k_std": 0.01}, {**a, "k_mean": 0.8, "k_std": 0.01}, "k")[0] == 1


def test_load_results_refuses_what_it_cannot_report(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_results(tmp_path / "missing")
    with pytest.raises(ValueError, match="no finished runs"):
        load_results(tmp_path)
    bad = tmp_path / "mnist" / "v" / "adam" / "seed0" / "result.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="unreadable result file"):
        load_results(tmp_path)


# --------------------------------------------------------------------------- second-order report


def _so_run(optimizer: str, losses: Sequence[float], experiment: str = "karate",
            evals: Sequence[float] | None = None, hvps: Sequence[float] | None = None,
            seconds: Sequence[float] | None = None) -> dict[str, Any]:
    """A finished run as the second-order section reads it: per-epoch training loss (Karate:
    after the epoch; MNIST: at the start of each epoch) and cumulative counters."""
    n = len(losses)
    history: dict[str, list[float]] = {
        "time/train_seconds": list(seconds) if seconds is not None else [1.0] * n,
        "train/loss" if experiment == "karate" else "train/loss_epoch": list(losses),
    }
    if evals is not None:
        history["opt/func_evals"] = list(evals)
        history["opt/hvp_evals"] = list(hvps) if hvps is not None else [0.0] * n
    return {"spec": {"experiment": experiment, "optimizer": optimizer, "epochs": n},
            "history": history}


def test_target_is_what_every_seed_of_the_best_first_order_method_reaches() -> None:
    by_opt = {
        # sgd's seeds end at 0.1 (the luckiest seed of all) and 0.5; adam's at 0.2 and 0.3:
        # the best first-order method by its worst seed is adam, target 0.3
        "sgd": [_so_run("sgd", [0.9, 0.5, 0.1]), _so_run("sgd", [0.9, 0.7, 0.5])],
        "adam": [_so_run("adam", [0.9, 0.4, 0.2]), _so_run("adam", [0.9, 0.5, 0.3])],
        "newton": [_so_run("newton", [0.6, 0.35, 0.3, 0.25, 0.15],
                           evals=[2, 4, 7, 9, 12], hvps=[5, 10, 15, 20, 25],
                           seconds=[0.5, 0.5, 0.5, 0.5, 0.5])],
    }
    target, rows = summarize_to_target(by_opt)
    assert target == pytest.approx(0.3)
    row = {r["optimizer"]: r for r in rows}
    newton = row["newton"]
    assert newton["reached"] == 1
    assert newton["iterations"][0] == 3.0 and newton["closure_evals"][0] == 7.0
    assert newton["hvps"][0] == 15.0 and newton["seconds"][0] == pytest.approx(1.5)
    assert row["sgd"]["reached"] == 1 and row["adam"]["reached"] == 2
    # a seed that never reaches the target counts as infinite in the median
    assert row["sgd"]["iterations_median"] == math.inf
    assert row["adam"]["iterations_median"] == 3.0


def test_mnist_cost_counts_the_evaluations_before_the_epoch_that_reached_the_target() -> None:
    # MNIST logs the loss at the start of each epoch: loss k belongs to "after k iterations",
    # whose closure evaluations are the counter logged at the end of epoch k
    by_opt = {
        "sgd": [_so_run("sgd", [1.0, 0.6, 0.5], experiment="mnist")],
        "cg": [_so_run("cg", [1.0, 0.5, 0.2], experiment="mnist", evals=[3, 8, 11],
                       seconds=[2.0, 3.0, 4.0])],
    }
    target, rows = summarize_to_target(by_opt)
    assert target == 0.5
    cg = next(r for r in rows if r["optimizer"] == "cg")
    assert (cg["iterations"][0], cg["closure_evals"][0], cg["seconds"][0]) == (1.0, 3.0, 2.0)
    sgd = next(r for r in rows if r["optimizer"] == "sgd")
    assert (sgd["iterations"][0], sgd["closure_evals"][0]) == (2.0, 2.0)


def test_without_first_order_runs_the_target_is_the_best_worst_seed_of_all() -> None:
    by_opt = {"newton": [_so_run("newton", [0.5, 0.2], evals=[2, 4]),
                         _so_run("newton", [0.5, 0.4], evals=[2, 4])],
              "cg": [_so_run("cg", [0.6, 0.3], evals=[3, 6]) for _ in range(2)]}
    target, _ = summarize_to_target(by_opt)
    assert target == pytest.approx(0.3)


def _claims(by_opt: dict[str, list[dict[str, Any]]], experiment: str = "karate",
            sweep: list[dict[str, Any]] | None = None) -> dict[str, str]:
    summary = summarize_to_target(by_opt)
    lines = second_order_claims({(experiment, "v"): summary}, sweep or [])
    out = {}
    for line in lines[2:]:
        if line.startswith("|"):  # the table's rows (a note on the tests follows it)
            out[line.split("|")[1].strip()] = line
    return out


NEWTON_CLAIM = "Newton converges in fewer iterations than first-order methods"
CG_FAST = "CG converges faster than first-order methods"
CG_VS_NEWTON = "CG is computationally more efficient than Newton"
SEEDS = 5  # per side: enough for the rank test to decide (4 vs 4 would be too)


def test_newton_iterations_verdict() -> None:
    first = [_so_run("sgd", [0.9, 0.7, 0.5, 0.4]) for _ in range(SEEDS)]
    fast = [_so_run("newton", [0.5, 0.3], evals=[2, 4], hvps=[9, 18]) for _ in range(SEEDS)]
    slow = [_so_run("newton", [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], evals=[2] * 6)
            for _ in range(SEEDS)]
    assert "**confirmed**" in _claims({"sgd": first, "newton": fast})[NEWTON_CLAIM]
    assert "**refuted**" in _claims({"sgd": first, "newton": slow})[NEWTON_CLAIM]
    # a budget (1 iteration) smaller than the first-order cost (4): not decidable at the
    # target; decided at equal iterations instead (after 1: newton 0.95 vs sgd 0.9), by Welch
    short = [_so_run("newton", [0.95 + 0.01 * i], evals=[2]) for i in range(SEEDS)]
    noisy = [_so_run("sgd", [0.9 - 0.01 * i, 0.7, 0.5, 0.4]) for i in range(SEEDS)]
    verdict = _claims({"sgd": noisy, "newton": short})[NEWTON_CLAIM]
    assert "**refuted** (at equal iterations; target out of budget)" in verdict
    assert "Welch on the loss after 1 iterations: p = " in verdict
    # two seeds: no verdict
    two = _claims({"sgd": first, "newton": fast[:2]})[NEWTON_CLAIM]
    assert "cannot decide (fewer than 3 seeds on a side)" in two


def test_newton_verdict_counts_seeds_that_never_reach_the_target() -> None:
    # one lucky seed reaches the target in 1 iteration, the others never do
    first = [_so_run("sgd", [0.9, 0.7, 0.5]) for _ in range(SEEDS)]
    newton = [_so_run("newton", [0.4, 0.4, 0.4, 0.4], evals=[2] * 4)] + [
        _so_run("newton", [0.9, 0.9, 0.9, 0.9], evals=[2] * 4) for _ in range(SEEDS - 1)]
    # one fast seed against four that rank worst: no significant difference either way
    assert "| within noise |" in _claims({"sgd": first, "newton": newton})[NEWTON_CLAIM]
    never = [_so_run("newton", [0.9, 0.9, 0.9, 0.9], evals=[2] * 4) for _ in range(SEEDS)]
    assert "| **refuted** |" in _claims({"sgd": first, "newton": never})[NEWTON_CLAIM]


def test_cg_claims() -> None:
    first = [_so_run("sgd", [0.9, 0.7, 0.5], seconds=[1.0, 1.0, 1.0]) for _ in range(SEEDS)]
    cg = [_so_run("cg", [0.6, 0.5], evals=[3, 6], seconds=[5.0, 5.0]) for _ in range(SEEDS)]
    newton = [_so_run("newton", [0.5], evals=[2], hvps=[100], seconds=[1.0])
              for _ in range(SEEDS)]
    verdicts = _claims({"sgd": first, "cg": cg, "newton": newton})
    # fewer iterations (2 < 3) but more seconds (10 > 3): the claim is about speed
    assert "**refuted** (wall time; in iterations: fewer)" in verdicts[CG_FAST]
    assert "**refuted**" in verdicts[CG_VS_NEWTON]  # newton 1 s vs cg 10 s
    # without Newton runs there is nothing to test, on MNIST (Newton cannot run) or Karate
    mnist_verdict = _claims({"sgd": first, "cg": cg}, "mnist")[CG_VS_NEWTON]
    assert "| cannot decide (no Newton runs) |" in mnist_verdict
    assert "632 GB Hessian (float32); CG reached the target in" in mnist_verdict  # the task's
    assert "| cannot decide (no Newton runs) |" in _claims({"sgd": first, "cg": cg})[CG_VS_NEWTON]
    # neither CG nor Newton reaches the target: no winner
    cg_never = [_so_run("cg", [0.8, 0.7], evals=[3, 6]) for _ in range(SEEDS)]
    newton_never = [_so_run("newton", [0.8], evals=[2], hvps=[100]) for _ in range(SEEDS)]
    verdict = _claims({"sgd": first, "cg": cg_never, "newton": newton_never})[CG_VS_NEWTON]
    assert "| cannot decide (no seed reached the target within the common budget) |" in verdict


def test_ill_conditioning_claim_threshold() -> None:
    first = [_so_run("sgd", [0.9, 0.5])]
    cg = [_so_run("cg", [0.4], evals=[2])]
    claim = "CG may perform poorly on ill-conditioned problems"

    def sweep(lo: float, hi: float) -> list[dict[str, Any]]:
        spread = [-1.0, 0.0, 1.0]
        return [{"cond": 10.0, "cg": (lo, 1.0), "cg_counts": [lo + d for d in spread],
                 "newton": (1.0, 0.0), "cg_stalled": 0, "seeds": 3},
                {"cond": 1e4, "cg": (hi, 1.0), "cg_counts": [hi + d for d in spread],
                 "newton": (1.0, 0.0), "cg_stalled": 0, "seeds": 3}]

    assert "**confirmed**" in _claims({"sgd": first, "cg": cg}, sweep=sweep(10, 30))[claim]
    assert "**refuted**" in _claims({"sgd": first, "cg": cg}, sweep=sweep(10, 29))[claim]
    # the same means without a significant difference: within noise
    wide = sweep(10, 30)
    wide[1]["cg_counts"] = [1.0, 30.0, 59.0]
    assert "| within noise |" in _claims({"sgd": first, "cg": cg}, sweep=wide)[claim]


# --------------------------------------------------------------------------- checkpoint / resume


def test_downsample_takes_window_means_and_keeps_the_tail() -> None:
    xs, ys = _downsample(torch.arange(1.0, 11.0), points=4)  # windows of 3: 1-3, 4-6, 7-9, 10
    assert xs == [3, 6, 9, 10] and ys == [2.0, 5.0, 8.0, 10.0]
    xs, ys = _downsample(torch.arange(1.0, 5.0), points=10)
    assert xs == [1, 2, 3, 4] and ys == [1.0, 2.0, 3.0, 4.0]


def test_set_aside_never_overwrites_an_earlier_copy(tmp_path: Path) -> None:
    names = []
    for content in (b"first", b"second", b"third"):
        path = tmp_path / "checkpoint.pt"
        path.write_bytes(content)
        names.append(_set_aside(path, "corrupt"))
        assert not path.exists()
    assert len(set(names)) == 3
    assert sorted((tmp_path / n).read_bytes() for n in names) == [b"first", b"second", b"third"]


def test_a_fresh_start_clears_only_the_runs_own_files(tmp_path: Path) -> None:
    for name in ("events.out.tfevents.1.host", "checkpoint.pt", "result.json",
                 "checkpoint.pt.abc.tmp", "notes.txt", "checkpoint.pt.corrupt-20260101T000000Z"):
        (tmp_path / name).write_text("x")
    _clear_run_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint.pt.corrupt-20260101T000000Z", "notes.txt"]


def test_an_interrupted_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"epoch": 1})
    with pytest.raises(Exception, match="pickle|lambda"):  # fails half-way through writing
        save_checkpoint(path, {"epoch": 2, "hook": lambda: None})
    assert load_checkpoint(path) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temp file left
    save_json(tmp_path / "sweep.json", {"rows": [1]})
    with pytest.raises(TypeError):
        save_json(tmp_path / "sweep.json", {"rows": [RunOptions()]})
    assert json.loads((tmp_path / "sweep.json").read_text()) == {"rows": [1]}


def test_checkpoints_load_tensors_and_plain_containers_only(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ok.pt", {"epoch": 1, "x": torch.ones(2), "h": {"a": [1.0]}})
    assert load_checkpoint(tmp_path / "ok.pt")["h"] == {"a": [1.0]}
    save_checkpoint(tmp_path / "obj.pt", {"epoch": 1, "opts": RunOptions()})
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        load_checkpoint(tmp_path / "obj.pt")


@pytest.fixture(scope="module")
def karate_spec() -> dict[str, Any]:
    (cfg,) = cli.build_configs(cli.build_parser().parse_args(
        ["karate", "--optimizers", "adam", "--seeds", "0"]))
    return {**karate.expand(cfg)[0], "epochs": 2}


def test_resume_skips_only_a_result_of_the_same_spec(tmp_path: Path,
                                                     karate_spec: dict[str, Any]) -> None:
    opts = RunOptions(logdir=str(tmp_path), resume=True, deterministic=False, quiet=True)
    first = execute_run(karate_spec, opts)
    assert first["skipped"] is False
    again = execute_run(karate_spec, opts)
    assert again["skipped"] is True
    assert again["history"] == first["history"]
    # a result written by another spec in the same folder is not this run's: not skipped
    # (the run's own final checkpoint then says there is nothing left to train)
    result = tmp_path / run_id(karate_spec) / "result.json"
    data = json.loads(result.read_text())
    data["spec"]["epochs"] = 5
    result.write_text(json.dumps(data))
    redone = execute_run(karate_spec, opts)
    assert redone["skipped"] is False
    assert (redone["resumed_from_epoch"], redone["epochs_trained"]) == (2, 0)
    assert json.loads(result.read_text())["spec"]["epochs"] == 2
    # an unreadable result file is not a finished run either
    result.write_text("{torn")
    torn = execute_run(karate_spec, opts)
    assert torn["skipped"] is False and json.loads(result.read_text())["spec"]["epochs"] == 2
    # without --resume a finished run is trained again from scratch, in a cleared folder
    run_dir = result.parent
    assert len(list(run_dir.glob("events.out.tfevents.*"))) >= 2  # (from earlier attempts)
    fresh = execute_run(karate_spec, RunOptions(logdir=str(tmp_path), deterministic=False,
                                                quiet=True))
    assert fresh["skipped"] is False and fresh["resumed_from_epoch"] is None
    assert fresh["epochs_trained"] == 2
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # the old events are gone


def test_checkpoint_of_another_spec_is_set_aside_not_resumed(
    tmp_path: Path, karate_spec: dict[str, Any]
) -> None:
    opts = RunOptions(logdir=str(tmp_path), resume=True, deterministic=False, quiet=True)
    short = {**karate_spec, "epochs": 1}
    execute_run(short, opts)
    run_dir = tmp_path / run_id(karate_spec)
    (run_dir / "result.json").unlink()
    # the folder's checkpoint was written by a 1-epoch spec: set aside, training from scratch
    resumed = execute_run(karate_spec, opts)
    assert resumed["resumed_from_epoch"] is None and resumed["epochs_trained"] == 2
    (aside,) = run_dir.glob("checkpoint.pt.other-spec-*")
    assert resumed["discarded_checkpoints"][0]["file"] == aside.name
    assert "different spec" in resumed["discarded_checkpoints"][0]["reason"]
    # a checkpoint of this spec (cut back to epoch 1) is resumed from
    ck = load_checkpoint(run_dir / "checkpoint.pt")
    assert ck["epoch"] == 2
    ck["epoch"] = 1
    ck["history"] = {k: v[:1] for k, v in ck["history"].items()}
    save_checkpoint(run_dir / "checkpoint.pt", ck)
    (run_dir / "result.json").unlink()
    again = execute_run(karate_spec, opts)
    assert (again["resumed_from_epoch"], again["epochs_trained"]) == (1, 1)
    assert again["discarded_checkpoints"] == resumed["discarded_checkpoints"]
