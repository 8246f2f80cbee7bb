"""TensorBoard leads with the comparison: the log folder's HParams experiment (leading
columns, only hyperparameters that vary or leave their default, one type per column, metrics
with accuracy/AUC and loss first) and a Custom Scalars layout, read back from the event files."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hp_metadata

from torchopt_survey.experiments.runs.single import execute_run
from torchopt_survey.experiments.runs.writer import declare_experiment, overview_columns
from torchopt_survey.experiments.runtime.process import RunOptions
from torchopt_survey.experiments.tasks import karate
from torchopt_survey.experiments.tasks.config import default_config, merge, validate

# (generated protobuf modules: their classes are invisible to static type checkers)
api_pb2: Any = importlib.import_module("tensorboard.plugins.hparams.api_pb2")
layout_pb2: Any = importlib.import_module("tensorboard.plugins.custom_scalar.layout_pb2")


def _runs(logdir: Path, **extra: object) -> list[dict]:
    cfg = validate(merge(default_config("karate"), {
        "optimizers": ["sgd", "adam"], "models": ["gcn"], "seeds": [0], "epochs": 2, **extra}))
    opts = RunOptions(logdir=str(logdir), quiet=True, threads=1)
    return [execute_run(spec, opts) for spec in karate.expand(cfg)]


def _root(logdir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0})
    acc.Reload()  # the root folder alone (runs live in sub-folders)
    return acc


def test_overview_read_back(tmp_path: Path) -> None:
    logdir = tmp_path / "runs"
    results = _runs(logdir) + _runs(logdir, clip_grad_norm=1.0)
    path = declare_experiment(logdir)
    assert path is not None and path.parent == logdir
    acc = _root(logdir)
    content = acc.SummaryMetadata(hp_metadata.EXPERIMENT_TAG).plugin_data.content
    experiment = hp_metadata.parse_experiment_plugin_data(content)
    names = [h.name for h in experiment.hparam_infos]
    # leading columns first, then only what varies or leaves its default: clip_grad_norm
    # (set by half the runs) is in, dropout / graph / epochs (the same everywhere) are not
    assert names[:4] == ["optimizer", "lr", "seed", "model"]
    assert "clip_grad_norm" in names and "dropout" not in names and "epochs" not in names
    lr = next(h for h in experiment.hparam_infos if h.name == "lr")
    assert lr.type == api_pb2.DATA_TYPE_FLOAT64
    assert [h.differs for h in experiment.hparam_infos][:4] == [True] * 4
    metrics = [m.name.tag for m in experiment.metric_infos]
    # accuracy/AUC first (test before train), then the loss
    assert metrics == ["test/accuracy", "test/auc", "train/accuracy", "train/auc",
                       "train/loss_epoch"]
    # every run's own values: numbers as floats
    for r in results:
        assert isinstance(r["hparams"]["seed"], float) and isinstance(r["hparams"]["lr"], float)
    # the Custom Scalars layout: the comparison first, gradient norms below
    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    titles = [c.title for c in layout.category]
    assert titles[0] == "karate: the comparison"
    charts = [(c.title, list(c.multiline.tag)) for c in layout.category[0].chart]
    assert charts[0] == ("test/accuracy (every optimizer)", ["^test/accuracy$"])
    assert ("train/loss_epoch (every optimizer)", ["^train/loss_epoch$"]) in charts
    assert titles[-1] == "gradient norms" and len(titles) == 2
    assert [c.title for c in layout.category[1].chart][0].startswith("grad_norm/")
    # declared again (a later command into the same folder): one overview file, not two
    declare_experiment(logdir)
    assert len(list(logdir.glob("events.out.tfevents.*.overview"))) == 1
    # runs from before hparams were kept in result.json: no empty HParams experiment
    for path in logdir.rglob("result.json"):
        old = json.loads(path.read_text())
        del old["hparams"]
        path.write_text(json.dumps(old))
    declare_experiment(logdir)
    acc = _root(logdir)
    with pytest.raises(KeyError, match="hparams"):  # (no hparams summary at the root)
        acc.PluginTagToContent("hparams")
    assert acc.Tensors("custom_scalars__config__")


def test_columns_only_what_some_run_sets_away_from_the_default() -> None:
    def run(opt: str, **hp: object) -> dict:
        return {"spec": {"experiment": "karate"}, "hparam_metrics": ["train/loss_epoch"],
                "hparams": {"optimizer": opt, "lr": 0.01, "seed": 0.0, "dropout": 0.0,
                            "graph": "karate", **hp}}

    cols, metrics = overview_columns([run("sgd"), run("adam")])
    assert cols == ["optimizer", "lr", "seed"] and metrics == ["train/loss_epoch"]
    # accuracy (test, then validation) before the loss, whatever the alphabet says
    tagged = {**run("sgd"), "hparam_metrics": ["train/loss_epoch", "val/accuracy",
                                               "test/accuracy"]}
    assert overview_columns([tagged])[1] == ["test/accuracy", "val/accuracy",
                                             "train/loss_epoch"]
    # one run with dropout: the column appears; all runs at the same non-default: still in
    assert "dropout" in overview_columns([run("sgd"), run("adam", dropout=0.5)])[0]
    assert "dropout" in overview_columns([run("sgd", dropout=0.5), run("adam", dropout=0.5)])[0]
