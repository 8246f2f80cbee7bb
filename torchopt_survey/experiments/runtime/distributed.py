"""Experiments under ``torchrun``: process-group setup, rank helpers and batch sharding.

``torchrun --nproc-per-node N -m torchopt_survey.experiments mnist|karate ...`` trains each run
with DistributedDataParallel across the N processes. Every rank holds the whole device-resident
data set and draws the same global batches as one process; each rank takes its contiguous
shard of every global batch, and scales its loss so that DDP's gradient *average* equals the
gradient of the global batch's mean loss (also for a last batch that N does not divide, and for
a shard that is empty). Rank 0 alone reads and writes the run folder (TensorBoard events,
checkpoints, results) and prints progress; it evaluates, and broadcasts its metrics, so that
decisions taken from them (early stopping, ReduceLROnPlateau) are identical on every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

#: Seconds a collective may wait for the other ranks before this rank gives up with an error
#: (a rank that hangs, or one whose death the backend does not notice, must not leave the
#: survivors waiting forever; torchrun itself stops the others when one exits).
TIMEOUT_ENV = "TORCHOPT_SURVEY_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous part ``[start, end)`` of ``n`` items: sizes differ by at most
        one, the first ``n % world_size`` ranks take the larger ones, and a part may be empty."""
        q, r = divmod(n, self.world_size)
        start = self.rank * q + min(self.rank, r)
        return start, start + q + (self.rank < r)


_CONTEXT: DistContext | None = None


def launched() -> bool:
    """True when a launcher (torchrun, or anything that sets the ``env://`` variables) started
    this process as one of several ranks. A world of one runs as a plain process."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"{TIMEOUT_ENV}: expected a number of seconds > 0, got {raw!r}")
    return value


def setup(device: str) -> tuple[DistContext, str]:
    """Join the process group (NCCL when the run's device is CUDA, gloo otherwise) and return
    the context and the device this rank trains on (``cuda:LOCAL_RANK`` on GPUs)."""
    global _CONTEXT
    if not dist.is_available():
        raise ValueError("torchrun: this PyTorch build has no torch.distributed support")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("device: 'cuda' requested but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"torchrun: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA "
                "device(s) here; use --nproc-per-node <= the GPU count or --device cpu"
            )
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    else:
        device = "cpu"
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s()))
    _CONTEXT = DistContext(dist.get_rank(), dist.get_world_size(), local_rank, backend)
    return _CONTEXT, device


def teardown() -> None:
    global _CONTEXT
    if _CONTEXT is not None and dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


def context() -> DistContext | None:
    """The job this process belongs to, or None in a plain (one-process) run."""
    return _CONTEXT


def is_main() -> bool:
    return _CONTEXT is None or _CONTEXT.is_main


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled; tensors arrive on the CPU)."""
    if _CONTEXT is None:
        return obj
    box = [obj if _CONTEXT.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def barrier() -> None:
    if _CONTEXT is not None:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` across ranks in place (one collective) and return it."""
    if _CONTEXT is not None:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` under DDP; the optimizer keeps working on the module's own parameters and
    checkpoints keep the plain module's keys (no ``module.`` prefix)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


class NullWriter:
    """Stands in for TensorBoard's SummaryWriter on ranks other than 0: every call does
    nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None
