"""A task's name is spelled only in its own module and the registry: the harness asks the
registry for what a task decides (its config, technique options, report figures)."""

from __future__ import annotations

import ast
from pathlib import Path

import torchopt_survey.experiments as experiments
from torchopt_survey.experiments.tasks import mnist
from torchopt_survey.experiments.tasks.registry import BUILTIN

PACKAGE = Path(experiments.__file__).parent
#: the task modules and the registry; data.py's dataset table names torchvision's datasets
OWNERS = {"tasks/mnist.py", "tasks/mnist_vectorized.py", "tasks/karate.py", "tasks/registry.py"}
DATASET_TABLE = {"tasks/data.py": {"mnist"}}


def _name_literals(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef)
                  and n.body and isinstance(n.body[0], ast.Expr)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings
            and any(n.value == t or n.value.startswith(f"{t}-") for t in BUILTIN)]


def test_no_task_name_outside_its_module_and_the_registry() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in OWNERS:
            continue
        allowed = DATASET_TABLE.get(rel, set())
        found += [f"{rel}:{line}: {text!r}" for line, text in _name_literals(path)
                  if text not in allowed]
    assert not found, "task names outside the task modules:\n" + "\n".join(found)


def test_mnist_overview_figure_covers_plain_sgd_regimes() -> None:
    variants = ["mnist-gd", "mnist-sgd", "mnist-minibatch", "fashionmnist-gd"]
    figures = mnist.OVERVIEW.figures(variants)
    assert [f[0] for f in figures] == ["fig1_fashionmnist_regimes.png", "fig1_mnist_regimes.png"]
    assert figures[1][2] == [("GD (full batch)", "mnist-gd", "sgd"),
                             ("SGD (batch 1)", "mnist-sgd", "sgd"),
                             ("MBGD", "mnist-minibatch", "sgd")]
    assert mnist.OVERVIEW.covers("mnist-gd", ["sgd"])
    assert not mnist.OVERVIEW.covers("mnist-gd", ["adam", "sgd"])
    assert not mnist.OVERVIEW.covers("mnist-minibatch", ["sgd"])
