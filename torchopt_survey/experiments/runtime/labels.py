"""Numbers in run ids and table labels, written for people: ``0.166667``, not
``0.16666666666666666``; the same 6 significant digits as a sweep's learning-rate grid."""

from __future__ import annotations

import re
from typing import Any

#: a decimal number as ``str(float)`` writes it (``1e-05`` has no dot and is already short)
_DECIMAL = re.compile(r"\d+\.\d+(?:e[-+]?\d+)?")


def number_label(value: Any) -> str:
    """A float with 6 significant digits (``1/6`` -> ``0.166667``, ``0.01`` -> ``0.01``); any
    other value as ``str``."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def relabel(name: str) -> str:
    """An id of the older format (floats as Python wrote them) in today's format; ids already
    in today's format come back unchanged."""
    return _DECIMAL.sub(lambda m: number_label(float(m.group())), name)
