"""Atomic files: checkpoints, JSON results, text tables (a kill leaves the old file or the
complete new one, never a stub)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: Path, write: Any) -> None:
    """Write via a temp file in the same folder, then rename over ``path``: a reader (or a
    resumed run after SIGKILL) sees either the old file or the complete new one, never a stub.
    (No fsync: it guards against power loss, not process kills, and costs ms per epoch.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """``torch.save`` ``state`` atomically."""
    atomic_write(Path(path), lambda fh: torch.save(state, fh))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def save_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically."""
    data = json.dumps(obj, indent=1, sort_keys=True).encode()
    atomic_write(Path(path), lambda fh: fh.write(data))


def load_json(path: str | os.PathLike[str]) -> Any:
    return json.loads(Path(path).read_text())


def save_text(path: str | os.PathLike[str], text: str) -> None:
    """Write text atomically."""
    data = text.encode()
    atomic_write(Path(path), lambda fh: fh.write(data))
