"""Fused FP8 quantisation kernels (DeepSeek-V3 recipe): amax, scale, saturating e4m3 cast and the
scale store in the layout the GEMM (or torch._scaled_mm) reads, in one pass over the input.

    tile T (1x128 row tile, or 128x128 block):
    amax = max_T |x|                       (NaN when T holds a NaN: max.f32 alone would drop it)
    s    = max(amax, 1e-12) / 448          IEEE division (tl.math.div_rn: Triton's '/' is
                                           approximate on the GPU, and the bits must match torch)
    s    = 2^ceil(log2 s)                  UE8M0: exponent bits, +1 when any mantissa bit is set
    q    = e4m3(clamp(x / s, -448, 448))   clamp propagates NaN; the cast rounds to nearest even

Layouts: x [M, K] (float32/bf16/fp16, any strides; bf16/fp16 are upcast right after the load),
q [M, K] e4m3 and s through their strides -- so one kernel writes row-major scales, the
column-major (1, round_up(M, 4)) layout of torch._scaled_mm's BlockWise1x128, or the padded
[ceil(N/128), round_up(K/128, 4)] weight-scale rows. ``precast`` (same strides as q, float32)
optionally receives the clamped x / s values (WRITE_PRECAST): the interpreter's fp32->fp8 cast
is wrong (docs/fp8.md lists what it does), so CPU tests check the arithmetic through it. Under
the interpreter the launcher also sets ROUND_IN_FP32, which rounds onto the e4m3 grid in float32
first (the interpreter casts exactly representable values exactly), so CPU results equal torch's
cast; on a GPU the cast itself (cvt.rn.satfinite.e4m3x2.f32) rounds and the flag is off.

Grids: 1x128: cdiv(M, BLOCK_R) * K/128 programs, a program quantises BLOCK_R row tiles of one K
block (BLOCK_R x 128 values: 16 KB of fp32 in flight, coalesced 128-wide rows). 128x128: one
program per weight block, cdiv(N, 128) * K/128 of them. Both grids are one-dimensional (row block
fastest): K/128 in grid y would stop at 65,535 blocks, and the wgrad path quantises dY^T and X^T,
whose K is the token count. Offsets are 64-bit in rows and columns alike: those transposed
operands have stride_xk = N, so cols * stride_xk passes 2^31 from 299,595 tokens at N = 7168.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._compile_spec import compile_spec

QUANT_BLOCK_ROWS = 32
FP8_MAX = tl.constexpr(448.0)
AMAX_EPS = tl.constexpr(1e-12)
FLT_MAX = tl.constexpr(3.4028234663852886e38)
NAN = tl.constexpr(float("nan"))


@triton.jit
def _scale_from_amax(amax, has_nan, UE8M0: tl.constexpr):
    s = tl.math.div_rn(tl.maximum(amax, AMAX_EPS), FP8_MAX)
    if UE8M0:
        bits = s.to(tl.int32, bitcast=True)
        exp = (bits >> 23) & 0xFF
        exp = exp + ((bits & 0x7FFFFF) != 0).to(tl.int32)
        p = (exp << 23).to(tl.float32, bitcast=True)
        s = tl.where(s <= FLT_MAX, p, s)  # inf stays inf
    return tl.where(has_nan, NAN, s)


@triton.jit
def _round_e4m3_in_fp32(q):
    """RNE of |q| <= 448 onto the e4m3 grid, in float32 (only under the interpreter, whose own
    fp32 -> fp8 cast misrounds but converts every exactly representable value exactly).
    Normals: round the 23-bit mantissa to 3 bits on the bit pattern (a carry moves into the
    exponent, as it should); subnormals (|q| < 2^-6): the spacing is 2^-9, and adding then
    subtracting 1.5 * 2^14 (whose float32 ulp is 2^-9) rounds to it, ties to even."""
    bits = q.to(tl.int32, bitcast=True)
    lsb = (bits >> 20) & 1
    normal = ((bits + 0x7FFFF + lsb) & -1048576).to(tl.float32, bitcast=True)
    sub = (tl.abs(q) + 24576.0) - 24576.0
    sub = (sub.to(tl.int32, bitcast=True) | (bits & -2147483648)).to(tl.float32, bitcast=True)  # keep -0
    r = tl.where(tl.abs(q) < 0.015625, sub, normal)
    return tl.where(q != q, q, r)


@triton.jit
def _quantize_1x128_fwd_kernel(
    x_ptr,  # [M, K] input
    q_ptr,  # [M, K] e4m3 output
    s_ptr,  # [M, K/128] float32 scales (any strides)
    pre_ptr,  # [M, K] float32 pre-cast values (WRITE_PRECAST) or q again
    M,
    stride_xm,
    stride_xk,
    stride_qm,
    stride_qk,
    stride_sm,
    stride_sk,
    UE8M0: tl.constexpr,
    WRITE_PRECAST: tl.constexpr,
    BLOCK_R: tl.constexpr,
    ROUND_IN_FP32: tl.constexpr,  # interpreter only: round onto the e4m3 grid before the cast
):
    n_r = tl.cdiv(M, BLOCK_R)
    pid = tl.program_id(0)
    pid_r = pid % n_r
    kb = pid // n_r
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = rows < M
    rows64 = rows.to(tl.int64)
    cols = (kb * 128 + tl.arange(0, 128)).to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_xm + cols[None, :] * stride_xk, mask=r_ok[:, None], other=0.0).to(
        tl.float32
    )
    amax = tl.max(tl.abs(x), axis=1)
    has_nan = tl.max((x != x).to(tl.int32), axis=1) > 0
    s = _scale_from_amax(amax, has_nan, UE8M0)
    q = tl.clamp(tl.math.div_rn(x, s[:, None]), -FP8_MAX, FP8_MAX, propagate_nan=tl.PropagateNan.ALL)
    q_off = rows64[:, None] * stride_qm + cols[None, :] * stride_qk
    q8 = _round_e4m3_in_fp32(q) if ROUND_IN_FP32 else q
    tl.store(q_ptr + q_off, q8.to(tl.float8e4nv), mask=r_ok[:, None])
    if WRITE_PRECAST:
        tl.store(pre_ptr + q_off, q, mask=r_ok[:, None])
    tl.store(s_ptr + rows64 * stride_sm + kb.to(tl.int64) * stride_sk, s, mask=r_ok)


@triton.jit
def _quantize_128x128_fwd_kernel(
    w_ptr,  # [N, K] input
    q_ptr,  # [N, K] e4m3 output
    s_ptr,  # [ceil(N/128), K/128] float32 scales (any strides)
    pre_ptr,  # [N, K] float32 pre-cast values (WRITE_PRECAST) or q again
    N,
    stride_wn,
    stride_wk,
    stride_qn,
    stride_qk,
    stride_sn,
    stride_sk,
    UE8M0: tl.constexpr,
    WRITE_PRECAST: tl.constexpr,
    ROUND_IN_FP32: tl.constexpr,  # interpreter only: round onto the e4m3 grid before the cast
):
    n_nb = tl.cdiv(N, 128)
    pid = tl.program_id(0)
    nb = pid % n_nb
    kb = pid // n_nb
    rows = nb * 128 + tl.arange(0, 128)
    r_ok = rows < N  # the last row block of a ragged N: missing rows read as 0
    rows64 = rows.to(tl.int64)
    cols = (kb * 128 + tl.arange(0, 128)).to(tl.int64)
    w = tl.load(w_ptr + rows64[:, None] * stride_wn + cols[None, :] * stride_wk, mask=r_ok[:, None], other=0.0).to(
        tl.float32
    )
    amax = tl.max(tl.max(tl.abs(w), axis=1), axis=0)
    has_nan = tl.max(tl.max((w != w).to(tl.int32), axis=1), axis=0) > 0
    s = _scale_from_amax(amax, has_nan, UE8M0)
    q = tl.clamp(tl.math.div_rn(w, s), -FP8_MAX, FP8_MAX, propagate_nan=tl.PropagateNan.ALL)
    q_off = rows64[:, None] * stride_qn + cols[None, :] * stride_qk
    q8 = _round_e4m3_in_fp32(q) if ROUND_IN_FP32 else q
    tl.store(q_ptr + q_off, q8.to(tl.float8e4nv), mask=r_ok[:, None])
    if WRITE_PRECAST:
        tl.store(pre_ptr + q_off, q, mask=r_ok[:, None])
    tl.store(s_ptr + nb.to(tl.int64) * stride_sn + kb.to(tl.int64) * stride_sk, s)


def quant_compile_specs() -> list[dict]:
    """Offline sm_90 compile entries at the DeepSeek-V3 shapes (bf16 input, contiguous)."""
    specs = []
    for fn, name, rows_arg, extra in (
        (_quantize_1x128_fwd_kernel, "quantize_1x128", "M", {"BLOCK_R": QUANT_BLOCK_ROWS}),
        (_quantize_128x128_fwd_kernel, "quantize_128x128", "N", {}),
    ):
        pre = "w" if rows_arg == "N" else "x"
        rn = "n" if rows_arg == "N" else "m"
        sig = {
            f"{pre}_ptr": "*bf16",
            "q_ptr": "*fp8e4nv",
            "s_ptr": "*fp32",
            "pre_ptr": "*fp8e4nv",
            rows_arg: "i32",
            f"stride_{pre}{rn}": "i32",
            f"stride_q{rn}": "i32",
            f"stride_s{rn}": "i32",
        }
        for ue8m0, layout in ((False, "row"), (True, "row"), (False, "col")):
            if layout == "col" and rows_arg == "N":
                continue
            consts = {
                f"stride_{pre}k": 1,
                "stride_qk": 1,
                "UE8M0": ue8m0,
                "WRITE_PRECAST": False,
                "ROUND_IN_FP32": False,
                **extra,
            }
            sig_i = dict(sig)
            if layout == "col":  # torch._scaled_mm's outer-dim-major scales
                consts["stride_sm"] = 1
                sig_i.pop("stride_sm")
                sig_i["stride_sk"] = "i32"
            else:
                consts["stride_sk"] = 1
            name_i = f"{name}[{'ue8m0' if ue8m0 else 'fp32'},{layout}]"
            div = (f"stride_{pre}{rn}", f"stride_q{rn}")
            specs.append(compile_spec(fn, name_i, sig_i, consts, 4 if rows_arg == "M" else 8, 1, div))
    return specs
