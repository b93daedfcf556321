"""Triton backend of the masked autoregressive family (MADE / MAF / IAF): masked_linear forward and
backward with the mask computed from degree vectors, and the plain masked matmul for explicit
masks. Semantics are pygen.ref.made's; the launcher contract is docs/ARCHITECTURE.md's.

Layouts
-------
x       : [M, K]  rows of the input (any strides)            M = batch, K = in_features
weight  : [N, K]  nn.Linear layout (any strides)             N = out_features
bias    : [N]     any strides (the launchers pass a contiguous copy of a strided one: the
                  kernels index it with unit stride, and a stride-0 bias read past its storage)
in_deg  : [K], out_deg : [N]   contiguous int32 / int64 degrees
mask    : [N, K]  uint8 (0 / 1), any strides   (explicit-mask kernels only)
y, z    : [M, N]  contiguous, x's dtype (z = pre-activation, written for gelu only)
saved   : y for relu / elu / tanh, z for gelu (what the activation's derivative is read from)
dx [M, K], dw [N, K], db [N]: contiguous, the dtypes of x, weight, bias (fp32 accumulation)

Math (pygen.ref.made):  M[n, k] = out_deg[n] - strict >= in_deg[k]
    y  = act(x . (W * M)^T + b)
    g  = dy * act'(saved)                  computed in registers where it is loaded
    dx = g . (W * M)         dW = M * (g^T . x)         db = sum_m g

Tile skipping
-------------
A [BLOCK_N output rows] x [BLOCK_K reduction columns] tile of M is *zero* when the smallest
reduction degree exceeds the largest row degree, *full* when the largest reduction degree is at
most the smallest row degree, *partial* otherwise. ``_made_plan_kernel`` classifies the tiles of
one operand once per call (one program per output tile, a scan over degree vectors only) into a
[T, J] int32 list: the full K-tiles from the front, the partial ones from the back, and their
counts [T, 2]. The matmul kernels then loop over the full tiles with no masking arithmetic,
over the partial tiles with the mask rebuilt in registers from the two degree vectors, and never
touch the zero tiles (neither their loads nor their MMAs); one loop, ``_plan_matmul``, does this
for the forward, the MAF head and dx. This holds for any degree order;
sorting hidden units by degree (pygen.ref.made.degree_sort_permutation) turns the zero tiles of
MADE's masks into a staircase covering about half of every matrix. dW tiles are classified in
the dW kernel itself (its reduction is over the batch): zero tiles store zeros without reading
anything, full tiles store unmasked, partial tiles mask once at the end.

The explicit-mask kernels (EXPLICIT_MASK=True) read the [N, K] mask tile next to every weight
tile and treat every tile as partial: the plain masked matmul for masks that no degree
assignment reproduces.

Precision: tl.dot on the input dtype with fp32 accumulation (fp32 inputs: IEEE unless
torch.backends.cuda.matmul.allow_tf32); bias, activation and its derivative in fp32. Under
TRITON_INTERPRET=1 bf16 tiles are upcast right after the load (the interpreter's bf16 arithmetic
is broken).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._bf16 import cast as _cast
from .._device import interpreting
from .._grid import grouped_tile

ACT_CODES = {"none": 0, "relu": 1, "elu": 2, "tanh": 3, "gelu": 4}
_I64_MAX = tl.constexpr((1 << 63) - 1)  # neutral elements of min / max over int64 degrees
_I64_MIN = tl.constexpr(-(1 << 63))
_SQRT1_2 = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


# ----------------------------------------------------------------------------------------------
# device helpers
# ----------------------------------------------------------------------------------------------
@triton.jit
def _activate(z, ACT: tl.constexpr):
    """act(z) in fp32 (ACT codes: 0 none, 1 relu, 2 elu, 3 tanh, 4 gelu). A NaN stays NaN, as in
    torch: tl.maximum / tl.minimum return the other operand for NaN unless told to propagate it
    (relu), and elu's comparison sends NaN to the identity branch. (relu as tl.where(z < 0, 0, z)
    cost masked_linear_fwd[fp32] 236 -> 255 registers under Triton 3.8; this form costs none.)"""
    y = z
    if ACT == 1:
        y = tl.maximum(z, 0.0, propagate_nan=tl.PropagateNan.ALL)
    elif ACT == 2:
        y = tl.where(z <= 0.0, tl.exp(tl.minimum(z, 0.0)) - 1.0, z)
    elif ACT == 3:
        # tanh(z) = 1 - 2 / (exp(2z) + 1); exp overflow to inf gives exactly 1
        y = 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)
    elif ACT == 4:
        y = 0.5 * z * (1.0 + tl.math.erf(z * _SQRT1_2))
    return y


@triton.jit
def _activate_grad(dy, s, ACT: tl.constexpr):
    """dy * act'(.) in fp32, from the saved tensor s (y for relu / elu / tanh, z for gelu)."""
    g = dy
    if ACT == 1:
        g = tl.where(s > 0, dy, 0.0)
    elif ACT == 2:
        g = tl.where(s > 0, dy, dy * (s + 1.0))
    elif ACT == 3:
        g = dy * (1.0 - s * s)
    elif ACT == 4:
        cdf = 0.5 * (1.0 + tl.math.erf(s * _SQRT1_2))
        pdf = tl.exp(-0.5 * s * s) * _INV_SQRT_2PI
        g = dy * (cdf + s * pdf)
    return g


@triton.jit
def _mma(a, b, acc, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _swizzled_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's [BLOCK_M, BLOCK_N] tile of an [M, N] output (grouped program order,
    kernels/_grid.py): its column tile index, its row and column offsets and their masks."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    return pid_n, offs_m, offs_n, offs_m < M, offs_n < N


@triton.jit
def _grad_tile(
    gy_ptr,
    s_ptr,
    rows,
    cols,
    mask,
    stride_r,
    stride_c,
    s_stride_r,
    s_stride_c,
    ACT: tl.constexpr,
    OUT_DTYPE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """g = dy * act'(saved) on one tile, returned in OUT_DTYPE (the dot's operand dtype)."""
    off = rows[:, None] * stride_r + cols[None, :] * stride_c
    dy = tl.load(gy_ptr + off, mask=mask, other=0.0)
    if ACT == 0:
        g = dy.to(OUT_DTYPE)
    else:
        s = tl.load(s_ptr + rows[:, None] * s_stride_r + cols[None, :] * s_stride_c, mask=mask, other=0.0)
        g = _cast(_activate_grad(dy.to(tl.float32), s.to(tl.float32), ACT), OUT_DTYPE, UPCAST)
    return g


@triton.jit
def _kept(od, ind, STRICT: tl.constexpr):
    """M = out_deg > in_deg (STRICT) or out_deg >= in_deg, elementwise (broadcasting)."""
    if STRICT:
        k = od > ind
    else:
        k = od >= ind
    return k


@triton.jit
def _tile_class(omin, omax, imin, imax, STRICT: tl.constexpr):
    """(zero, full) for a tile whose output degrees lie in [omin, omax] and input degrees in
    [imin, imax]: zero when no (o, i) pair is kept, full when every pair is."""
    if STRICT:
        zero = imin >= omax
        full = imax < omin
    else:
        zero = imin > omax
        full = imax <= omin
    return zero, full


@triton.jit
def _deg_range(d, ok):
    """(min, max) of the int64 degrees d over the lanes where ok (int64 extremes elsewhere)."""
    lo = tl.min(tl.where(ok, d, _I64_MAX), axis=0)
    hi = tl.max(tl.where(ok, d, _I64_MIN), axis=0)
    return lo, hi


# ----------------------------------------------------------------------------------------------
# tile plan
# ----------------------------------------------------------------------------------------------
@triton.jit
def _made_plan_kernel(
    row_deg_ptr,  # [R] degrees along the output-tile axis
    red_deg_ptr,  # [KR] degrees along the reduction axis
    plan_ptr,  # [T, J] int32 out: full K-tiles from the front, partial from the back
    count_ptr,  # [T, 2] int32 out: (number of full, number of partial) tiles
    R,
    KR,
    J,  # sizes; J = cdiv(KR, BLOCK_K)
    STRICT: tl.constexpr,  # out_deg > in_deg instead of >=
    ROWS_ARE_OUT: tl.constexpr,  # True: rows are output units (forward); False: inputs (dx)
    BLOCK_R: tl.constexpr,  # output-tile size of the matmul that reads the plan
    BLOCK_K: tl.constexpr,  # reduction-tile size of that matmul
):
    t = tl.program_id(0)
    offs_r = t * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    rd = tl.load(row_deg_ptr + offs_r, mask=r_ok, other=0).to(tl.int64)
    rmin, rmax = _deg_range(rd, r_ok)
    n_full = 0
    n_part = 0
    for j in range(0, J):
        offs_k = j * BLOCK_K + tl.arange(0, BLOCK_K)
        k_ok = offs_k < KR
        kd = tl.load(red_deg_ptr + offs_k, mask=k_ok, other=0).to(tl.int64)
        kmin, kmax = _deg_range(kd, k_ok)
        if ROWS_ARE_OUT:
            zero, full = _tile_class(rmin, rmax, kmin, kmax, STRICT)
        else:
            zero, full = _tile_class(kmin, kmax, rmin, rmax, STRICT)
        if full:
            tl.store(plan_ptr + t * J + n_full, j)
            n_full += 1
        elif not zero:
            n_part += 1
            tl.store(plan_ptr + t * J + (J - n_part), j)
    tl.store(count_ptr + 2 * t, n_full)
    tl.store(count_ptr + 2 * t + 1, n_part)


@triton.jit
def _load_x(x_rows, offs_k, mask, stride_xk, X_BITS: tl.constexpr, DTYPE: tl.constexpr):
    """An x tile [rows, offs_k]. With X_BITS, x holds int32 words of 32 binary features each
    (feature k = bit k % 32 of word k // 32) and the tile is unpacked to 0 / 1 in DTYPE: the first
    MADE layer then sums the weight columns of the set bits, reading 1/16 of the bf16 bytes."""
    if X_BITS:
        words = tl.load(x_rows + (offs_k // 32)[None, :] * stride_xk, mask=mask, other=0)
        a = (
            ((words >> (offs_k % 32)[None, :]) & 1).to(tl.float32).to(DTYPE)
        )  # (int -> bf16 is broken in the interpreter)
    else:
        a = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=mask, other=0.0)
    return a


@triton.jit
def _a_tile(
    a,
    offs,
    k_ok,
    ROWS_ARE_OUT: tl.constexpr,
    ACT: tl.constexpr,
    X_BITS: tl.constexpr,
    DTYPE: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """The dot's left operand [BLOCK_M, BLOCK_K] at reduction offsets offs, in DTYPE: x in the
    forward (ROWS_ARE_OUT; a = (row pointers [BLOCK_M, 1], stride along K, row mask), X_BITS as
    _load_x), g = dy * act'(saved) in dx (a = (dy, saved, rows, N, row mask), both [M, N] contiguous)."""
    if ROWS_ARE_OUT:
        x_rows, stride_xk, m_ok = a
        t = _load_x(x_rows, offs, m_ok[:, None] & k_ok[None, :], stride_xk, X_BITS, DTYPE)
    else:
        gy_ptr, s_ptr, rows, N, m_ok = a
        t = _grad_tile(gy_ptr, s_ptr, rows, offs, m_ok[:, None] & k_ok[None, :], N, 1, N, 1, ACT, DTYPE, UPCAST)
    return t


@triton.jit
def _w_tile(w, offs, k_ok, rd, red_deg_ptr, STRICT: tl.constexpr, ROWS_ARE_OUT: tl.constexpr, PARTIAL: tl.constexpr):
    """The dot's right operand [BLOCK_K, BLOCK_N] of W at reduction offsets offs (w = (pointers,
    stride along the reduction, mask of the tile's units with degrees rd)): W's rows in the forward
    (ROWS_ARE_OUT), loaded [BLOCK_N, BLOCK_K] and transposed (fp32 FMA dots spill otherwise), W's
    columns in dx. PARTIAL: masked by M rebuilt from rd and the reduction units' degrees."""
    w_ptrs, stride_r, ok = w
    if ROWS_ARE_OUT:
        t = tl.load(w_ptrs + offs[None, :] * stride_r, mask=ok[:, None] & k_ok[None, :], other=0.0)
        if PARTIAL:
            ind = tl.load(red_deg_ptr + offs, mask=k_ok, other=0).to(tl.int64)
            t = tl.where(_kept(rd[:, None], ind[None, :], STRICT), t, tl.zeros_like(t))
        t = tl.trans(t)
    else:
        t = tl.load(w_ptrs + offs[:, None] * stride_r, mask=k_ok[:, None] & ok[None, :], other=0.0)
        if PARTIAL:
            od = tl.load(red_deg_ptr + offs, mask=k_ok, other=0).to(tl.int64)
            t = tl.where(_kept(od[:, None], rd[None, :], STRICT), t, tl.zeros_like(t))
    return t


@triton.jit
def _plan_matmul(
    acc,
    a,
    w,
    plan,
    STRICT: tl.constexpr,
    ROWS_ARE_OUT: tl.constexpr,
    ACT: tl.constexpr,
    X_BITS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """acc += A . (W * M) over the reduction tiles the plan lists for one output tile: the full
    tiles with no masking arithmetic, then the partial tiles with M rebuilt from the degrees in
    registers. Forward (ROWS_ARE_OUT): A = x, reduced over the inputs; dx: A = g, reduced over the
    outputs (a, w: _a_tile, _w_tile). plan = (pointers to the degrees of the tile's units, the
    reduction units' degrees, plan_ptr, count_ptr, J, the tile's index, the reduction length)."""
    rd_ptrs, red_deg_ptr, plan_ptr, count_ptr, J, tile, n_red = plan
    rd = tl.load(rd_ptrs, mask=w[2], other=0).to(tl.int64)
    n_full = tl.load(count_ptr + 2 * tile)
    n_part = tl.load(count_ptr + 2 * tile + 1)
    plan_row = plan_ptr + tile * J
    rk = tl.arange(0, BLOCK_K)
    dtype = w[0].dtype.element_ty
    for jj in range(0, n_full):
        offs = tl.load(plan_row + jj) * BLOCK_K + rk
        k_ok = offs < n_red
        at = _a_tile(a, offs, k_ok, ROWS_ARE_OUT, ACT, X_BITS, dtype, UPCAST)
        acc = _mma(at, _w_tile(w, offs, k_ok, rd, red_deg_ptr, STRICT, ROWS_ARE_OUT, False), acc, UPCAST, PRECISION)
    for jj in range(J - n_part, J):
        offs = tl.load(plan_row + jj) * BLOCK_K + rk
        k_ok = offs < n_red
        at = _a_tile(a, offs, k_ok, ROWS_ARE_OUT, ACT, X_BITS, dtype, UPCAST)
        acc = _mma(at, _w_tile(w, offs, k_ok, rd, red_deg_ptr, STRICT, ROWS_ARE_OUT, True), acc, UPCAST, PRECISION)
    return acc


# ----------------------------------------------------------------------------------------------
# forward: y = act(x . (W * M)^T + b)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _masked_linear_fwd_kernel(
    x_ptr,  # [M, K] input
    w_ptr,  # [N, K] weight
    b_ptr,  # [N] bias (read when HAS_BIAS)
    in_deg_ptr,  # [K] input degrees (degree mode)
    out_deg_ptr,  # [N] output degrees (degree mode)
    mask_ptr,  # [N, K] uint8 mask (EXPLICIT_MASK)
    plan_ptr,  # [T, J] int32 tile plan over (N tiles, K tiles) (degree mode)
    count_ptr,  # [T, 2] int32 plan counts (degree mode)
    y_ptr,  # [M, N] output, contiguous
    z_ptr,  # [M, N] pre-activation, contiguous (written when SAVE_Z)
    M,
    N,
    K,
    J,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_mn,
    stride_mk,
    STRICT: tl.constexpr,  # 0 / 1
    ACT: tl.constexpr,  # ACT_CODES
    HAS_BIAS: tl.constexpr,
    SAVE_Z: tl.constexpr,
    EXPLICIT_MASK: tl.constexpr,  # the plain masked matmul (mask tensor, every tile partial)
    X_BITS: tl.constexpr,  # x is bit-packed int32 words (degree mode only; see _load_x)
    UPCAST: tl.constexpr,  # bf16 under the interpreter
    PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 operands
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_n, offs_m, offs_n, m_ok, n_ok = _swizzled_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rk = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm
    w_rows = w_ptr + offs_n[:, None] * stride_wn  # W tiles are loaded [BLOCK_N, BLOCK_K], then
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # transposed (fp32 FMA dots spill otherwise)
    if EXPLICIT_MASK:
        for kt in range(0, J):
            offs_k = kt * BLOCK_K + rk
            k_ok = offs_k < K
            a = tl.load(x_rows + offs_k[None, :] * stride_xk, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            wk_ok = n_ok[:, None] & k_ok[None, :]
            w = tl.load(w_rows + offs_k[None, :] * stride_wk, mask=wk_ok, other=0.0)
            keep = tl.load(mask_ptr + offs_n[:, None] * stride_mn + offs_k[None, :] * stride_mk, mask=wk_ok, other=0)
            w = tl.where(keep != 0, w, tl.zeros_like(w))
            acc = _mma(a, tl.trans(w), acc, UPCAST, PRECISION)
    else:
        plan = (out_deg_ptr + offs_n, in_deg_ptr, plan_ptr, count_ptr, J, pid_n, K)
        x, w = (x_rows, stride_xk, m_ok), (w_rows, stride_wk, n_ok)
        acc = _plan_matmul(acc, x, w, plan, STRICT, True, 0, X_BITS, UPCAST, PRECISION, BLOCK_K)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_off = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    out_mask = m_ok[:, None] & n_ok[None, :]
    if SAVE_Z:
        tl.store(z_ptr + out_off, _cast(acc, z_ptr.dtype.element_ty, UPCAST), mask=out_mask)
    y = _activate(acc, ACT)
    tl.store(y_ptr + out_off, _cast(y, y_ptr.dtype.element_ty, UPCAST), mask=out_mask)


# ----------------------------------------------------------------------------------------------
# MAF output head: params = h . (W * M)^T + b (strict), z = scale * x + shift, log-det partials
# ----------------------------------------------------------------------------------------------
@triton.jit
def _made_affine_fwd_kernel(
    h_ptr,  # [M, K] last hidden layer
    w_ptr,  # [N, K] output weight, N = 2D: rows 2d, 2d+1 = (unconstrained scale, shift) of d
    b_ptr,  # [N] bias (read when HAS_BIAS)
    in_deg_ptr,  # [K] hidden degrees
    out_deg_ptr,  # [N] output degrees (mask: out_deg > in_deg)
    plan_ptr,  # [T, J] int32 tile plan (strict)
    count_ptr,  # [T, 2] int32
    x_ptr,  # [M, D] the data transformed by the layer (any strides)
    z_ptr,  # [M, D] out, contiguous: sigmoid(a + 2) + 1e-3 = scale; z = scale * x + shift
    p_ptr,  # [M, N] out, contiguous: the parameters (written when SAVE_PARAMS)
    ld_ptr,  # [M, T] out, fp32: per output tile, sum of log(scale) over its inputs d
    M,
    N,
    K,
    J,
    T,
    stride_hm,
    stride_hk,
    stride_wn,
    stride_wk,
    stride_xm,
    stride_xd,
    HAS_BIAS: tl.constexpr,
    SAVE_PARAMS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_n, offs_m, offs_n, m_ok, n_ok = _swizzled_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows64 = offs_m.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    h = (h_ptr + rows64[:, None] * stride_hm, stride_hk, m_ok)
    w = (w_ptr + offs_n[:, None] * stride_wn, stride_wk, n_ok)
    plan = (out_deg_ptr + offs_n, in_deg_ptr, plan_ptr, count_ptr, J, pid_n, K)
    acc = _plan_matmul(acc, h, w, plan, 1, True, 0, False, UPCAST, PRECISION, BLOCK_K)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if SAVE_PARAMS:
        tl.store(
            p_ptr + rows64[:, None] * N + offs_n[None, :],
            _cast(acc, p_ptr.dtype.element_ty, UPCAST),
            mask=m_ok[:, None] & n_ok[None, :],
        )
    # adjacent columns (2d, 2d+1) hold (a, shift) of input d; BLOCK_N is even, so pairs stay in a tile
    a, shift = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))
    offs_d = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    d_ok = m_ok[:, None] & (offs_d < N // 2)[None, :]
    xv = tl.load(x_ptr + rows64[:, None] * stride_xm + offs_d[None, :] * stride_xd, mask=d_ok, other=0.0)
    scale = tl.sigmoid(a + 2.0) + 1e-3
    z = scale * xv.to(tl.float32) + shift
    tl.store(z_ptr + rows64[:, None] * (N // 2) + offs_d[None, :], _cast(z, z_ptr.dtype.element_ty, UPCAST), mask=d_ok)
    ls = tl.where(d_ok, tl.log(scale), 0.0)
    tl.store(ld_ptr + rows64 * T + pid_n, tl.sum(ls, axis=1), mask=m_ok)


# ----------------------------------------------------------------------------------------------
# backward, dx = g . (W * M)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _masked_linear_dx_kernel(
    gy_ptr,  # [M, N] dL/dy, contiguous
    s_ptr,  # [M, N] saved y (or z for gelu), contiguous (read when ACT != 0)
    w_ptr,  # [N, K] weight
    in_deg_ptr,  # [K]
    out_deg_ptr,  # [N]
    mask_ptr,  # [N, K] uint8 (EXPLICIT_MASK)
    plan_ptr,  # [T, J] int32 plan over (K tiles of BLOCK_N, N tiles of BLOCK_K)
    count_ptr,  # [T, 2] int32
    dx_ptr,  # [M, K] out, contiguous
    M,
    N,
    K,
    J,
    stride_wn,
    stride_wk,
    stride_mn,
    stride_mk,
    STRICT: tl.constexpr,
    ACT: tl.constexpr,
    EXPLICIT_MASK: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,  # batch rows per program
    BLOCK_N: tl.constexpr,  # input features per program (the output tile's columns)
    BLOCK_K: tl.constexpr,  # output units per reduction step
    GROUP_M: tl.constexpr,
):
    pid_i, offs_m, offs_i, m_ok, i_ok = _swizzled_tile(M, K, BLOCK_M, BLOCK_N, GROUP_M)
    ro = tl.arange(0, BLOCK_K)
    rows64 = offs_m.to(tl.int64)
    w_cols = w_ptr + offs_i[None, :] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    op_dtype = w_ptr.dtype.element_ty
    if EXPLICIT_MASK:
        for ot in range(0, J):
            offs_o = ot * BLOCK_K + ro
            o_ok = offs_o < N
            g = _grad_tile(
                gy_ptr, s_ptr, rows64, offs_o, m_ok[:, None] & o_ok[None, :], N, 1, N, 1, ACT, op_dtype, UPCAST
            )
            wo_ok = o_ok[:, None] & i_ok[None, :]
            w = tl.load(w_cols + offs_o[:, None] * stride_wn, mask=wo_ok, other=0.0)
            keep = tl.load(mask_ptr + offs_o[:, None] * stride_mn + offs_i[None, :] * stride_mk, mask=wo_ok, other=0)
            w = tl.where(keep != 0, w, tl.zeros_like(w))
            acc = _mma(g, w, acc, UPCAST, PRECISION)
    else:
        plan = (in_deg_ptr + offs_i, out_deg_ptr, plan_ptr, count_ptr, J, pid_i, N)
        g = (gy_ptr, s_ptr, rows64, N, m_ok)
        acc = _plan_matmul(
            acc, g, (w_cols, stride_wn, i_ok), plan, STRICT, False, ACT, False, UPCAST, PRECISION, BLOCK_K
        )
    out_off = rows64[:, None] * K + offs_i[None, :]
    tl.store(dx_ptr + out_off, _cast(acc, dx_ptr.dtype.element_ty, UPCAST), mask=m_ok[:, None] & i_ok[None, :])


# ----------------------------------------------------------------------------------------------
# backward, dW = M * (g^T . x) and db = sum_m g
# ----------------------------------------------------------------------------------------------
@triton.jit
def _masked_linear_dw_kernel(
    gy_ptr,  # [M, N] dL/dy, contiguous
    s_ptr,  # [M, N] saved y (or z), contiguous (read when ACT != 0)
    x_ptr,  # [M, K] input
    in_deg_ptr,  # [K]
    out_deg_ptr,  # [N]
    mask_ptr,  # [N, K] uint8 (EXPLICIT_MASK)
    dw_ptr,  # [N, K] out, contiguous
    db_ptr,  # [N] out (written when HAS_BIAS, by the programs of column tile 0)
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_mn,
    stride_mk,
    STRICT: tl.constexpr,
    ACT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    EXPLICIT_MASK: tl.constexpr,
    X_BITS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,  # output units per program (rows of dW)
    BLOCK_K: tl.constexpr,  # input features per program (columns of dW)
    BLOCK_M: tl.constexpr,  # batch rows per reduction step
    GROUP_M: tl.constexpr,
):
    pid_k, offs_n, offs_k, n_ok, k_ok = _swizzled_tile(N, K, BLOCK_N, BLOCK_K, GROUP_M)
    rm = tl.arange(0, BLOCK_M)
    tile_ok = n_ok[:, None] & k_ok[None, :]
    op_dtype = dw_ptr.dtype.element_ty
    if EXPLICIT_MASK:
        keep = tl.load(mask_ptr + offs_n[:, None] * stride_mn + offs_k[None, :] * stride_mk, mask=tile_ok, other=0) != 0
        zero = False
        full = False
    else:
        od = tl.load(out_deg_ptr + offs_n, mask=n_ok, other=0).to(tl.int64)
        ind = tl.load(in_deg_ptr + offs_k, mask=k_ok, other=0).to(tl.int64)
        keep = _kept(od[:, None], ind[None, :], STRICT)
        omin, omax = _deg_range(od, n_ok)
        imin, imax = _deg_range(ind, k_ok)
        zero, full = _tile_class(omin, omax, imin, imax, STRICT)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    if not zero:
        for mt in range(0, tl.cdiv(M, BLOCK_M)):
            offs_m = mt * BLOCK_M + rm
            m_ok = offs_m < M
            rows64 = offs_m.to(tl.int64)
            # g^T tile [BLOCK_N, BLOCK_M]
            gt = _grad_tile(
                gy_ptr, s_ptr, offs_n, rows64, n_ok[:, None] & m_ok[None, :], 1, N, 1, N, ACT, op_dtype, UPCAST
            )
            xt = _load_x(
                x_ptr + rows64[:, None] * stride_xm,
                offs_k,
                m_ok[:, None] & k_ok[None, :],
                stride_xk,
                X_BITS,
                dw_ptr.dtype.element_ty,
            )
            acc = _mma(gt, xt, acc, UPCAST, PRECISION)
            db += tl.sum(gt.to(tl.float32), axis=1)
        if not full:
            acc = tl.where(keep, acc, 0.0)
    elif HAS_BIAS and pid_k == 0:
        for mt in range(0, tl.cdiv(M, BLOCK_M)):
            offs_m = mt * BLOCK_M + rm
            m_ok = offs_m < M
            gt = _grad_tile(
                gy_ptr,
                s_ptr,
                offs_n,
                offs_m.to(tl.int64),
                n_ok[:, None] & m_ok[None, :],
                1,
                N,
                1,
                N,
                ACT,
                tl.float32,
                UPCAST,
            )
            db += tl.sum(gt, axis=1)
    tl.store(dw_ptr + offs_n[:, None] * K + offs_k[None, :], _cast(acc, dw_ptr.dtype.element_ty, UPCAST), mask=tile_ok)
    if HAS_BIAS and pid_k == 0:
        tl.store(db_ptr + offs_n, _cast(db, db_ptr.dtype.element_ty, UPCAST), mask=n_ok)


# ----------------------------------------------------------------------------------------------
# launch configuration and launchers
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """Tile sizes of one pass. fwd: (block_m batch, block_n outputs, block_k inputs); dx:
    (block_m batch, block_n inputs, block_k outputs); dw: (block_m batch, block_n outputs,
    block_k inputs)."""

    block_m: int
    block_n: int
    block_k: int
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 2


# Under the interpreter every program and every tl.dot step costs milliseconds: small tiles keep
# several of them per dimension on test sizes (so zero, partial and full tiles all occur).
INTERPRET_CONFIG = Config(32, 32, 32, group_m=4)
_GPU_16BIT = {
    "fwd": Config(128, 128, 64, 8, 8, 3),
    "dx": Config(128, 128, 64, 8, 8, 3),
    "dw": Config(64, 128, 64, 8, 8, 3),
}
_GPU_32BIT = {"fwd": Config(64, 64, 16, 8, 4, 3), "dx": Config(64, 64, 16, 8, 4, 3), "dw": Config(32, 64, 64, 8, 4, 3)}


def config(pass_: str, dtype: torch.dtype) -> Config:
    """The tile configuration of ``pass_`` ("fwd", "dx" or "dw") for ``dtype``."""
    if pass_ not in ("fwd", "dx", "dw"):
        raise ValueError(f"pass_ must be 'fwd', 'dx' or 'dw', got {pass_!r}")
    if interpreting():
        return INTERPRET_CONFIG
    return (_GPU_32BIT if dtype == torch.float32 else _GPU_16BIT)[pass_]


def plan_shape(pass_: str, n: int, k: int, cfg: Config) -> tuple[int, int]:
    """(T, J) of the tile plan of a layer with N = ``n`` outputs and K = ``k`` inputs."""
    if pass_ == "fwd":
        return triton.cdiv(n, cfg.block_n), triton.cdiv(k, cfg.block_k)
    if pass_ == "dx":
        return triton.cdiv(k, cfg.block_n), triton.cdiv(n, cfg.block_k)
    raise ValueError(f"only the fwd and dx passes read a plan, got {pass_!r}")


def _upcast(t: Tensor) -> bool:
    return t.dtype == torch.bfloat16 and interpreting()


def _precision(t: Tensor) -> str:
    if t.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 and not interpreting():
        return "tf32"
    return "ieee"


def made_plan(
    row_deg: Tensor,
    red_deg: Tensor,
    plan: Tensor,
    counts: Tensor,
    strict: bool,
    rows_are_out: bool,
    block_r: int,
    block_k: int,
) -> None:
    """Fill ``plan`` [T, J] and ``counts`` [T, 2] (int32) for tiles of ``block_r`` rows (degrees
    ``row_deg``) by ``block_k`` reduction columns (degrees ``red_deg``)."""
    t, j = plan.shape
    if t == 0:
        return
    _made_plan_kernel[(t,)](
        row_deg,
        red_deg,
        plan,
        counts,
        row_deg.numel(),
        red_deg.numel(),
        j,
        STRICT=int(strict),
        ROWS_ARE_OUT=rows_are_out,
        BLOCK_R=block_r,
        BLOCK_K=block_k,
        num_warps=1,
    )


def _grid(a: int, b: int, cfg_a: int, cfg_b: int) -> tuple[int]:
    return (triton.cdiv(a, cfg_a) * triton.cdiv(b, cfg_b),)


def _unit(bias: Tensor | None) -> Tensor | None:
    """The bias as the kernels read it: N values at unit stride (a copy only when strided)."""
    return None if bias is None else bias.contiguous()


def _present(dummy: Tensor, *ts: Tensor | None) -> tuple[Tensor, ...]:
    """``ts`` with ``dummy`` for each absent (None) operand: a pointer the kernel never reads."""
    return tuple(t if t is not None else dummy for t in ts)


def tile_consts(cfg: Config, order: str = "MNK") -> dict:
    """The tile constexprs of ``cfg`` in a matmul kernel's ``order`` (BLOCK_M, BLOCK_N, BLOCK_K for
    "MNK"), then GROUP_M."""
    return {**{f"BLOCK_{a}": getattr(cfg, f"block_{a.lower()}") for a in order}, "GROUP_M": cfg.group_m}


def _launch_kw(t: Tensor, cfg: Config, order: str = "MNK", **consts) -> dict:
    """The constexprs and options every matmul kernel takes: ``consts``, UPCAST and PRECISION (from
    the operand ``t``), tile_consts, warps, stages."""
    return dict(
        consts,
        UPCAST=_upcast(t),
        PRECISION=_precision(t),
        **tile_consts(cfg, order),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


def _fwd(x, weight, bias, in_deg, out_deg, mask, plan, counts, y, z, strict, activation, cfg, explicit, x_bits=False):
    m = x.shape[0]
    n, k = weight.shape
    if m == 0 or n == 0:
        return
    ms = mask.stride() if mask is not None else (0, 0)
    _masked_linear_fwd_kernel[_grid(m, n, cfg.block_m, cfg.block_n)](
        x,
        weight,
        *_present(y, _unit(bias), in_deg, out_deg, mask, plan, counts),
        y,
        *_present(y, z),
        m,
        n,
        k,
        triton.cdiv(k, cfg.block_k),
        *x.stride(),
        *weight.stride(),
        *ms,
        **_launch_kw(
            weight,
            cfg,
            STRICT=int(strict),
            ACT=ACT_CODES[activation],
            HAS_BIAS=bias is not None,
            SAVE_Z=z is not None,
            EXPLICIT_MASK=explicit,
            X_BITS=x_bits,
        ),
    )


def _dx(gy, saved, weight, in_deg, out_deg, mask, plan, counts, dx, strict, activation, cfg, explicit):
    m, n = gy.shape
    k = weight.shape[1]
    if m == 0 or k == 0:
        return
    ms = mask.stride() if mask is not None else (0, 0)
    _masked_linear_dx_kernel[_grid(m, k, cfg.block_m, cfg.block_n)](
        gy,
        *_present(gy, saved),
        weight,
        *_present(dx, in_deg, out_deg, mask, plan, counts),
        dx,
        m,
        n,
        k,
        triton.cdiv(n, cfg.block_k),
        *weight.stride(),
        *ms,
        **_launch_kw(gy, cfg, STRICT=int(strict), ACT=ACT_CODES[activation], EXPLICIT_MASK=explicit),
    )


def _dw(gy, saved, x, in_deg, out_deg, mask, dw, db, strict, activation, cfg, explicit, x_bits=False):
    n, k = dw.shape
    m = x.shape[0]
    if n == 0 or k == 0 or m == 0:
        return
    ms = mask.stride() if mask is not None else (0, 0)
    consts = dict(ACT=ACT_CODES[activation], HAS_BIAS=db is not None, EXPLICIT_MASK=explicit, X_BITS=x_bits)
    _masked_linear_dw_kernel[_grid(n, k, cfg.block_n, cfg.block_k)](
        gy,
        *_present(gy, saved),
        x,
        *_present(dw, in_deg, out_deg, mask),
        dw,
        *_present(dw, db),
        m,
        n,
        k,
        *x.stride(),
        *ms,
        **_launch_kw(dw, cfg, "NKM", STRICT=int(strict), **consts),
    )


def masked_linear_fwd(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    in_deg: Tensor,
    out_deg: Tensor,
    plan: Tensor,
    counts: Tensor,
    y: Tensor,
    z: Tensor | None,
    strict: bool,
    activation: str,
    cfg: Config,
    x_bits: bool = False,
) -> None:
    """y (and z when not None) = act(x . (W * M)^T + b), M from the degrees; ``plan``/``counts`` come
    from ``made_plan(out_deg, in_deg, ..., rows_are_out=True, cfg.block_n, cfg.block_k)``.
    ``x_bits``: x is [M, ceil(K / 32)] int32 words of binary features (bit k % 32 of word k // 32)."""
    _fwd(x, weight, bias, in_deg, out_deg, None, plan, counts, y, z, strict, activation, cfg, False, x_bits)


def masked_linear_dx(
    gy: Tensor,
    saved: Tensor | None,
    weight: Tensor,
    in_deg: Tensor,
    out_deg: Tensor,
    plan: Tensor,
    counts: Tensor,
    dx: Tensor,
    strict: bool,
    activation: str,
    cfg: Config,
) -> None:
    """dx = (dy * act'(saved)) . (W * M); ``plan`` from ``made_plan(in_deg, out_deg, ...,
    rows_are_out=False, cfg.block_n, cfg.block_k)``."""
    _dx(gy, saved, weight, in_deg, out_deg, None, plan, counts, dx, strict, activation, cfg, False)


def masked_linear_dw(
    gy: Tensor,
    saved: Tensor | None,
    x: Tensor,
    in_deg: Tensor,
    out_deg: Tensor,
    dw: Tensor,
    db: Tensor | None,
    strict: bool,
    activation: str,
    cfg: Config,
    x_bits: bool = False,
) -> None:
    """dw = M * (g^T . x) and (when ``db`` is not None) db = sum of g over rows (x bit-packed with
    ``x_bits``, as in masked_linear_fwd)."""
    _dw(gy, saved, x, in_deg, out_deg, None, dw, db, strict, activation, cfg, False, x_bits)


def made_affine_fwd(
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    in_deg: Tensor,
    out_deg: Tensor,
    plan: Tensor,
    counts: Tensor,
    x: Tensor,
    z: Tensor,
    params: Tensor | None,
    ld_part: Tensor,
    cfg: Config,
) -> None:
    """MAF output head: params = h . (W * M)^T + b with the strict mask, z = scale * x + shift,
    ``ld_part`` [M, T] fp32 = per output tile sums of log(scale); ``params`` (or None) [M, N].
    ``plan``/``counts`` from ``made_plan(out_deg, in_deg, ..., strict=True, rows_are_out=True)``."""
    m, k = h.shape
    n = weight.shape[0]
    if m == 0 or n == 0:
        return
    sizes = (m, n, k, triton.cdiv(k, cfg.block_k), ld_part.shape[1])
    _made_affine_fwd_kernel[_grid(m, n, cfg.block_m, cfg.block_n)](
        h,
        weight,
        *_present(z, _unit(bias)),
        in_deg,
        out_deg,
        plan,
        counts,
        x,
        z,
        *_present(z, params),
        ld_part,
        *sizes,
        *h.stride(),
        *weight.stride(),
        *x.stride(),
        **_launch_kw(h, cfg, HAS_BIAS=bias is not None, SAVE_PARAMS=params is not None),
    )


def masked_matmul_fwd(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor,
    y: Tensor,
    z: Tensor | None,
    activation: str,
    cfg: Config,
) -> None:
    """The explicit-mask forward: ``mask`` [N, K] uint8."""
    _fwd(x, weight, bias, None, None, mask, None, None, y, z, False, activation, cfg, True)


def masked_matmul_dx(
    gy: Tensor, saved: Tensor | None, weight: Tensor, mask: Tensor, dx: Tensor, activation: str, cfg: Config
) -> None:
    """The explicit-mask dx (``mask`` [N, K] uint8)."""
    _dx(gy, saved, weight, None, None, mask, None, None, dx, False, activation, cfg, True)


def masked_matmul_dw(
    gy: Tensor,
    saved: Tensor | None,
    x: Tensor,
    mask: Tensor,
    dw: Tensor,
    db: Tensor | None,
    activation: str,
    cfg: Config,
) -> None:
    """The explicit-mask dW and db (``mask`` [N, K] uint8)."""
    _dw(gy, saved, x, None, None, mask, dw, db, False, activation, cfg, True)


# ----------------------------------------------------------------------------------------------
# offline compile specs (pygen inspect): kernels/made/specs.py
# ----------------------------------------------------------------------------------------------
from .specs import build_specs as _build_specs  # noqa: E402 (the spec builder imports the kernels defined above)

_BASE_COMPILE_SPECS = _build_specs()


def __getattr__(name: str):
    # COMPILE_SPECS also lists kernels/made/sample.py's persistent sampler; that module imports
    # this one, so its entries are joined on first access rather than at import time.
    if name == "COMPILE_SPECS":
        from .sample import compile_specs

        return _BASE_COMPILE_SPECS + compile_specs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
