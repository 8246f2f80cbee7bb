"""A run's process: its options, its device, threads, allocator and determinism."""

from __future__ import annotations

import os
import warnings
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


def quiet_import_noise() -> None:
    """PyG's import emits torch.jit deprecation noise that says nothing about the user's run:
    filtered in the CLI's process and in every worker process that imports the experiments."""
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")


def worker_init(threads: int) -> None:
    """Initializer of a pool's worker process."""
    quiet_import_noise()
    torch.set_num_threads(threads)
