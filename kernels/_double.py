"""A float64 scalar as a Triton kernel argument.

Triton passes a Python float to a kernel as an fp32 argument, on the GPU always (the interpreter
of Triton 3.9 keeps it a double, so CPU tests do not show the difference). A kernel that computes
in float64 (RoI and GRPO for float64 inputs, so that gradcheck holds) therefore takes such a
scalar x as the pair ``split(x) = (hi, lo)``: hi = fp32(x), lo = fp32(x - hi), and ``join(pair,
DT)`` restores hi + lo in float64 (about 48 bits of x, against 24) or returns hi for float32 math.
"""

from __future__ import annotations

import struct

import triton
import triton.language as tl


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
