"""The second-order methods in the experiments (issue #8): registry names, the closure-based
full-batch step on Karate and MNIST, and the report section."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torchopt_survey as ts
from torchopt_survey.experiments.report.results import group_runs
from torchopt_survey.experiments.report.second_order import (
    conditioning_sweep,
    write_second_order,
)
from torchopt_survey.experiments.runs.single import execute_run
from torchopt_survey.experiments.runtime.process import RunOptions
from torchopt_survey.experiments.tasks import karate, mnist
from torchopt_survey.experiments.tasks.config import default_config, merge, validate
from torchopt_survey.experiments.tasks.data import write_synthetic_mnist
from torchopt_survey.experiments.tasks.optimizers import (
    OPTIMIZER_NAMES,
    SECOND_ORDER_NAMES,
    build_optimizer,
    resolve_optimizer_names,
)


def test_registry_names() -> None:
    assert SECOND_ORDER_NAMES == ("newton", "newton_cg", "cg")
    assert resolve_optimizer_names(["CG", "newton_cg", "newton"]) == ["cg", "newton_cg", "newton"]
    assert resolve_optimizer_names("all") == list(OPTIMIZER_NAMES)  # first-order only
    p = torch.nn.Parameter(torch.ones(3))
    assert isinstance(build_optimizer("newton", [p]), ts.Newton)
    opt = build_optimizer("newton_cg", [p], {"damping": 0.5})
    assert isinstance(opt, ts.NewtonCG) and opt.param_groups[0]["damping"] == 0.5
    assert opt.param_groups[0]["max_iter"] == 1  # an epoch is one outer iteration
    assert isinstance(build_optimizer("cg", [p]), ts.ConjugateGradient)
    cfg = validate(merge(default_config("karate"), {"optimizers": ["cg"],
                                                    "optimizer_kwargs": {"cg": {"beta": "FR"}}}))
    assert cfg["optimizers"] == ["cg"]


def _karate_results(tmp_path: Path) -> list[dict]:
    cfg = validate(merge(default_config("karate"), {
        "optimizers": ["sgd", "newton", "newton_cg", "cg"], "models": ["gcn"], "seeds": [0, 1],
        "epochs": 3,
    }))
    opts = RunOptions(logdir=str(tmp_path / "runs"), quiet=True, threads=1)
    return [execute_run(spec, opts) for spec in karate.expand(cfg)]


def test_karate_runs_and_report(tmp_path: Path) -> None:
    results = _karate_results(tmp_path)
    by_opt = {r["spec"]["optimizer"]: r for r in results if r["spec"]["seed"] == 0}
    for name in SECOND_ORDER_NAMES:
        h = by_opt[name]["history"]
        assert h["opt/iterations"] == [1.0, 2.0, 3.0], name
        evals = h["opt/func_evals"]
        assert evals == sorted(evals) and evals[0] >= 2.0  # start + at least one trial
        assert all(torch.isfinite(torch.tensor(h["train/loss"])))
    assert by_opt["newton"]["history"]["opt/hvp_evals"][0] == 1648  # one Hessian: n products
    assert "opt/func_evals" not in by_opt["sgd"]["history"]
    paths = write_second_order(group_runs(results), tmp_path / "report", sweep=False)
    text = (tmp_path / "report" / "second_order.md").read_text()
    assert "| newton |" in text and "| cg |" in text and "target training loss" in text
    assert "Newton converges in fewer iterations" in text
    assert any(p.suffix == ".png" for p in paths)


def test_mnist_full_batch_closure_epoch(tmp_path: Path) -> None:
    root = write_synthetic_mnist(tmp_path / "data", n_train=300, n_test=100)
    cfg = merge(default_config("mnist"), {"epochs": 2, "hidden": 20})
    cfg["regimes"] = {"fullbatch": {"batch_size": "full", "optimizers": ["newton_cg", "cg"]}}
    specs = mnist.expand(validate(cfg))
    assert [s["optimizer"] for s in specs] == ["newton_cg", "cg"]
    for spec in specs:
        task = mnist.MnistTask(spec, torch.device("cpu"), str(root))
        assert task.steps_per_epoch == 1
        losses = torch.empty(1)
        m1 = task.train_epoch(1, losses, lambda *_: None)
        m2 = task.train_epoch(2, losses, lambda *_: None)
        assert m2["train/loss_epoch"] < m1["train/loss_epoch"], spec["optimizer"]
        assert m2["opt/iterations"] == 2.0


def test_conditioning_sweep_grows_with_condition_number() -> None:
    rows = conditioning_sweep(conds=(1e1, 1e3), seeds=(0,), n=30)
    assert rows[0]["newton"][0] == 1.0 and rows[1]["newton"][0] == 1.0
    assert rows[1]["cg"][0] > 2 * rows[0]["cg"][0]


@pytest.mark.parametrize("name", SECOND_ORDER_NAMES)
def test_state_survives_the_checkpoint_format(name: str) -> None:
    """The runner saves checkpoints with torch.save and loads them with weights_only=True."""
    import io

    p = torch.nn.Parameter(torch.ones(3))
    extra = {"curvature": "hessian"} if name == "newton_cg" else {}
    opt = build_optimizer(name, [p], extra)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = ((p - 2) ** 2).sum() + (p**4).sum()
        loss.backward()
        return loss

    opt.step(closure)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    opt2 = build_optimizer(name, [torch.nn.Parameter(p.detach().clone())], extra)
    opt2.load_state_dict(loaded)
    for key, value in opt.state[p].items():
        assert torch.equal(value, opt2.state[opt2.param_groups[0]["params"][0]][key]), key


def test_mnist_closure_epoch_trains_on_the_training_part_only(tmp_path: Path) -> None:
    """With ``val_split`` the closure-based step sees the training part, never the held-out
    validation images (the first-order loop's data)."""
    root = write_synthetic_mnist(tmp_path / "data", n_train=300, n_test=100)
    cfg = merge(default_config("mnist"), {"epochs": 1, "hidden": 20, "val_split": 0.2})
    cfg["regimes"] = {"fullbatch": {"batch_size": "full", "optimizers": ["cg"]}}
    (spec,) = mnist.expand(validate(cfg))
    task = mnist.MnistTask(spec, torch.device("cpu"), str(root))
    seen: list[torch.Tensor] = []
    forward = task._forward
    task._forward = lambda x: (seen.append(x), forward(x))[1]
    task.train_epoch(1, torch.empty(1), lambda *_: None)
    assert task.x_train.shape[0] == 240 and seen
    assert all(torch.equal(x, task.x_train) for x in seen)


@pytest.mark.parametrize("module", [mnist, karate], ids=["mnist", "karate"])
def test_closure_optimizers_refused_under_torchrun(module, tmp_path: Path) -> None:
    from torchopt_survey.experiments.runtime.distributed import DistContext

    task = _task(module, tmp_path, "cg")
    with pytest.raises(ValueError, match="do not run under torchrun"):
        task.distribute(DistContext(rank=0, world_size=2, local_rank=0, backend="gloo"))


def _task(module, tmp_path: Path, optimizer: str):
    if module is mnist:
        root = write_synthetic_mnist(tmp_path / "data", n_train=100, n_test=50)
        cfg = merge(default_config("mnist"), {"epochs": 1, "hidden": 8})
        cfg["regimes"] = {"fullbatch": {"batch_size": "full", "optimizers": [optimizer]}}
        (spec,) = mnist.expand(validate(cfg))
        return mnist.MnistTask(spec, torch.device("cpu"), str(root))
    cfg = validate(merge(default_config("karate"), {"optimizers": [optimizer], "seeds": [0],
                                                     "epochs": 1}))
    spec = karate.expand(cfg)[0]
    return karate.KarateTask(spec, torch.device("cpu"), None)
