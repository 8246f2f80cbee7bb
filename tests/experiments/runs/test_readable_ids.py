"""Floats in run ids are written for people, and run folders of the older id format still
resume (moved to today's id)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from torchopt_survey.experiments.runs.folder import run_id
from torchopt_survey.experiments.runs.single import execute_run
from torchopt_survey.experiments.runtime.labels import number_label, relabel
from torchopt_survey.experiments.runtime.process import RunOptions
from torchopt_survey.experiments.sweep.grid import expand_sweep
from torchopt_survey.experiments.tasks import karate
from torchopt_survey.experiments.tasks.config import default_config, merge, validate

THIRD = 1 / 3
OLD = f"dropout{THIRD}"  # how ids used to write it: dropout0.3333333333333333


def test_labels() -> None:
    assert number_label(1 / 6) == "0.166667" and number_label(0.01) == "0.01"
    assert number_label(1e-5) == "1e-05" and number_label(3) == "3"
    assert relabel("mnist-minibatch-val_split0.16666666666666666") == \
        "mnist-minibatch-val_split0.166667"
    for today in ("mnist-minibatch-val_split0.166667", "karate-gcn-dropout0.5-l21e-05",
                  "mnist-minibatch-sweep~lr=0.000464159"):
        assert relabel(today) == today


def _spec() -> dict:
    cfg = validate(merge(default_config("karate"), {
        "optimizers": ["adam"], "models": ["gcn"], "seeds": [0], "epochs": 2,
        "dropout": THIRD}))
    (spec,) = karate.expand(cfg)
    return json.loads(json.dumps(spec, sort_keys=True))


def test_ids_write_floats_readably() -> None:
    spec = _spec()
    assert spec["variant"].endswith("-dropout0.333333"), spec["variant"]
    (swept,) = expand_sweep([spec], [1 / 3 * 1e-3], {})
    assert "0.333333" in swept["variant"] and "3333333" not in swept["variant"]


def _make_old(logdir: Path, spec: dict, keep_result: bool) -> Path:
    """Turn a finished run's folder into one written under the older id format."""
    new_dir = logdir / run_id(spec)
    old_variant = spec["variant"].replace("dropout0.333333", OLD)
    old_dir = logdir / run_id({**spec, "variant": old_variant})
    old_dir.parent.mkdir(parents=True)
    os.replace(new_dir, old_dir)
    result = json.loads((old_dir / "result.json").read_text())
    result["spec"]["variant"], result["run_id"] = old_variant, str(old_dir.relative_to(logdir))
    (old_dir / "result.json").write_text(json.dumps(result))
    ckpt = torch.load(old_dir / "checkpoint.pt", weights_only=True)
    ckpt["spec"]["variant"] = old_variant
    torch.save(ckpt, old_dir / "checkpoint.pt")
    if not keep_result:
        (old_dir / "result.json").unlink()
    return old_dir


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "checkpoint-only"])
def test_an_old_format_folder_resumes(tmp_path: Path, finished: bool) -> None:
    spec = _spec()
    logdir = tmp_path / "runs"
    first = execute_run(spec, RunOptions(logdir=str(logdir), quiet=True, threads=1))
    old_dir = _make_old(logdir, spec, keep_result=finished)
    assert not (logdir / run_id(spec)).exists()
    again = execute_run(spec, RunOptions(logdir=str(logdir), quiet=True, threads=1,
                                         resume=True))
    new_dir = logdir / run_id(spec)
    assert not old_dir.exists() and not old_dir.parent.parent.exists()
    assert again["run_id"] == run_id(spec) and again["spec"] == spec
    if finished:
        assert again["skipped"] is True
    else:  # continued from the checkpoint of the last epoch: nothing left to train
        assert again["skipped"] is False and again["resumed_from_epoch"] == 2
        assert again["epochs_trained"] == 0
    assert again["history"] == first["history"]
    stored = json.loads((new_dir / "result.json").read_text())
    assert stored["spec"] == spec and stored["run_id"] == run_id(spec)
