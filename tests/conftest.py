"""Shared fixtures of the test suite.

The tree mirrors the package: ``tests/optim/`` for :mod:`torchopt_survey.optim` (``core/`` for
its machinery), ``tests/experiments/<layer>/`` for each layer of :mod:`torchopt_survey.experiments`
(``cli``, ``sweep``, ``report``, ``runs``, ``tasks``, ``runtime``), ``tests/docs/`` for the
documentation. Test modules do not import each other: what several need lives in
``tests/helpers/`` (importable as ``helpers`` because pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from torchopt_survey.experiments.tasks.data import write_synthetic_mnist


@pytest.fixture(scope="session")
def synthetic_mnist(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, int], Path]:
    """``synthetic_mnist(n_train, n_test)``: the root of a tiny, learnable MNIST-format IDX set
    (each class lights its own block of the image over noise), written once per size and
    session. Shared between tests: read it, never write into it (a test that damages files
    writes its own with :func:`~torchopt_survey.experiments.tasks.data.write_synthetic_mnist`)."""
    roots: dict[tuple[int, int], Path] = {}

    def make(n_train: int, n_test: int) -> Path:
        if (n_train, n_test) not in roots:
            folder = tmp_path_factory.mktemp(f"mnist-{n_train}-{n_test}")
            roots[n_train, n_test] = write_synthetic_mnist(folder, n_train=n_train, n_test=n_test)
        return roots[n_train, n_test]

    return make
