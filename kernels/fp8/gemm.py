"""Block-scaled FP8 GEMM (DeepSeek-V3 recipe) in Triton: dense, small-M, grouped (MoE) and the
1x128 x 1x128 weight-gradient GEMM are one kernel, ``_fp8_gemm_fwd_kernel``, specialised by
constexprs.

    out[m, n] = sum_j sa[m, j] * sb[n // B_BLOCK, j] * (sum_{k in K block j} A[m, k] B[n, k]) (+ bias[n])

A [M, K] e4m3 (any strides), sa [M, K/128] float32 (any strides), B [N, K] e4m3 (or [E, N, K]
grouped), sb [ceil(N/128), K/128] (B_BLOCK = 128, weights) or [N, K/128] (B_BLOCK = 1, wgrad).

Why the loop looks like this
----------------------------
* BLOCK_K = 128 = the scale block: every iteration issues one tl.dot on a [*, 128] x [128, *]
  fp8 tile into a fresh float32 partial, multiplies it by sa (per row) x sb (per column) and adds
  it into the float32 accumulator. This is the "promotion every 128 elements" of DeepSeek-V3:
  Hopper's fp8 MMA accumulates with ~14 bits inside one tl.dot, and the per-block promotion
  keeps that error from growing with K.
* SWAP_AB (small M, decode): wgmma needs 64 rows on its M side, so for M <= 64 the kernel
  computes out^T = B A^T: the weight tile (BLOCK_N >= 64 rows) is the MMA's M operand and the
  few tokens (BLOCK_M = 16..64) its N operand; the result tile is stored transposed.
* SPLIT_K: when the output tiles cannot fill the SMs (small M, or few N tiles), each tile's K
  blocks are split between SPLIT_K work units that add float32 partials into a zeroed float32
  output with atomics (the op then casts). The bias is added by the split that owns K block 0.
* Persistent schedule: ``num_programs`` programs (at most the SM count) loop over the
  tiles x SPLIT_K work units with stride num_programs, so a launch never has a partial last
  wave of short-lived programs and the tile order keeps GROUP_M row tiles together for L2 reuse.
* USE_TMA: A and B tiles come through Hopper TMA (host tensor descriptors over A [M, K] and B
  viewed as [(E x) N, K], blocks of [BLOCK_M or BLOCK_N, 128]); rows past the tensor arrive as
  zeros, so no masks. The launcher takes this path whenever the operands are 16-byte aligned
  (kernels/fp8/__init__.py, ``_descriptors``); otherwise the same loop loads through pointers (cp.async).
  Scales stay pointer loads (a few floats per K block).
* GROUPED (contiguous MoE layout): the expert of an M tile is m_indices[first row of the tile];
  B and sb are offset by that expert. Rows whose own index is outside [0, E) are written as 0,
  and a tile whose first index is invalid runs no K iterations (never reads out of bounds).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .._bf16 import cast as _cast
from .._grid import grouped_tile


@triton.jit
def _fp8_gemm_fwd_kernel(
    a_ptr,
    as_ptr,  # A [M, K] e4m3, sa [M, K/128] fp32
    b_ptr,
    bs_ptr,  # B [(E,) N, K] e4m3, sb [(E,) N/B_BLOCK, K/128] fp32
    bias_ptr,  # [N] (any float dtype) or a dummy when not HAS_BIAS
    c_ptr,  # out [M, N]: out dtype, or zeroed float32 when SPLIT_K > 1
    mi_ptr,  # m_indices [M] int32 (GROUPED) or a dummy
    M,
    N,
    K,
    E,
    stride_am,
    stride_ak,
    stride_sam,
    stride_sak,
    stride_be,
    stride_bn,
    stride_bk,
    stride_sbe,
    stride_sbn,
    stride_sbk,
    stride_cm,
    stride_cn,
    num_programs,  # persistent programs (grid size)
    a_desc,
    b_desc,  # TMA descriptors of A [M, K] and B [(E x) N, K] (USE_TMA) or None
    B_BLOCK: tl.constexpr,  # rows of B per scale: 128 (weights) or 1 (wgrad)
    HAS_BIAS: tl.constexpr,
    GROUPED: tl.constexpr,
    SWAP_AB: tl.constexpr,
    SPLIT_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUP_M: tl.constexpr,
    USE_TMA: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: round the bf16 store in float32 first (kernels/_bf16.py)
):
    BLOCK_K: tl.constexpr = 128
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_units = num_pid_m * num_pid_n * SPLIT_K
    kb_total = K // BLOCK_K
    rk = tl.arange(0, BLOCK_K)
    for unit in range(pid, num_units, num_programs):
        tile = unit // SPLIT_K
        split = unit % SPLIT_K
        # GROUP_M row tiles share each column tile (L2 reuse of B across consecutive programs)
        pid_m, pid_n = grouped_tile(tile, num_pid_m, num_pid_n, GROUP_M)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = offs_m < M
        n_ok = offs_n < N
        kb_lo = split * kb_total // SPLIT_K
        kb_hi = (split + 1) * kb_total // SPLIT_K
        b_base = b_ptr
        bs_base = bs_ptr
        if GROUPED:
            g = tl.load(mi_ptr + pid_m * BLOCK_M)
            g_ok = (g >= 0) & (g < E)
            kb_hi = tl.where(g_ok, kb_hi, kb_lo)  # an all-padding tile does no MMA
            g_safe = tl.where(g_ok, g, 0).to(tl.int64)
            b_base = b_ptr + g_safe * stride_be
            bs_base = bs_ptr + g_safe * stride_sbe
            row_g = tl.load(mi_ptr + offs_m, mask=m_ok, other=-1)
            m_ok_out = m_ok & (row_g == g) & g_ok
        else:
            m_ok_out = m_ok

        # 64-bit operand offsets along both dims: a transposed (column-major) operand has
        # stride_ak = M, so k * stride_ak passes 2^31 as soon as it holds 2^31 elements. Scale
        # offsets stay 32-bit (pygen/ops/fp8.py refuses scale views spanning 2^31 elements; 64-bit
        # scale pointers spill the wgrad tile)
        rk64 = rk.to(tl.int64)
        a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + rk64[None, :] * stride_ak
        b_ptrs = b_base + offs_n[:, None].to(tl.int64) * stride_bn + rk64[None, :] * stride_bk
        sa_ptrs = as_ptr + offs_m * stride_sam
        sb_ptrs = bs_base + (offs_n // B_BLOCK) * stride_sbn
        if SWAP_AB:
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if GROUPED:
            b_row0 = (g_safe * N).to(tl.int32) + pid_n * BLOCK_N
        else:
            b_row0 = pid_n * BLOCK_N
        for kb in range(kb_lo, kb_hi):
            kb64 = tl.cast(kb, tl.int64)  # (a Python int under the interpreter)
            koff = kb64 * BLOCK_K
            if USE_TMA:
                # rows past M (or past the last expert's N) arrive as zeros; rows of the next
                # expert read past a grouped N are never stored (n_ok)
                a = a_desc.load([pid_m * BLOCK_M, kb * BLOCK_K])
                b = b_desc.load([b_row0, kb * BLOCK_K])
            else:
                a = tl.load(a_ptrs + koff * stride_ak, mask=m_ok[:, None], other=0.0)
                b = tl.load(b_ptrs + koff * stride_bk, mask=n_ok[:, None], other=0.0)
            sa = tl.load(sa_ptrs + kb64 * stride_sak, mask=m_ok, other=0.0)
            sb = tl.load(sb_ptrs + kb64 * stride_sbk, mask=n_ok, other=0.0)
            if SWAP_AB:
                part = tl.dot(b, tl.trans(a))
                acc += part * (sb[:, None] * sa[None, :])
            else:
                part = tl.dot(a, tl.trans(b))
                acc += part * (sa[:, None] * sb[None, :])
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            own = (split == 0).to(tl.float32)  # only the split holding K block 0 adds it
            if SWAP_AB:
                acc += bias[:, None] * own
            else:
                acc += bias[None, :] * own
        if SWAP_AB:
            c_ptrs = c_ptr + offs_n[:, None].to(tl.int64) * stride_cn + offs_m[None, :].to(tl.int64) * stride_cm
            c_mask = n_ok[:, None] & m_ok[None, :]
            acc = tl.where(m_ok_out[None, :], acc, 0.0)
        else:
            c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :].to(tl.int64) * stride_cn
            c_mask = m_ok[:, None] & n_ok[None, :]
            acc = tl.where(m_ok_out[:, None], acc, 0.0)
        if SPLIT_K > 1:
            tl.atomic_add(c_ptrs, acc, mask=c_mask, sem="relaxed")
        else:
            tl.store(c_ptrs, _cast(acc, c_ptr.dtype.element_ty, UPCAST), mask=c_mask)
