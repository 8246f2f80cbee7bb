"""A task defined outside the package (``examples/regression_task.py``) through the CLI:
``run`` with TensorBoard (HParams, gradient norms), ``--resume`` after SIGKILL, ``sweep`` with
vectorised replicas, ``report`` with the user's own claim; and a task that breaks its contract
stopped with exit 2 before any run starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.experiments_cli import ROOT, cli, raw_scalars

TASK = "regression_task:Regression"
COMMON = ["--seeds", "0", "1", "--epochs", "4", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("tasks")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHOPT_SURVEY")}
    env["TORCHOPT_SURVEY_CACHE"] = str(tmp / "cache")
    env["OMP_NUM_THREADS"] = "1"
    # the task's folder (outside the package) and a folder for the broken tasks below
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "examples"), str(tmp)])
    (tmp / "broken_tasks.py").write_text(BROKEN)
    return env


BROKEN = '''
import torch
from torch import nn
from torch.nn import functional as F
from regression_task import Regression
from torchopt_survey.experiments.tasks.protocol import Metric


class WrongOutput(Regression):
    name = "wrong_output"

    def model(self, seed):
        return nn.Linear(8, 3)  # three outputs per example: the loss wants one

    def loss(self, outputs, targets):
        return F.mse_loss(outputs, targets)


class MissingMetric(Regression):
    name = "missing_metric"
    select = "accuracy"


class NoLoss:
    name = "no_loss"


class FullBatch(Regression):
    name = "full_batch"
    defaults = Regression.defaults.__class__(epochs=3, batch_size=None, seeds=(0,))
'''


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(*args), env=env, capture_output=True, text=True, timeout=300)


def _results(logdir: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(logdir)): json.loads(p.read_text())
            for p in sorted(logdir.rglob("result.json"))}


def test_run_resume_sweep_and_report_a_task_from_outside_the_package(
    tmp_path: Path, env: dict[str, str]
) -> None:
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    done = _run(env, "run", "--task", TASK, *COMMON, "--logdir", str(ref))
    assert done.returncode == 0, done.stderr
    results = _results(ref)
    assert sorted(results) == [f"regression/regression/{o}/seed{s}"
                               for o in ("adam", "sgd") for s in (0, 1)]
    run = ref / "regression/regression/adam/seed0"
    tags = {t for t, _, _ in raw_scalars(run)}
    assert {"train/loss", "train/loss_epoch", "val/r2", "test/r2", "test/loss"} <= tags
    assert any(t.startswith("grad_norm/") for t in tags)  # batch 32: logged by default
    events = b"".join(p.read_bytes() for p in run.glob("events.out.tfevents.*"))
    assert b"_hparams_/session_start_info" in events and b"regression" in events
    assert results["regression/regression/adam/seed0"]["final"]["test/r2"] > 0.5

    # SIGKILL as the checkpoint of epoch 2 of the first run is about to be written, then resume
    kill = ("import os, signal, sys\n"
            "from torchopt_survey.experiments import cli\n"
            "from torchopt_survey.experiments.runs import writer\n"
            "real = writer.save_checkpoint\n"
            "def save_or_die(path, state):\n"
            "    if state['epoch'] == 2:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    real(path, state)\n"
            "writer.save_checkpoint = save_or_die\n"
            "sys.exit(cli.main(sys.argv[1:]))\n")
    argv = ["run", "--task", TASK, *COMMON, "--logdir", str(cut)]
    killed = subprocess.run([sys.executable, "-c", kill, *argv], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = _run(env, *argv, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    again = _results(cut)
    assert sorted(again) == sorted(results)
    starts = [r["resumed_from_epoch"] for r in again.values()]
    assert starts.count(1) == 1 and starts.count(None) == 3  # the killed run resumed
    for name, r in results.items():
        for tag, values in r["history"].items():
            if not tag.startswith("time/"):
                assert again[name]["history"][tag] == values, (name, tag)
        assert [e for e in raw_scalars(cut / name) if not e[0].startswith("time/")] == \
            [e for e in raw_scalars(ref / name) if not e[0].startswith("time/")], name

    # a sweep: the task's model stacks, so each optimizer's 4 runs are one program
    sweep_dir = tmp_path / "sweep"
    swept = _run(env, "sweep", "--task", TASK, "--optimizers", "sgd", "adam", "--lr-grid",
                 "1e-2:1e-1:2", *COMMON[:-1], "--logdir", str(sweep_dir))
    assert swept.returncode == 0, swept.stderr
    assert swept.stderr.count("4 runs of") == 2, swept.stderr  # two vectorised programs
    assert {r["vectorized"] for r in _results(sweep_dir).values()} == {4}
    best = (sweep_dir / "sweep" / "sweep_best.md").read_text()
    assert "regression r2 (val/r2 selects)" in best
    assert "| 1 | regression | regression |" in best

    # report: the user's claim, a Welch verdict over seeds on the task's own metric
    out = tmp_path / "report"
    rep = _run(env, "report", "--logdir", str(ref), "--out", str(out), "--claim", "adam>sgd")
    assert rep.returncode == 0, rep.stderr
    claims = (out / "claims.md").read_text()
    assert "| adam beat sgd | regression regression | final test r2 |" in claims
    assert "2 seeds" in claims
    assert "final test r2 %" in (out / "results.md").read_text()
    assert (out / "fig_regression.png").is_file()


@pytest.mark.parametrize(("task", "needle"), [
    ("broken_tasks:WrongOutput", "task 'wrong_output' (broken_tasks:WrongOutput): the model's "
                                 "output (4, 3) does not fit the loss"),
    ("broken_tasks:MissingMetric", "select: metric 'accuracy' is missing"),
    ("broken_tasks:NoLoss", "missing metrics, select, defaults, capabilities, data, model, loss"),
    ("no_such_module:Task", "module 'no_such_module' does not import"),
    ("regression_task:NoSuchClass", "module 'regression_task' has no 'NoSuchClass'"),
])  # fmt: skip
def test_a_task_that_breaks_its_contract_exits_2_before_any_run(
    task: str, needle: str, tmp_path: Path, env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from torchopt_survey.experiments import cli as experiments_cli

    for folder in env["PYTHONPATH"].split(os.pathsep):
        monkeypatch.syspath_prepend(folder)
    for command in (["run"], ["sweep", "--lr-grid", "1e-2:1e-1:2"]):
        code = experiments_cli.main([*command, "--task", task, "--logdir", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert code == 2, err
        assert needle in err, err
        assert not (tmp_path / "r").exists()


def test_the_python_api_does_what_the_cli_does(tmp_path: Path, env: dict[str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from torchopt_survey.experiments import api

    for folder in env["PYTHONPATH"].split(os.pathsep):
        monkeypatch.syspath_prepend(folder)
    logdir = str(tmp_path / "runs")
    results = api.run(TASK, logdir=logdir, optimizers=["sgd", "adam"], seeds=[0, 1], epochs=2,
                      threads=1, quiet=True)
    assert sorted(r["run_id"] for r in results) == [
        f"regression/regression/{o}/seed{s}" for o in ("adam", "sgd") for s in (0, 1)]
    files = api.report(logdir, claim=["adam>sgd"])
    assert "adam beat sgd" in next(p for p in files if p.name == "claims.md").read_text()
    with pytest.raises(ValueError, match="epochs: expected an integer >= 1"):
        api.run(TASK, logdir=logdir, epochs=0, quiet=True)


def test_full_batch_and_the_second_order_methods_on_a_custom_task(
    tmp_path: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchopt_survey.experiments import api

    for folder in env["PYTHONPATH"].split(os.pathsep):
        monkeypatch.syspath_prepend(folder)
    results = {r["spec"]["optimizer"]: r for r in api.run(
        "broken_tasks:FullBatch", logdir=str(tmp_path), optimizers=["sgd", "newton_cg"],
        threads=1, quiet=True)}
    assert {r["loss_curve"]["steps_per_epoch"] for r in results.values()} == {1}  # full batch
    newton = results["newton_cg"]["history"]
    assert newton["opt/func_evals"][-1] >= 3 and newton["opt/hvp_evals"][-1] > 0  # closures
    # three Newton-CG iterations fit far better than three full-batch gradient steps
    assert newton["test/r2"][-1] > results["sgd"]["history"]["test/r2"][-1] + 0.2
