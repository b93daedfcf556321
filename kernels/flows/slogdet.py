"""Batched small-matrix sign / log|det| (d <= 64) and its backward, for pygen.kernels.flows.

    sign, logabsdet = slogdet(A)          A: [n, d, d], any strides, float32/float16/bfloat16
    grad_A          = g * A^{-T}          (d log|det A| / dA = A^{-T}; the sign has no gradient)

Forward: Gaussian elimination with partial pivoting in registers. One program owns MB matrices
as an [MB, BD, BD] float32 tile (BD = next power of two >= d; MB = 1 for d > 32, more for small d
so that a program has ~2048 values to work on: one 16x16 matrix cannot fill four warps). Padded
rows/columns hold the identity, so they contribute a factor 1.

Rows are never swapped. At step k the pivot p_k is the not-yet-used row with the largest |A[:, k]|
(ties: the lowest row); column k is eliminated from the other unused rows. The determinant is
sign(pi) * prod_k A'[p_k, k] where pi = (p_0, p_1, ...) is the pivot order, and sign(pi) follows
from the inversions of pi counted as they appear: step k adds the number of still-unused rows
with index < p_k (each comes later in pi but is smaller). This avoids moving two rows of the tile
per step (three tile passes per step instead of six).

Singular matrices: a zero pivot (the whole unused part of column k is exactly 0) gives sign 0
and log|det| = -inf; the elimination divides by 1 instead, so nothing becomes NaN (the remaining
multipliers of that column are 0 anyway). Near-singular matrices give a large negative finite
log|det|, as LAPACK's LU does. A matrix holding a NaN gives (0, NaN), as torch.linalg.slogdet
(the pivot search ranks NaN below every number, so argmax never sees one).

Backward: Gauss-Jordan elimination of [A | I] with the same pivot choice and the same multipliers
as the forward, computing the inverse in the same program (no host synchronisation, no batched
solve): column k is eliminated from every row but p_k, with the unnormalised pivot row, so the
not-yet-pivoted rows evolve exactly as in the forward (both passes agree on singularity). After
the loop the reduced tile is Pi D (Pi[p_k, k] = 1, D = diag of the pivots) and the identity half
holds X = E with E A = Pi D, so A^{-1}[k, :] = X[p_k, :] / pivot_k and
grad_A[i, j] = g * A^{-1}[j, i] = g * X[p_j, i] / pivot_j: each X element (r, c) is scaled by
g / pivot(r) and stored at grad_A[c, k(r)], k(r) being the step that pivoted row r. For an exactly
singular matrix the gradient is set to 0 (pygen's documented convention; torch returns NaN).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .._compile_spec import compile_spec
from .._device import launches_on_device

MAX_D = 64


@triton.jit
def _load_tile(a_ptr, n_mat, d, stride_b, stride_r, stride_c, pid, BD: tl.constexpr, MB: tl.constexpr):
    mats = pid * MB + tl.arange(0, MB)
    r = tl.arange(0, BD)
    m3 = mats[:, None, None]
    r3 = r[None, :, None]
    c3 = r[None, None, :]
    inside = (m3 < n_mat) & (r3 < d) & (c3 < d)
    ptrs = a_ptr + m3.to(tl.int64) * stride_b + r3 * stride_r + c3 * stride_c
    a = tl.load(ptrs, mask=inside, other=0.0).to(tl.float32)
    # identity on the padding (and on matrices past the end): factor 1, never chosen as pivot
    a = tl.where((r3 == c3) & ((r3 >= d) | (m3 >= n_mat)), 1.0, a)
    return a, mats, r, m3, r3, c3


@triton.jit
def _pivot(a, unused, k, r, r3, c3):
    # column k, the pivot row among the unused rows, and its value
    col = tl.sum(tl.where(c3 == k, a, 0.0), axis=2)  # [MB, BD]
    # a NaN entry ranks below every number but above the used rows: argmax never sees a NaN (the
    # interpreter's raises on an all-NaN column; the GPU's order is unspecified) and still picks
    # an unused row; the matrix's result is NaN anyway (the forward's has_nan)
    cand = tl.where(unused, tl.where(col == col, tl.abs(col), -0.5), -1.0)
    p = tl.argmax(cand, axis=1)  # [MB]
    is_p = r[None, :] == p[:, None]  # [MB, BD]
    pv = tl.sum(tl.where(is_p, col, 0.0), axis=1)  # [MB]
    prow = tl.sum(tl.where(r3 == p[:, None, None], a, 0.0), axis=1)  # [MB, BD]
    return col, p, is_p, pv, prow


@triton.jit
def _slogdet_fwd_kernel(
    a_ptr,  # [n, d, d] input matrices (any strides)
    sign_ptr,  # [n] float32 out: sign of det (0 when singular)
    logabs_ptr,  # [n] float32 out: log|det| (-inf when singular)
    n_mat,  # number of matrices
    d,  # matrix size, <= BD
    stride_b,
    stride_r,
    stride_c,
    BD: tl.constexpr,  # padded size (power of two)
    MB: tl.constexpr,  # matrices per program
):
    pid = tl.program_id(0)
    a, mats, r, m3, r3, c3 = _load_tile(a_ptr, n_mat, d, stride_b, stride_r, stride_c, pid, BD, MB)
    unused = (r[None, :] < d) & (mats[:, None] >= 0)  # [MB, BD]
    inversions = tl.zeros([MB], dtype=tl.int32)
    negatives = tl.zeros([MB], dtype=tl.int32)
    logabs = tl.zeros([MB], dtype=tl.float32)
    singular = mats < 0
    has_nan = tl.max(tl.max((a != a).to(tl.int32), axis=2), axis=1) > 0  # torch: (0, NaN)
    for k in range(0, d):
        col, p, is_p, pv, prow = _pivot(a, unused, k, r, r3, c3)
        below = unused & (r[None, :] < p[:, None])
        inversions += tl.sum(below.to(tl.int32), axis=1)
        negatives += (pv < 0).to(tl.int32)
        zero = pv == 0.0
        singular = singular | zero
        logabs += tl.log(tl.abs(pv))
        unused = unused & (~is_p)
        f = tl.where(unused, col / tl.where(zero, 1.0, pv)[:, None], 0.0)
        a = a - f[:, :, None] * prow[:, None, :]
    parity = (inversions + negatives) % 2
    sign = tl.where(singular | has_nan, 0.0, tl.where(parity == 1, -1.0, 1.0))
    logabs = tl.where(has_nan, float("nan"), tl.where(singular, float("-inf"), logabs))
    ok = mats < n_mat
    tl.store(sign_ptr + mats, sign, mask=ok)
    tl.store(logabs_ptr + mats, logabs, mask=ok)


@triton.jit
def _slogdet_bwd_kernel(
    a_ptr,  # [n, d, d] input matrices (any strides)
    g_ptr,  # [n] upstream gradient of log|det| (any dtype, stride g_stride)
    out_ptr,  # [n, d, d] contiguous out: g * A^{-T}
    n_mat,
    d,
    stride_b,
    stride_r,
    stride_c,
    g_stride,
    BD: tl.constexpr,
    MB: tl.constexpr,
):
    pid = tl.program_id(0)
    a, mats, r, m3, r3, c3 = _load_tile(a_ptr, n_mat, d, stride_b, stride_r, stride_c, pid, BD, MB)
    x = tl.where(r3 == c3, 1.0, tl.zeros([MB, BD, BD], dtype=tl.float32))
    unused = (r[None, :] < d) & (mats[:, None] >= 0)
    step_of_row = r[None, :] + tl.zeros([MB, BD], dtype=tl.int32)  # padding rows: themselves
    pivot_of_row = tl.zeros([MB, BD], dtype=tl.float32) + 1.0
    singular = mats < 0
    for k in range(0, d):
        col, p, is_p, pv, prow = _pivot(a, unused, k, r, r3, c3)
        zero = pv == 0.0
        singular = singular | zero
        # the forward's multipliers (unnormalised pivot row), so the not-yet-pivoted rows evolve
        # bit for bit as in the forward and both agree on which matrices are singular
        f = tl.where(is_p, 0.0, col / tl.where(zero, 1.0, pv)[:, None])
        xrow = tl.sum(tl.where(r3 == p[:, None, None], x, 0.0), axis=1)
        a = a - f[:, :, None] * prow[:, None, :]
        x = x - f[:, :, None] * xrow[:, None, :]
        unused = unused & (~is_p)
        step_of_row = tl.where(is_p, k, step_of_row)
        pivot_of_row = tl.where(is_p, pv[:, None], pivot_of_row)
    g = tl.load(g_ptr + mats.to(tl.int64) * g_stride, mask=mats < n_mat, other=0.0).to(tl.float32)
    g = tl.where(singular, 0.0, g)
    # now E A = Pi D (D = the pivots), so A^{-1}[k, :] = X[p_k, :] / pivot_k
    val = x * (g[:, None] / tl.where(pivot_of_row == 0.0, 1.0, pivot_of_row))[:, :, None]
    # X[r, c] -> grad[c, step(r)]
    k3 = step_of_row[:, :, None]
    dst = out_ptr + m3.to(tl.int64) * d * d + c3 * d + k3
    tl.store(dst, val, mask=(m3 < n_mat) & (r3 < d) & (c3 < d))


# ---- launchers (docs/ARCHITECTURE.md: tensors in, nothing allocated, None out) --------------------
def _tiling(d: int, gpu: bool, n: int | None = None, live: int = 1) -> tuple[int, int, int]:
    """(BD, MB, num_warps) of a kernel that keeps ``live`` [MB, BD, BD] tiles in registers (the
    backward keeps two, A and the inverse it builds, so it takes half as many matrices); MB at
    most the n matrices there are (rounded up to a power of two)."""
    bd = max(2, triton.next_power_of_2(d))
    mb = max(1, (2048 if gpu else 16384) // (bd * bd))  # interpreter: few, large programs
    if n is not None:
        mb = min(mb, triton.next_power_of_2(max(n, 1)))
    mb = max(1, mb // live)
    return bd, mb, 8 if bd * bd * mb * live >= 4096 else 4


def _launch(kernel, a: Tensor, ptrs: tuple, ints: tuple = (), live: int = 1) -> None:
    """``kernel`` over the matrices of ``a`` [n, d, d], MB a program: arguments (a, *ptrs, n, d,
    a's three strides, *ints), as both kernels take them."""
    n, d, _ = a.shape
    if n == 0:
        return
    bd, mb, warps = _tiling(d, a.is_cuda, n, live)
    opts = {"num_warps": warps} if a.is_cuda else {}
    kernel[(triton.cdiv(n, mb),)](a, *ptrs, n, d, *a.stride(), *ints, BD=bd, MB=mb, **opts)


@launches_on_device
def slogdet_fwd(a: Tensor, sign: Tensor, logabsdet: Tensor) -> None:
    """a: [n, d, d] (d <= 64); sign, logabsdet: [n] float32 contiguous."""
    _launch(_slogdet_fwd_kernel, a, (sign, logabsdet))


@launches_on_device
def slogdet_bwd(a: Tensor, grad_logabsdet: Tensor, grad_a: Tensor) -> None:
    """a: [n, d, d]; grad_logabsdet: [n]; grad_a: [n, d, d] float32 contiguous (out)."""
    _launch(_slogdet_bwd_kernel, a, (grad_logabsdet, grad_a), (grad_logabsdet.stride(0),), live=2)


# (kernel, its pointers after a_ptr, its integers after the strides, live tiles), as _launch passes them
_KERNELS = (
    (_slogdet_fwd_kernel, ("sign_ptr", "logabs_ptr"), (), 1),
    (_slogdet_bwd_kernel, ("g_ptr", "out_ptr"), ("g_stride",), 2),
)


def compile_specs() -> list[dict]:
    """Offline sm_90 compile entries (pygen inspect) at the benchmark sizes d = 16 and d = 64."""
    specs = []
    for d in (16, 64):
        for kernel, ptrs, ints, live in _KERNELS:
            bd, mb, warps = _tiling(d, True, live=live)
            sig = {p: "*fp32" for p in ("a_ptr", *ptrs)}
            sig.update({k: "i32" for k in ("n_mat", "d", "stride_b", "stride_r", "stride_c", *ints)})
            specs.append(compile_spec(kernel, None, sig, {"BD": bd, "MB": mb}, warps, None, aligned=False))
    return specs
