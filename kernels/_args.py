"""Kernel arguments that the launchers build because Triton does not pass the host value as the
kernels need it.

``view(t)``: a tensor read through its strides, as one tuple argument (pointer, stride 0, stride
1, ...). Triton specialises every element as it would a plain argument (a unit stride becomes a
constexpr), and the kernel unpacks the tuple where it indexes (the RoI and LU kernels).

``split(x)`` / ``join(pair, DT)``: a float64 scalar. Triton passes a Python float to a kernel as
an fp32 argument, on the GPU always (the interpreter of Triton 3.9 keeps it a double, so CPU tests
do not show the difference). Where a kernel computes in float64 (GRPO for float64 inputs, so that
gradcheck holds; RoI's integer pooling bins, which the oracle computes in float64 whatever the
input), the scalar x travels as split(x) = (hi, lo), hi = fp32(x), lo = fp32(x - hi), and join
restores hi + lo in float64 (about 48 bits of x, against 24) or returns hi for float32 math.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl


def view(t: torch.Tensor) -> tuple:
    """``t`` as the (pointer, strides...) tuple argument a kernel reads it through."""
    return (t, *t.stride())


def split(x: float) -> tuple[float, float]:
    """x as float32 plus the float32 remainder (hi + lo carries ~48 bits of x)."""
    hi = struct.unpack("f", struct.pack("f", float(x)))[0]
    return hi, struct.unpack("f", struct.pack("f", float(x) - hi))[0]


@triton.jit
def join(pair, DT: tl.constexpr):
    hi, lo = pair
    if DT == tl.float64:
        v = tl.cast(hi, tl.float64) + tl.cast(lo, tl.float64)
    else:
        v = hi
    return v
