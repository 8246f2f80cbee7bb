"""Helpers for tests that start processes: a free port, and the import path of this checkout."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
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


def script_report(script: str | os.PathLike[str], flag: str, env: dict[str, str],
                  timeout: float = 600) -> dict:
    """Run ``python SCRIPT FLAG`` with ``env`` and return the JSON it prints on its last
    ``REPORT `` line."""
    result = subprocess.run([sys.executable, str(script), flag], env=env,
                            capture_output=True, text=True, timeout=timeout)
    lines = [line for line in result.stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, f"no report (rc={result.returncode}):\n{result.stderr[-4000:]}"
    return json.loads(lines[-1][len("REPORT "):])


def interpreted_report(script: str | os.PathLike[str], timeout: float = 600) -> dict:
    """Run ``python SCRIPT --interpret`` with the Triton kernels under ``TRITON_INTERPRET=1``
    (in its own process: the interpreter setting is read once, and it would turn every Triton
    use of the test session into the slow interpreter) and return its report."""
    env = dict(os.environ, TRITON_INTERPRET="1", TORCHOPT_SURVEY_FUSED_BACKEND="triton",
               OMP_NUM_THREADS="1", PYTHONPATH=checkout_pythonpath())
    return script_report(script, "--interpret", env, timeout)
