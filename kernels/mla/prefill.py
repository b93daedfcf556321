"""Triton kernels of the MLA prefill (varlen causal flash attention, non-absorbed form; launchers in
kernels/mla/__init__.py).

    S = scale * q k^T (per sequence and head), key c visible to query r when c <= r + n_k - n_q
    (bottom-right causal; all keys when not causal), P = softmax(S), out = P v,
    lse = log sum exp(S) (natural log, float32, [h, total_q]).
    backward (delta = rowsum(dO * out) - dlse):
        dv = P^T dO,  dP = dO v^T,  dS = P * (dP - delta),  dq = scale dS k,  dk = scale dS^T q

q, k [total, h, D] with D = DA + DB split into two power-of-two blocks (192 = 128 + 64: no padded
MMA work at DeepSeek's dims; DB = 0 when DA covers D), v [total, h, DV]. Rows of sequence i are
cu_seqlens[i]:cu_seqlens[i+1]. Grid: (row blocks of the longest sequence x batch, heads): the
batch is folded into x (program = block + num_blocks * sequence: CUDA caps y and z at 65,535, x at
2^31 - 1, and the launcher splits a larger batch over several launches); blocks past a sequence's
end exit at once. Row offsets are 64-bit (the row index is widened before it meets a stride): one
sequence of 87,383 tokens at h = 128, d = 192 already puts a row offset past 2^31. dk/dv are produced
key-block-major and dq query-block-major (two kernels, each recomputing P): no atomics,
deterministic. lse and delta are contiguous [h, total_q] float32 and share ``stride_lh``.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._bf16 import cast as _cast
from .._grid import program_block
from .softmax import online_softmax_finish, online_softmax_step

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _load_cols(rp, ok, C0: tl.constexpr, NCOL: tl.constexpr, BLOCK: tl.constexpr, UPCAST: tl.constexpr):
    """[rows, BLOCK] tile of columns C0 + [0, BLOCK) (those < NCOL) of the rows at pointers rp
    (rows where not ok read 0), upcast to float32 under the interpreter."""
    c = C0 + tl.arange(0, BLOCK)
    t = tl.load(rp[:, None] + c[None, :], mask=ok[:, None] & (c[None, :] < NCOL), other=0.0)
    if UPCAST:
        t = t.to(tl.float32)
    return t


@triton.jit
def _store_cols(rp, ok, v, C0: tl.constexpr, NCOL: tl.constexpr, BLOCK: tl.constexpr, UPCAST: tl.constexpr):
    """Store the float32 tile v as columns C0 + [0, BLOCK) (those < NCOL) of the rows at pointers rp,
    rounded to nearest in the output dtype."""
    c = C0 + tl.arange(0, BLOCK)
    tl.store(rp[:, None] + c[None, :], _cast(v, rp.dtype.element_ty, UPCAST), mask=ok[:, None] & (c[None, :] < NCOL))


@triton.jit
def _load_qk(ptr, rows, ok, stride_t, D: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, UPCAST: tl.constexpr):
    """[rows, DA] and [rows, DB] halves of a q or k tile (DB part masked past D)."""
    rp = ptr + rows.to(tl.int64) * stride_t  # 64-bit row offsets, 32-bit columns
    a = _load_cols(rp, ok, 0, D, DA, UPCAST)
    if DB > 0:
        b = _load_cols(rp, ok, DA, D, DB, UPCAST)
    else:
        b = a
    return a, b


@triton.jit
def _store_qk(rp, ok, xa, xb, scale, D: tl.constexpr, DA: tl.constexpr, DB: tl.constexpr, UPCAST: tl.constexpr):
    """Store scale * [xa | xb] (a dq or dk tile, the halves of _load_qk) at the rows rp."""
    _store_cols(rp, ok, xa * scale, 0, D, DA, UPCAST)
    if DB > 0:
        _store_cols(rp, ok, xb * scale, DA, D, DB, UPCAST)


@triton.jit
def _sequence(cu_q_ptr, cu_k_ptr, bi):
    """(q0, nq, k0, nk): first global row and length of sequence bi's queries and keys."""
    q0 = tl.load(cu_q_ptr + bi)
    nq = tl.load(cu_q_ptr + bi + 1) - q0
    k0 = tl.load(cu_k_ptr + bi)
    nk = tl.load(cu_k_ptr + bi + 1) - k0
    return q0, nq, k0, nk


@triton.jit
def _query_block(cu_q_ptr, cu_k_ptr, num_mb):
    """Prologue of the query-block-major kernels (forward, dq): (sequence, row block, head) of
    this program, longest rows first for causal, and _sequence's bounds."""
    pid = tl.program_id(0)
    bi = pid // num_mb
    mb = num_mb - 1 - pid % num_mb  # causal: the longest rows first
    h = tl.program_id(1).to(tl.int64)
    q0, nq, k0, nk = _sequence(cu_q_ptr, cu_k_ptr, bi)
    return mb, h, q0, nq, k0, nk


@triton.jit
def _query_rows(
    q_ptr,
    q0,
    h,
    mb,
    nq,
    stride_qt,
    stride_qh,
    BLOCK_M: tl.constexpr,
    D: tl.constexpr,
    DA: tl.constexpr,
    DB: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Rows of query block mb (in-sequence indices and their mask) and their q tile halves."""
    rows = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    r_ok = rows < nq
    qa, qb = _load_qk(q_ptr + q0.to(tl.int64) * stride_qt + h * stride_qh, rows, r_ok, stride_qt, D, DA, DB, UPCAST)
    return rows, r_ok, qa, qb


@triton.jit
def _key_end(mb, nq, nk, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """End of the keys row block mb sees (bottom-right causal: key c <= row + nk - nq)."""
    if CAUSAL:
        hi = tl.minimum(nk, mb * BLOCK_M + BLOCK_M + nk - nq)
    else:
        hi = nk
    return hi


@triton.jit
def _row_grad(
    lse_ptr,
    delta_ptr,
    do_ptr,
    h,
    stride_lh,
    stride_dot,
    stride_doh,
    grow,
    ok,
    DV: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """What the backward passes read of the global rows grow: lse * log2(e) (0 for rows that saw no
    key), delta and the dO tile."""
    lse = tl.load(lse_ptr + h * stride_lh + grow, mask=ok, other=0.0)
    lse_l2 = tl.where(lse == float("-inf"), 0.0, lse * LOG2E)
    delta = tl.load(delta_ptr + h * stride_lh + grow, mask=ok, other=0.0)
    do = _load_cols(do_ptr + grow * stride_dot + h * stride_doh, ok, 0, DV, BLOCK_DV, UPCAST)
    return lse_l2, delta, do


@triton.jit
def _scores(qa, qb, ka, kb, DB: tl.constexpr, PRECISION: tl.constexpr):
    s = tl.dot(qa, tl.trans(ka), input_precision=PRECISION)
    if DB > 0:
        s += tl.dot(qb, tl.trans(kb), input_precision=PRECISION)
    return s


@triton.jit
def _mla_prefill_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,  # [total_q, h, D], [total_k, h, D], [total_k, h, DV]
    cu_q_ptr,
    cu_k_ptr,  # int32 [batch + 1]
    out_ptr,  # [total_q, h, DV]
    lse_ptr,  # float32 [h, total_q]
    scale_log2,  # softmax_scale * log2(e)
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_lh,
    num_mb,  # row blocks per sequence (grid x = num_mb * batch)
    CAUSAL: tl.constexpr,
    D: tl.constexpr,
    DA: tl.constexpr,
    DB: tl.constexpr,
    DV: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    mb, h, q0, nq, k0, nk = _query_block(cu_q_ptr, cu_k_ptr, num_mb)
    if mb * BLOCK_M >= nq:
        return
    rows, r_ok, qa, qb = _query_rows(q_ptr, q0, h, mb, nq, stride_qt, stride_qh, BLOCK_M, D, DA, DB, UPCAST)
    shift = nk - nq
    hi = _key_end(mb, nq, nk, CAUSAL, BLOCK_M)
    kbase = k_ptr + k0.to(tl.int64) * stride_kt + h * stride_kh
    vbase = v_ptr + k0.to(tl.int64) * stride_vt + h * stride_vh
    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    for c0 in range(0, hi, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        c_ok = cols < nk
        ka, kb = _load_qk(kbase, cols, c_ok, stride_kt, D, DA, DB, UPCAST)
        vt = _load_cols(vbase + cols.to(tl.int64) * stride_vt, c_ok, 0, DV, BLOCK_DV, UPCAST)
        s = _scores(qa, qb, ka, kb, DB, PRECISION) * scale_log2
        vis = c_ok[None, :]
        if CAUSAL:
            vis = vis & (cols[None, :] <= rows[:, None] + shift)
        s = tl.where(vis, s, float("-inf"))
        m_i, l_i, acc = online_softmax_step(s, vt, m_i, l_i, acc, PRECISION)
    o, lse2 = online_softmax_finish(m_i, l_i, acc)
    lse = lse2 * 0.6931471805599453  # natural log (-inf stays -inf)
    grow = (q0 + rows).to(tl.int64)
    _store_cols(out_ptr + grow * stride_ot + h * stride_oh, r_ok, o, 0, DV, BLOCK_DV, UPCAST)
    tl.store(lse_ptr + h * stride_lh + grow, lse, mask=r_ok)


@triton.jit
def _mla_prefill_bwd_preprocess_kernel(
    out_ptr,
    do_ptr,
    dlse_ptr,  # [total_q, h, DV], [total_q, h, DV], float [h, total_q]
    delta_ptr,  # float32 [h, total_q]
    total_q,
    stride_ot,
    stride_oh,
    stride_dot,
    stride_doh,
    stride_glh,
    stride_dh,
    DV: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    rows, ok = program_block(0, total_q, BLOCK_M)
    h = tl.program_id(1).to(tl.int64)
    r64 = rows.to(tl.int64)  # global rows: past 32 x 4096 of them, row * (h * DV = 16,384) >= 2^31
    o = _load_cols(out_ptr + r64 * stride_ot + h * stride_oh, ok, 0, DV, BLOCK_DV, True)  # float32 tiles
    g = _load_cols(do_ptr + r64 * stride_dot + h * stride_doh, ok, 0, DV, BLOCK_DV, True)
    gl = tl.load(dlse_ptr + h * stride_glh + rows, mask=ok, other=0.0).to(tl.float32)
    # d lse / d S = P, so a gradient on lse enters as -dlse in delta
    delta = tl.sum(o * g, 1) - gl
    tl.store(delta_ptr + h * stride_dh + rows, delta, mask=ok)


@triton.jit
def _probs(
    qa,
    qb,
    ka,
    kb,
    lse_l2,
    rows,
    cols,
    r_ok,
    c_ok,
    shift,
    scale_log2,
    CAUSAL: tl.constexpr,
    DB: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """P = exp2(S log2e - lse log2e) with masked entries 0 (rows with lse -inf see nothing)."""
    s = _scores(qa, qb, ka, kb, DB, PRECISION) * scale_log2
    vis = r_ok[:, None] & c_ok[None, :]
    if CAUSAL:
        vis = vis & (cols[None, :] <= rows[:, None] + shift)
    return tl.where(vis, tl.exp2(s - lse_l2[:, None]), 0.0)


@triton.jit
def _dscores(p, do, vt, delta, DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """dS = P * (dO v^T - delta), in the MMA operand dtype DTYPE."""
    dp = tl.dot(do, tl.trans(vt), input_precision=PRECISION)
    return (p * (dp - delta[:, None])).to(DTYPE)


@triton.jit
def _mla_prefill_bwd_dkdv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    cu_q_ptr,
    cu_k_ptr,
    dk_ptr,
    dv_ptr,
    scale,
    scale_log2,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    stride_lh,
    stride_dkt,
    stride_dkh,
    stride_dvt,
    stride_dvh,
    num_nb,  # key blocks per sequence (grid x = num_nb * batch)
    CAUSAL: tl.constexpr,
    D: tl.constexpr,
    DA: tl.constexpr,
    DB: tl.constexpr,
    DV: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    tl.assume(num_nb > 0)
    bi = pid // num_nb
    nb = pid % num_nb
    tl.assume(nb >= 0)
    h = tl.program_id(1).to(tl.int64)
    q0, nq, k0, nk = _sequence(cu_q_ptr, cu_k_ptr, bi)
    if nb * BLOCK_N >= nk:
        return
    cols = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ok = cols < nk
    ka, kb = _load_qk(k_ptr + k0.to(tl.int64) * stride_kt + h * stride_kh, cols, c_ok, stride_kt, D, DA, DB, UPCAST)
    vt = _load_cols(v_ptr + (k0 + cols).to(tl.int64) * stride_vt + h * stride_vh, c_ok, 0, DV, BLOCK_DV, UPCAST)
    shift = nk - nq
    lo = 0
    if CAUSAL:
        # the first query that sees key nb*BLOCK_N is row nb*BLOCK_N - shift
        lo = tl.maximum(nb * BLOCK_N - shift, 0) // BLOCK_M * BLOCK_M
    dka = tl.zeros([BLOCK_N, DA], dtype=tl.float32)
    dkb = tl.zeros([BLOCK_N, DB if DB > 0 else 16], dtype=tl.float32)
    dvt = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    qbase = q_ptr + q0.to(tl.int64) * stride_qt + h * stride_qh
    for r0 in range(lo, nq, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        r_ok = rows < nq
        qa, qb = _load_qk(qbase, rows, r_ok, stride_qt, D, DA, DB, UPCAST)
        grow = (q0 + rows).to(tl.int64)
        lse_l2, delta, do = _row_grad(
            lse_ptr, delta_ptr, do_ptr, h, stride_lh, stride_dot, stride_doh, grow, r_ok, DV, BLOCK_DV, UPCAST
        )
        p = _probs(qa, qb, ka, kb, lse_l2, rows, cols, r_ok, c_ok, shift, scale_log2, CAUSAL, DB, PRECISION)
        dvt += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        ds = _dscores(p, do, vt, delta, qa.dtype, PRECISION)
        dka += tl.dot(tl.trans(ds), qa, input_precision=PRECISION)
        if DB > 0:
            dkb += tl.dot(tl.trans(ds), qb, input_precision=PRECISION)
    # store offsets rebuilt from scalars (not kept live across the loop) and the tl.assume hints above:
    # without them ptxas spills this 255-register kernel (offline sm_90 compile)
    lc = tl.arange(0, BLOCK_N)
    grow_k = (k0 + nb * BLOCK_N).to(tl.int64) + lc
    c_ok = lc < nk - nb * BLOCK_N
    _store_qk(dk_ptr + grow_k * stride_dkt + h * stride_dkh, c_ok, dka, dkb, scale, D, DA, DB, UPCAST)
    _store_cols(dv_ptr + grow_k * stride_dvt + h * stride_dvh, c_ok, dvt, 0, DV, BLOCK_DV, UPCAST)


@triton.jit
def _mla_prefill_bwd_dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    do_ptr,
    lse_ptr,
    delta_ptr,
    cu_q_ptr,
    cu_k_ptr,
    dq_ptr,
    scale,
    scale_log2,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    stride_lh,
    stride_dqt,
    stride_dqh,
    num_mb,  # row blocks per sequence (grid x = num_mb * batch)
    CAUSAL: tl.constexpr,
    D: tl.constexpr,
    DA: tl.constexpr,
    DB: tl.constexpr,
    DV: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    mb, h, q0, nq, k0, nk = _query_block(cu_q_ptr, cu_k_ptr, num_mb)
    if mb * BLOCK_M >= nq:
        return
    rows, r_ok, qa, qb = _query_rows(q_ptr, q0, h, mb, nq, stride_qt, stride_qh, BLOCK_M, D, DA, DB, UPCAST)
    grow = (q0 + rows).to(tl.int64)
    lse_l2, delta, do = _row_grad(
        lse_ptr, delta_ptr, do_ptr, h, stride_lh, stride_dot, stride_doh, grow, r_ok, DV, BLOCK_DV, UPCAST
    )
    shift = nk - nq
    hi = _key_end(mb, nq, nk, CAUSAL, BLOCK_M)
    dqa = tl.zeros([BLOCK_M, DA], dtype=tl.float32)
    dqb = tl.zeros([BLOCK_M, DB if DB > 0 else 16], dtype=tl.float32)
    kbase = k_ptr + k0.to(tl.int64) * stride_kt + h * stride_kh
    for c0 in range(0, hi, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        c_ok = cols < nk
        ka, kb = _load_qk(kbase, cols, c_ok, stride_kt, D, DA, DB, UPCAST)
        vt = _load_cols(v_ptr + (k0 + cols).to(tl.int64) * stride_vt + h * stride_vh, c_ok, 0, DV, BLOCK_DV, UPCAST)
        p = _probs(qa, qb, ka, kb, lse_l2, rows, cols, r_ok, c_ok, shift, scale_log2, CAUSAL, DB, PRECISION)
        ds = _dscores(p, do, vt, delta, ka.dtype, PRECISION)
        dqa += tl.dot(ds, ka, input_precision=PRECISION)
        if DB > 0:
            dqb += tl.dot(ds, kb, input_precision=PRECISION)
    _store_qk(dq_ptr + grow * stride_dqt + h * stride_dqh, r_ok, dqa, dqb, scale, D, DA, DB, UPCAST)
