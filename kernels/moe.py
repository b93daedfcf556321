"""Triton backend of the DeepSeekMoE family: routing, alignment, permutation (this file) and the
fused expert MLP (kernels/_moe_fused.py), forward and backward. Semantics are pygen.ref.moe's
(the float64 oracle); the launcher contract is docs/ARCHITECTURE.md's (launchers take tensors,
allocate nothing but documented workspaces, return None).

Routing  ``_moe_route_fwd_kernel``: one program per BLOCK_T tokens, all E experts of a token in
    registers ([BLOCK_T, E_P] tile, E_P = next power of two >= E):
        s = sigmoid(x) | softmax(x);  b = s + bias
        gs[g] = top-2 sum of b in group g;  keep the topk_group best groups (ties -> lower g)
        ids = top_k experts by b inside kept groups (ties -> lower id), descending
        w = s[ids] (/ (sum + 1e-20)) * scale
    Selection is a sequence of (max, lowest index attaining it, knock out) steps: k + topk_group +
    2*n_group row reductions per tile, no sort. Layouts: logits [T, E] any row stride, unit
    column stride; bias [E]; ids int32 / weights float32 [T, k] contiguous.

Alignment (device-only, no host sync, 1..65536 experts):
    1. ``_moe_align_count_kernel``   grid NB = cdiv(S, SLOT_BLOCK): counts[b, e] += 1 (int atomics;
       the counts are exact whatever the order)
    2. ``_moe_align_offsets_kernel`` grid cdiv(E, EXP_BLOCK): per expert, exclusive prefix over
       the NB blocks in place (counts[b, e] := slots of e in blocks < b) and totals[e]
    3. ``_moe_align_scan_kernel``    one program: padded = ceil(total / B) * B, starts = exclusive
       cumsum in EXP_BLOCK chunks, starts[E] = num_tokens_post_padded
    4. ``_moe_align_scatter_kernel`` grid NB: slot s of expert e in block b goes to
       starts[e] + counts[b, e] + (earlier slots of e in the block) -- the in-block rank comes from
       [RANK_CHUNK, RANK_CHUNK] equality tiles, so the order inside an expert is ascending slot
       order (deterministic, as pygen.ref.moe.moe_align).
    5. ``_moe_align_blocks_kernel``  grid over GEMM blocks: expert of block j by binary search of
       starts (ceil(log2 E) gathers), -1 at or past the total.
    Workspace: int32 [NB*E + E], zero-filled by the caller (align_workspace_size).

Permutation: ``_moe_permute_fwd_kernel`` copies row sorted_slots[r] // k of x to row r (zeros for
the sentinel); ``_moe_unpermute_fwd_kernel`` sums the k rows of each token (row_of_slot, the
inverse permutation, -1 for none) in ascending j; ``_moe_unpermute_bwd_kernel`` gives
d_permuted[r] = w[slot] g[tok] and dw[slot] = <g[tok], permuted[r]>.
"""
from __future__ import annotations

import os

import triton
import triton.language as tl

from ._moe_fused import COMPILE_SPECS as _FUSED_SPECS
from ._moe_fused import _with_divisibility
from ._moe_fused import fused_config, fused_moe_bwd, fused_moe_fwd  # noqa: F401

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
SLOT_BLOCK = 1024
RANK_CHUNK = 256 if _INTERPRET else 64   # the interpreter pays per loop step, the GPU per register
EXP_BLOCK = 1024
SCORING = {"sigmoid": 0, "softmax": 1}


def _p2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))


# ----------------------------------------------------------------------------------------------
# routing
# ----------------------------------------------------------------------------------------------
@triton.jit
def _moe_route_fwd_kernel(
    x_ptr,              # [T, E] router logits (any float dtype), unit column stride
    bias_ptr,           # [E] e_score_correction_bias (read only when HAS_BIAS)
    ids_ptr,            # [T, K] int32 out
    w_ptr,              # [T, K] float32 out
    T, E, stride_xt,
    scale,              # routed_scaling_factor
    E_P: tl.constexpr, K: tl.constexpr, K_P: tl.constexpr,
    N_GROUP: tl.constexpr, TOPK_GROUP: tl.constexpr, G_P: tl.constexpr, PER: tl.constexpr,
    SOFTMAX: tl.constexpr, HAS_BIAS: tl.constexpr, NORM: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, E_P)
    rmask = rows < T
    cmask = cols < E
    m2 = rmask[:, None] & cmask[None, :]
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xt + cols[None, :], mask=m2, other=0.0).to(tl.float32)
    NEG = float("-inf")
    if SOFTMAX:
        xm = tl.where(cmask[None, :], x, NEG)
        mx = tl.max(xm, axis=1)
        ex = tl.where(cmask[None, :], tl.exp(xm - mx[:, None]), 0.0)
        s = ex / tl.sum(ex, axis=1)[:, None]
    else:
        s = 1.0 / (1.0 + tl.exp(-x))
    b = s
    if HAS_BIAS:
        b = s + tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    b = tl.where(cmask[None, :], b, NEG)
    if N_GROUP > 1 and TOPK_GROUP < N_GROUP:
        grp = cols // PER
        gcols = tl.arange(0, G_P)
        gs = tl.full((BLOCK_T, G_P), NEG, tl.float32)
        for g in tl.static_range(N_GROUP):
            v = tl.where((grp == g)[None, :], b, NEG)
            t1 = tl.max(v, axis=1)
            i1 = tl.min(tl.where(v == t1[:, None], cols[None, :], E_P), axis=1)
            if PER > 1:
                v = tl.where(cols[None, :] == i1[:, None], NEG, v)
                t1 = t1 + tl.max(v, axis=1)
            gs = tl.where((gcols == g)[None, :], t1[:, None], gs)
        elig = tl.zeros((BLOCK_T, E_P), tl.int1)
        for _ in tl.static_range(TOPK_GROUP):
            m = tl.max(gs, axis=1)
            gi = tl.min(tl.where(gs == m[:, None], gcols[None, :], G_P), axis=1)
            gs = tl.where(gcols[None, :] == gi[:, None], NEG, gs)
            elig = elig | (grp[None, :] == gi[:, None])
        b = tl.where(elig, b, NEG)
    kcols = tl.arange(0, K_P)
    wts = tl.zeros((BLOCK_T, K_P), tl.float32)
    sel = tl.zeros((BLOCK_T, K_P), tl.int32)
    for j in tl.static_range(K):
        m = tl.max(b, axis=1)
        e = tl.min(tl.where(b == m[:, None], cols[None, :], E_P), axis=1)
        hit = cols[None, :] == e[:, None]
        wj = tl.sum(tl.where(hit, s, 0.0), axis=1)
        b = tl.where(hit, NEG, b)
        wts = tl.where((kcols == j)[None, :], wj[:, None], wts)
        sel = tl.where((kcols == j)[None, :], e[:, None], sel)
    if NORM:
        wts = wts / (tl.sum(wts, axis=1)[:, None] + 1e-20)
    wts = wts * scale
    om = rmask[:, None] & (kcols < K)[None, :]
    off = rows[:, None].to(tl.int64) * K + kcols[None, :]
    tl.store(ids_ptr + off, sel, mask=om)
    tl.store(w_ptr + off, wts, mask=om)


def route_fwd(logits, bias, ids, weights, scoring, n_group, topk_group, norm, scale):
    """ids/weights [T, k] contiguous int32/float32; logits [T, E] (copied if its columns are strided)."""
    t, e = logits.shape
    k = ids.shape[1]
    if t == 0:
        return None
    x = logits if logits.stride(1) == 1 else logits.contiguous()
    e_p = _p2(e)
    block_t = max(1, min(_p2(t), 4096 // e_p if not _INTERPRET else 8192 // e_p, 64))
    grid = (triton.cdiv(t, block_t),)
    _moe_route_fwd_kernel[grid](
        x, bias if bias is not None else x, ids, weights, t, e, x.stride(0), float(scale),
        E_P=e_p, K=k, K_P=_p2(k), N_GROUP=n_group, TOPK_GROUP=topk_group, G_P=_p2(n_group), PER=e // n_group,
        SOFTMAX=SCORING[scoring] == 1, HAS_BIAS=bias is not None, NORM=bool(norm), BLOCK_T=block_t,
        num_warps=4)
    return None


# ----------------------------------------------------------------------------------------------
# alignment
# ----------------------------------------------------------------------------------------------
def align_workspace_size(num_slots: int, num_experts: int) -> int:
    """int32 elements of the zero-filled workspace align_fwd needs."""
    nb = max(1, triton.cdiv(num_slots, SLOT_BLOCK))
    return nb * num_experts + num_experts


@triton.jit
def _moe_align_count_kernel(ids_ptr, counts_ptr, S, E, SLOT_BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid * SLOT_BLOCK + tl.arange(0, SLOT_BLOCK)
    m = offs < S
    e = tl.load(ids_ptr + offs, mask=m, other=-1)
    ok = m & (e >= 0) & (e < E)   # compared before the narrowing cast: an int64 id never wraps in
    e = e.to(tl.int32)
    base = counts_ptr + pid.to(tl.int64) * E
    tl.atomic_add(base + tl.where(ok, e, 0), tl.full((SLOT_BLOCK,), 1, tl.int32), mask=ok)


@triton.jit
def _moe_align_offsets_kernel(counts_ptr, totals_ptr, NB, E, EXP_BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    ex = pid * EXP_BLOCK + tl.arange(0, EXP_BLOCK)
    m = ex < E
    run = tl.zeros((EXP_BLOCK,), tl.int32)
    p = counts_ptr + ex
    for _ in range(NB):
        c = tl.load(p, mask=m, other=0)
        tl.store(p, run, mask=m)
        run += c
        p += E   # pointer arithmetic is 64-bit: NB*E may pass 2^31
    tl.store(totals_ptr + ex, run, mask=m)


@triton.jit
def _moe_align_scan_kernel(totals_ptr, starts_ptr, ntpp_ptr, E, BLOCK: tl.constexpr, EXP_BLOCK: tl.constexpr):
    carry = 0
    for c in range(0, E, EXP_BLOCK):
        ex = c + tl.arange(0, EXP_BLOCK)
        m = ex < E
        tot = tl.load(totals_ptr + ex, mask=m, other=0)
        padded = (tot + BLOCK - 1) // BLOCK * BLOCK
        incl = tl.cumsum(padded, axis=0)
        tl.store(starts_ptr + ex, carry + incl - padded, mask=m)
        carry += tl.sum(padded, axis=0)
    tl.store(starts_ptr + E, carry)
    tl.store(ntpp_ptr, carry)


@triton.jit
def _moe_align_scatter_kernel(ids_ptr, counts_ptr, starts_ptr, sorted_ptr, S, E,
                              SLOT_BLOCK: tl.constexpr, RANK_CHUNK: tl.constexpr):
    pid = tl.program_id(0)
    base = pid * SLOT_BLOCK
    ci = tl.arange(0, RANK_CHUNK)
    for i0 in range(0, SLOT_BLOCK, RANK_CHUNK):
        si = base + i0 + ci
        mi = si < S
        ei = tl.load(ids_ptr + si, mask=mi, other=-1)
        oki = mi & (ei >= 0) & (ei < E)
        ei = tl.where(oki, ei, -1).to(tl.int32)
        rank = tl.zeros((RANK_CHUNK,), tl.int32)
        # earlier slots of the same expert in this block: full chunks before, then the diagonal chunk
        for j0 in range(0, i0, RANK_CHUNK):
            sj = base + j0 + ci
            ej = tl.load(ids_ptr + sj, mask=sj < S, other=-1)
            ej = tl.where((ej >= 0) & (ej < E), ej, -2).to(tl.int32)
            rank += tl.sum((ei[:, None] == ej[None, :]).to(tl.int32), axis=1)
        tri = ci[None, :] < ci[:, None]
        rank += tl.sum(((ei[:, None] == ei[None, :]) & tri).to(tl.int32), axis=1)
        e0 = tl.where(oki, ei, 0)
        pos = tl.load(starts_ptr + e0, mask=oki, other=0) + \
            tl.load(counts_ptr + pid.to(tl.int64) * E + e0, mask=oki, other=0) + rank
        tl.store(sorted_ptr + pos, si, mask=oki)


@triton.jit
def _moe_align_blocks_kernel(starts_ptr, expert_ids_ptr, NBLK, E, BLOCK: tl.constexpr,
                             LOG2_E: tl.constexpr, BLOCK_J: tl.constexpr):
    pid = tl.program_id(0)
    j = pid * BLOCK_J + tl.arange(0, BLOCK_J)
    m = j < NBLK
    pos = j * BLOCK
    total = tl.load(starts_ptr + E)
    e = tl.zeros((BLOCK_J,), tl.int32)
    step = 1 << LOG2_E
    for _ in tl.static_range(LOG2_E + 1):
        cand = e + step
        ok = cand < E
        st = tl.load(starts_ptr + tl.where(ok, cand, 0), mask=m & ok, other=0)
        e = tl.where(ok & (st <= pos), cand, e)
        step = step // 2
    tl.store(expert_ids_ptr + j, tl.where(pos < total, e, -1), mask=m)


def align_fwd(ids, num_experts, block_size, sorted_ids, expert_ids, ntpp, starts, workspace):
    """ids: flat contiguous int32/int64 [S]; outputs as pygen.ops.moe.moe_align's plus starts
    int32 [E+1] (padded segment starts, [E] = total); workspace int32 zero-filled
    [align_workspace_size(S, E)]."""
    s = ids.numel()
    e = int(num_experts)
    nb = max(1, triton.cdiv(s, SLOT_BLOCK))
    counts, totals = workspace[: nb * e], workspace[nb * e: nb * e + e]
    sorted_ids.fill_(s)
    if s:
        _moe_align_count_kernel[(nb,)](ids, counts, s, e, SLOT_BLOCK=SLOT_BLOCK)
    _moe_align_offsets_kernel[(triton.cdiv(e, EXP_BLOCK),)](counts, totals, nb, e, EXP_BLOCK=EXP_BLOCK)
    _moe_align_scan_kernel[(1,)](totals, starts, ntpp, e, BLOCK=int(block_size), EXP_BLOCK=EXP_BLOCK)
    if s:
        _moe_align_scatter_kernel[(nb,)](ids, counts, starts, sorted_ids, s, e,
                                         SLOT_BLOCK=SLOT_BLOCK, RANK_CHUNK=RANK_CHUNK, num_warps=4)
    nblk = expert_ids.numel()
    block_j = 1024
    _moe_align_blocks_kernel[(triton.cdiv(nblk, block_j),)](
        starts, expert_ids, nblk, e, BLOCK=int(block_size), LOG2_E=max(0, (e - 1).bit_length() - 1),
        BLOCK_J=block_j)
    return None


# ----------------------------------------------------------------------------------------------
# permutation
# ----------------------------------------------------------------------------------------------
@triton.jit
def _moe_permute_fwd_kernel(x_ptr, slots_ptr, out_ptr, N, H, K, stride_x,
                            BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    rm = r < N
    slot = tl.load(slots_ptr + r, mask=rm, other=N)
    ok = rm & (slot >= 0) & (slot < N)   # any slot value is safe: only [0, N) is read
    tok = tl.where(ok, slot // K, 0)
    hm = h < H
    v = tl.load(x_ptr + tok[:, None].to(tl.int64) * stride_x + h[None, :], mask=ok[:, None] & hm[None, :], other=0.0)
    tl.store(out_ptr + r[:, None].to(tl.int64) * H + h[None, :], v, mask=rm[:, None] & hm[None, :])


def permute_fwd(x, sorted_slots, top_k, out):
    """x [T, H] unit column stride; sorted_slots int32 [N=T*k]; out [N, H] contiguous."""
    n, h = out.shape
    br, bh = 16, min(_p2(h), 256)
    _moe_permute_fwd_kernel[(triton.cdiv(n, br), triton.cdiv(h, bh))](
        x, sorted_slots, out, n, h, int(top_k), x.stride(0), BLOCK_R=br, BLOCK_H=bh)
    return None


@triton.jit
def _moe_unpermute_fwd_kernel(y_ptr, inv_ptr, w_ptr, out_ptr, T, H, K, stride_y,
                              HAS_W: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    tm = t < T
    hm = h < H
    acc = tl.zeros((BLOCK_T, BLOCK_H), tl.float32)
    for j in range(K):
        slot = t.to(tl.int64) * K + j
        row = tl.load(inv_ptr + slot, mask=tm, other=-1)
        ok = tm & (row >= 0)
        v = tl.load(y_ptr + tl.where(ok, row, 0)[:, None].to(tl.int64) * stride_y + h[None, :],
                    mask=ok[:, None] & hm[None, :], other=0.0).to(tl.float32)
        if HAS_W:
            v = v * tl.load(w_ptr + slot, mask=ok, other=0.0).to(tl.float32)[:, None]
        acc += v
    tl.store(out_ptr + t[:, None].to(tl.int64) * H + h[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=tm[:, None] & hm[None, :])


def unpermute_fwd(y, row_of_slot, weights, top_k, out):
    """y [N, H] unit column stride; row_of_slot int32 [T*k] (-1: none); weights [T, k] or None;
    out [T, H] contiguous."""
    t, h = out.shape
    bt, bh = 16, min(_p2(h), 256)
    _moe_unpermute_fwd_kernel[(triton.cdiv(t, bt), triton.cdiv(h, bh))](
        y, row_of_slot, weights if weights is not None else y, out, t, h, int(top_k), y.stride(0),
        HAS_W=weights is not None, BLOCK_T=bt, BLOCK_H=bh)
    return None


@triton.jit
def _moe_unpermute_bwd_kernel(g_ptr, y_ptr, slots_ptr, w_ptr, dy_ptr, dw_ptr, N, H, K, stride_y,
                              HAS_W: tl.constexpr, NEED_DY: tl.constexpr, NEED_DW: tl.constexpr,
                              BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = r < N
    slot = tl.load(slots_ptr + r, mask=rm, other=N)
    ok = rm & (slot >= 0) & (slot < N)   # any slot value is safe: only [0, N) is read
    tok = tl.where(ok, slot // K, 0).to(tl.int64)
    if HAS_W:
        w = tl.load(w_ptr + tl.where(ok, slot, 0), mask=ok, other=0.0).to(tl.float32)
    dot = tl.zeros((BLOCK_R,), tl.float32)
    for h0 in range(0, H, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)
        hm = h < H
        g = tl.load(g_ptr + tok[:, None] * H + h[None, :], mask=ok[:, None] & hm[None, :], other=0.0).to(tl.float32)
        if NEED_DY:
            d = g
            if HAS_W:
                d = g * w[:, None]
            tl.store(dy_ptr + r[:, None].to(tl.int64) * H + h[None, :], d.to(dy_ptr.dtype.element_ty),
                     mask=rm[:, None] & hm[None, :])
        if NEED_DW:
            y = tl.load(y_ptr + r[:, None].to(tl.int64) * stride_y + h[None, :], mask=ok[:, None] & hm[None, :],
                        other=0.0).to(tl.float32)
            dot += tl.sum(g * y, axis=1)
    if NEED_DW:
        tl.store(dw_ptr + slot, dot.to(dw_ptr.dtype.element_ty), mask=ok)


def unpermute_bwd(grad, y, sorted_slots, weights, top_k, dy, dw):
    """grad [T, H] contiguous; y [N, H] unit column stride; dy [N, H] contiguous or None;
    dw [T, k] (zero-filled here: a slot in no row gets 0) or None."""
    n, h = y.shape
    if dw is not None:
        dw.zero_()
    br, bh = 16, min(_p2(h), 256)
    _moe_unpermute_bwd_kernel[(triton.cdiv(n, br),)](
        grad, y, sorted_slots, weights if weights is not None else y, dy if dy is not None else y,
        dw if dw is not None else y, n, h, int(top_k), y.stride(0), HAS_W=weights is not None,
        NEED_DY=dy is not None, NEED_DW=dw is not None, BLOCK_R=br, BLOCK_H=bh)
    return None


def _compile_specs():
    specs = []
    for e, k, g, tg in ((256, 8, 8, 4),):
        specs.append({"fn": _moe_route_fwd_kernel, "name": f"moe_route_fwd[E={e},k={k},g={g}/{tg}]",
                      "signature": {"x_ptr": "*fp32", "bias_ptr": "*fp32", "ids_ptr": "*i32", "w_ptr": "*fp32",
                                    "T": "i32", "E": "i32", "stride_xt": "i32", "scale": "fp32"},
                      "constexprs": {"E_P": e, "K": k, "K_P": k, "N_GROUP": g, "TOPK_GROUP": tg, "G_P": g,
                                     "PER": e // g,
                                     "SOFTMAX": False, "HAS_BIAS": True, "NORM": True, "BLOCK_T": 16},
                      "num_warps": 4})
    specs.append({"fn": _moe_align_count_kernel, "name": "moe_align_count",
                  "signature": {"ids_ptr": "*i32", "counts_ptr": "*i32", "S": "i32", "E": "i32"},
                  "constexprs": {"SLOT_BLOCK": SLOT_BLOCK}})
    specs.append({"fn": _moe_align_offsets_kernel, "name": "moe_align_offsets",
                  "signature": {"counts_ptr": "*i32", "totals_ptr": "*i32", "NB": "i32", "E": "i32"},
                  "constexprs": {"EXP_BLOCK": EXP_BLOCK}})
    specs.append({"fn": _moe_align_scan_kernel, "name": "moe_align_scan",
                  "signature": {"totals_ptr": "*i32", "starts_ptr": "*i32", "ntpp_ptr": "*i32", "E": "i32"},
                  "constexprs": {"BLOCK": 64, "EXP_BLOCK": EXP_BLOCK}})
    specs.append({"fn": _moe_align_scatter_kernel, "name": "moe_align_scatter",
                  "signature": {"ids_ptr": "*i32", "counts_ptr": "*i32", "starts_ptr": "*i32", "sorted_ptr": "*i32",
                                "S": "i32", "E": "i32"},
                  "constexprs": {"SLOT_BLOCK": SLOT_BLOCK, "RANK_CHUNK": RANK_CHUNK}})
    specs.append({"fn": _moe_align_blocks_kernel, "name": "moe_align_blocks",
                  "signature": {"starts_ptr": "*i32", "expert_ids_ptr": "*i32", "NBLK": "i32", "E": "i32"},
                  "constexprs": {"BLOCK": 64, "LOG2_E": 7, "BLOCK_J": 1024}})
    return specs


COMPILE_SPECS = [_with_divisibility(s, div=("E", "stride_xt")) for s in _compile_specs()] + _FUSED_SPECS
