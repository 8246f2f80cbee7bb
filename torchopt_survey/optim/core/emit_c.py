"""CPU fused kernels: a traced update (see ``tracing``) emitted as C, compiled once, cached.

Why C rather than torch.compile: the update is a pure elementwise loop, so the whole fused step
for a group is one C function that walks every tensor once (``for i in range(numel)``: load
param, grad and state, compute in float32 -- float64 for float64 tensors --, store). gcc
auto-vectorises the loop (AVX2/AVX-512 with ``-march=native``); compiling one kernel takes about
0.3 s, against 5 s (per-tensor ``dynamic=True``) to 162 s (whole list) for inductor on this
machine, and a call through ctypes costs microseconds, where a compiled-function call costs tens.
Scalars that vary per step (bias corrections, NAdam's schedule) are computed once per tensor in
double inside the kernel from the stored ``step``; hyperparameters arrive in a double array, so
nothing recompiles when a scheduler changes them.

The loop is split across ``torch.get_num_threads()`` OpenMP threads (see :func:`emit_c`); the
graph walk itself is shared with the Triton emitter (:mod:`.emit`), this module only spells it.

Kernels are cached in memory and as shared objects in the private cache directory of
:mod:`.kernel_cache`, keyed by a hash of the source and this machine's CPU flags.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .codes import (
    EXPONENT_REBASE,
    HASH_MULTIPLIERS,
    LEVELS,
    MANTISSA_SHIFT,
    SIGNED_FACTOR,
    SMALLEST_NORMAL,
    SMALLEST_SCALE,
    SUBNORMAL_CODES,
    SUBNORMAL_STEP,
    TOP,
    TOP_INVERSE,
    reciprocal,
)
from .emit import Body, Dialect, walk
from .kernel_cache import (
    COMPILE_LOG,
    cache_dir,
    check_loadable,
    private_temp,
    write_private,
)
from .tracing import Traced

_C_TYPES = {
    torch.float32: "float",
    torch.float64: "double",
    torch.float16: "_Float16",
    torch.bfloat16: "uint16_t",
}

_PRELUDE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>

static inline float ld_bf16(uint16_t v) {
    uint32_t u = (uint32_t)v << 16; float f; memcpy(&f, &u, 4); return f;
}
static inline uint16_t st_bf16(float f) {  /* round to nearest even, NaN stays NaN */
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
#ifdef _OPENMP
#include <omp.h>
#endif
#define MAXNAN(a, b) (((a) > (b) || (a) != (a)) ? (a) : (b))
"""


def _cpu_signature() -> str:
    """Compiled with -march=native: a cached kernel is only valid on the same CPU kind."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line
                    break
    except OSError:
        pass
    return platform.machine() + hashlib.sha1(flags.encode()).hexdigest()[:12]


class CDialect(Dialect):
    """C99 spelling: scalars are ``double``, tensors ``float`` (``double`` if wide)."""

    def __init__(self, dtypes: tuple[Any, ...], has_grad_scale: bool) -> None:
        super().__init__(dtypes, has_grad_scale)
        self.ct = "double" if self.wide else "float"
        self.math = {"sqrt": "sqrt", "abs": "fabs"} if self.wide else {"sqrt": "sqrtf",
                                                                      "abs": "fabsf"}

    def tensor_const(self, value: float) -> str:
        return f"(({self.ct}){value!r})"

    def scalar_const(self, value: float) -> str:
        return repr(value)

    def cast(self, index: int) -> str:
        return f"const {self.ct} c{index} = ({self.ct})s{index};"

    def define_scalar(self, index: int, expr: str) -> str:
        return f"const double s{index} = {expr};"

    def define_tensor(self, index: int, expr: str) -> str:
        return f"const {self.ct} v{index} = {expr};"

    def tensor_op(self, op: str, args: list[str]) -> str:
        return _TENSOR_OPS[op].format(*args, **self.math)

    def scalar_op(self, op: str, args: list[str], raw: tuple[Any, ...]) -> str:
        return _SCALAR_OPS[op].format(*args)

    def load_tensor(self, index: int, slot: int) -> list[str]:
        dtype = self.dtypes[slot]
        raw = f"x{slot}[i]"
        expr = f"({self.ct})ld_bf16({raw})" if dtype == torch.bfloat16 else f"({self.ct}){raw}"
        if slot == 1 and self.has_grad_scale:
            # AMP: unscale, and store the unscaled gradient back as torch's fused kernels do
            return [f"{self.ct} v{index} = {expr} / gs;",
                    f"x1[i] = {_store(self.dtypes[1], f'v{index}')};"]
        return [f"{self.ct} v{index} = {expr};"]

    def load_hp(self, index: int, position: int) -> str:
        # one value per replica r (every hyperparameter has nrep entries; 1 without replicas)
        return f"const double s{index} = hp[{position} * nrep + r];"

    def load_scalar_state(self, index: int, slot: int) -> str:
        return f"const double s{index} = (double)*(const float*)P[{slot}];"

    def store_tensor(self, slot: int, expr: str) -> str:
        return f"x{slot}[i] = {_store(self.dtypes[slot], expr)};"

    def store_scalar_state(self, slot: int, expr: str) -> str:
        return f"*(float*)P[{slot}] = (float)({expr});"


def _store(dtype: torch.dtype, expr: str) -> str:
    if dtype == torch.bfloat16:
        return f"st_bf16((float)({expr}))"
    return f"({_C_TYPES[dtype]})({expr})"


_TENSOR_OPS = {
    "add": "{0} + {1}",
    "sub": "{0} - {1}",
    "mul": "{0} * {1}",
    "div": "{0} / {1}",
    "neg": "-{0}",
    "abs": "{abs}({0})",
    "sqrt": "{sqrt}({0})",
    "max": "MAXNAN({0}, {1})",
}
_SCALAR_OPS = {
    "add": "{0} + {1}",
    "sub": "{0} - {1}",
    "mul": "{0} * {1}",
    "div": "{0} / {1}",
    "pow": "pow({0}, {1})",
    # torch's in-place multiply of a float32 state tensor (NAdam's mu_product): both operands
    # and the product rounded to float32
    "mul32": "(double)((float){0} * (float){1})",
}

#: fewest elements per thread: smaller groups use fewer threads (as torch's GRAIN_SIZE does)
GRAIN = 32768
#: thread ranges start at multiples of this many elements (whole cache lines, whole vectors)
ALIGN = 64


def _driver_head(ct: str) -> list[str]:
    """The exported entry point's opening lines (both kernels take the same arguments)."""
    return [
        "int64_t torchopt_threads_used = 0;  /* threads of the last call (for tests) */",
        "",
        "void torchopt_fused(int64_t ntensors, const int64_t* numels, void* const* ptrs,",
        "                    const double* hp, const float* grad_scale, int64_t nthreads,",
        "                    int64_t grain, int64_t nrep) {",
        f"    const {ct} gs = grad_scale ? ({ct})*grad_scale : ({ct})1;",
    ]


#: the thread team over ``total`` units of work, at least ``grain`` units a thread
_THREAD_TEAM = [
    "    if (grain < 1) grain = 1;",
    "    if (nthreads > total / grain) nthreads = total / grain;",
    "    if (nthreads < 1) nthreads = 1;",
    "    #pragma omp parallel num_threads(nthreads) if(nthreads > 1)",
    "    {",
    "#ifdef _OPENMP",
    "        const int64_t tid = omp_get_thread_num(), nth = omp_get_num_threads();",
    "#else",
    "        const int64_t tid = 0, nth = 1;",
    "#endif",
    "        if (tid == 0) torchopt_threads_used = nth;",
]


def _scalar_stores(body: Body, nslots: int) -> list[str]:
    """New scalar state, stored once per tensor after the parallel region (every thread has
    read the old value by then)."""
    if not body.scalar_stores:
        return []
    return [
        "    for (int64_t t = 0; t < ntensors; ++t) {",
        f"        void* const* P = ptrs + t * {nslots};",
        "        const int64_t r = 0; (void)r;  /* scalar state never depends on r */",
        *("        " + line for line in body.scalar_lines),  # (unused ones: dead code)
        *("        " + line for line in body.scalar_stores),
        "    }",
    ]


def emit_c(traced: Traced, dtypes: tuple[Any, ...], has_grad_scale: bool) -> str:
    """C source of the fused step for one layout.

    ``dtypes`` is one entry per slot: param, grad, then each state in spec order (``None`` for a
    lazy state that does not exist and is not created). Scalar states are float32.

    The function splits the group's elements (all tensors, end to end) into one contiguous range
    per thread, ``ALIGN``-aligned; a thread computes the per-tensor scalars of every tensor its
    range touches and runs the element loop over its part. New scalar state (``step``...) is
    stored after the parallel region, once every thread has read the old value. Each element's
    arithmetic does not depend on which thread runs it (no FMA contraction: ``-ffp-contract=off``),
    so any thread count gives bitwise the same result.
    """
    body = walk(traced, CDialect(dtypes, has_grad_scale))
    ct = "double" if any(d == torch.float64 for d in dtypes[:2] if d is not None) else "float"
    decls = []
    for slot, dtype in enumerate(dtypes):
        if dtype is None or (slot >= 2 and traced.slots[slot - 2][1] == "scalar"):
            continue
        decls.append(f"{_C_TYPES[dtype]}* restrict x{slot} = ({_C_TYPES[dtype]}*)P[{slot}];")
    nslots = len(dtypes)
    return "\n".join(
        [
            "/* traced update:",
            *("   " + line for line in traced.graph.describe().splitlines()),
            "*/",
            _PRELUDE,
            "static void run_range(void* const* P, int64_t n, int64_t lo, int64_t hi,",
            f"                      const double* hp, const {ct} gs, int64_t nrep) {{",
            "    (void)gs; (void)hp;",
            *("    " + d for d in decls),
            "    /* replica r owns elements [r*chunk, (r+1)*chunk): its scalars, then its loop */",
            "    const int64_t chunk = n / nrep;",
            "    for (int64_t r = lo / chunk; r < nrep && r * chunk < hi; ++r) {",
            "        const int64_t a = r * chunk > lo ? r * chunk : lo;",
            "        const int64_t z = (r + 1) * chunk < hi ? (r + 1) * chunk : hi;",
            *("        " + line for line in body.scalar_lines),
            "        #pragma GCC ivdep",
            "        for (int64_t i = a; i < z; ++i) {",
            *("            " + line for line in body.tensor_lines),
            *("            " + line for line in body.stores),
            "        }",
            "    }",
            "}",
            "",
            *_driver_head(ct),
            "    int64_t total = 0;",
            "    for (int64_t t = 0; t < ntensors; ++t) total += numels[t];",
            *_THREAD_TEAM,
            "        int64_t per = (total + nth - 1) / nth;",
            f"        per = (per + {ALIGN - 1}) / {ALIGN} * {ALIGN};",
            "        const int64_t lo = tid * per < total ? tid * per : total;",
            "        const int64_t hi = lo + per < total ? lo + per : total;",
            "        int64_t base = 0;",
            "        for (int64_t t = 0; t < ntensors && base < hi; ++t) {",
            "            const int64_t n = numels[t];",
            "            const int64_t b = lo > base ? lo - base : 0;",
            "            const int64_t e = hi < base + n ? hi - base : n;",
            f"            if (b < e) run_range(ptrs + t * {nslots}, n, b, e, hp, gs, nrep);",
            "            base += n;",
            "        }",
            "    }",
            *_scalar_stores(body, nslots),
            "}",
            "",
        ]
    )

_KERNELS: dict[str, Callable[..., None]] = {}
_LIBS: dict[int, ctypes.CDLL] = {}


def threads_used(fn: Callable[..., None]) -> int:
    """How many threads the last call of the kernel ``fn`` ran on."""
    return ctypes.c_int64.in_dll(_LIBS[id(fn)], "torchopt_threads_used").value


def compile_c(source: str, label: str) -> Callable[..., None]:
    """The ``torchopt_fused`` function of ``source`` (compiled once per machine, then cached).

    The shared object is built in the private cache directory (see :mod:`.kernel_cache`) and
    loaded only after its owner and mode are checked. OpenMP is linked against the runtime torch
    already loaded (same soname), so kernels and torch's own ops share one thread pool.
    """
    digest = hashlib.sha256((source + _cpu_signature()).encode()).hexdigest()[:24]
    fn = _KERNELS.get(digest)
    if fn is not None:
        return fn
    start = time.perf_counter()
    directory = cache_dir()
    lib_path = directory / f"fused_{digest}.so"
    from_disk = lib_path.exists()
    if not from_disk:
        src_path = directory / f"fused_{digest}.c"
        write_private(src_path, source)
        tmp = private_temp(directory, ".so")
        try:
            _compile(src_path, tmp)
            os.chmod(tmp, 0o700)  # the linker recreates the file with the umask's mode
            os.replace(tmp, lib_path)  # atomic: concurrent processes never load a partial file
        finally:
            tmp.unlink(missing_ok=True)
    check_loadable(lib_path)
    lib = ctypes.CDLL(str(lib_path))
    fn = lib.torchopt_fused
    fn.restype = None
    fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
    _KERNELS[digest] = fn
    _LIBS[id(fn)] = lib
    COMPILE_LOG.append((label, time.perf_counter() - start, from_disk))
    return fn


#: compiler flags: -ffp-contract=off keeps every element's arithmetic the same in the
#: vectorised body and the scalar tail, so the thread split cannot change a result
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
          "-fPIC", "-shared", "-std=gnu11"]
_OPENMP: list[bool] = []  # whether the compiler accepted -fopenmp (decided on first compile)


def _compile(src_path: Path, out: Path) -> None:
    compiler = os.environ.get("CC", "cc")
    attempts = [["-fopenmp"], []] if not _OPENMP else [["-fopenmp"] if _OPENMP[0] else []]
    stderr = ""
    for extra in attempts:
        cmd = [compiler, *_FLAGS, *extra, "-o", str(out), str(src_path)]
        try:
            result = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as error:
            raise RuntimeError(f"fused CPU step: cannot run the C compiler {compiler!r}: "
                               f"{error}") from error
        if result.returncode == 0:
            if not _OPENMP:
                _OPENMP.append(bool(extra))  # without OpenMP kernels run on one thread
            return
        stderr = result.stderr
    raise RuntimeError(f"fused CPU step: compiling {src_path} failed:\n{stderr[-4000:]}")


# ---------------------------------------------------------------------------------------------
# compact state (bfloat16 / int8) read and written inside the kernel
# ---------------------------------------------------------------------------------------------
_COMPACT_PRELUDE = r"""
#include <stdlib.h>
/* stochastic rounding to bfloat16: the 16 bits below bfloat16's mantissa get 16 random bits
   added (a hash of the element's index and the tensor's seed), then are cut off; ``mixed`` is
   the index times 0x%08X (mod 2^32), which the element loop keeps as a running sum (a vector
   add where a multiply per element would be) */
static inline uint16_t st_bf16_sr(float f, uint32_t mixed, uint32_t seed) {
    uint32_t x = mixed + seed;
    x ^= x >> 16; x *= 0x%08Xu; x ^= x >> 15; x *= 0x%08Xu; x ^= x >> 16;
    uint32_t u; memcpy(&u, &f, 4);
    const uint32_t r = (u + (x >> 16)) & 0xffff0000u;
    /* NaN stays NaN (a select, not a branch, so that the element loop vectorises) */
    return (uint16_t)(((u & 0x7fffffffu) > 0x7f800000u ? 0x7fc00000u : r) >> 16);
}
"""


#: the compact kernels' loops in the widest vectors the CPU has: gcc's -march=native keeps
#: 256-bit vectors on AVX-512 machines, and these loops -- many integer and float operations
#: per element for the codes, beside the update's divide and square root -- run fastest
#: with half as many instructions (vector width changes no element's arithmetic)
_WIDE_VECTORS = """
#if defined(__GNUC__) && __GNUC__ >= 8 && !defined(__clang__) && defined(__x86_64__)
#pragma GCC target("prefer-vector-width=512")
#endif"""


def _c_floats(values: Any) -> str:
    return ", ".join("INFINITY" if math.isinf(v) else f"{float(v).hex()}f" for v in values)


def _code_functions(signed: bool) -> list[str]:
    """The int8 code map's decoder and quantiser (see :mod:`.codes`): arithmetic only, the
    float32 operations of :func:`.codes.unit_values` and :meth:`.codes.CodeMap.nearest`, so
    that they vectorise and give the tensor path's bits. The quantiser takes the block's
    ``inverse``: the map's ``numerator`` over the block's scale."""
    if signed:
        levels = LEVELS[True]
        return [
            "static inline float unit_S(int c) {",
            f"    const float t = (float)c * {_c_floats([reciprocal()])};",
            "    return t * fabsf(t);",
            "}",
            "static inline int quant_S(float v, float inverse) {",
            "    const float q = v * inverse;",
            "    const float m = fabsf(q);",
            f"    float r = sqrtf(m) * {float(levels)!r}f;",
            f"    r = r < {float(levels)!r}f ? r : {float(levels)!r}f;  /* (NaN too) */",
            "    const float f = truncf(r);",
            f"    const float code = f + (m * {SIGNED_FACTOR!r}f > f * f + f + 0.5f ? 1.0f"
            " : 0.0f);",
            "    return (int)copysignf(code, q);",
            "}",
        ]
    half = 1 << (MANTISSA_SHIFT - 1)
    return [
        "static inline float unit_U(int c) {",
        f"    const uint32_t b = (uint32_t)(c + {EXPONENT_REBASE}) << {MANTISSA_SHIFT};",
        "    float w; memcpy(&w, &b, 4);",
        f"    w = c < {SUBNORMAL_CODES} ? (float)c * {_c_floats([SUBNORMAL_STEP])} : w;",
        f"    return w * {_c_floats([TOP_INVERSE])};",
        "}",
        "static inline int quant_U(float v, float inverse) {",
        "    const float q = v * inverse;",
        "    uint32_t u; memcpy(&u, &q, 4);",
        f"    const int normal = (int)((u + {half}u) >> {MANTISSA_SHIFT}) - {EXPONENT_REBASE};",
        f"    const int small = (int)(q * {_c_floats([1.0 / SUBNORMAL_STEP])} + 0.5f);",
        f"    const int code = q < {_c_floats([SMALLEST_NORMAL])} ? small : normal;",
        f"    return code < 0 ? 0 : (code > {LEVELS[False]} ? {LEVELS[False]} : code);",
        "}",
    ]


class CompactCDialect(CDialect):
    """:class:`CDialect` with compact state slots: ``compact[slot]`` is ``None`` (a plain
    slot), ``"bfloat16"`` (bfloat16 storage, stochastic rounding on store) or ``"int8"``
    (codes of the signed map, int8 storage) / ``"uint8"`` (the unsigned map), dequantised with
    the block's scale on load and kept in float32 scratch until the block is re-quantised."""

    def __init__(self, dtypes: tuple[Any, ...], has_grad_scale: bool,
                 compact: tuple[Any, ...]) -> None:
        super().__init__(dtypes, has_grad_scale)
        self.compact = compact

    def load_tensor(self, index: int, slot: int) -> list[str]:
        kind = self.compact[slot]
        if kind is None:
            return super().load_tensor(index, slot)
        if kind == "bfloat16":
            return [f"{self.ct} v{index} = ({self.ct})ld_bf16(x{slot}[i]);"]
        name = "S" if kind == "int8" else "U"
        return [f"{self.ct} v{index} = ({self.ct})(unit_{name}((int)x{slot}[i]) * amax{slot});"]

    def store_tensor(self, slot: int, expr: str) -> str:
        kind = self.compact[slot]
        if kind is None:
            return super().store_tensor(slot, expr)
        if kind == "bfloat16":
            return f"x{slot}[i] = st_bf16_sr((float)({expr}), mixed, seed{slot});"
        if kind == "uint8":  # (non-negative state: a rounding error below 0 is clamped)
            return f"{{ const float y = (float)({expr}); sc{slot}[i - a] = y < 0.0f ? 0.0f : y; }}"
        return f"sc{slot}[i - a] = (float)({expr});"


def emit_c_compact(traced: Traced, dtypes: tuple[Any, ...], has_grad_scale: bool,
                   compact: tuple[Any, ...], block: int) -> str:
    """C source of a fused step whose state slots are compact (see :class:`CompactCDialect`).

    The work is split across threads by whole units of ``block`` elements of one tensor (an
    int8 state's quantisation blocks), so a block is read, updated and re-quantised by one
    thread in one pass: its codes and scale are loaded, dequantised through the code map,
    updated, the new values kept in float32 scratch (one block, cache-resident); then one
    loop over the scratch finds every written state's new largest magnitude, and one more
    quantises them all to the nearest codes with the new scales; the next block's cache lines
    are prefetched before that (bfloat16 state: as a block starts). Each pointer row holds
    param, grad, the states, then one extra entry per compact slot: the bfloat16 rounding
    seed (the value itself) or the int8 scales' address.
    """
    dialect = CompactCDialect(dtypes, has_grad_scale, compact)
    body = walk(traced, dialect)
    ct = dialect.ct
    types = {**_C_TYPES, torch.int8: "int8_t", torch.uint8: "uint8_t"}
    compact_slots = [slot for slot, kind in enumerate(compact) if kind is not None]
    aux = {slot: len(dtypes) + k for k, slot in enumerate(compact_slots)}
    outputs = {2 + i for i, (name, _kind, _p) in enumerate(traced.slots)
               if name in traced.graph.outputs}
    quantised = [slot for slot in compact_slots if compact[slot] != "bfloat16"]
    written = [slot for slot in quantised if slot in outputs]
    decls = []
    for slot, dtype in enumerate(dtypes):
        if dtype is None or (slot >= 2 and traced.slots[slot - 2][1] == "scalar"):
            continue
        decls.append(f"{types[dtype]}* restrict x{slot} = ({types[dtype]}*)P[{slot}];")
    for slot in compact_slots:
        if compact[slot] == "bfloat16":
            decls.append(f"const uint32_t seed{slot} = (uint32_t)(uintptr_t)P[{aux[slot]}];")
        else:
            decls.append(f"float* restrict A{slot} = (float*)P[{aux[slot]}];")
    per_block = []
    for slot in quantised:
        per_block.append(f"const float amax{slot} = A{slot}[blk]; (void)amax{slot};")
    for k, slot in enumerate(written):
        per_block.append(f"float* restrict sc{slot} = scratch + {k * block};")
    # every written slot's largest magnitude in one pass over the scratch, then their codes
    # in another: the largest magnitude is the largest bit pattern of |y|, an integer
    # maximum, which vectorises where a float one would not (in a loop of its own: inside
    # the update's loop gcc may turn it into a select that does not vectorise)
    requantise = []
    if written:
        requantise += [f"uint32_t most{slot} = 0;" for slot in written]
        requantise += ["for (int64_t i = 0; i < z - a; ++i) {", "    uint32_t b;"]
        for slot in written:
            requantise += [f"    memcpy(&b, &sc{slot}[i], 4); b &= 0x7fffffffu;"
                           f" most{slot} = b > most{slot} ? b : most{slot};"]
        requantise.append("}")
    for slot in written:
        numerator = "1.0f" if compact[slot] == "int8" else _c_floats([TOP])
        requantise += [
            f"float peak{slot}; memcpy(&peak{slot}, &most{slot}, 4);",
            f"if (peak{slot} > 0.0f && peak{slot} < {_c_floats([SMALLEST_SCALE])}) "
            f"peak{slot} = {_c_floats([SMALLEST_SCALE])};",
            f"A{slot}[blk] = peak{slot};",
            f"const float inverse{slot} = {numerator} / (peak{slot} > 0.0f ? peak{slot} : 1.0f);",
        ]
    # the next block's cache lines, requested ahead: with int8 state before the block's
    # codes are computed (a loop touching nothing but the scratch, so that they arrive
    # meanwhile), with bfloat16 state as the block starts
    prefetch = ["if (z < n) {", f"    const int64_t e = z + {block} < n ? z + {block} : n;"]
    for slot, dtype in enumerate(dtypes):
        if dtype is None or (slot >= 2 and traced.slots[slot - 2][1] == "scalar"):
            continue
        write = int(slot == 0 or slot in outputs)
        prefetch.append(f"    for (int64_t k = z; k < e; k += {64 // dtype.itemsize})"
                        f" __builtin_prefetch(x{slot} + k, {write});")
    prefetch.append("}")
    if written:
        requantise += prefetch
        requantise += ["#pragma GCC ivdep", "for (int64_t i = a; i < z; ++i) {"]
        for slot in written:
            name = "S" if compact[slot] == "int8" else "U"
            requantise.append(f"    x{slot}[i] = ({types[dtypes[slot]]})quant_{name}("
                              f"sc{slot}[i - a], inverse{slot});")
        requantise.append("}")
    # bfloat16 rounding: the hash's first product, index * multiplier, as a running sum
    mix_start: list[str] = []
    mix_step: list[str] = []
    if "bfloat16" in compact:
        mix_start = [f"uint32_t mixed = (uint32_t)a * 0x{HASH_MULTIPLIERS[0]:08X}u;"]
        mix_step = [f"mixed += 0x{HASH_MULTIPLIERS[0]:08X}u;"]
    tables: list[str] = []
    for kind, signed in (("int8", True), ("uint8", False)):
        if kind in compact:
            tables += _code_functions(signed)
    nslots = len(dtypes) + len(compact_slots)
    scratch = len(written) * block
    allocate = f"(float*)malloc({scratch} * sizeof(float))" if scratch else "NULL"
    return "\n".join(
        [
            "/* traced update (compact state: " + ", ".join(
                f"slot {s} {compact[s]}" for s in compact_slots) + f", blocks of {block}):",
            *("   " + line for line in traced.graph.describe().splitlines()),
            "*/",
            _WIDE_VECTORS,
            _PRELUDE,
            _COMPACT_PRELUDE % HASH_MULTIPLIERS,
            *tables,
            "",
            "static void run_blocks(void* const* P, int64_t n, int64_t blo, int64_t bhi,",
            f"                       const double* hp, const {ct} gs, int64_t nrep,",
            "                       float* scratch) {",
            "    (void)gs; (void)hp; (void)scratch;",
            "    const int64_t r = 0; (void)r;  /* no per-replica values on this path */",
            *("    " + d for d in decls),
            *("    " + line for line in body.scalar_lines),
            "    for (int64_t blk = blo; blk < bhi; ++blk) {",
            f"        const int64_t a = blk * {block};",
            f"        const int64_t z = a + {block} < n ? a + {block} : n;",
            *("        " + line for line in per_block),
            *("        " + line for line in mix_start),
            *("        " + line for line in ([] if written else prefetch)),
            "        #pragma GCC ivdep",
            "        for (int64_t i = a; i < z; ++i) {",
            *("            " + line for line in body.tensor_lines),
            *("            " + line for line in body.stores),
            *("            " + line for line in mix_step),
            "        }",
            *("        " + line for line in requantise),
            "    }",
            "}",
            "",
            *_driver_head(ct),
            "    int64_t total = 0;  /* blocks */",
            f"    for (int64_t t = 0; t < ntensors; ++t) total += (numels[t] + {block - 1}) / "
            f"{block};",
            f"    grain = grain / {block};",
            *_THREAD_TEAM,
            f"        float* scratch = {allocate};  /* the updated blocks, before quantising */",
            "        const int64_t per = (total + nth - 1) / nth;",
            "        const int64_t lo = tid * per < total ? tid * per : total;",
            "        const int64_t hi = lo + per < total ? lo + per : total;",
            "        int64_t base = 0;",
            "        for (int64_t t = 0; t < ntensors && base < hi; ++t) {",
            f"            const int64_t nb = (numels[t] + {block - 1}) / {block};",
            "            const int64_t b = lo > base ? lo - base : 0;",
            "            const int64_t e = hi < base + nb ? hi - base : nb;",
            f"            if (b < e) run_blocks(ptrs + t * {nslots}, numels[t], b, e, hp, gs, "
            "nrep, scratch);",
            "            base += nb;",
            "        }",
            "        free(scratch);",
            "    }",
            *_scalar_stores(body, nslots),
            "}",
            "",
        ]
    )
