"""Triton kernels of the DeepSeek multi-head latent attention (MLA) family: launchers.

Formulas and layouts are those of pygen/ref/mla.py (the oracle); in short:

    decode   out[b, j, h] = softmax(scale * q[b, j, h] . K_b^T) V_b,  K_b = the first L_b cached tokens
             (512 latent + 64 rope, gathered through block_table), V_b = their 512 latent values;
             causal within the s_q new tokens (query j sees positions < L_b - s_q + j + 1).
             q [b, s_q, h_q, 576], kv_cache [num_blocks, page, 1, 576] or uint8 [.., 656] (FP8),
             out [b, s_q, h_q, 512], lse float32 [b, h_q, s_q].        -> kernels/mla/decode.py
    append   kv_cache[block_table[b, t // page], t % page, 0] = (latent, rope) of position t.
    prefill  out = softmax(scale * q k^T + causal mask (bottom-right)) v per sequence (varlen,
             cu_seqlens); q, k [total, h, 192], v [total, h, 128], lse float32 [h, total_q];
             backward dq, dk, dv (delta preprocess, key-major dk/dv, query-major dq: no atomics).
                                                                      -> kernels/mla/prefill.py
    merge    lse = log(e^lse_a + e^lse_b), out = e^(lse_a - lse) out_a + e^(lse_b - lse) out_b.

Launchers take tensors, allocate only scratch the kernels need between passes (split partials,
delta), and return None; pygen/ops/mla.py validates, allocates outputs and picks the backend.
Under TRITON_INTERPRET=1 (CPU tests) tiles are upcast to float32 right after their loads (the
interpreter's bf16 arithmetic is broken) and one configuration is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._bf16 import cast as _cast
from .._device import interpreting as _interpreting
from .decode import _mla_cache_append_fwd_kernel, _mla_decode_fwd_kernel, _mla_decode_merge_kernel
from .prefill import (
    _mla_prefill_bwd_dkdv_kernel,
    _mla_prefill_bwd_dq_kernel,
    _mla_prefill_bwd_preprocess_kernel,
    _mla_prefill_fwd_kernel,
)

LN2 = math.log(2.0)
LOG2E = 1.0 / LN2
FP8_SCALE_OFF = 128  # float32 index of the scales in a 656-byte token (byte 512)
FP8_ROPE_OFF = 264  # bfloat16 index of the rope values (byte 528)


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclass(frozen=True)
class DecodeConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def decode_config(rows: int, fp8: bool = False, interpreting: bool | None = None, fp32: bool = False) -> DecodeConfig:
    """Tile of the decode kernel for s_q * h_q = ``rows`` query rows per sequence.

    GPU choices come from the offline sm_90 compile (registers / spills, docs/mla.md), not from
    timings (no GPU measured yet): 64+ rows of a 16-bit cache take BLOCK_M 64 (wgmma, 8 warps,
    16-token tiles, two stages, ~205 registers); fewer rows (h_q 16/32, memory-bound) use mma.sync
    tiles of 16 or 32 rows with 8 warps. The FP8 cache takes 16 rows x 32 tokens at every row
    count (~230 registers under Triton 3.6-3.9): its dequantised [tokens, 512] tile needs ~50 more
    registers than the 16-bit path, so the 64 x 16 wgmma tile sat at 255 registers and spilled
    208-228 B under Triton 3.6 and 3.8, and 32-row tiles spill or sit at 252-255 registers.
    A float32 query (``fp32``; ieee FMA dots, fp32 q / latent tiles, with either cache) takes 16 rows x
    32 tokens whatever the row count: the 64 x 16 tile compiled to 28 KB of spills, a 12 KB stack
    and 184 KB of shared memory; 16 x 32 (8 warps, 2 stages) has 156 registers, no spills, 110 KB."""
    interp = _interpreting() if interpreting is None else interpreting
    bm = min(64, max(16, _pow2(rows)))
    if interp:
        return DecodeConfig(bm, 64, 4, 1)
    if fp32 or fp8:
        return DecodeConfig(16, 32, 8, 2)
    if bm >= 64:
        return DecodeConfig(64, 16, 8, 2)
    return DecodeConfig(bm, 64 if bm == 16 else 32, 8, 2)


# CUDA grid limits: x up to 2^31 - 1 programs, y and z up to 65,535. Unbounded counts (batch,
# sequences) go into x; heads go into y (pygen/ops/mla.py refuses more than 65,535 for triton).
MAX_GRID_X = 2**31 - 1


def batch_chunks(blocks: int, batch: int, max_x: int | None = None) -> list[tuple[int, int]]:
    """(first sequence, sequences) of each launch when ``blocks`` programs per sequence are folded
    with the batch into grid x: one launch unless blocks * batch passes CUDA's x limit."""
    per = max(1, (MAX_GRID_X if max_x is None else max_x) // max(1, blocks))
    return [(b0, min(per, batch - b0)) for b0 in range(0, batch, per)]


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _cache_views(kv_cache: Tensor, d: int, dv: int) -> tuple[Tensor, Tensor, Tensor, int, int, int]:
    """(latent, scale, rope) views of the paged cache and (rope offset, scale offset, rope width):
    a packed FP8 token [656 bytes] is read as fp8 latents, float32 scales and bf16 rope values of
    the same bytes; a 16-bit or float32 cache is all three views itself."""
    if kv_cache.dtype == torch.uint8:
        flat = kv_cache.view(kv_cache.shape[0], kv_cache.shape[1], -1)  # [nb, page, 656] bytes
        lat = flat.view(torch.float8_e4m3fn)
        sc = flat.view(torch.float32)
        rope = flat.view(torch.bfloat16)
        return lat, sc, rope, FP8_ROPE_OFF, FP8_SCALE_OFF, 64
    return kv_cache, kv_cache, kv_cache, dv, 0, d - dv


def _merge_splits(opart: Tensor, lpart: Tensor, out: Tensor, lse: Tensor, s_q: int, h_q: int, num_splits: int) -> None:
    """Fold the float32 split partials opart [b, rows, splits, DV] / lpart [b, rows, splits] into out
    and lse."""
    b, rows, dv = out.shape[0], s_q * h_q, out.shape[-1]
    _mla_decode_merge_kernel[(b * rows,)](
        opart,
        lpart,
        out,
        lse,
        s_q,
        h_q,
        rows,
        num_splits,
        *_strides(3, out),
        DV=dv,
        BLOCK_S=max(2, _pow2(num_splits)),
        UPCAST=_interpreting(),
        num_warps=4,
    )


def mla_decode(
    q: Tensor,
    kv_cache: Tensor,
    block_table: Tensor,
    cache_seqlens: Tensor,
    out: Tensor,
    lse: Tensor,
    scale: float,
    causal: bool,
    num_splits: int,
) -> None:
    """Paged split-KV decode into ``out`` [b, s_q, h_q, DV] and ``lse`` float32 [b, h_q, s_q]."""
    b, s_q, h_q, d = q.shape
    dv = out.shape[-1]
    rows = s_q * h_q
    page = kv_cache.shape[1]
    fp8 = kv_cache.dtype == torch.uint8
    cfg = decode_config(rows, fp8, fp32=q.dtype == torch.float32)
    lat, sc, rope, rope_off, sc_off, dr = _cache_views(kv_cache, d, dv)
    split = num_splits > 1
    if split:
        opart = torch.empty((b, rows, num_splits, dv), dtype=torch.float32, device=q.device)
        lpart = torch.empty((b, rows, num_splits), dtype=torch.float32, device=q.device)
    else:
        opart = lpart = out
    grid = (b * triton.cdiv(rows, cfg.block_m), num_splits)
    _mla_decode_fwd_kernel[grid](
        q,
        lat,
        sc,
        rope,
        block_table,
        cache_seqlens,
        out,
        lse,
        opart,
        lpart,
        scale * LOG2E,
        s_q,
        h_q,
        rows,
        num_splits,
        *_strides(3, q),
        *_strides(2, lat, sc, rope),
        block_table.stride(0),
        *_strides(3, out),
        CAUSAL=causal,
        FP8=fp8,
        DV=dv,
        DR=dr,
        BLOCK_R=max(16, _pow2(dr)),
        ROPE_OFF=rope_off,
        SC_OFF=sc_off,
        PAGE=page,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        SPLIT=split,
        UPCAST=_interpreting(),
        PRECISION=_precision(q.dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    if split:
        _merge_splits(opart, lpart, out, lse, s_q, h_q, num_splits)


def mla_cache_append(
    kv_cache: Tensor, block_table: Tensor, positions: Tensor, part_a: Tensor, part_b: Tensor | None
) -> None:
    """Scatter rows into their pages: ``part_a`` [b, n, A] then ``part_b`` [b, n, B] (None for the
    packed FP8 rows, which fill the whole 656-byte token)."""
    b, n = positions.shape
    page = kv_cache.shape[1]
    cache = kv_cache.view(kv_cache.shape[0], page, kv_cache.shape[-1])
    a = part_a.shape[-1]
    bb = 0 if part_b is None else part_b.shape[-1]
    pb = part_a if part_b is None else part_b
    _mla_cache_append_fwd_kernel[(b * n,)](
        cache,
        block_table,
        positions,
        part_a,
        pb,
        n,
        *_strides(2, cache),
        block_table.stride(0),
        *_strides(2, positions, part_a, pb),
        A=a,
        B=bb,
        BLOCK_A=_pow2(a),
        BLOCK_B=max(1, _pow2(bb)),
        PAGE=page,
        num_warps=4,
    )


# ---- prefill --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrefillConfig:
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# float32 (ieee FMA dots: operands and accumulators in registers, no wgmma): the bf16 tiles spill
# tens of KB and need 164-295 KB of shared memory; these have no spills and at most 112 KB
# (offline sm_90 compile at qk 192 / v 128, docs/mla.md)
_PREFILL_FP32 = {
    "fwd": PrefillConfig(32, 64, 8, 2),
    "dkdv": PrefillConfig(16, 32, 8, 1),
    "dq": PrefillConfig(32, 16, 8, 2),
}


def prefill_config(pass_: str, interpreting: bool | None = None, fp32: bool = False) -> PrefillConfig:
    """Tile of prefill pass ``pass_``: "fwd", "dkdv" or "dq" ("bwd": both backward kernels).

    GPU choices come from the offline sm_90 compile (no GPU timing yet): bf16 / fp16 run every
    pass as wgmma with no spills at qk 192 / v 128. A float32 q (``fp32``; ieee FMA dots) has its
    own tiles, see docs/mla.md "float32 tiles"."""
    if pass_ not in ("fwd", "dkdv", "dq", "bwd"):
        raise ValueError(f"pass_ must be 'fwd', 'dkdv', 'dq' or 'bwd', got {pass_!r}")
    interp = _interpreting() if interpreting is None else interpreting
    if interp:
        return PrefillConfig(32, 32, 4, 1)
    if fp32:
        return _PREFILL_FP32["dkdv" if pass_ == "bwd" else pass_]
    if pass_ == "fwd":
        return PrefillConfig(128, 64, 8, 3)
    return PrefillConfig(64, 64, 8, 2)


def _split_qk(d: int) -> tuple[int, int]:
    """qk head dim as DA + DB with power-of-two blocks: 192 = 128 + 64 (no padding at DeepSeek's
    dims); DB = 0 when DA covers it."""
    if d <= 16:
        return 16, 0
    da = 1 << (d.bit_length() - 1)
    rest = d - da
    return da, (max(16, _pow2(rest)) if rest else 0)


def _prefill_common(q, k, v):
    d, dv = q.shape[-1], v.shape[-1]
    da, db = _split_qk(d)
    return dict(
        D=d, DA=da, DB=db, DV=dv, BLOCK_DV=max(16, _pow2(dv)), UPCAST=_interpreting(), PRECISION=_precision(q.dtype)
    )


def _launch_per_sequence(
    kernel,
    cfg: PrefillConfig,
    blocks: int,
    batch: int,
    heads: int,
    lead: tuple,
    cu_q: Tensor,
    cu_k: Tensor,
    rest: tuple,
    causal: bool,
    com: dict,
) -> None:
    """Launch a prefill kernel with ``blocks`` programs per sequence folded with the batch into grid
    x (several launches past CUDA's limit, batch_chunks) and the heads in y: arguments ``lead``, the
    chunk's cu_seqlens, ``rest``, then ``blocks``; constexprs CAUSAL, the tile and ``com``."""
    for b0, nb in batch_chunks(blocks, batch):
        # cu_seqlens hold absolute token offsets: a slice of them is a sub-batch
        kernel[(blocks * nb, heads)](
            *lead,
            cu_q[b0 : b0 + nb + 1],
            cu_k[b0 : b0 + nb + 1],
            *rest,
            blocks,
            CAUSAL=causal,
            BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n,
            **com,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )


def _strides(n: int, *ts: Tensor) -> tuple[int, ...]:
    """The first ``n`` strides of each tensor in turn, as the kernels take them (n = 2 on a
    [total, h, d] prefill tensor: its token and head strides)."""
    return tuple(st for t in ts for st in t.stride()[:n])


def mla_prefill_fwd(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_q: Tensor,
    cu_k: Tensor,
    max_q: int,
    max_k: int,
    out: Tensor,
    lse: Tensor,
    scale: float,
    causal: bool,
) -> None:
    """Varlen prefill into ``out`` [total_q, h, DV] and ``lse`` float32 [h, total_q]."""
    batch = cu_q.shape[0] - 1
    cfg = prefill_config("fwd", fp32=q.dtype == torch.float32)
    if batch == 0 or max_q == 0:
        out.zero_()
        lse.fill_(float("-inf"))
        return
    rest = (out, lse, scale * LOG2E, *_strides(2, q, k, v, out), lse.stride(0))
    num_mb = triton.cdiv(max_q, cfg.block_m)
    com = _prefill_common(q, k, v)
    _launch_per_sequence(
        _mla_prefill_fwd_kernel, cfg, num_mb, batch, q.shape[1], (q, k, v), cu_q, cu_k, rest, causal, com
    )


def mla_prefill_bwd(
    grad_out: Tensor,
    grad_lse: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    cu_q: Tensor,
    cu_k: Tensor,
    max_q: int,
    max_k: int,
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
    scale: float,
    causal: bool,
) -> None:
    """dq, dk, dv (zero-filled by the caller, written in full here when the sizes are non-zero)."""
    batch = cu_q.shape[0] - 1
    total_q, h, _ = q.shape
    if batch == 0 or max_q == 0 or max_k == 0:
        return
    com = _prefill_common(q, k, v)
    delta = torch.empty((h, total_q), dtype=torch.float32, device=q.device)
    pre_block = 32 if _interpreting() else 64
    _mla_prefill_bwd_preprocess_kernel[(triton.cdiv(total_q, pre_block), h)](
        out,
        grad_out,
        grad_lse,
        delta,
        total_q,
        *_strides(2, out, grad_out),
        grad_lse.stride(0),
        delta.stride(0),
        DV=com["DV"],
        BLOCK_DV=com["BLOCK_DV"],
        BLOCK_M=pre_block,
        num_warps=4,
    )
    fp32 = q.dtype == torch.float32
    lead = (q, k, v, grad_out, lse, delta)
    scales = (scale, scale * LOG2E, *_strides(2, q, k, v, grad_out), lse.stride(0))
    cfg = prefill_config("dkdv", fp32=fp32)
    rest = (dk, dv, *scales, *_strides(2, dk, dv))
    num_nb = triton.cdiv(max_k, cfg.block_n)
    _launch_per_sequence(_mla_prefill_bwd_dkdv_kernel, cfg, num_nb, batch, h, lead, cu_q, cu_k, rest, causal, com)
    cfg = prefill_config("dq", fp32=fp32)
    num_mb = triton.cdiv(max_q, cfg.block_m)
    rest = (dq, *scales, *_strides(2, dq))
    _launch_per_sequence(_mla_prefill_bwd_dq_kernel, cfg, num_mb, batch, h, lead, cu_q, cu_k, rest, causal, com)


# ---- merge of two partial results -----------------------------------------------------------
@triton.jit
def _merge_attn_states_fwd_kernel(
    oa_ptr,
    la_ptr,
    ob_ptr,
    lb_ptr,  # out [T, H, D], lse float32 [H, T]
    out_ptr,
    lse_ptr,
    H,
    D,
    stride_oat,
    stride_oah,
    stride_obt,
    stride_obh,
    stride_lah,
    stride_lbh,
    stride_ot,
    stride_oh,
    stride_lh,
    BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr,  # interpreter: round the bf16 store in float32 first (kernels/_bf16.py)
):
    # 64-bit: t * stride_oat reaches 2^31 at token 32,768 of 128 heads x 512 (the latent width)
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    la = tl.load(la_ptr + h * stride_lah + t)
    lb = tl.load(lb_ptr + h * stride_lbh + t)
    m = tl.maximum(la, lb)
    # an infinite max shifts by 0 (pygen.ref.mla.merge_attn_states): -inf on both sides gives tot 0
    # and lse -inf, +inf gives lse +inf, and a NaN lse (tot NaN) stays NaN, never -inf ("no keys")
    m = tl.where((m == float("-inf")) | (m == float("inf")), 0.0, m)
    wa = tl.exp(la - m)
    wb = tl.exp(lb - m)
    tot = wa + wb
    safe = tl.where(tot == 0, 1.0, tot)
    tl.store(lse_ptr + h * stride_lh + t, tl.where(tot == 0, float("-inf"), tl.log(safe) + m))
    wa = wa / safe
    wb = wb / safe
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        dm = d < D
        a = tl.load(oa_ptr + t * stride_oat + h * stride_oah + d, mask=dm, other=0.0).to(tl.float32)
        b = tl.load(ob_ptr + t * stride_obt + h * stride_obh + d, mask=dm, other=0.0).to(tl.float32)
        tl.store(
            out_ptr + t * stride_ot + h * stride_oh + d,
            _cast(wa * a + wb * b, out_ptr.dtype.element_ty, UPCAST),
            mask=dm,
        )


def merge_attn_states(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor, out: Tensor, lse: Tensor) -> None:
    """out / lse = the two partial results merged by their lse (module docstring); out [T, H, D]."""
    t, h, d = out_a.shape
    if t == 0 or h == 0:
        return
    _merge_attn_states_fwd_kernel[(t, h)](
        out_a,
        lse_a,
        out_b,
        lse_b,
        out,
        lse,
        h,
        d,
        *_strides(2, out_a, out_b),
        lse_a.stride(0),
        lse_b.stride(0),
        *_strides(2, out),
        lse.stride(0),
        BLOCK_D=min(512, max(16, _pow2(d))),
        UPCAST=_interpreting(),
        num_warps=4,
    )


from .specs import build_specs  # noqa: E402  (imports the kernels and configs above)

COMPILE_SPECS = build_specs()
