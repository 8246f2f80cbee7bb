"""Committed studies regenerate from their committed raw per-run data (``runs.json``): every
table byte for byte, every figure with the same plotted data, no file that the report does
not write (a study folder's subfolders are other studies, checked on their own), whatever
the order of the runs; a report started from a log folder and one started from its
``runs.json`` agree; runs of earlier versions (gradient norms under ``grad_norm/``) are still
read and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.processes import ROOT

from torchopt_survey.experiments.report import write_report
from torchopt_survey.experiments.report.plotting import read_data_digest
from torchopt_survey.experiments.report.rawdata import RUNS_FILE
from torchopt_survey.experiments.report.results import load_results
from torchopt_survey.experiments.runs.folder import CHECKPOINT, RESULT
from torchopt_survey.experiments.runs.single import execute_run
from torchopt_survey.experiments.runs.writer import scalar_layout
from torchopt_survey.experiments.runtime.files import load_checkpoint, save_checkpoint
from torchopt_survey.experiments.runtime.process import RunOptions
from torchopt_survey.experiments.tasks import karate
from torchopt_survey.experiments.tasks.config import default_config, merge, validate

RESULTS = ROOT / "experiments" / "results"
#: the studies whose raw per-run data is committed
STUDIES = [RESULTS, RESULTS / "second_order", RESULTS / "techniques"]
#: committed files the report does not write
HANDWRITTEN = {"README.md"}


def files(folder: Path) -> set[str]:
    """The names of a folder's files (its subfolders are other studies)."""
    return {p.name for p in folder.iterdir() if p.is_file()}


def assert_same_report(committed: Path, written: Path) -> None:
    """The same files; tables byte for byte, figures with the same plotted data."""
    names = files(committed) - HANDWRITTEN
    assert names == files(written)  # nothing stale, nothing missing
    for name in sorted(names):
        if name.endswith(".png"):
            digest = read_data_digest(committed / name)
            assert digest is not None, f"{name}: no plotted-data digest (not written by report)"
            assert digest == read_data_digest(written / name), f"{name}: other plotted data"
        else:
            assert (written / name).read_bytes() == (committed / name).read_bytes(), name


@pytest.mark.parametrize("folder", STUDIES, ids=lambda p: p.name)
def test_study_regenerates_from_its_raw_data(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_report(None, out, runs=folder / RUNS_FILE)
    assert_same_report(folder, out)


@pytest.mark.parametrize("folder", STUDIES, ids=lambda p: p.name)
def test_study_regenerates_from_its_runs_in_any_order(folder: Path, tmp_path: Path) -> None:
    """A log folder is read in path order, ``runs.json`` in run-id order: the report must not
    depend on which."""
    data = json.loads((folder / RUNS_FILE).read_text())
    data["runs"].reverse()
    reversed_runs = tmp_path / RUNS_FILE
    reversed_runs.write_text(json.dumps(data))
    out = tmp_path / "report"
    write_report(None, out, runs=reversed_runs)
    assert_same_report(folder, out)


def _karate(logdir: Path, **cfg: object) -> list[dict]:
    spec = validate(merge(default_config("karate"), {
        "optimizers": ["sgd", "adam", "cg"], "models": ["gcn"], "seeds": [0, 1, 2],
        "epochs": 3, **cfg}))
    opts = RunOptions(logdir=str(logdir), quiet=True, threads=1, resume=True)
    return [execute_run(s, opts) for s in karate.expand(spec)]


def test_report_from_runs_json_equals_report_from_logdir(tmp_path: Path) -> None:
    """What ``runs.json`` keeps of each run is all the report reads (second-order section,
    tables, figures)."""
    _karate(tmp_path / "runs")
    write_report(tmp_path / "runs", tmp_path / "a")
    assert (tmp_path / "a" / "second_order.md").is_file()
    write_report(None, tmp_path / "b", runs=tmp_path / "a" / RUNS_FILE)
    assert_same_report(tmp_path / "a", tmp_path / "b")


def _to_old_tags(values: dict) -> dict:
    new = "train/param_grad_norm/"
    return {("grad_norm/" + k[len(new):] if k.startswith(new) else k): v
            for k, v in values.items()}


def test_runs_with_the_old_grad_norm_tags_are_read_and_resumed(tmp_path: Path) -> None:
    logdir = tmp_path / "runs"
    fresh = _karate(logdir, optimizers=["adam"], seeds=[0, 1])
    new_tags = sorted(t for t in fresh[0]["history"] if t.startswith("train/param_grad_norm/"))
    assert new_tags and not any(t.startswith("grad_norm/") for t in fresh[0]["history"])
    run0, run1 = (logdir / r["run_id"] for r in fresh)
    # seed 0: finished under the old names; seed 1: interrupted (checkpoint, no result)
    old = json.loads((run0 / RESULT).read_text())
    old["history"], old["final"] = _to_old_tags(old["history"]), _to_old_tags(old["final"])
    (run0 / RESULT).write_text(json.dumps(old))
    state = load_checkpoint(run1 / CHECKPOINT)
    state["history"] = _to_old_tags(state["history"])
    save_checkpoint(run1 / CHECKPOINT, state)
    (run1 / RESULT).unlink()
    # report reads them under today's names
    by_id = {r["run_id"]: r for r in load_results(logdir)}
    assert sorted(t for t in by_id[fresh[0]["run_id"]]["history"]
                  if "grad_norm" in t) == new_tags
    # the Custom Scalars layout charts the old tags too
    assert set(scalar_layout([old])["gradient norms"]) == {
        "grad_norm/" + t.split("/", 2)[2] for t in new_tags}
    # --resume: the finished run is skipped, the interrupted one finishes, both under today's
    again = _karate(logdir, optimizers=["adam"], seeds=[0, 1])
    assert again[0]["skipped"] and not again[1]["skipped"]
    for r, before in zip(again, fresh, strict=True):
        assert sorted(t for t in r["history"] if "grad_norm" in t) == new_tags
        for t in new_tags:
            torch.testing.assert_close(r["history"][t], before["history"][t])
    on_disk = json.loads((run1 / RESULT).read_text())
    assert not any(t.startswith("grad_norm/") for t in on_disk["history"])


def test_cli_report_from_runs_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from torchopt_survey.experiments.cli import main

    second_order = RESULTS / "second_order"
    runs = str(second_order / RUNS_FILE)
    assert main(["report", "--runs", runs]) == 2  # no --out: nowhere to write
    assert "give --out" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 99, "runs": []}')
    assert main(["report", "--runs", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "not a runs.json of format 1" in capsys.readouterr().err
    assert main(["report", "--runs", runs, "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert (tmp_path / "out" / "second_order.md").read_bytes() == (
        second_order / "second_order.md").read_bytes()
