"""DeepSeek multi-head latent attention (MLA) ops: paged latent-cache decode, cache append, varlen
causal prefill (forward and backward) and the merge of two partial attention results.

    out, lse = pygen.ops.mla_decode(q, kv_cache, block_table, cache_seqlens, head_dim_v=512,
                                    softmax_scale=None, causal=False, num_splits=None)
    pygen.ops.mla_cache_append(kv_cache, block_table, positions, latent, k_rope)   # in place
    out, lse = pygen.ops.mla_prefill(q, k, v, cu_seqlens_q, cu_seqlens_k, causal=True)
    out, lse = pygen.ops.merge_attn_states(out_a, lse_a, out_b, lse_b)

Layouts (FlashMLA / FlashAttention conventions; the math is stated in pygen/ref/mla.py):
    decode   q [b, s_q, h_q, 576], kv_cache [num_blocks, page_size, 1, 576] (q's dtype) or the FP8
             cache uint8 [num_blocks, page_size, 1, 656] (512 e4m3 + 4 float32 scales + 64 bf16
             per token; pygen.ref.mla.fp8_quantize packs it), block_table int32 [b, max_blocks],
             cache_seqlens int32 [b] -> out [b, s_q, h_q, 512] (q's dtype), lse float32 [b, h_q, s_q].
             s_q > 1 (speculative / multi-token prediction) needs causal=True: new token j sees
             cache positions < cache_seqlens - s_q + j + 1.
    append   positions int32/int64 [b, n] (token index in the sequence, -1 = skip), latent
             [b, n, 512], k_rope [b, n, 64]; of positions that hit one slot the last (row-major) wins.
    prefill  q [total_q, h, 192], k [total_k, h, 192], v [total_k, h, 128], cu_seqlens int32
             [batch + 1] -> out [total_q, h, 128], lse float32 [h, total_q]; causal aligned
             bottom-right (FlashAttention 2). Differentiable in q, k, v (and through lse).
    merge    out [T, H, D] / lse [H, T] pairs -> (out, lse).

Backends: ``triton`` (kernels/mla/__init__.py: CUDA, or CPU under TRITON_INTERPRET=1) and ``reference``
(pygen.ref.mla). Automatic choice: triton on CUDA tensors, reference on CPU; float64 always runs on
the reference. Every bad argument raises before a launch (pygen/ops/_mla_checks.py).
"""

from __future__ import annotations

import math

import torch

from .. import _backend
from ..ref import mla as ref
from . import _mla_checks as chk, _registry
from ._registry import Backward, OpSpec, register

# the ops (pygen.ops re-exports them); choose_num_splits, fp8_quantize / fp8_dequantize and
# FP8_TOKEN_BYTES stay reachable as pygen.ops.mla.<name>
__all__ = ["mla_decode", "mla_cache_append", "mla_prefill", "merge_attn_states"]

_SUPPORTED = ("triton", "reference")
FP8_TOKEN_BYTES = ref.FP8_TOKEN_BYTES
fp8_quantize = ref.fp8_quantize
fp8_dequantize = ref.fp8_dequantize


def _kernels():
    from pygen.kernels import mla  # lazily: triton may be missing

    return mla


def _pick(name: str, t: torch.Tensor, backend: str | None) -> str:
    return _backend.choose_for(name, t, backend, _SUPPORTED)


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def choose_num_splits(batch: int, s_q: int, h_q: int, max_len: int, sm_count: int, block_m: int = 64) -> int:
    """Splits of the KV sequence per (sequence, row tile): enough programs for two waves over the
    SMs, but no split shorter than 256 tokens (below that the merge costs more than it hides).
    ``max_len`` is the capacity of block_table (no host read of cache_seqlens), so the choice is a
    pure function of shapes and the device: results are deterministic for a fixed setup."""
    tiles = max(1, batch * math.ceil(s_q * h_q / block_m))
    want = max(1, math.ceil(2 * sm_count / tiles))
    cap = max(1, max_len // 256)
    return int(min(want, cap, 64))


# ---- allocation shared by real and fake implementations -------------------------------------
def _new_decode(q, head_dim_v):
    b, s_q, h_q, _ = q.shape
    return q.new_empty((b, s_q, h_q, head_dim_v)), q.new_empty((b, h_q, s_q), dtype=torch.float32)


def _new_prefill(q, v):
    return q.new_empty((q.shape[0], q.shape[1], v.shape[2])), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


def _new_merge(out_a):
    t, h, d = out_a.shape
    return out_a.new_empty((t, h, d)), out_a.new_empty((h, t), dtype=torch.float32)


# ---- implementations (K = kernels/mla/__init__.py, *schema arguments) ----------------------------------
def _decode(K, q, kv_cache, block_table, cache_seqlens, head_dim_v, scale, causal, num_splits):
    out, lse = _new_decode(q, head_dim_v)
    if q.numel() == 0:
        return out, lse
    # the kernels index these with unit inner strides
    K.mla_decode(q, kv_cache, block_table.contiguous(), cache_seqlens.contiguous(), out, lse, scale, causal, num_splits)
    return out, lse


def _append(K, kv_cache, block_table, positions, latent, k_rope):
    if positions.numel() == 0:
        return
    block_table = block_table.contiguous()
    if kv_cache.dtype == torch.uint8:
        # quantised with torch ops (the Triton interpreter's fp32->fp8 cast rounds wrongly);
        # the kernel scatters the packed 656-byte tokens into their pages
        K.mla_cache_append(kv_cache, block_table, positions, ref.fp8_quantize(latent, k_rope), None)
    else:
        # cast with torch first: the interpreter truncates fp32->bf16 stores instead of rounding
        K.mla_cache_append(kv_cache, block_table, positions, latent.to(kv_cache.dtype), k_rope.to(kv_cache.dtype))


def _prefill(K, q, k, v, cu_q, cu_k, max_q, max_k, scale, causal):
    out, lse = _new_prefill(q, v)
    if q.numel() == 0 or out.numel() == 0:
        lse.fill_(float("-inf"))
        return out.zero_(), lse
    K.mla_prefill_fwd(q, k, v, cu_q.contiguous(), cu_k.contiguous(), max_q, max_k, out, lse, scale, causal)
    return out, lse


def _prefill_bwd(K, grad_out, grad_lse, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale, causal):
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    if q.numel() == 0 or k.numel() == 0 or v.numel() == 0:
        return dq, dk, dv
    K.mla_prefill_bwd(
        grad_out.contiguous(),
        grad_lse.contiguous(),
        q,
        k,
        v,
        out,
        lse.contiguous(),
        cu_q.contiguous(),
        cu_k.contiguous(),
        max_q,
        max_k,
        dq,
        dk,
        dv,
        scale,
        causal,
    )
    return dq, dk, dv


def _decode_grads(c, g_out, g_lse):
    # registered so that a backward through the kernel says what to do instead of torch's "no
    # autograd formula was registered"
    raise NotImplementedError(
        f"mla_decode has no backward on the {c.backend} backend (decode is inference-only, as FlashMLA's): "
        "train with mla_prefill; the reference backend (plain torch) differentiates decode"
    )


def _prefill_grads(c, g_out, g_lse):
    q, k, v, out, lse, cu_q, cu_k = c.saved
    g_out = torch.zeros_like(out) if g_out is None else g_out
    g_lse = torch.zeros_like(lse) if g_lse is None else g_lse
    dq, dk, dv = c.bwd(g_out, g_lse, q, k, v, out, lse, cu_q, cu_k, *c.args)
    return {"q": dq, "k": dk, "v": dv}


def _merge(K, out_a, lse_a, out_b, lse_b):
    out, lse = _new_merge(out_a)
    if out.numel() == 0 and lse.numel() == 0:
        return out, lse
    K.merge_attn_states(out_a, lse_a.contiguous(), out_b, lse_b.contiguous(), out, lse)
    return out, lse


def _merge_grads(c, g_out, g_lse):
    # out = wa oa + wb ob with wa = exp(lse_a - lse): d oa = wa g, d lse_a = wa (<g, oa - out> + g_lse)
    out_a, lse_a, out_b, lse_b, out, lse = c.saved
    fin = torch.isfinite(lse)
    safe = torch.where(fin, lse, torch.zeros_like(lse))
    wa = torch.where(fin, torch.exp(lse_a.float() - safe), torch.zeros_like(safe))
    wb = torch.where(fin, torch.exp(lse_b.float() - safe), torch.zeros_like(safe))
    g = g_out.float() if g_out is not None else torch.zeros_like(out, dtype=torch.float32)
    gl = g_lse.float() if g_lse is not None else torch.zeros_like(wa)
    o = out.float()
    ta = (g * (out_a.float() - o)).sum(-1).transpose(0, 1)
    tb = (g * (out_b.float() - o)).sum(-1).transpose(0, 1)
    return {
        "out_a": (g * wa.transpose(0, 1).unsqueeze(-1)).to(out_a.dtype),
        "lse_a": (wa * (ta + gl)).to(lse_a.dtype),
        "out_b": (g * wb.transpose(0, 1).unsqueeze(-1)).to(out_b.dtype),
        "lse_b": (wb * (tb + gl)).to(lse_b.dtype),
    }


# ---- the ops (triton; the reference path is plain PyTorch) --------------------------------------
SPECS = (
    OpSpec(
        "mla_decode",
        "(Tensor q, Tensor kv_cache, Tensor block_table, Tensor cache_seqlens, int head_dim_v, "
        "float softmax_scale, bool causal, int num_splits) -> (Tensor, Tensor)",
        _decode,
        lambda q, kv, bt, sl, dv, sc, c, ns: _new_decode(q, dv),
        Backward(None, None, None, save=lambda i, out: ((), ()), grads=_decode_grads),
    ),
    OpSpec(
        "mla_cache_append",
        "(Tensor(a!) kv_cache, Tensor block_table, Tensor positions, Tensor latent, Tensor k_rope) -> ()",
        _append,
        lambda kv, bt, pos, lat, rope: None,
        mutates=("kv_cache",),
    ),
    OpSpec(
        "mla_prefill",
        "(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, int max_seqlen_q, "
        "int max_seqlen_k, float softmax_scale, bool causal) -> (Tensor, Tensor)",
        _prefill,
        lambda q, k, v, *_: _new_prefill(q, v),
        Backward(
            "(Tensor grad_out, Tensor grad_lse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
            "Tensor cu_seqlens_q, Tensor cu_seqlens_k, int max_seqlen_q, int max_seqlen_k, float softmax_scale, "
            "bool causal) -> (Tensor, Tensor, Tensor)",
            _prefill_bwd,
            lambda go, gl, q, k, v, *_: (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)),
            save=lambda i, out: (
                (i.q, i.k, i.v, out[0], out[1], i.cu_seqlens_q, i.cu_seqlens_k),
                (i.max_seqlen_q, i.max_seqlen_k, i.softmax_scale, i.causal),
            ),
            grads=_prefill_grads,
        ),
    ),
    OpSpec(
        "merge_attn_states",
        "(Tensor out_a, Tensor lse_a, Tensor out_b, Tensor lse_b) -> (Tensor, Tensor)",
        _merge,
        lambda oa, la, ob, lb: _new_merge(oa),
        Backward(
            None,
            None,
            None,
            save=lambda i, out: ((i.out_a, i.lse_a, i.out_b, i.lse_b, out[0], out[1]), ()),
            grads=_merge_grads,
        ),
    ),
)

for _spec in SPECS:
    register(_spec, "triton", _kernels)


# ---- public functions -----------------------------------------------------------------------
def mla_decode(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int = ref.LATENT_DIM,
    softmax_scale: float | None = None,
    causal: bool = False,
    num_splits: int | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorbed MLA decode over a paged latent cache -> (out [b, s_q, h_q, head_dim_v] in q's dtype,
    lse float32 [b, h_q, s_q]); see the module docstring. ``num_splits`` fixes the split-KV count
    (deterministic); None chooses it from batch, heads, cache capacity and the SM count."""
    name = "mla_decode"
    fp8, scale = chk.decode_args(
        name, q, kv_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal, num_splits
    )
    be = _pick(name, q, backend)
    if be == "reference":
        cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
        out, lse = ref.mla_decode(q, kv_cache, block_table, cache_seqlens, head_dim_v, scale, causal, cdt)
        return out.to(q.dtype), lse.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    if num_splits is None:
        b, s_q, h_q, _ = q.shape
        num_splits = choose_num_splits(b, s_q, h_q, block_table.shape[1] * kv_cache.shape[1], _sm_count(q.device))
    return _registry.get(f"mla_decode_{be}")(
        q, kv_cache, block_table, cache_seqlens, int(head_dim_v), scale, causal, int(num_splits)
    )


def mla_cache_append(
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    positions: torch.Tensor,
    latent: torch.Tensor,
    k_rope: torch.Tensor,
    backend: str | None = None,
) -> torch.Tensor:
    """Write latent [b, n, 512] and k_rope [b, n, 64] of token ``positions[i, j]`` (-1: skip) into
    the pages of kv_cache in place (FP8-quantised for the uint8 cache); returns kv_cache. When
    several positions map to one cache slot, the last in row-major order wins, in eager mode and
    under torch.compile alike (pygen.ref.mla.append_slots); the Triton path resolves that on the
    device (no host synchronisation) and writes nothing for entries that lose or that value
    checks would refuse (pygen/ops/_mla_checks.py)."""
    name = "mla_cache_append"
    chk.append_args(name, kv_cache, block_table, positions, latent, k_rope)
    probe = kv_cache if kv_cache.dtype != torch.uint8 else latent
    be = _pick(name, probe, backend)
    if be == "reference":
        return ref.mla_cache_append(kv_cache, block_table, positions, latent, k_rope)
    # the kernel writes its entries in parallel: leave it one writer per slot (the others -1, skipped)
    keep = ref.append_slots(kv_cache, block_table, positions)[2]
    positions = torch.where(keep, positions, -1)
    _registry.get(f"mla_cache_append_{be}")(kv_cache, block_table, positions, latent, k_rope)
    return kv_cache


def mla_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    softmax_scale: float | None = None,
    causal: bool = True,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Varlen (causal, bottom-right aligned) attention -> (out [total_q, h, dv] in q's dtype,
    lse float32 [h, total_q]); differentiable in q, k, v. max_seqlen_* default to the longest
    sequence: a host read of cu_seqlens (one synchronisation on a GPU) that sizes the launch grid
    and stays even with value checks off; pass them to avoid it. Under torch.compile or CUDA graph
    capture a missing one is replaced by the token count (correct, more programs)."""
    name = "mla_prefill"
    mq, mk, scale = chk.prefill_args(
        name, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal
    )
    be = _pick(name, q, backend)
    if be == "reference":
        if q.dtype in (torch.float64, torch.float32):
            return ref.mla_prefill(q, k, v, cu_seqlens_q, cu_seqlens_k, scale, causal)
        out, lse = ref.mla_prefill(q.float(), k.float(), v.float(), cu_seqlens_q, cu_seqlens_k, scale, causal)
        return out.to(q.dtype), lse
    chk.triton_heads(name, q.shape[1])
    return _registry.get(f"mla_prefill_{be}")(q, k, v, cu_seqlens_q, cu_seqlens_k, mq, mk, scale, causal)


def merge_attn_states(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attention results over disjoint keys: out [T, H, D], lse [H, T] (the
    layout of mla_prefill) -> (out in out_a's dtype, lse float32; float64 with float64 outputs on
    the reference backend)."""
    name = "merge_attn_states"
    chk.merge_args(name, out_a, lse_a, out_b, lse_b)
    be = _pick(name, out_a, backend)
    if be == "reference":
        if out_a.dtype in (torch.float64, torch.float32):
            o, l_ = ref.merge_attn_states(out_a, lse_a, out_b, lse_b)
            # lse float32 (float64 for float64 outputs): a float64 lse beside float32 outputs stayed float64
            return o, l_.to(torch.float64 if out_a.dtype == torch.float64 else torch.float32)
        o, l_ = ref.merge_attn_states(out_a.float(), lse_a.float(), out_b.float(), lse_b.float())
        return o.to(out_a.dtype), l_
    chk.triton_heads(name, out_a.shape[1])
    return _registry.get(f"merge_attn_states_{be}")(out_a, lse_a.float(), out_b, lse_b.float())
