"""A run's process: its options, its device, threads, allocator and determinism."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from .host_memory import keep_freed_memory


@dataclass(frozen=True)
class RunOptions:
    """Runtime options that do not change a run's results (not part of its identity)."""

    logdir: str = "runs"
    device: str = "auto"
    data_dir: str | None = None
    resume: bool = False
    quiet: bool = False
    threads: int | None = None
    deterministic: bool = True
    #: discrete hparam values declared to TensorBoard's HParams dashboard (a sweep's grid)
    hparam_domains: dict[str, list[Any]] | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"device: unknown device {name!r}; valid choices: auto, cpu, cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but no CUDA device is available; use cpu/auto")
    return torch.device(name)


def prepare_process(opts: RunOptions) -> torch.device:
    """The run's device, with the process set up for it: ``--threads``, on CPU an allocator
    that keeps freed blocks (:mod:`.host_memory`) and, if asked for, deterministic kernels
    (needed for bit-identical resume on GPU; CPU kernels used here are deterministic at a
    fixed thread count anyway)."""
    device = resolve_device(opts.device)
    if device.type == "cpu":
        keep_freed_memory()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    return device


def flushing_denormals() -> bool:
    """Whether this thread's CPU flushes subnormal floats to zero now (x86 FTZ/DAZ)."""
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a float32 subnormal
    return float(tiny * 2) == 0.0


@contextmanager
def flush_denormal(on: bool) -> Iterator[None]:
    """``torch.set_flush_denormal(on)`` while the block runs, the earlier setting after: a
    run's choice does not leak into the next run of the same worker process."""
    before = flushing_denormals()
    if on and not torch.set_flush_denormal(True):
        warnings.warn("flush_denormal: this CPU cannot flush subnormals (needs SSE3); "
                      "the run computes with them", stacklevel=2)
    elif not on:
        torch.set_flush_denormal(False)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def quiet_import_noise() -> None:
    """PyG's import emits torch.jit deprecation noise that says nothing about the user's run:
    filtered in the CLI's process and in every worker process that imports the experiments."""
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")


def worker_init(threads: int) -> None:
    """Initializer of a pool's worker process."""
    quiet_import_noise()
    torch.set_num_threads(threads)
