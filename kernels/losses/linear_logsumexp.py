"""Triton kernels of the fused linear-logsumexp pass (LM-head cross-entropy, policy log-probs):
the [N, V] logits are computed one [BLOCK_N, BLOCK_V] tile at a time and never stored.

    z = scale * (h W^T + b),  u = softcap * tanh(z / softcap) (SOFTCAP) or z,  p = softmax(u)

Forward (``_linear_ce_fwd_kernel``): program (row block r, vocabulary split s) walks its split's
tiles with an online logsumexp and writes five float32 partials per row into part [5, S, N]:
    part[0] = m   (max of u over the split)       part[1] = sum exp(u - m)
    part[2] = u[t] (target logit; 0 when t is not in the split)
    part[3] = sum u                                part[4] = sum exp(u - m) u   (ENTROPY only)
The op combines the S splits (pygen/ops/losses.py::finish_partials, shared with the cpu backend).
EXCLUDE (InfoNCE's self-similarity): column j == i + exclude_offset of row i is left out of every
statistic (logit -inf, sums skip it) and of the backward; a split where it is a row's only column
leaves m = -inf, s = 0 there (no NaN).

Backward (``_linear_ce_bwd_kernel``): program (row block, vocabulary block) recomputes its tile,
forms dL/du from per-row coefficients coef [5, N] = (a, c, d, e, mu) (pygen/ref/losses.py states
them) and the saved lse [N]:
    du = a p + c [j == t] + d - e p (u - mu);   dz = du (1 - (u / softcap)^2) scale
and adds dz W into grad_h [N, H] and dz^T h into grad_w [V, H] (float32, atomics) and the column
sums of dz into grad_b [V]. FILTER (the cut-cross-entropy gradient filter): a tile whose softmax is
below ``filter_eps`` everywhere and that holds no target skips its two gradient products (the op
turns FILTER off when d or e make du dense).

Layouts: h [N, H], w [V, H] with unit stride along H and any row stride; b [V], t [N] (int32 /
int64), lse [N], coef [5, N] contiguous. Row and column offsets are 64-bit (V H = 926,679,040 for
DeepSeek-V3's head; N V passes 2^31 at 16k tokens).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ..flows import _tanh  # the accurate tanh near 0 (no tanh in tl.math)


@triton.jit
def _logits_tile(
    h_ptr,
    w_ptr,
    b_ptr,
    rows,
    cols,
    row_ok,
    col_ok,
    H,
    stride_hn,
    stride_wv,
    scale,
    softcap,
    HAS_BIAS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_hn
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_wv
    for k0 in range(0, H, BLOCK_H):
        ks = k0 + tl.arange(0, BLOCK_H)
        k_ok = ks < H
        a = tl.load(h_rows + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(w_rows + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        if UPCAST:  # the interpreter's bf16 arithmetic is broken: dot in float32
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    acc = acc * scale
    if SOFTCAP:
        acc = softcap * _tanh(acc / softcap)
    return acc


@triton.jit
def _program_rows(n_row_blocks, N, BLOCK_N: tl.constexpr):
    """This program's rows (and their bounds mask) and its vocabulary index j: programs are row
    block fastest, so consecutive ones share j and stream the same weight tiles at the same time."""
    pid = tl.program_id(0)
    rows = (pid % n_row_blocks) * BLOCK_N + tl.arange(0, BLOCK_N)
    return rows, rows < N, pid // n_row_blocks


@triton.jit
def _linear_ce_fwd_kernel(
    h_ptr,  # [N, H] hidden states
    w_ptr,  # [V, H] head weight
    b_ptr,  # [V] bias (HAS_BIAS)
    t_ptr,  # [N] targets
    part_ptr,  # [5, S, N] float32 partials (module docstring)
    N,
    V,
    H,
    stride_hn,
    stride_wv,
    scale,  # 1 / temperature
    softcap,  # SOFTCAP only
    n_row_blocks,
    tiles_per_split,  # vocabulary tiles per split
    plane,  # S * N: the stride between the partials' planes
    exclude_offset,  # EXCLUDE only: column i + exclude_offset of row i is left out
    HAS_BIAS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ENTROPY: tl.constexpr,
    EXCLUDE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, row_ok, pid_s = _program_rows(n_row_blocks, N, BLOCK_N)
    tgt = tl.load(t_ptr + rows, mask=row_ok, other=-1)
    m = tl.full((BLOCK_N,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_N,), tl.float32)
    picked = tl.zeros((BLOCK_N,), tl.float32)
    su = tl.zeros((BLOCK_N,), tl.float32)
    spu = tl.zeros((BLOCK_N,), tl.float32)
    first = pid_s * tiles_per_split
    # every split starts inside the vocabulary (the launcher sizes S so); the last split may hold
    # fewer tiles
    n_tiles = tl.minimum(tiles_per_split, tl.cdiv(V, BLOCK_V) - first)
    for i in range(0, n_tiles):
        cols = (first + i) * BLOCK_V + tl.arange(0, BLOCK_V)
        col_ok = cols < V
        u = _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, H, stride_hn, stride_wv, scale, softcap,
                         HAS_BIAS, SOFTCAP, BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, PRECISION)  # fmt: skip
        keep = col_ok[None, :]
        if EXCLUDE:
            keep = keep & (cols[None, :] - rows[:, None] != exclude_offset)
        u = tl.where(keep, u, 0.0)
        um = tl.where(keep, u, float("-inf"))
        m_new = tl.maximum(m, tl.max(um, 1))
        # m_new = -inf when every column so far is -inf (an excluded column, or a -inf bias masking
        # part of the vocabulary): exp(u - 0) = 0 then, where exp(-inf - -inf) would give NaN
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_ref)
        e = tl.exp(um - m_ref[:, None])
        s = s * alpha + tl.sum(e, 1)
        picked += tl.sum(tl.where(cols[None, :] == tgt[:, None], u, 0.0), 1)
        su += tl.sum(u, 1)
        if ENTROPY:
            spu = spu * alpha + tl.sum(e * u, 1)
        m = m_new
    base = part_ptr + pid_s.to(tl.int64) * N + rows
    tl.store(base, m, mask=row_ok)
    tl.store(base + plane, s, mask=row_ok)
    tl.store(base + 2 * plane, picked, mask=row_ok)
    tl.store(base + 3 * plane, su, mask=row_ok)
    if ENTROPY:
        tl.store(base + 4 * plane, spu, mask=row_ok)


@triton.jit
def _linear_ce_bwd_kernel(
    h_ptr,  # [N, H]
    w_ptr,  # [V, H]
    b_ptr,  # [V] (HAS_BIAS)
    t_ptr,  # [N] targets
    lse_ptr,  # [N] float32
    coef_ptr,  # [5, N] float32: a, c, d, e, mu
    gh_ptr,  # [N, H] float32, zero-filled (NEED_H)
    gw_ptr,  # [V, H] float32, zero-filled (NEED_W)
    gb_ptr,  # [V] float32, zero-filled (NEED_B)
    N,
    V,
    H,
    stride_hn,
    stride_wv,
    scale,
    softcap,
    filter_eps,  # FILTER only
    n_row_blocks,
    exclude_offset,  # EXCLUDE only
    HAS_BIAS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    ENTROPY: tl.constexpr,
    EXCLUDE: tl.constexpr,
    FILTER: tl.constexpr,
    NEED_H: tl.constexpr,
    NEED_W: tl.constexpr,
    NEED_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows, row_ok, pid_v = _program_rows(n_row_blocks, N, BLOCK_N)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    col_ok = cols < V
    ok = row_ok[:, None] & col_ok[None, :]
    if EXCLUDE:  # the excluded entry has p = 0 and takes no gradient
        ok = ok & (cols[None, :] - rows[:, None] != exclude_offset)
    u = _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, row_ok, col_ok, H, stride_hn, stride_wv, scale, softcap,
                     HAS_BIAS, SOFTCAP, BLOCK_N, BLOCK_V, BLOCK_H, UPCAST, PRECISION)  # fmt: skip
    tgt = tl.load(t_ptr + rows, mask=row_ok, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)
    ca = tl.load(coef_ptr + rows, mask=row_ok, other=0.0)
    cc = tl.load(coef_ptr + N + rows, mask=row_ok, other=0.0)
    cd = tl.load(coef_ptr + 2 * N + rows, mask=row_ok, other=0.0)
    p = tl.where(ok, tl.exp(u - lse[:, None]), 0.0)
    hit = (cols[None, :] == tgt[:, None]) & ok
    du = p * ca[:, None] + tl.where(hit, cc[:, None], 0.0) + cd[:, None]
    if ENTROPY:
        ce = tl.load(coef_ptr + 3 * N + rows, mask=row_ok, other=0.0)
        mu = tl.load(coef_ptr + 4 * N + rows, mask=row_ok, other=0.0)
        du -= ce[:, None] * p * (u - mu[:, None])
    du = tl.where(ok, du, 0.0)
    if SOFTCAP:
        r = u / softcap
        du = du * (1.0 - r * r)
    dz = du * scale
    work = True
    if FILTER:
        work = (tl.max(tl.max(p, 1), 0) >= filter_eps) | (tl.sum(tl.sum(hit.to(tl.int32), 1), 0) > 0)
    if work:
        if NEED_B:
            tl.atomic_add(gb_ptr + cols, tl.sum(dz, 0), mask=col_ok)
        if UPCAST:
            dzc = dz
        else:  # 16-bit operands: the gradient products run on the tensor cores in that dtype
            dzc = dz.to(h_ptr.dtype.element_ty)
        h_rows = rows.to(tl.int64)[:, None]
        w_rows = cols.to(tl.int64)[:, None]
        for k0 in range(0, H, BLOCK_H):
            ks = k0 + tl.arange(0, BLOCK_H)
            k_ok = ks < H
            if NEED_H:
                wt = tl.load(w_ptr + w_rows * stride_wv + ks[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
                if UPCAST:
                    wt = wt.to(tl.float32)
                gh = tl.dot(dzc, wt, input_precision=PRECISION)
                tl.atomic_add(gh_ptr + h_rows * H + ks[None, :], gh, mask=row_ok[:, None] & k_ok[None, :])
            if NEED_W:
                ht = tl.load(h_ptr + h_rows * stride_hn + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
                if UPCAST:
                    ht = ht.to(tl.float32)
                gw = tl.dot(tl.trans(dzc), ht, input_precision=PRECISION)
                tl.atomic_add(gw_ptr + w_rows * H + ks[None, :], gw, mask=col_ok[:, None] & k_ok[None, :])
