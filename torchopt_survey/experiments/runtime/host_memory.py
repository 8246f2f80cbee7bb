"""Host memory for CPU training: keep freed blocks in the process instead of the kernel's.

glibc's malloc hands each block above its mmap threshold (at most 32 MB by its own rule) to a
fresh ``mmap`` and returns the heap's top to the kernel beyond the trim threshold, so a step
that allocates and frees the same large tensors (a stacked [N, 500, 784] gradient, the
optimizer's temporaries) page-faults through them again on every step: a vectorised step of
8 MNIST replicas (default optimizer path) spent about a third of its time on ~6,000 page
faults. Raising both thresholds keeps those blocks for reuse, as jemalloc and tcmalloc (the
allocators PyTorch's CPU tuning guide recommends preloading) do. The experiments apply it to
their own processes only (a run, a vectorised program, a worker, a Ray trial on CPU);
importing the optimizers changes nothing.
"""

from __future__ import annotations

import ctypes
import os

#: mallopt parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: blocks up to this size are served from (and kept in) the heap
KEEP_BYTES = 1 << 30
#: set any of these and the process's allocator is the user's choice: left alone
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                  "GLIBC_TUNABLES", "LD_PRELOAD")
OPT_OUT = "TORCHOPT_SURVEY_SYSTEM_MALLOC"

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True if in effect.

    Does nothing off glibc, when ``TORCHOPT_SURVEY_SYSTEM_MALLOC=1``, or when the user
    configures the allocator (``MALLOC_*_`` variables, ``GLIBC_TUNABLES``, ``LD_PRELOAD``).
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(OPT_OUT, "") not in ("", "0") or any(
            os.environ.get(k) for k in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: others' mallopt differ)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # (older glibc refuse an mmap threshold over 32 MB: then blocks up to 32 MB are kept)
    if not (mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES) or mallopt(_M_MMAP_THRESHOLD, 32 << 20)):
        return False
    _applied = bool(mallopt(_M_TRIM_THRESHOLD, 2 * KEEP_BYTES - 1))
    return _applied
