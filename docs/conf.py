"""Sphinx configuration: ``sphinx-build -W --keep-going -n -b html docs docs/_build/html``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # the package from this checkout, installed or not
sys.path.insert(0, str(DOCS / "_ext"))

project = "torchopt_survey"
author = "torchopt_survey contributors"
copyright = "torchopt_survey contributors, MIT licence"
release = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)[1]
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
    # MathJax served from the built site itself: the pages render equations offline
    "sphinx-mathjax-offline",
    "argparse_cli",
    "bench_tables",
    "args_check",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
html_static_path = ["_static"]

html_theme = "furo"
html_title = f"torchopt_survey {release}"

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# one argument per line once a signature is long (the optimizers have a dozen)
python_maximum_signature_line_length = 88
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# No intersphinx: torch's and Python's inventories cannot be fetched where CI runs (no
# network), so their names are shown as plain text instead of links. Everything of ours must
# resolve (-n).
nitpicky = True
nitpick_ignore_regex = [
    ("py:.*", r"(torch|collections\.abc|typing|argparse|pathlib)\..*"),
    ("py:class", r"(Tensor|Any|Callable|iterable|callable|optional)"),
    ("py:class", r"NoneType"),
    ("py:class", r"StateKind"),  # a Literal alias; its values are listed in StateSpec
]

suppress_warnings = ["myst.header"]

# Keep "--flag" as typed: the pages and the generated CLI reference quote many options, and
# smart quotes would turn "--" into an en dash.
smartquotes = False
