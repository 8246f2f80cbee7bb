"""The 8-bit code maps of compact optimizer state and the constants of its rounding hash.

Shared by the tensor implementation (:mod:`.compact_state`) and the generated C kernel
(:mod:`.emit_c`), which must quantise and round bit for bit alike.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def dynamic_magnitudes(bits: int) -> list[float]:
    """Magnitudes in (0, 1], each decade with half the codes of the decade above it.

    With ``bits`` codes for magnitudes, decade ``d`` (values in (10^-(d+1), 10^-d]) gets
    ``2^(bits-1-d)`` linearly spaced values: fine steps near the block maximum, ever coarser
    but still present ones down to about 10^-bits of it.
    """
    values: list[float] = []
    for decade in range(bits):
        count = 1 << (bits - 1 - decade)
        top, bottom = 10.0 ** -decade, 10.0 ** -(decade + 1)
        values.extend(bottom + (top - bottom) * (k + 1) / count for k in range(count))
    return sorted(set(values))


def code_table(signed: bool) -> Tensor:
    """The value of every code, ascending: signed (-1..1, zero in the middle) or unsigned."""
    if signed:  # 127 magnitudes each side of 0: codes -127..127 (int8)
        mags = dynamic_magnitudes(7)
        return torch.tensor([-m for m in reversed(mags)] + [0.0] + mags, dtype=torch.float32)
    return torch.tensor([0.0] + dynamic_magnitudes(8), dtype=torch.float32)  # codes 0..255


#: the nearest code is found through cells: a float32 magnitude's exponent and the top 7 bits
#: of its mantissa (its bits >> 16) name a cell of 1/128 of an octave, from 2^-LOG_FLOOR to 1
#: (each cell narrower than the closest two midpoints, so it holds at most one midpoint): a
#: lookup and one comparison per element, in integer arithmetic that the generated kernels
#: repeat bit for bit, instead of a binary search over the table
LOG_FLOOR, CELLS = 27, 128
#: ``bits >> 16`` of the lowest magnitude of cell 0 (2^-LOG_FLOOR)
CELL_OFFSET = (127 - LOG_FLOOR) * CELLS
NCELLS = LOG_FLOOR * CELLS


class CodeTable:
    """One code map on one device: its values, and the lookup that quantises magnitudes."""

    def __init__(self, signed: bool, device: torch.device) -> None:
        self.values = code_table(signed).to(device)
        table = code_table(signed).double()
        magnitudes = table[table >= 0]  # 0 and the positive codes, ascending
        midpoints = (magnitudes[1:] + magnitudes[:-1]) / 2
        cell = torch.arange(NCELLS, dtype=torch.float64)
        lows = 2.0 ** (cell.div(CELLS, rounding_mode="floor") - LOG_FLOOR) * (
            1 + cell.remainder(CELLS) / CELLS)
        #: per cell, the code of its lowest value; a value above the code's upper midpoint
        #: takes the next code
        self.first_code = torch.bucketize(lows, midpoints).to(device)
        self.upper = torch.cat([midpoints, midpoints.new_tensor([math.inf])]).float().to(device)
        self.zero = int((table < 0).sum())  # index of the code 0 in ``values``

    def nearest(self, normalised: Tensor) -> Tensor:
        """Index into ``values`` of the code nearest to each element (in [-1, 1], float32)."""
        magnitude = normalised.abs()
        cell = magnitude.view(torch.int32).bitwise_right_shift(16).sub_(CELL_OFFSET)
        code = self.first_code[cell.clamp_(0, NCELLS - 1).long()]
        code += magnitude > self.upper[code]
        if self.zero:
            code = torch.where(normalised < 0, -code, code) + self.zero
        return code


_TABLES: dict[tuple[bool, torch.device], CodeTable] = {}


def code_map(signed: bool, device: torch.device) -> CodeTable:
    """The code map on ``device``, made once."""
    key = (signed, device)
    table = _TABLES.get(key)
    if table is None:
        table = _TABLES[key] = CodeTable(signed, device)
    return table


#: multipliers of the rounding bits' hash
HASH_MULTIPLIERS = (0x61C88647, 0x7FEB352D, 0x1B873593)
