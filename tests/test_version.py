"""``torchopt_survey.__version__`` is the installed distribution's version, as in pyproject."""

from __future__ import annotations

import re
from importlib import metadata

import pytest
from helpers.processes import ROOT

import torchopt_survey


def test_version_matches_pyproject_when_installed():
    try:
        installed = metadata.version("torchopt-survey")
    except metadata.PackageNotFoundError:
        pytest.skip("torchopt-survey is not installed (run from a plain source tree)")
    declared = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert declared is not None
    assert torchopt_survey.__version__ == installed == declared[1]


def test_version_of_an_uninstalled_tree(monkeypatch):
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert torchopt_survey._installed_version() == "0+unknown"
