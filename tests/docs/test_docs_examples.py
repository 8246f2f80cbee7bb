"""Every ```python block of the documentation pages (docs/**/*.md) and of README.md runs.

The blocks of one page run in order in one namespace, as a reader would paste them. A block
that cannot run here (several processes, a GPU, a long compile) is preceded by the line
``<!-- docs-test: skip (reason) -->`` and is only compiled, so a syntax error still fails.
The package's own doctests (``>>>`` lines in its docstrings) run too.
"""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
PAGES = [p for p in PAGES if "_build" not in p.parts]
FENCE = re.compile(
    r"(?P<marker><!-- docs-test: skip(?P<reason>[^>]*)-->\s*\n)?"
    r"^```python[ \t]*\n(?P<code>.*?)^```",
    re.M | re.S,
)


def python_blocks(text: str) -> list[tuple[str, bool, str]]:
    """(code, skipped, reason) for each ```python block of a Markdown text."""
    return [
        (m["code"], m["marker"] is not None, (m["reason"] or "").strip())
        for m in FENCE.finditer(text)
    ]


def test_collector_sees_blocks_and_skip_markers():
    text = "a\n```python\nx = 1\n```\n<!-- docs-test: skip (why) -->\n```python\ny\n```\n"
    assert python_blocks(text) == [("x = 1\n", False, ""), ("y\n", True, "(why)")]


RUNNABLE = [p for p in PAGES if python_blocks(p.read_text())]


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_examples_run(page: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever an example writes stays out of the checkout
    namespace: dict = {"__name__": "__docs_example__"}
    for index, (code, skipped, reason) in enumerate(python_blocks(page.read_text())):
        where = f"{page.relative_to(ROOT)}, python block {index + 1}"
        compiled = compile(code, where, "exec")
        if skipped:
            assert reason, f"{where}: a skipped block must say why"
            continue
        exec(compiled, namespace)


@pytest.mark.parametrize("module", ["torchopt_survey"])
def test_package_doctests(module: str):
    result = doctest.testmod(importlib.import_module(module), verbose=False)
    assert result.attempted > 0 and result.failed == 0
