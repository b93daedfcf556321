"""Triton kernels of the MLA decode path (launchers in kernels/mla/__init__.py).

Split-KV (flash-decoding) over a paged latent cache. One program owns BLOCK_M rows of the
flattened (s_q, h_q) query block of one sequence (row r = j * h_q + h: all heads of a token sit
in the M dimension of tl.dot, so 16..128 heads run without padding) and one of ``num_splits``
contiguous chunks of the sequence's cache tokens:

    S     = (q_lat . lat^T + q_rope . rope^T) * scale            [BLOCK_M, BLOCK_N]
    m, l  = running max / sum of exp (base 2), acc += exp2(S - m) . lat     (V = the latent)

With one split the program normalises and writes out / lse itself; with several it writes the
normalised partial output and its base-2 lse, and _mla_decode_merge_kernel combines the splits by
their lse (a fixed order: results are deterministic for a fixed num_splits).

Tokens are gathered page by page: token t of sequence b lives in page block_table[b, t // PAGE]
at slot t % PAGE, so any power-of-two page size works (pages smaller than BLOCK_N are gathered
per token). The latent tile serves as K (first 512 dims) and as V: one load per tile.

FP8 cache: the same bytes seen through three views (float8_e4m3fn for the 512 values, float32 for
the 4 scales at float index 128, bfloat16 for the rope at half index 264); a tile is dequantised
(value * scale of its 128-group) into q's dtype before the dots, so the math is bf16 x bf16 with
fp32 accumulation.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._bf16 import cast as _cast
from .softmax import online_softmax_finish, online_softmax_step


@triton.jit
def _mla_decode_fwd_kernel(
    q_ptr,  # [b, s_q, h_q, D] query (latent part then rope part)
    lat_ptr,  # cache view holding the latent values (the cache, or its fp8 view)
    sc_ptr,  # float32 view of the FP8 cache (scales); unused otherwise
    rope_ptr,  # cache view holding the rope values (the cache, or its bf16 view)
    bt_ptr,  # int32 [b, max_blocks] page ids
    seqlen_ptr,  # int32 [b] tokens in the cache per sequence
    out_ptr,  # [b, s_q, h_q, DV] output (one split)
    lse_ptr,  # float32 [b, h_q, s_q] natural-log lse (one split)
    opart_ptr,  # float32 [b, ROWS, num_splits, DV] partial outputs (several splits)
    lpart_ptr,  # float32 [b, ROWS, num_splits] partial base-2 lse (several splits)
    scale_log2,  # softmax_scale * log2(e): scores in base 2
    S_Q,
    H_Q,
    ROWS,  # new tokens, heads, ROWS = S_Q * H_Q
    num_splits,
    stride_qb,
    stride_qs,
    stride_qh,
    stride_lb,
    stride_lt,  # latent view: page, slot strides (elements of that view)
    stride_sb,
    stride_st,  # scale view strides
    stride_rb,
    stride_rt,  # rope view strides
    stride_btb,
    stride_ob,
    stride_os,
    stride_oh,
    CAUSAL: tl.constexpr,
    FP8: tl.constexpr,
    DV: tl.constexpr,  # latent (= value) width, power of two
    DR: tl.constexpr,  # rope width (D - DV)
    BLOCK_R: tl.constexpr,  # rope block (power of two >= 16, masked)
    ROPE_OFF: tl.constexpr,  # rope's element offset within a token of the rope view
    SC_OFF: tl.constexpr,  # scales' element offset within a token of the scale view
    PAGE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,  # num_splits > 1: write partials
    UPCAST: tl.constexpr,  # interpreter: fp32 math (its bf16 arithmetic is broken)
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    m_tiles = tl.cdiv(ROWS, BLOCK_M)
    bi = (pid_m // m_tiles).to(tl.int64)  # 64-bit: bi * stride_qb passes 2^31 from 29,129 sequences (h_q 128)
    row0 = (pid_m % m_tiles) * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    row_ok = rows < ROWS
    jq = rows // H_Q
    hq = rows % H_Q
    seqlen = tl.load(seqlen_ptr + bi)

    d = tl.arange(0, DV)
    r = tl.arange(0, BLOCK_R)
    q_row = q_ptr + bi * stride_qb + jq.to(tl.int64) * stride_qs + hq.to(tl.int64) * stride_qh
    q_lat = tl.load(q_row[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)
    q_rope = tl.load(q_row[:, None] + DV + r[None, :], mask=row_ok[:, None] & (r[None, :] < DR), other=0.0)
    if UPCAST:
        q_lat = q_lat.to(tl.float32)
        q_rope = q_rope.to(tl.float32)

    # causal: row j sees positions < seqlen - S_Q + j + 1; the tile's last row bounds the loop
    if CAUSAL:
        limit = seqlen - S_Q + jq + 1
        j_last = (tl.minimum(row0 + BLOCK_M, ROWS) - 1) // H_Q
        kv_end = tl.minimum(seqlen, seqlen - S_Q + j_last + 1)
    else:
        limit = tl.zeros([BLOCK_M], dtype=tl.int32) + seqlen
        kv_end = seqlen
    # every split of a sequence covers the same token range for every row tile (depends on
    # seqlen only), so the merge sees identical chunking whatever BLOCK_M is
    chunk = tl.cdiv(tl.cdiv(seqlen, num_splits), BLOCK_N) * BLOCK_N
    start = pid_s * chunk
    end = tl.minimum(start + chunk, kv_end)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, DV], dtype=tl.float32)
    bt_row = bt_ptr + bi * stride_btb
    for t0 in range(start, end, BLOCK_N):
        t = t0 + tl.arange(0, BLOCK_N)
        t_ok = t < end
        page = tl.load(bt_row + t // PAGE, mask=t_ok, other=0).to(tl.int64)
        slot = (t % PAGE).to(tl.int64)
        tok = page * stride_lb + slot * stride_lt
        lat = tl.load(lat_ptr + tok[:, None] + d[None, :], mask=t_ok[:, None], other=0.0)
        if FP8:
            tok_r = page * stride_rb + slot * stride_rt
        else:
            tok_r = tok  # one float cache: the rope view is the latent view, same strides
        rope = tl.load(
            rope_ptr + (tok_r + ROPE_OFF)[:, None] + r[None, :], mask=t_ok[:, None] & (r[None, :] < DR), other=0.0
        )
        if FP8:
            # 4 scales per token, broadcast over their 128-wide groups (a [BLOCK_N, 512] gather of the
            # scales would cost a full fp32 tile of registers)
            g = tl.arange(0, DV // 128)
            sc = tl.load(
                sc_ptr + (page * stride_sb + slot * stride_st + SC_OFF)[:, None] + g[None, :],
                mask=t_ok[:, None],
                other=0.0,
            )
            lat = tl.reshape(lat.to(tl.float32), (BLOCK_N, DV // 128, 128)) * sc[:, :, None]
            lat = tl.reshape(lat, (BLOCK_N, DV)).to(q_lat.dtype)
            rope = rope.to(q_lat.dtype)
        elif UPCAST:
            lat = lat.to(tl.float32)
            rope = rope.to(tl.float32)
        s = tl.dot(q_lat, tl.trans(lat), input_precision=PRECISION)
        s += tl.dot(q_rope, tl.trans(rope), input_precision=PRECISION)
        s = s * scale_log2
        vis = t_ok[None, :] & (t[None, :] < limit[:, None])
        s = tl.where(vis, s, float("-inf"))
        m_i, l_i, acc = online_softmax_step(s, lat, m_i, l_i, acc, PRECISION)

    o, lse2 = online_softmax_finish(m_i, l_i, acc)
    if SPLIT:
        prow = (bi * ROWS + rows) * num_splits + pid_s
        tl.store(opart_ptr + prow[:, None] * DV + d[None, :], o, mask=row_ok[:, None])
        tl.store(lpart_ptr + prow, lse2, mask=row_ok)
    else:
        o_row = out_ptr + bi * stride_ob + jq.to(tl.int64) * stride_os + hq.to(tl.int64) * stride_oh
        tl.store(o_row[:, None] + d[None, :], _cast(o, out_ptr.dtype.element_ty, UPCAST), mask=row_ok[:, None])
        tl.store(lse_ptr + (bi * H_Q + hq) * S_Q + jq, lse2 * 0.6931471805599453, mask=row_ok)


@triton.jit
def _mla_decode_merge_kernel(
    opart_ptr,  # float32 [b, ROWS, num_splits, DV]
    lpart_ptr,  # float32 [b, ROWS, num_splits] base-2 lse
    out_ptr,  # [b, s_q, h_q, DV]
    lse_ptr,  # float32 [b, h_q, s_q]
    S_Q,
    H_Q,
    ROWS,
    num_splits,
    stride_ob,
    stride_os,
    stride_oh,
    DV: tl.constexpr,
    BLOCK_S: tl.constexpr,  # next power of two >= num_splits
    UPCAST: tl.constexpr,  # interpreter: round the bf16 store in float32 first (kernels/_bf16.py)
):
    pid = tl.program_id(0).to(tl.int64)  # one (sequence, row) per program
    bi = pid // ROWS
    row = pid % ROWS
    jq = row // H_Q
    hq = row % H_Q
    s = tl.arange(0, BLOCK_S)
    base = pid * num_splits
    lp = tl.load(lpart_ptr + base + s, mask=s < num_splits, other=float("-inf"))
    m = tl.max(lp, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lp - m_safe)
    tot = tl.sum(w, 0)
    d = tl.arange(0, DV)
    acc = tl.zeros([DV], dtype=tl.float32)
    for i in range(0, num_splits):  # fixed order: deterministic
        wi = tl.exp2(tl.load(lpart_ptr + base + i) - m_safe)
        acc += wi * tl.load(opart_ptr + (base + i) * DV + d)
    o = acc / tl.where(tot > 0, tot, 1.0)
    lse = tl.where(tot > 0, (m_safe + tl.log2(tl.where(tot > 0, tot, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(out_ptr + bi * stride_ob + jq * stride_os + hq * stride_oh + d, _cast(o, out_ptr.dtype.element_ty, UPCAST))
    tl.store(lse_ptr + (bi * H_Q + hq) * S_Q + jq, lse)


@triton.jit
def _mla_cache_append_fwd_kernel(
    cache_ptr,  # [num_blocks, PAGE, 1, W] cache (float, or uint8 FP8 bytes)
    bt_ptr,  # int32 [b, max_blocks]
    pos_ptr,  # int32/int64 [b, n] token positions, < 0: skip
    a_ptr,  # [b, n, A] first part of the row (latent, or the packed FP8 token)
    b_ptr,  # [b, n, B] second part (rope; unused when B == 0)
    N,
    stride_cb,
    stride_ct,
    stride_btb,
    stride_pb,
    stride_pn,
    stride_ab,
    stride_an,
    stride_bb,
    stride_bn,
    A: tl.constexpr,
    B: tl.constexpr,
    BLOCK_A: tl.constexpr,
    BLOCK_B: tl.constexpr,
    PAGE: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # 64-bit: a [b, n, 512] latent passes 2^31 from 4.2M tokens
    i = pid // N
    j = pid % N
    pos = tl.load(pos_ptr + i * stride_pb + j * stride_pn).to(tl.int64)
    ok = pos >= 0
    pos_c = tl.where(ok, pos, 0)
    blk = tl.load(bt_ptr + i * stride_btb + pos_c // PAGE).to(tl.int64)
    dst = cache_ptr + blk * stride_cb + (pos_c % PAGE) * stride_ct
    # scalar conditions cannot be and-ed with tensors under the interpreter: fold into the bound
    a_end = tl.where(ok, A, 0)
    ca = tl.arange(0, BLOCK_A)
    va = tl.load(a_ptr + i * stride_ab + j * stride_an + ca, mask=ca < a_end, other=0)
    tl.store(dst + ca, va.to(cache_ptr.dtype.element_ty), mask=ca < a_end)
    if B > 0:
        b_end = tl.where(ok, B, 0)
        cb = tl.arange(0, BLOCK_B)
        vb = tl.load(b_ptr + i * stride_bb + j * stride_bn + cb, mask=cb < b_end, other=0)
        tl.store(dst + A + cb, vb.to(cache_ptr.dtype.element_ty), mask=cb < b_end)
