"""Warn (an error under ``-W``) when an autodoc'd class or function leaves an argument of its
signature out of its ``Args:`` section, or documents one it does not take; and when a public
name (``__all__`` of each module of ``args_check_public_modules``: the optimizers' and the
experiments' public modules) has no API entry.

It runs after napoleon has turned ``Args:`` into ``:param NAME:`` fields, so it checks what
the page will show. ``*args``/``**kwargs`` and ``self`` are not required.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)
PARAM = re.compile(r"^:param\s+(?:[^:]*\s)?(\w+):")


def _signature_names(obj: Any, what: str) -> list[str] | None:
    try:
        signature = inspect.signature(obj)  # a class: its constructor's, without self
    except (TypeError, ValueError):
        return None
    return [
        name
        for name, p in signature.parameters.items()
        if name not in ("self", "cls")
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]


def check_arguments(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    if what not in ("class", "function", "method"):
        return
    expected = _signature_names(obj, what)
    if expected is None:
        return
    documented = [m[1] for line in lines if (m := PARAM.match(line))]
    if what == "method" and not documented and len(expected) <= 1:
        return  # a method without arguments, or only a closure-like one described in prose
    missing = [n for n in expected if n not in documented]
    unknown = [n for n in documented if n not in expected]
    where = inspect.getsourcefile(obj) if not isinstance(obj, property) else None
    if missing:
        logger.warning(f"{name}: arguments missing from Args: {', '.join(missing)}",
                       location=where, type="args-check")
    if unknown:
        logger.warning(f"{name}: Args documents arguments it does not take: {', '.join(unknown)}",
                       location=where, type="args-check")


PUBLIC_MODULES = (
    "torchopt_survey",
    "torchopt_survey.optim",
    "torchopt_survey.experiments",
    "torchopt_survey.experiments.api",
    "torchopt_survey.experiments.cli",
    "torchopt_survey.experiments.tasks.protocol",
)


def check_coverage(app: Sphinx, env: Any) -> None:
    """Every public name is documented under one of the public modules' paths."""
    documented = set(env.domaindata["py"]["objects"])
    modules = app.config.args_check_public_modules
    for module_name in modules:
        for name in importlib.import_module(module_name).__all__:
            if not any(f"{m}.{name}" in documented for m in modules):
                logger.warning(f"{module_name}.{name} is public (in __all__) but has no API entry",
                               type="args-check")


def setup(app: Sphinx) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.napoleon")
    app.add_config_value("args_check_public_modules", PUBLIC_MODULES, "env", types=(tuple, list))
    app.connect("autodoc-process-docstring", check_arguments, priority=600)  # after napoleon
    app.connect("env-check-consistency", check_coverage)
    return {"version": "1", "parallel_read_safe": True}
