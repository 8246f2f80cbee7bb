"""Inputs for the compact-state kernels' quantiser checks, shared by the C and Triton suites."""

from __future__ import annotations

from collections.abc import Callable

import torch

import torchopt_survey.optim as O
from torchopt_survey.optim.core import codes as code_maps
from torchopt_survey.optim.core import compact_state as C


def hard_values(signed: bool) -> torch.Tensor:
    """Every midpoint between neighbouring codes and its two float32 neighbours, every code
    value, and magnitudes around the unsigned map's smallest normal (2^-30 of the top code),
    subnormals, zero; negated too for the signed map; each block of 256 led by 1.0, so the
    block scale is exactly 1 -- after three blocks whose largest magnitude is a float32
    subnormal or the smallest normal (scaled by the smallest scale, not by that maximum)."""
    values = code_maps.code_map(signed, torch.device("cpu")).values.abs().unique()
    mids = ((values[1:].double() + values[:-1].double()) / 2).float()
    tiny = torch.tensor([0.0, 1e-45, 1e-40, 2.0**-31, 2.0**-30, 2.0**-29, 3e-8, 5e-8, 1e-7,
                         5e-7, 1e-6, 1e-10, 1e-11])
    parts = [mids, torch.nextafter(mids, torch.tensor(2.0)), torch.nextafter(mids, torch.zeros(1)),
             values, tiny, torch.nextafter(tiny, torch.ones(1))]
    magnitudes = torch.cat(parts)
    values = torch.cat([magnitudes, -magnitudes]) if signed else magnitudes
    blocks = values.split(255)
    return torch.cat([tiny_blocks(signed)] + [torch.cat([torch.ones(1), b]) for b in blocks])


def tiny_blocks(signed: bool) -> torch.Tensor:
    """Three blocks of 256 whose largest magnitudes are 2e-39, 1e-45 (float32 subnormals) and
    2^-126 (the smallest normal), with zeros, smaller subnormals and (signed) negatives."""
    smallest = torch.tensor(code_maps.SMALLEST_SCALE)
    out = []
    for lead in (torch.tensor(2e-39), torch.tensor(1e-45), smallest):
        body = torch.tensor([0.0, 1e-39, 1e-40, 1e-45, 3e-44, 0.0]).clamp(max=lead)
        body = torch.cat([body, -body]) if signed else body
        block = torch.zeros(256)
        block[0] = lead
        block[1:1 + body.numel()] = body
        out.append(block)
    return torch.cat(out)


def check_kernel_quantiser(signed: bool, kernel_step: Callable[[Callable[[], None]], None]) -> None:
    """A fused int8 step whose new state is :func:`hard_values` itself must store what
    ``quantize_int8`` stores: SGD's momentum buffer (signed map) becomes the gradient from a
    zero buffer; Adamax's ``exp_inf`` (unsigned) becomes |gradient| with eps 0.
    ``kernel_step(step)`` runs that step and checks that the compact kernel ran it."""
    values = hard_values(signed)
    param = torch.zeros(values.numel(), requires_grad=True)
    if signed:
        opt = O.SGD([param], lr=0.0, momentum=0.9, fused=True, state_dtype="int8")
        name = "momentum_buffer"
    else:
        opt = O.Adamax([param], lr=0.0, eps=0.0, fused=True, state_dtype="int8")
        name = "exp_inf"
    param.grad = torch.ones_like(param)
    opt.step()  # creates the state (general path)
    state = opt.state[param]
    state[name].zero_()
    state[name + C.SCALE].zero_()  # a zero buffer: the new state is the gradient itself
    param.grad = values.clone()
    kernel_step(opt.step)
    codes, absmax = C.quantize_int8(values, 256, non_negative=not signed)
    assert torch.equal(state[name + C.SCALE], absmax)
    wrong = (state[name] != codes).nonzero().flatten()
    assert not wrong.numel(), (values[wrong][:5], state[name][wrong][:5], codes[wrong][:5])
