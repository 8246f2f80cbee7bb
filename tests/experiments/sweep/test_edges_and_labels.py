"""Sweep tables: optima at the edge of their grid are marked (and the sweep says which grid to
widen), numbers have one precision per column, ids are readable; the committed sweeps' tables
regenerate from their per-run CSV byte for byte, and their figures are the ones the code writes
from it, under the code's file names."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from helpers.processes import ROOT

from torchopt_survey.experiments.report.sweep import sensitivity_figure
from torchopt_survey.experiments.sweep.grid import parse_lr_grid, setting_label
from torchopt_survey.experiments.sweep.tables import (
    best_table,
    grid_differences,
    grid_edges,
    read_runs_csv,
    rewrite_from_csv,
    settings_table,
    widen_advice,
    write_tables,
)

BASE_OLD = "mnist-minibatch-val_split0.16666666666666666"


def _row(opt: str, setting: str, seed: int, val: float) -> dict[str, Any]:
    lr = float(setting.split(",")[0].partition("=")[2])
    return {"experiment": "mnist", "base": BASE_OLD, "optimizer": opt, "setting": setting,
            "lr": lr, "seed": seed, "status": "ok", "val": val, "test": val - 0.01,
            "steps_to_target": None, "seconds_to_target": None, "wall_time_s": 1.0,
            "vectorized": 1, "error": ""}


def _rows() -> list[dict[str, Any]]:
    # adam: best at the lowest lr; sgd: best inside the lr grid but at the highest momentum;
    # nag: best in the middle of both grids
    vals = {"adam": {0.001: 0.92343337, 0.01: 0.91, 0.1: 0.5},
            "sgd": {0.001: 0.8, 0.01: 0.9, 0.1: 0.85},
            "nag": {0.001: 0.8, 0.01: 0.9, 0.1: 0.85}}
    rows = []
    for opt, by_lr in vals.items():
        for lr, v in by_lr.items():
            for m in (0.5, 0.9, 0.99):
                bonus = {"sgd": 0.01 * (m == 0.99), "nag": 0.01 * (m == 0.9)}.get(opt, 0.0)
                for seed in (0, 1):
                    rows.append(_row(opt, f"lr={lr:g},momentum={m:g}", seed,
                                     v + bonus + 0.001 * seed))
    return rows


def test_edges_of_every_swept_hyperparameter() -> None:
    best = {b["optimizer"]: b for b in best_table(settings_table(_rows()))}
    assert best["adam"]["best_setting"] == "lr=0.001,momentum=0.5"
    assert best["adam"]["edges"] == [("lr", "lowest", 0.001), ("momentum", "lowest", 0.5)]
    assert best["sgd"]["edges"] == [("momentum", "highest", 0.99)]
    assert best["nag"]["edges"] == []
    assert grid_edges("lr=0.01", ["lr=0.01"]) == []  # a one-point grid has no edge
    advice = widen_advice(list(best.values()))
    assert advice == [
        "mnist mnist-minibatch-val_split0.166667: adam tuned at the lowest lr of the grid "
        "(0.001); widen --lr-grid below 0.001",
        "mnist mnist-minibatch-val_split0.166667: adam tuned at the lowest momentum of the "
        "grid (0.5); widen --grid momentum below 0.5",
        "mnist mnist-minibatch-val_split0.166667: sgd tuned at the highest momentum of the "
        "grid (0.99); widen --grid momentum above 0.99",
    ]


def test_lr_grid_widens_without_moving_its_points() -> None:
    """A comma list is the union of its parts: the committed grid widened below keeps its 7
    points (so their labels and run ids) exactly; a wider LO:HI:N would not."""
    old = parse_lr_grid("1e-4:1:7")
    assert old == [0.0001, 0.000464159, 0.00215443, 0.01, 0.0464159, 0.215443, 1.0]
    wide = parse_lr_grid("4.64159e-6,2.15443e-5,1e-4:1:7")
    assert wide == [4.64159e-06, 2.15443e-05, *old]
    assert [setting_label({"lr": lr}) for lr in wide[2:]] == [
        setting_label({"lr": lr}) for lr in old]
    steps = [math.log10(b / a) for a, b in zip(wide, wide[1:])]
    assert max(abs(s - 2 / 3) for s in steps) < 1e-5  # one spacing throughout
    assert parse_lr_grid("4.64159e-6:2.15443e-5:2,1e-4:1:7") == wide  # parts of any kind
    assert parse_lr_grid("1e-4:1:7,0.01,1e-4") == old  # each value once, sorted
    assert parse_lr_grid("2.15443e-5:1:8")[1] != 1e-4  # why the union: LO is rounded
    assert parse_lr_grid("0.00123456789:1:1") == [0.00123457]  # 6 digits, as labelled


def test_edges_use_each_optimizers_own_grid(tmp_path: Path) -> None:
    """Adam's grid was widened below 1e-4, SGD's was not: both are tuned at 1e-4, which is
    inside Adam's grid and the lowest of SGD's (flagged against the union of the grids, SGD
    would pass unflagged; against their common points, Adam would be flagged)."""
    vals = {"adam": {1e-5: 0.90, 1e-4: 0.92, 1e-3: 0.91},
            "sgd": {1e-4: 0.85, 1e-3: 0.80, 1e-2: 0.70}}
    rows = [_row(opt, f"lr={lr:g}", seed, v + 0.001 * seed)
            for opt, by_lr in vals.items() for lr, v in by_lr.items() for seed in (0, 1)]
    settings = settings_table(rows)
    best = {b["optimizer"]: b for b in best_table(settings)}
    assert best["adam"]["best_setting"] == best["sgd"]["best_setting"] == "lr=0.0001"
    assert best["adam"]["edges"] == []
    assert best["sgd"]["edges"] == [("lr", "lowest", 0.0001)]
    assert widen_advice(list(best.values())) == [
        "mnist mnist-minibatch-val_split0.166667: sgd tuned at the lowest lr of the grid "
        "(0.0001); widen --lr-grid below 0.0001"]
    assert grid_differences(settings) == [
        "mnist mnist-minibatch-val_split0.166667: adam: lr 1e-05, 0.0001, 0.001",
        "mnist mnist-minibatch-val_split0.166667: sgd: lr 0.0001, 0.001, 0.01"]
    assert grid_differences(settings_table(_rows())) == []  # one grid for everyone
    write_tables(rows, {}, tmp_path)
    md = (tmp_path / "sweep_best.md").read_text()
    lines = {line.split(" | ")[3]: line for line in md.splitlines() if line.startswith("| ")}
    assert "(edge: lowest lr in the grid)" in lines["sgd"] and "edge" not in lines["adam"]
    assert "Grids differ per optimizer" in md and "- mnist mnist-minibatch-val_split0.166667: " \
        "adam: lr 1e-05, 0.0001, 0.001" in md


def test_tables_mark_edges_with_one_precision_and_readable_ids(tmp_path: Path) -> None:
    write_tables(_rows(), {}, tmp_path)
    md = (tmp_path / "sweep_best.md").read_text()
    lines = {line.split(" | ")[3]: line for line in md.splitlines() if line.startswith("| ")}
    assert "(edge: lowest lr in the grid; lowest momentum in the grid)" in lines["adam"]
    assert "(edge: highest momentum in the grid)" in lines["sgd"]
    assert "edge" not in lines["nag"]
    assert "| 92.39 |" in lines["adam"] and "| 91.05 |" in lines["sgd"]  # 2 decimals each
    assert "0.16666666" not in md and "val_split0.166667" in md
    assert "Grids to widen:" in md and "widen --grid momentum above 0.99" in md
    assert "Grids differ" not in md
    best_csv = (tmp_path / "sweep_best.csv").read_text()
    assert best_csv.splitlines()[0].endswith(",grid_edge") and "highest momentum" in best_csv
    runs_md = (tmp_path / "sweep_runs.md").read_text()
    assert "| 0.9234 | 0.9134 |" in runs_md  # every per-run metric with 4 decimals
    # the per-run CSV keeps every digit: tables made from it equal the ones made live
    again = tmp_path / "again"
    again.mkdir()
    (again / "sweep_runs.csv").write_text((tmp_path / "sweep_runs.csv").read_text())
    rewrite_from_csv(again)
    for name in ("sweep_settings.csv", "sweep_best.csv", "sweep_best.md"):
        assert (again / name).read_text() == (tmp_path / name).read_text(), name
    assert read_runs_csv(again / "sweep_runs.csv")[0]["val"] == _rows()[0]["val"]


SWEEPS = ROOT / "experiments" / "results" / "sweep"


@pytest.mark.parametrize("study", ["mnist", "karate"])
def test_committed_sweep_tables_regenerate(study: str, tmp_path: Path) -> None:
    folder = SWEEPS / study
    paths = rewrite_from_csv(folder, tmp_path)
    assert {p.name for p in paths} == {"sweep_runs.csv", "sweep_settings.csv", "sweep_best.csv",
                                       "sweep_best.md", "sweep_claims.md", "sweep_targets.md"}
    for p in paths:
        assert p.read_text() == (folder / p.name).read_text(), p.name


@pytest.mark.parametrize("study", ["mnist", "karate"])
def test_committed_sweep_figures_have_the_names_the_code_writes(study: str,
                                                                tmp_path: Path) -> None:
    folder = SWEEPS / study
    paths = sensitivity_figure(read_runs_csv(folder / "sweep_runs.csv"), tmp_path)
    assert sorted(p.name for p in paths) == sorted(p.name for p in folder.glob("*.png"))
