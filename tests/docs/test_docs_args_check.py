"""docs/_ext/args_check on a tiny project: a public name without an API entry, an argument
left out of ``Args:`` and one documented that the function does not take each fail the
``-W`` build; the same project with every argument and name documented builds."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

sphinx_build = pytest.importorskip("sphinx.cmd.build")
EXT = Path(__file__).resolve().parents[2] / "docs" / "_ext"

FAKE_MODULE = '''
__all__ = ["scale", "shift"]


def scale(x, factor=2.0):
    """Multiply.

    Args:
        x (float): the value.
        factor (float, optional): the factor (default ``2.0``).
    """
    return x * factor


def shift(x, by=1.0):
    """Add.

    Args:
        x (float): the value.
        offset (float, optional): a name the function does not take.
    """
    return x + by
'''


def build(tmp_path: Path, monkeypatch, module: str, page: str) -> tuple[int, str]:
    name = "fake_public_api"
    sys.modules.pop(name, None)
    (tmp_path / f"{name}.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXT))
    src = tmp_path / "docs"
    src.mkdir()
    (src / "conf.py").write_text(
        'extensions = ["sphinx.ext.autodoc", "args_check"]\nproject = "t"\n'
        f'args_check_public_modules = ["{name}"]\n'
    )
    (src / "index.rst").write_text("Title\n=====\n\n" + textwrap.dedent(page))
    warnings = tmp_path / "warnings.txt"
    status = sphinx_build.build_main(["-W", "--keep-going", "-q", "-b", "html", "-w",
                                      str(warnings), str(src), str(tmp_path / "html")])
    return status, warnings.read_text() if warnings.exists() else ""


def test_missing_entry_and_arguments_fail_the_build(tmp_path, monkeypatch):
    status, warnings = build(tmp_path, monkeypatch, FAKE_MODULE,
                             ".. autofunction:: fake_public_api.shift\n")
    assert status != 0
    assert "fake_public_api.shift: arguments missing from Args: by" in warnings
    assert "fake_public_api.shift: Args documents arguments it does not take: offset" in warnings
    assert "fake_public_api.scale is public (in __all__) but has no API entry" in warnings


def test_complete_documentation_builds(tmp_path, monkeypatch):
    fixed = FAKE_MODULE.replace("offset (float", "by (float")
    status, warnings = build(tmp_path, monkeypatch, fixed, """\
        .. autofunction:: fake_public_api.scale
        .. autofunction:: fake_public_api.shift
        """)
    assert (status, warnings) == (0, "")
