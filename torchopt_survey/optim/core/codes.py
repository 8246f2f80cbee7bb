"""The 8-bit code maps of compact optimizer state and the constants of its rounding hash.

Shared by the tensor implementation (:mod:`.compact_state`) and the generated C kernel
(:mod:`.emit_c`), which must quantise and round bit for bit alike.

Both maps decode and encode by arithmetic alone (no table, no search), so that the kernel's
loops vectorise. A code stands for a fraction of its block's largest magnitude:

* signed state (codes ``c`` in -127..127, int8): a *power* map, ``sign(c) * (|c|/127)^2`` --
  fine steps near the block's maximum, 6.2e-5 of it the smallest non-zero value. Encoding:
  the square root of the magnitude scaled to the codes and truncated gives the code just
  below it (or, float rounding at a code, the one just above), and one comparison with the
  midpoint between it and the next code (in closed form, ``k^2 + k + 1/2`` over 127^2)
  decides -- all in float32, the sign put back last;
* non-negative state (codes 0..255, uint8: second moments, accumulators): an 8-bit *float*,
  5 exponent and 3 mantissa bits (subnormals below 2^-30), scaled so that the largest code
  is the block's maximum -- never below zero, every value within 1/16 of a code, and
  reaching down to 1e-10 of the block's maximum, so that a small second moment does not
  collapse to zero under a non-zero first moment (whose square root is then a denominator).
  Encoding rounds the float32 bits to 3 mantissa bits (nearest, ties up) and rebases the
  exponent; decoding puts the code back into float32 bits.

The *dynamic* map of version 0.2.0 (decimal-float-like codes, after bitsandbytes) is kept for
reading state dicts saved with it (:func:`legacy_code_table`).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: largest code of each map: codes -127..127 (signed), 0..255 (unsigned)
LEVELS = {True: 127, False: 255}

#: the unsigned map: codes ``c >= SUBNORMAL_CODES`` are the float32 with bits
#: ``(c + EXPONENT_REBASE) << MANTISSA_SHIFT``, those below ``c * SUBNORMAL_STEP``; the largest
#: code (``TOP``, 1.875) stands for the block's maximum
MANTISSA_SHIFT = 20  # 23 - 3 mantissa bits
EXPONENT_REBASE = 96 << 3  # float32 exponent 97 (2^-30) is the code map's exponent 1
SUBNORMAL_CODES = 8
SUBNORMAL_STEP = 2.0 ** -33
SMALLEST_NORMAL = 2.0 ** -30
TOP = 1.875
#: the smallest block scale: a block whose largest magnitude is below it (float32 subnormals)
#: is scaled as if its largest were this, so that ``numerator / scale`` stays finite (below
#: about 3e-39 it overflows, and every code would decode to +-the block's largest magnitude)
SMALLEST_SCALE = 2.0 ** -126


def _f32(value: float) -> float:
    return float(torch.tensor(value, dtype=torch.float32))


def reciprocal() -> float:
    """``1 / 127`` rounded to float32: what a signed code is multiplied by to decode it."""
    return _f32(1.0 / LEVELS[True])


#: the signed map's midpoint test: ``magnitude * 127^2 > k^2 + k + 1/2``
SIGNED_FACTOR = float(LEVELS[True] ** 2)
#: float32 1/TOP: what an unsigned code's float is multiplied by to decode it
TOP_INVERSE = _f32(1.0 / TOP)


def unit_values(codes: Tensor, signed: bool) -> Tensor:
    """The value of each code (float32) as a fraction of the block's largest magnitude, in
    the float32 operations the C kernel repeats."""
    if signed:
        t = codes.float() * reciprocal()
        return t * t.abs()
    codes = codes.to(torch.int32)
    normal = (codes + EXPONENT_REBASE).bitwise_left_shift(MANTISSA_SHIFT).view(torch.float32)
    value = torch.where(codes < SUBNORMAL_CODES, codes.float() * SUBNORMAL_STEP, normal)
    return value * TOP_INVERSE


class CodeMap:
    """One code map on one device: every code's value, and the quantiser."""

    def __init__(self, signed: bool, device: torch.device) -> None:
        self.signed = signed
        self.levels = LEVELS[signed]
        low = -self.levels if signed else 0
        self.codes = torch.arange(low, self.levels + 1, dtype=torch.int32, device=device)
        #: the value of every code, ascending (index = code + zero)
        self.values = unit_values(self.codes, signed)
        self.zero = self.levels if signed else 0  # index of the code 0 in ``values``
        #: what the block's largest magnitude is scaled to before :meth:`nearest`
        self.numerator = 1.0 if signed else TOP

    def nearest(self, scaled: Tensor) -> Tensor:
        """Index into ``values`` of the code nearest to each element of ``scaled`` (float32:
        the values times ``numerator / scale``, so |x| <= numerator up to rounding; the
        unsigned map takes x >= 0)."""
        if not self.signed:
            bits = scaled.view(torch.int32)
            # (uint32 arithmetic in int32: a wrapped sum, a masked arithmetic shift)
            normal = ((bits + (1 << (MANTISSA_SHIFT - 1))) >> MANTISSA_SHIFT).bitwise_and_(
                0xFFF) - EXPONENT_REBASE
            small = (scaled * (1.0 / SUBNORMAL_STEP) + 0.5).to(torch.int32)
            code = torch.where(scaled < SMALLEST_NORMAL, small, normal)
            return code.clamp_(0, self.levels)
        magnitude = scaled.abs()
        # the code below the root (in float32, a whole number; NaN: the largest code); at
        # ``levels`` (magnitude 1) the midpoint test is false
        root = magnitude.sqrt() * float(self.levels)
        below = torch.where(root < self.levels, root, float(self.levels)).trunc_()
        code = below + (magnitude * SIGNED_FACTOR > below * below + below + 0.5).float()
        return torch.copysign(code, scaled).to(torch.int32) + self.zero


_MAPS: dict[tuple[bool, torch.device], CodeMap] = {}


def code_map(signed: bool, device: torch.device) -> CodeMap:
    """The code map on ``device``, made once."""
    key = (signed, device)
    found = _MAPS.get(key)
    if found is None:
        found = _MAPS[key] = CodeMap(signed, device)
    return found


def _dynamic_magnitudes(bits: int) -> list[float]:
    """Magnitudes in (0, 1] of version 0.2.0's dynamic map: decade ``d`` (values in
    (10^-(d+1), 10^-d]) has ``2^(bits-1-d)`` linearly spaced values."""
    values: list[float] = []
    for decade in range(bits):
        count = 1 << (bits - 1 - decade)
        top, bottom = 10.0 ** -decade, 10.0 ** -(decade + 1)
        values.extend(bottom + (top - bottom) * (k + 1) / count for k in range(count))
    return sorted(set(values))


def legacy_code_table(signed: bool) -> Tensor:
    """The value of every code of version 0.2.0's dynamic map, ascending (float32): signed
    (codes -127..127 at indices 0..254) or unsigned (codes 0..255). Only read back: state
    saved with it is converted to the power maps on loading."""
    if signed:
        mags = _dynamic_magnitudes(7)
        return torch.tensor([-m for m in reversed(mags)] + [0.0] + mags, dtype=torch.float32)
    return torch.tensor([0.0] + _dynamic_magnitudes(8), dtype=torch.float32)


#: multipliers of the rounding bits' hash
HASH_MULTIPLIERS = (0x61C88647, 0x7FEB352D, 0x1B873593)
