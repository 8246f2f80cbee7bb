"""Helpers for tests that start processes: a free port, and the import path of this checkout."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a process group's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def checkout_pythonpath(env: Mapping[str, str] | None = None) -> str:
    """``PYTHONPATH`` for a subprocess: this checkout first (an installed copy elsewhere must not
    be what it imports), then ``tests/`` (for :mod:`helpers`), then what ``env`` had."""
    env = os.environ if env is None else env
    parts = [str(ROOT), str(TESTS), env.get("PYTHONPATH", "")]
    return os.pathsep.join(parts).rstrip(os.pathsep)
