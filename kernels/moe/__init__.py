"""Triton backend of the DeepSeekMoE family: routing, alignment, permutation (this file) and the
fused expert MLP (kernels/moe/fused.py), forward and backward. Semantics are pygen.ref.moe's
(the float64 oracle); the launcher contract is docs/ARCHITECTURE.md's (launchers take tensors,
allocate nothing but documented workspaces, return None).

Routing  ``_moe_route_fwd_kernel`` (1..65536 experts, any top_k / n_group / topk_group):
        s = sigmoid(x) | softmax(x);  b = s + bias
        gs[g] = top-2 sum of b in group g (its b for one expert);  keep the topk_group best groups
              (ties -> lower g)
        ids = top_k experts by b inside kept groups (ties -> lower id), descending; when top_k
              exceeds the kept groups' experts, the rest are the lowest masked ids (masked b = -inf,
              as transformers' DeepseekV3 router)
        w = s[ids] (/ (sum + 1e-20)) * scale          (s unmasked: masked picks weigh in too)
    Experts are laid out as [groups, per-group] and read in [BLOCK_T, GB, PB] tiles (e = g*PER + p;
    without group limit one group of E). Every selection is a runtime loop of "best key strictly
    below the previous one" steps, key = (value, -index), so the only state is the last key: no
    knock-out masks, no [k] or [n_group] register tiles, nothing unrolled over k or the groups.
    SINGLE (the row fits one tile, ROUTE_TILE experts; small E packs up to 64 rows in
    ROUTE_ROW_TILE elements): the tile is scored once and stays in registers. Otherwise (BLOCK_T
    = 1) every step streams the row again, recomputing b with the same inlined code (no fma can
    form in it, so keys compare bitwise equal across passes): one pass for the softmax statistics
    (running max and rescaled sum), topk_group passes for the group threshold, k passes for the
    experts (two when a group is wider than a tile, P_LOOP). Cost O((1 + topk_group + k) * E) per
    token, registers independent of E and k. Weights are written per step and, with
    norm_topk_prob, rescaled after a barrier. Layouts: logits [T, E] any row stride, unit column
    stride; bias [E]; ids int32 / weights float32 [T, k] contiguous.

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

import triton
import triton.language as tl
from torch import Tensor

from .._bf16 import cast as _cast
from .._compile_spec import compile_spec
from .._device import interpreting
from .._grid import program_block
from .fused import COMPILE_SPECS as _FUSED_SPECS, _p2, fused_config, fused_moe_bwd, fused_moe_fwd  # noqa: F401 (re-export of the fused kernels' launchers and specs; _p2 shared)

_INTERPRET = interpreting()

SLOT_BLOCK = 1024
RANK_CHUNK = 256 if _INTERPRET else 64  # the interpreter pays per loop step, the GPU per register
EXP_BLOCK = 1024
SCORING = {"sigmoid": 0, "softmax": 1}


# ----------------------------------------------------------------------------------------------
# routing
# ----------------------------------------------------------------------------------------------
ROUTE_TILE = 4096  # most experts of one row a program holds at a time (16 a thread at 8 warps)
ROUTE_ROW_TILE = 2048  # most elements when a program holds several rows: each row's running keys
ROUTE_WARPS = 8  # and statistics sit in every thread, so rows cost registers too
_BIG = tl.constexpr(2147483647)  # "no index": loses every tie on the index


@triton.jit
def _route_scores(x, mx, den, SOFTMAX: tl.constexpr):
    """Unbiased scores s of logits x (float32); softmax from the row's max mx and sum den."""
    if SOFTMAX:
        s = tl.exp(x - mx) / den
    else:
        s = 1.0 / (1.0 + tl.exp(-x))
    return s


@triton.jit
def _route_experts(g0, p0, NG, PER, GB: tl.constexpr, PB: tl.constexpr):
    """Experts e = g * PER + p of the tile g in g0 + [0, GB), p in p0 + [0, PB): e [1, GB, PB] and
    ok (a real expert) [1, GB, PB]."""
    g = g0 + tl.arange(0, GB)
    p = p0 + tl.arange(0, PB)
    e = (g[:, None] * PER + p[None, :])[None, :, :]
    ok = ((g < NG)[:, None] & (p < PER)[None, :])[None, :, :]
    return e, ok


@triton.jit
def _route_tile(
    src, g0, p0, NG, PER, GB: tl.constexpr, PB: tl.constexpr, SOFTMAX: tl.constexpr, HAS_BIAS: tl.constexpr
):
    """Biased scores b [BLOCK_T, GB, PB] of _route_experts' tile, with its e and ok. ``src`` =
    (xrow, rmask, bias_ptr, mx, den): the program's logits row pointers and their softmax
    statistics (the kernel builds it once; a tuple compiles to its elements, so the code is what
    separate arguments give)."""
    xrow, rmask, bias_ptr, mx, den = src
    e, ok = _route_experts(g0, p0, NG, PER, GB, PB)
    x = tl.load(xrow[:, None, None] + e, mask=rmask[:, None, None] & ok, other=0.0).to(tl.float32)
    b = _route_scores(x, mx[:, None, None], den[:, None, None], SOFTMAX)
    if HAS_BIAS:
        b = b + tl.load(bias_ptr + e, mask=ok, other=0.0).to(tl.float32)
    return b, e, ok


@triton.jit
def _route_top2(b, ok, PB: tl.constexpr):
    """Per group of a [BLOCK_T, GB, PB] tile: its largest value and the largest of the rest (one
    instance of the largest knocked out, so equal values count twice)."""
    NEG = float("-inf")
    pl = tl.arange(0, PB)[None, None, :]
    v = tl.where(ok, b, NEG)
    m1 = tl.max(v, axis=2)
    i1 = tl.min(tl.where(v == m1[:, :, None], pl, PB), axis=2)
    m2 = tl.max(tl.where(pl == i1[:, :, None], NEG, v), axis=2)
    return m1, m2


@triton.jit
def _route_group_sum(m1, m2, PAIRS: tl.constexpr):
    """A group's score from its two largest values: their sum, or (``PAIRS`` False: one expert per
    group, whose m2 is -inf) the one value. A constexpr, not a select on PER: the runtime select
    spilled the 65,536-expert streaming tile under Triton 3.6."""
    if PAIRS:
        return m1 + m2
    return m1


@triton.jit
def _route_group_scores(
    src,
    g0,
    NG,
    PER,
    BLOCK_T: tl.constexpr,
    GB: tl.constexpr,
    PB: tl.constexpr,
    SOFTMAX: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PAIRS: tl.constexpr,
):
    """gs [BLOCK_T, GB] = top-2 sum of b in groups g0 + [0, GB), streaming a group in PB-wide chunks
    (``src`` as _route_tile's)."""
    NEG = float("-inf")
    r1 = tl.full((BLOCK_T, GB), NEG, tl.float32)
    r2 = tl.full((BLOCK_T, GB), NEG, tl.float32)
    for p0 in range(0, PER, PB):
        b, _e, ok = _route_tile(src, g0, p0, NG, PER, GB, PB, SOFTMAX, HAS_BIAS)
        m1, m2 = _route_top2(b, ok, PB)
        r2 = tl.maximum(tl.minimum(r1, m1), tl.maximum(r2, m2))
        r1 = tl.maximum(r1, m1)
    return _route_group_sum(r1, r2, PAIRS)


@triton.jit
def _route_best_below(v, idx, ok, pv, pi):
    """Per row, the largest key (v, -idx) among the candidates (ok) strictly below the key
    (pv, -pi): value descending, ties to the lower index; (-inf, _BIG) when there is none.
    v [BLOCK_T, A, B], idx and ok broadcastable to it, pv and pi [BLOCK_T]."""
    NEG = float("-inf")
    pv3 = pv[:, None, None]
    cand = ok & ((v < pv3) | ((v == pv3) & (idx > pi[:, None, None])))
    vm = tl.where(cand, v, NEG)
    bv = tl.max(tl.max(vm, axis=2), axis=1)
    im = tl.where(cand & (vm == bv[:, None, None]), idx, _BIG)
    bi = tl.min(tl.min(im, axis=2), axis=1)
    return bv, bi


@triton.jit
def _route_kept(gs, g, tv, tg):
    """Groups g (scores gs [BLOCK_T, GB]) whose key (gs, -g) is at or above the TOPK_GROUP-th best
    group's key (tv, -tg) [BLOCK_T]: the groups the group limit keeps."""
    return (gs > tv[:, None]) | ((gs == tv[:, None]) & (g[None, :] <= tg[:, None]))


@triton.jit
def _route_merge(bv, bi, cv, ci):
    """The larger of two keys (value descending, ties to the lower index)."""
    take = (cv > bv) | ((cv == bv) & (ci < bi))
    return tl.where(take, cv, bv), tl.where(take, ci, bi)


@triton.jit
def _moe_route_fwd_kernel(
    x_ptr,  # [T, E] router logits (any float dtype), unit column stride
    bias_ptr,  # [E] e_score_correction_bias (read only when HAS_BIAS)
    ids_ptr,  # [T, K] int32 out
    w_ptr,  # [T, K] float32 out
    T,
    E,
    stride_xt,
    NG,  # groups in the layout: n_group when GROUPED, else 1
    PER,  # experts per layout group: E // NG
    TOPK_GROUP,  # groups kept (GROUPED only)
    K,  # top_k
    scale,  # routed_scaling_factor
    GROUPED: tl.constexpr,  # group-limited selection (topk_group < n_group)
    PAIRS: tl.constexpr,  # PER > 1: a group's score is its top-2 sum (else its one value)
    SINGLE: tl.constexpr,  # the whole row is one [GB, PB] tile (held in registers)
    P_LOOP: tl.constexpr,  # a group spans several PB-wide chunks (then GB == 1)
    GB: tl.constexpr,
    PB: tl.constexpr,
    SOFTMAX: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    NORM: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    NEG = float("-inf")
    rows, rmask = program_block(0, T, BLOCK_T)
    xrow = x_ptr + rows.to(tl.int64) * stride_xt
    # softmax statistics: running max and rescaled sum over the tiles (one tile when SINGLE)
    mx = tl.zeros((BLOCK_T,), tl.float32)
    den = tl.full((BLOCK_T,), 1.0, tl.float32)
    if SOFTMAX:
        mx = tl.full((BLOCK_T,), -3.4028234663852886e38, tl.float32)
        den = tl.zeros((BLOCK_T,), tl.float32)
        for g0 in range(0, NG, GB):
            for p0 in range(0, PER, PB):
                es_, oks_ = _route_experts(g0, p0, NG, PER, GB, PB)
                xs_ = tl.load(xrow[:, None, None] + es_, mask=rmask[:, None, None] & oks_, other=NEG).to(tl.float32)
                nm = tl.maximum(mx, tl.max(tl.max(xs_, axis=2), axis=1))
                den = den * tl.exp(mx - nm) + tl.sum(tl.sum(tl.exp(xs_ - nm[:, None, None]), axis=2), axis=1)
                mx = nm
        mx = tl.where(rmask, mx, 0.0)  # rows past T: finite scores, never stored
        den = tl.where(rmask, den, 1.0)
    src = (xrow, rmask, bias_ptr, mx, den)  # what _route_tile scores
    gl = tl.arange(0, GB)
    if SINGLE:
        b0, e0, ok0 = _route_tile(src, 0, 0, NG, PER, GB, PB, SOFTMAX, HAS_BIAS)
    # group limit: (tv, tg) = key of the TOPK_GROUP-th best group; group g is kept when its key
    # (gs[g], -g) is at or above it
    tv = tl.full((BLOCK_T,), float("inf"), tl.float32)
    tg = tl.full((BLOCK_T,), -1, tl.int32)
    if GROUPED:
        if SINGLE:
            m1, m2 = _route_top2(b0, ok0, PB)
            gs0 = _route_group_sum(m1, m2, PAIRS)
        for _ in range(TOPK_GROUP):
            bv = tl.full((BLOCK_T,), NEG, tl.float32)
            bi = tl.full((BLOCK_T,), _BIG, tl.int32)
            for g0 in range(0, NG, GB):
                if SINGLE:
                    gs = gs0
                else:
                    gs = _route_group_scores(src, g0, NG, PER, BLOCK_T, GB, PB, SOFTMAX, HAS_BIAS, PAIRS)
                cv, ci = _route_best_below(
                    gs[:, :, None], (g0 + gl)[None, :, None], (g0 + gl < NG)[None, :, None], tv, tg
                )
                bv, bi = _route_merge(bv, bi, cv, ci)
            tv = bv
            tg = bi
        if SINGLE:
            keep = _route_kept(gs0, gl, tv, tg)
            b0 = tl.where(keep[:, :, None], b0, NEG)
    # top_k: step j takes the best key strictly below step j-1's (no state but the last key)
    pv = tl.full((BLOCK_T,), float("inf"), tl.float32)
    pi = tl.full((BLOCK_T,), -1, tl.int32)
    wsum = tl.zeros((BLOCK_T,), tl.float32)
    out = rows.to(tl.int64) * K
    for j in range(K):
        if SINGLE:
            bv, bi = _route_best_below(b0, e0, ok0, pv, pi)
        else:
            bv = tl.full((BLOCK_T,), NEG, tl.float32)
            bi = tl.full((BLOCK_T,), _BIG, tl.int32)
            for g0 in range(0, NG, GB):
                if P_LOOP:
                    if GROUPED:
                        gs = _route_group_scores(src, g0, NG, PER, BLOCK_T, GB, PB, SOFTMAX, HAS_BIAS, PAIRS)
                        keep = _route_kept(gs, g0 + gl, tv, tg)
                    for p0 in range(0, PER, PB):
                        b, e, ok = _route_tile(src, g0, p0, NG, PER, GB, PB, SOFTMAX, HAS_BIAS)
                        if GROUPED:
                            b = tl.where(keep[:, :, None], b, NEG)
                        cv, ci = _route_best_below(b, e, ok, pv, pi)
                        bv, bi = _route_merge(bv, bi, cv, ci)
                else:
                    b, e, ok = _route_tile(src, g0, 0, NG, PER, GB, PB, SOFTMAX, HAS_BIAS)
                    if GROUPED:
                        m1, m2 = _route_top2(b, ok, PB)
                        gs = _route_group_sum(m1, m2, PAIRS)
                        keep = _route_kept(gs, g0 + gl, tv, tg)
                        b = tl.where(keep[:, :, None], b, NEG)
                    cv, ci = _route_best_below(b, e, ok, pv, pi)
                    bv, bi = _route_merge(bv, bi, cv, ci)
        pv = bv
        pi = bi
        # bi is _BIG only when every expert left scores NaN (a NaN-scored expert never wins): the
        # slot takes id j (as the cpu backend's fill: ids 0.. for an all-NaN row) and weight NaN,
        # so the token's output is NaN as transformers' is, and every id stays in [0, E)
        hit = rmask & (bi < E)
        xe = tl.load(xrow + tl.where(hit, bi, 0), mask=hit, other=0.0).to(tl.float32)
        se = tl.where(hit, _route_scores(xe, mx, den, SOFTMAX), 0.0)
        wsum += se
        tl.store(ids_ptr + out + j, tl.where(hit, bi, j), mask=rmask)
        if NORM:
            tl.store(w_ptr + out + j, tl.where(hit, se, float("nan")), mask=rmask)
        else:
            tl.store(w_ptr + out + j, tl.where(hit, se * scale, float("nan")), mask=rmask)
    if NORM:
        # the stores above were made by one thread of each row's replicas: the barrier makes them
        # visible to the threads that read them back
        tl.debug_barrier()
        d = wsum + 1e-20
        for j in range(K):
            w = tl.load(w_ptr + out + j, mask=rmask, other=0.0)
            tl.store(w_ptr + out + j, w / d * scale, mask=rmask)


def route_config(num_tokens: int, num_experts: int, n_group: int, topk_group: int, tile: int | None = None) -> dict:
    """Layout constexprs of _moe_route_fwd_kernel for a problem (``tile`` overrides ROUTE_TILE:
    the tests use small tiles to reach the streaming paths at small E)."""
    tile = _p2(tile or ROUTE_TILE)
    e = int(num_experts)
    # one-expert groups stay grouped: top_k may exceed topk_group, and the experts past the kept
    # ones are then the lowest masked ids, not the next best
    grouped = topk_group < n_group  # (topk_group = 0 masks every expert)
    ng, per = (int(n_group), e // n_group) if grouped else (1, e)
    pb = min(_p2(per), tile)
    gb = min(_p2(ng), max(1, tile // pb))
    bt = max(1, min(_p2(num_tokens), min(tile, ROUTE_ROW_TILE) // (gb * pb), 64))
    return {
        "NG": ng,
        "PER": per,
        "GROUPED": grouped,
        "PAIRS": per > 1,
        "SINGLE": gb >= ng and pb >= per,
        "P_LOOP": pb < per,
        "GB": gb,
        "PB": pb,
        "BLOCK_T": bt,
    }


def route_fwd(
    logits: Tensor,
    bias: Tensor | None,
    ids: Tensor,
    weights: Tensor,
    scoring: str,
    n_group: int,
    topk_group: int,
    norm: bool,
    scale: float,
    tile: int | None = None,
) -> None:
    """ids/weights [T, k] contiguous int32/float32; logits [T, E] and bias [E] (either copied if strided
    along E: the kernel reads both with unit stride there)."""
    t, e = logits.shape
    k = ids.shape[1]
    if t == 0:
        return None
    x = logits if logits.stride(1) == 1 else logits.contiguous()
    if bias is not None and bias.stride(0) != 1:
        bias = bias.contiguous()
    c = route_config(t, e, n_group, topk_group, tile)
    ng, per = c.pop("NG"), c.pop("PER")
    grid = (triton.cdiv(t, c["BLOCK_T"]),)
    _moe_route_fwd_kernel[grid](
        x,
        bias if bias is not None else x,
        ids,
        weights,
        t,
        e,
        x.stride(0),
        ng,
        per,
        int(topk_group),
        k,
        float(scale),
        SOFTMAX=SCORING[scoring] == 1,
        HAS_BIAS=bias is not None,
        NORM=bool(norm),
        num_warps=ROUTE_WARPS,
        **c,
    )
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
    offs, m = program_block(0, S, SLOT_BLOCK)
    e = tl.load(ids_ptr + offs, mask=m, other=-1)
    ok = m & (e >= 0) & (e < E)  # compared before the narrowing cast: an int64 id never wraps in
    e = e.to(tl.int32)
    base = counts_ptr + pid.to(tl.int64) * E
    tl.atomic_add(base + tl.where(ok, e, 0), tl.full((SLOT_BLOCK,), 1, tl.int32), mask=ok)


@triton.jit
def _moe_align_offsets_kernel(counts_ptr, totals_ptr, NB, E, EXP_BLOCK: tl.constexpr):
    ex, m = program_block(0, E, EXP_BLOCK)
    run = tl.zeros((EXP_BLOCK,), tl.int32)
    p = counts_ptr + ex
    for _ in range(NB):
        c = tl.load(p, mask=m, other=0)
        tl.store(p, run, mask=m)
        run += c
        p += E  # pointer arithmetic is 64-bit: NB*E may pass 2^31
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
def _moe_align_scatter_kernel(
    ids_ptr, counts_ptr, starts_ptr, sorted_ptr, S, E, SLOT_BLOCK: tl.constexpr, RANK_CHUNK: tl.constexpr
):
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
        pos = (
            tl.load(starts_ptr + e0, mask=oki, other=0)
            + tl.load(counts_ptr + pid.to(tl.int64) * E + e0, mask=oki, other=0)
            + rank
        )
        tl.store(sorted_ptr + pos, si, mask=oki)


@triton.jit
def _moe_align_blocks_kernel(
    starts_ptr, expert_ids_ptr, NBLK, E, BLOCK: tl.constexpr, LOG2_E: tl.constexpr, BLOCK_J: tl.constexpr
):
    j, m = program_block(0, NBLK, BLOCK_J)
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


def align_fwd(
    ids: Tensor,
    num_experts: int,
    block_size: int,
    sorted_ids: Tensor,
    expert_ids: Tensor,
    ntpp: Tensor,
    starts: Tensor,
    workspace: Tensor,
) -> None:
    """ids: flat contiguous int32/int64 [S]; outputs as pygen.ops.moe.moe_align's plus starts
    int32 [E+1] (padded segment starts, [E] = total); workspace int32 zero-filled
    [align_workspace_size(S, E)]."""
    s = ids.numel()
    e = int(num_experts)
    nb = max(1, triton.cdiv(s, SLOT_BLOCK))
    counts, totals = workspace[: nb * e], workspace[nb * e : nb * e + e]
    sorted_ids.fill_(s)
    if s:
        _moe_align_count_kernel[(nb,)](ids, counts, s, e, SLOT_BLOCK=SLOT_BLOCK)
    _moe_align_offsets_kernel[(triton.cdiv(e, EXP_BLOCK),)](counts, totals, nb, e, EXP_BLOCK=EXP_BLOCK)
    _moe_align_scan_kernel[(1,)](totals, starts, ntpp, e, BLOCK=int(block_size), EXP_BLOCK=EXP_BLOCK)
    if s:
        _moe_align_scatter_kernel[(nb,)](
            ids, counts, starts, sorted_ids, s, e, SLOT_BLOCK=SLOT_BLOCK, RANK_CHUNK=RANK_CHUNK, num_warps=4
        )
    nblk = expert_ids.numel()
    block_j = 1024
    _moe_align_blocks_kernel[(triton.cdiv(nblk, block_j),)](
        starts, expert_ids, nblk, e, BLOCK=int(block_size), LOG2_E=max(0, (e - 1).bit_length() - 1), BLOCK_J=block_j
    )
    return None


# ----------------------------------------------------------------------------------------------
# permutation
# ----------------------------------------------------------------------------------------------
@triton.jit
def _moe_permute_fwd_kernel(x_ptr, slots_ptr, out_ptr, N, H, K, stride_x, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    r, rm = program_block(0, N, BLOCK_R)
    h, hm = program_block(1, H, BLOCK_H)
    slot = tl.load(slots_ptr + r, mask=rm, other=N)
    ok = rm & (slot >= 0) & (slot < N)  # any slot value is safe: only [0, N) is read
    tok = tl.where(ok, slot // K, 0)
    v = tl.load(x_ptr + tok[:, None].to(tl.int64) * stride_x + h[None, :], mask=ok[:, None] & hm[None, :], other=0.0)
    tl.store(out_ptr + r[:, None].to(tl.int64) * H + h[None, :], v, mask=rm[:, None] & hm[None, :])


def permute_fwd(x: Tensor, sorted_slots: Tensor, top_k: int, out: Tensor) -> None:
    """x [T, H] unit column stride; sorted_slots int32 [N=T*k]; out [N, H] contiguous."""
    n, h = out.shape
    br, bh = 16, min(_p2(h), 256)
    _moe_permute_fwd_kernel[(triton.cdiv(n, br), triton.cdiv(h, bh))](
        x, sorted_slots, out, n, h, int(top_k), x.stride(0), BLOCK_R=br, BLOCK_H=bh
    )
    return None


@triton.jit
def _moe_unpermute_fwd_kernel(
    y_ptr,
    inv_ptr,
    w_ptr,
    out_ptr,
    T,
    H,
    K,
    stride_y,
    HAS_W: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: round bf16 stores in float32 first (kernels/_bf16.py)
    BLOCK_T: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    t, tm = program_block(0, T, BLOCK_T)
    h, hm = program_block(1, H, BLOCK_H)
    acc = tl.zeros((BLOCK_T, BLOCK_H), tl.float32)
    for j in range(K):
        slot = t.to(tl.int64) * K + j
        row = tl.load(inv_ptr + slot, mask=tm, other=-1)
        ok = tm & (row >= 0)
        v = tl.load(
            y_ptr + tl.where(ok, row, 0)[:, None].to(tl.int64) * stride_y + h[None, :],
            mask=ok[:, None] & hm[None, :],
            other=0.0,
        ).to(tl.float32)
        if HAS_W:
            v = v * tl.load(w_ptr + slot, mask=ok, other=0.0).to(tl.float32)[:, None]
        acc += v
    tl.store(
        out_ptr + t[:, None].to(tl.int64) * H + h[None, :],
        _cast(acc, out_ptr.dtype.element_ty, UPCAST),
        mask=tm[:, None] & hm[None, :],
    )


def unpermute_fwd(y: Tensor, row_of_slot: Tensor, weights: Tensor | None, top_k: int, out: Tensor) -> None:
    """y [N, H] unit column stride; row_of_slot int32 [T*k] (-1: none); weights [T, k] or None;
    out [T, H] contiguous."""
    t, h = out.shape
    bt, bh = 16, min(_p2(h), 256)
    _moe_unpermute_fwd_kernel[(triton.cdiv(t, bt), triton.cdiv(h, bh))](
        y,
        row_of_slot,
        weights if weights is not None else y,
        out,
        t,
        h,
        int(top_k),
        y.stride(0),
        HAS_W=weights is not None,
        UPCAST=_INTERPRET,
        BLOCK_T=bt,
        BLOCK_H=bh,
    )
    return None


@triton.jit
def _moe_unpermute_bwd_kernel(
    g_ptr,
    y_ptr,
    slots_ptr,
    w_ptr,
    dy_ptr,
    dw_ptr,
    N,
    H,
    K,
    stride_y,
    HAS_W: tl.constexpr,
    NEED_DY: tl.constexpr,
    NEED_DW: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: round bf16 stores in float32 first (kernels/_bf16.py)
    BLOCK_R: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    r, rm = program_block(0, N, BLOCK_R)
    slot = tl.load(slots_ptr + r, mask=rm, other=N)
    ok = rm & (slot >= 0) & (slot < N)  # any slot value is safe: only [0, N) is read
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
            tl.store(
                dy_ptr + r[:, None].to(tl.int64) * H + h[None, :],
                _cast(d, dy_ptr.dtype.element_ty, UPCAST),
                mask=rm[:, None] & hm[None, :],
            )
        if NEED_DW:
            y = tl.load(
                y_ptr + r[:, None].to(tl.int64) * stride_y + h[None, :], mask=ok[:, None] & hm[None, :], other=0.0
            ).to(tl.float32)
            dot += tl.sum(g * y, axis=1)
    if NEED_DW:
        tl.store(dw_ptr + slot, _cast(dot, dw_ptr.dtype.element_ty, UPCAST), mask=ok)


def unpermute_bwd(
    grad: Tensor,
    y: Tensor,
    sorted_slots: Tensor,
    weights: Tensor | None,
    top_k: int,
    dy: Tensor | None,
    dw: Tensor | None,
) -> None:
    """grad [T, H] contiguous; y [N, H] unit column stride; dy [N, H] contiguous or None;
    dw [T, k] (zero-filled here: a slot in no row gets 0) or None."""
    n, h = y.shape
    if dw is not None:
        dw.zero_()
    br, bh = 16, min(_p2(h), 256)
    _moe_unpermute_bwd_kernel[(triton.cdiv(n, br),)](
        grad,
        y,
        sorted_slots,
        weights if weights is not None else y,
        dy if dy is not None else y,
        dw if dw is not None else y,
        n,
        h,
        int(top_k),
        y.stride(0),
        HAS_W=weights is not None,
        NEED_DY=dy is not None,
        NEED_DW=dw is not None,
        UPCAST=_INTERPRET,
        BLOCK_R=br,
        BLOCK_H=bh,
    )
    return None


ROUTE_SPECS = (  # (E, top_k, n_group, topk_group, scoring, bias): DeepSeek-V3, and the 4096 / 65,536
    (256, 8, 8, 4, "sigmoid", True),  # experts moe_align accepts, grouped and not
    (4096, 8, 8, 4, "sigmoid", True),
    (4096, 8, 1, 1, "softmax", False),
    (65536, 8, 8, 4, "sigmoid", True),  # groups of 8192 experts: streamed in chunks (P_LOOP)
    (65536, 8, 2048, 64, "sigmoid", True),  # 2048 groups of 32: streamed GB groups at a time
    (65536, 8, 1, 1, "softmax", False),
)


def route_spec(e: int, k: int, g: int, tg: int, scoring: str, bias: bool, tokens: int = 4096) -> dict:
    """COMPILE_SPECS entry of _moe_route_fwd_kernel as route_fwd launches it for [tokens, e] fp32
    logits: runtime ints equal to 1 become constexprs and sizes divisible by 16 are marked so,
    as Triton's launcher specialises them."""
    c = route_config(tokens, e, g, tg)
    ints = {"T": tokens, "E": e, "stride_xt": e, "NG": c.pop("NG"), "PER": c.pop("PER"), "TOPK_GROUP": tg, "K": k}
    consts = {a: 1 for a, v in ints.items() if v == 1}
    consts.update(c, SOFTMAX=scoring == "softmax", HAS_BIAS=bool(bias), NORM=True)
    sig = {"x_ptr": "*fp32", "bias_ptr": "*fp32", "ids_ptr": "*i32", "w_ptr": "*fp32"}
    sig.update({a: "i32" for a, v in ints.items() if v != 1}, scale="fp32")
    name = f"moe_route_fwd[E={e},k={k},{f'g={g}/{tg}' if g > 1 else scoring}]"
    div = [a for a, v in ints.items() if v % 16 == 0]
    return compile_spec(_moe_route_fwd_kernel, name, sig, consts, ROUTE_WARPS, None, div)


def _align_spec(fn, name: str, sig: dict, consts: dict) -> dict:
    # pointers 16-byte aligned and E a multiple of 16, as at the benchmark shape; Triton's default warps
    return compile_spec(fn, name, sig, consts, None, None, ("E",))


def _compile_specs() -> list[dict]:
    specs = [route_spec(*r) for r in ROUTE_SPECS]
    i32 = "*i32"
    specs += [
        _align_spec(
            _moe_align_count_kernel,
            "moe_align_count",
            {"ids_ptr": i32, "counts_ptr": i32, "S": "i32", "E": "i32"},
            {"SLOT_BLOCK": SLOT_BLOCK},
        ),
        _align_spec(
            _moe_align_offsets_kernel,
            "moe_align_offsets",
            {"counts_ptr": i32, "totals_ptr": i32, "NB": "i32", "E": "i32"},
            {"EXP_BLOCK": EXP_BLOCK},
        ),
        _align_spec(
            _moe_align_scan_kernel,
            "moe_align_scan",
            {"totals_ptr": i32, "starts_ptr": i32, "ntpp_ptr": i32, "E": "i32"},
            {"BLOCK": 64, "EXP_BLOCK": EXP_BLOCK},
        ),
        _align_spec(
            _moe_align_scatter_kernel,
            "moe_align_scatter",
            {"ids_ptr": i32, "counts_ptr": i32, "starts_ptr": i32, "sorted_ptr": i32, "S": "i32", "E": "i32"},
            {"SLOT_BLOCK": SLOT_BLOCK, "RANK_CHUNK": RANK_CHUNK},
        ),
        _align_spec(
            _moe_align_blocks_kernel,
            "moe_align_blocks",
            {"starts_ptr": i32, "expert_ids_ptr": i32, "NBLK": "i32", "E": "i32"},
            {"BLOCK": 64, "LOG2_E": 7, "BLOCK_J": 1024},
        ),
    ]
    return specs


COMPILE_SPECS = _compile_specs() + _FUSED_SPECS
