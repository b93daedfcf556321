"""The one rounding cast of every Triton kernel that stores a low-precision result.

``cast(v, DTYPE, UPCAST)`` is ``v.to(DTYPE)`` rounding to nearest even, as the GPU's cvt.rn does.
Under the Triton interpreter (``UPCAST``: the kernel was launched with TRITON_INTERPRET=1 and a
bf16 dtype, so its tiles are upcast right after the load) an fp32 -> bf16 cast truncates instead:
the rounding is then done on the bits first (add 0x7FFF plus the lowest kept bit, clear the low 16
bits), after which the cast is exact. On the GPU ``UPCAST`` is False and this is a plain cast.
"""

import triton
import triton.language as tl


@triton.jit
def cast(v, DTYPE: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST and DTYPE == tl.bfloat16:
        bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        v = bits.to(tl.float32, bitcast=True)
    return v.to(DTYPE)
