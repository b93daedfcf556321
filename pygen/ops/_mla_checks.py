"""Argument validation for the MLA ops: every bad argument raises a ValueError/TypeError naming it,
before any kernel is launched.

Value checks that read index tensors (cache_seqlens against the pages block_table can hold, page
ids in range, positions in range, cu_seqlens monotone) cost one host synchronisation each per call
on a GPU; they are skipped when value checks are off (pygen.set_value_checks(False),
pygen.value_checks(False), PYGEN_VALUE_CHECKS=0), while torch.compile traces and under CUDA graph
capture (pygen/ops/_common_checks.py::checking_values). With them off:
  - mla_decode and mla_prefill clamp nothing: a page id outside [0, num_blocks), a cache_seqlens
    beyond the table, or cu_seqlens that are not the sequence offsets make the kernels read out of
    bounds. Validate once (an eager call with checks on) when the indices come from untrusted code.
  - mla_cache_append skips (writes nothing for) a position that is negative, beyond the table or
    maps to a page id outside [0, num_blocks): the op resolves slots on the device before the
    launch (pygen.ref.mla.append_slots), so a bad position never writes out of bounds.
  - mla_prefill reads cu_seqlens once for the launch grid when max_seqlen_q / max_seqlen_k are
    not given (that read belongs to the op, not to a check; pass them to avoid it). While tracing
    or capturing, the token count stands in for a missing maximum (correct, more programs).
"""

from __future__ import annotations

import numbers

import torch

from ..ref.mla import FP8_TOKEN_BYTES, LATENT_DIM, QK_DIM, ROPE_DIM
from ._common_checks import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    checking_values,
    flag,
    positive_float,
    same_device,
    tensor,
    tracing,
)


def float_tensor(name: str, x, what: str, dims: int) -> torch.Tensor:
    tensor(name, x, what, dim=dims, dtypes=FLOAT_DTYPES)
    if x.numel() and x.stride(-1) != 1:
        raise ValueError(f"{name}: {what} must have a contiguous last dim (stride 1), got strides {x.stride()}")
    return x


def int_tensor(name: str, x, what: str, dims: int, dtypes=(torch.int32,)) -> torch.Tensor:
    return tensor(name, x, what, dim=dims, dtypes=dtypes)


def devices_match(name: str, ref_what: str, ref: torch.Tensor, **others) -> None:
    """same_device for each of ``others`` (by argument name) against ``ref``."""
    for what, t in others.items():
        same_device(name, what, t, ref_what, ref)


def scale_arg(name: str, value, d: int) -> float:
    if value is None:
        return d**-0.5
    return positive_float(name, value, "softmax_scale", none_ok=True)


def kv_cache_arg(name: str, kv_cache, head_dim: int | None) -> bool:
    """Validate a paged cache [num_blocks, page_size, 1, D]; returns True for the FP8 (uint8) one."""
    tensor(name, kv_cache, "kv_cache", dim=4)
    fp8 = kv_cache.dtype == torch.uint8
    if not fp8 and kv_cache.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: kv_cache must be a float tensor or the uint8 FP8 cache, got {kv_cache.dtype}")
    nb, page, one, d = kv_cache.shape
    if one != 1:
        raise ValueError(
            f"{name}: kv_cache must be [num_blocks, page_size, 1, D] (one latent head), "
            f"got shape {tuple(kv_cache.shape)}"
        )
    if page < 1 or page & (page - 1):
        raise ValueError(f"{name}: kv_cache page_size (dim 1) must be a power of two, got {page}")
    if fp8:
        if d != FP8_TOKEN_BYTES:
            raise ValueError(
                f"{name}: the FP8 kv_cache (uint8) must have {FP8_TOKEN_BYTES} bytes per token "
                f"(512 e4m3 + 4 float32 scales + 64 bf16), got last dim {d}"
            )
        if kv_cache.numel() and (kv_cache.stride(-1) != 1 or kv_cache.stride(1) % 16 or kv_cache.stride(0) % 16):
            raise ValueError(
                f"{name}: the FP8 kv_cache must be contiguous per token with 16-byte aligned rows, "
                f"got strides {kv_cache.stride()}"
            )
    else:
        if head_dim is not None and d != head_dim:
            raise ValueError(f"{name}: kv_cache last dim must equal q's head dim {head_dim}, got {d}")
        if kv_cache.numel() and kv_cache.stride(-1) != 1:
            raise ValueError(f"{name}: kv_cache must have a contiguous last dim, got strides {kv_cache.stride()}")
    return fp8


def pages_cover(
    name: str, block_table: torch.Tensor, seqlens: torch.Tensor, page: int, num_blocks: int, what: str = "cache_seqlens"
) -> None:
    """seqlens within the table's capacity and every page id they use within [0, num_blocks).
    A value check (one host synchronisation; skipped when checks are off, see the module docstring)."""
    if seqlens.numel() == 0 or not checking_values(block_table, seqlens):
        return
    cap = block_table.shape[1] * page
    lens = seqlens.long()
    used = torch.arange(block_table.shape[1], device=lens.device)[None, :] < ((lens + page - 1) // page)[:, None]
    bt = block_table.long()
    bad = used & ((bt < 0) | (bt >= num_blocks))
    lo, hi, any_bad = torch.stack([lens.min(), lens.max(), bad.any().long()]).tolist()  # the one sync
    if lo < 0:
        raise ValueError(f"{name}: {what} must be >= 0, got {lo}")
    if hi > cap:
        raise ValueError(
            f"{name}: {what} max {hi} exceeds what block_table can hold "
            f"({block_table.shape[1]} pages x page_size {page} = {cap})"
        )
    if any_bad:
        i, j = bad.nonzero()[0].tolist()
        raise ValueError(f"{name}: block_table[{i}, {j}] = {int(bt[i, j])} is not a page id in [0, {num_blocks})")


def decode_args(name, q, kv_cache, block_table, cache_seqlens, head_dim_v, softmax_scale, causal, num_splits):
    float_tensor(name, q, "q", 4)
    b, s_q, h_q, d = q.shape
    fp8 = kv_cache_arg(name, kv_cache, d)
    if fp8:
        if d != QK_DIM:
            raise ValueError(f"{name}: q head dim must be {QK_DIM} with the FP8 cache, got {d}")
        if q.dtype not in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
            raise TypeError(f"{name}: q dtype {q.dtype} not supported with the FP8 cache")
    elif kv_cache.dtype != q.dtype:
        raise TypeError(f"{name}: kv_cache dtype {kv_cache.dtype} must match q's {q.dtype}")
    if isinstance(head_dim_v, bool) or not isinstance(head_dim_v, numbers.Integral):
        raise TypeError(f"{name}: head_dim_v must be an int, got {head_dim_v!r}")
    if fp8 and head_dim_v != LATENT_DIM:
        raise ValueError(f"{name}: head_dim_v must be {LATENT_DIM} with the FP8 cache, got {head_dim_v}")
    if not (16 <= head_dim_v <= d) or head_dim_v & (head_dim_v - 1) or d - head_dim_v > 128:
        raise ValueError(
            f"{name}: head_dim_v must be a power of two in [16, {d}] with at most 128 rope dims "
            f"after it (576 = 512 + 64 for DeepSeek), got {head_dim_v} for head dim {d}"
        )
    if s_q < 1 or h_q < 1:
        raise ValueError(f"{name}: q must have s_q >= 1 and h_q >= 1, got shape {tuple(q.shape)}")
    int_tensor(name, block_table, "block_table", 2)
    int_tensor(name, cache_seqlens, "cache_seqlens", 1)
    if block_table.shape[0] != b:
        raise ValueError(f"{name}: block_table must have batch {b} rows, got shape {tuple(block_table.shape)}")
    if cache_seqlens.shape[0] != b:
        raise ValueError(f"{name}: cache_seqlens must have {b} entries, got shape {tuple(cache_seqlens.shape)}")
    devices_match(name, "q", q, kv_cache=kv_cache, block_table=block_table, cache_seqlens=cache_seqlens)
    scale = scale_arg(name, softmax_scale, d)
    flag(name, causal, "causal")
    if s_q > 1 and not causal:
        raise ValueError(
            f"{name}: s_q = {s_q} new tokens need causal=True (each new token must not see the "
            f"ones after it); pass s_q = 1 for plain decode"
        )
    if num_splits is not None:
        if isinstance(num_splits, bool) or not isinstance(num_splits, numbers.Integral):
            raise TypeError(f"{name}: num_splits must be an int or None, got {num_splits!r}")
        if not 1 <= num_splits <= 256:
            raise ValueError(f"{name}: num_splits must be in [1, 256], got {num_splits}")
    pages_cover(name, block_table, cache_seqlens, kv_cache.shape[1], kv_cache.shape[0])
    return fp8, scale


def append_args(name, kv_cache, block_table, positions, latent, k_rope):
    fp8 = kv_cache_arg(name, kv_cache, None)
    int_tensor(name, block_table, "block_table", 2)
    int_tensor(name, positions, "positions", 2, INDEX_DTYPES)
    b, n = positions.shape
    if block_table.shape[0] != b:
        raise ValueError(f"{name}: block_table must have {b} rows (positions' batch), got {tuple(block_table.shape)}")
    float_tensor(name, latent, "latent", 3)
    float_tensor(name, k_rope, "k_rope", 3)
    d = kv_cache.shape[-1]
    lat_d = LATENT_DIM if fp8 else latent.shape[-1]
    rope_d = ROPE_DIM if fp8 else d - lat_d
    if tuple(latent.shape) != (b, n, lat_d) or (fp8 and latent.shape[-1] != LATENT_DIM):
        raise ValueError(
            f"{name}: latent must be [{b}, {n}, {lat_d}] (positions' shape + latent dim), got {tuple(latent.shape)}"
        )
    if tuple(k_rope.shape) != (b, n, rope_d) or rope_d < 0:
        raise ValueError(
            f"{name}: k_rope must be [{b}, {n}, {rope_d}] (the cache's last dim {d} minus the latent "
            f"dim), got {tuple(k_rope.shape)}"
        )
    devices_match(
        name, "kv_cache", kv_cache, block_table=block_table, positions=positions, latent=latent, k_rope=k_rope
    )
    # Positions that write one cache slot twice are not an error: the last of them in row-major
    # order wins (pygen.ref.mla.append_slots), in eager mode and under torch.compile alike.
    if positions.numel() and checking_values(block_table, positions):
        page = kv_cache.shape[1]
        pos = positions.long()
        cap = block_table.shape[1] * page
        ok = (pos >= 0) & (pos < cap)
        blk = torch.gather(block_table.long(), 1, torch.where(ok, pos // page, 0)) if cap else pos
        bad = ok & ((blk < 0) | (blk >= kv_cache.shape[0]))
        hi, any_bad = torch.stack([pos.max(), bad.any().long()]).tolist()  # the one sync
        if hi >= cap:
            raise ValueError(f"{name}: positions max {hi} is beyond what block_table can hold ({cap} tokens)")
        if any_bad:
            i, j = bad.nonzero()[0].tolist()
            raise ValueError(
                f"{name}: positions[{i}, {j}] = {int(pos[i, j])} maps to block_table page id "
                f"{int(blk[i, j])}, not in [0, {kv_cache.shape[0]})"
            )
    return fp8


def cu_seqlens_arg(name, cu, what, total, batch=None, need_max=True):
    """Validate cu_seqlens [batch + 1]; returns the longest sequence, or None when it is not
    needed (``need_max=False``: max_seqlen was given) and value checks are off.

    With value checks on: one host synchronisation checks the values (start 0, end ``total``,
    non-decreasing) and gives the exact maximum. With them off (or while tracing) nothing is read
    when ``need_max`` is false. Otherwise the maximum is a launch parameter of the op, not a
    check: it is read (one sync) when checks are off, and while tracing or capturing, where no
    value can be read, ``total`` (an upper bound: correct, more programs) stands in for it."""
    int_tensor(name, cu, what, 1)
    if cu.shape[0] < 1:
        raise ValueError(f"{name}: {what} must have batch + 1 >= 1 entries")
    if batch is not None and cu.shape[0] != batch + 1:
        raise ValueError(f"{name}: {what} must have {batch + 1} entries like cu_seqlens_q, got {cu.shape[0]}")
    c = cu.long()
    if checking_values(cu):
        steps = c[1:] - c[:-1]
        first, last, lo, hi = torch.stack(
            [c[0], c[-1], steps.min() if steps.numel() else c[0] * 0, steps.max() if steps.numel() else c[0] * 0]
        ).tolist()  # one sync
        if first != 0 or last != total:
            raise ValueError(
                f"{name}: {what} must start at 0 and end at {total} (the token count), got {first} .. {last}"
            )
        if lo < 0:
            raise ValueError(f"{name}: {what} must be non-decreasing")
        return hi
    if not need_max:
        return None
    if tracing(cu):
        return total
    return int((c[1:] - c[:-1]).max()) if cu.shape[0] > 1 else 0  # the op's read (launch grid size)


def prefill_args(name, q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, causal):
    float_tensor(name, q, "q", 3)
    float_tensor(name, k, "k", 3)
    float_tensor(name, v, "v", 3)
    tq, h, d = q.shape
    tk = k.shape[0]
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"{name}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if tuple(k.shape) != (tk, h, d):
        raise ValueError(f"{name}: k must be [total_k, {h}, {d}] (q's heads and head dim), got {tuple(k.shape)}")
    if v.shape[0] != tk or v.shape[1] != h:
        raise ValueError(f"{name}: v must be [{tk}, {h}, dv] (k's tokens and heads), got {tuple(v.shape)}")
    if d < 1 or v.shape[2] < 1:
        raise ValueError(f"{name}: head dims must be >= 1, got qk {d}, v {v.shape[2]}")
    devices_match(name, "q", q, k=k, v=v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    for what, given in (("max_seqlen_q", max_q), ("max_seqlen_k", max_k)):
        if given is not None and (isinstance(given, bool) or not isinstance(given, numbers.Integral)):
            raise TypeError(f"{name}: {what} must be an int or None, got {given!r}")
    mq = cu_seqlens_arg(name, cu_q, "cu_seqlens_q", tq, need_max=max_q is None)
    mk = cu_seqlens_arg(name, cu_k, "cu_seqlens_k", tk, cu_q.shape[0] - 1, need_max=max_k is None)
    out = []
    for what, given, actual in (("max_seqlen_q", max_q, mq), ("max_seqlen_k", max_k, mk)):
        if given is None:
            out.append(actual)
            continue
        if actual is not None and given < actual:  # actual is known only when values were checked
            raise ValueError(f"{name}: {what} = {given} is smaller than the longest sequence ({actual})")
        out.append(int(given))
    scale = scale_arg(name, softmax_scale, d)
    flag(name, causal, "causal")
    return out[0], out[1], scale


def merge_args(name, out_a, lse_a, out_b, lse_b):
    float_tensor(name, out_a, "out_a", 3)
    float_tensor(name, out_b, "out_b", 3)
    tensor(name, lse_a, "lse_a", dim=2)
    tensor(name, lse_b, "lse_b", dim=2)
    if out_a.shape != out_b.shape or out_a.dtype != out_b.dtype:
        raise ValueError(
            f"{name}: out_a and out_b must share shape and dtype, got {tuple(out_a.shape)} "
            f"{out_a.dtype} and {tuple(out_b.shape)} {out_b.dtype}"
        )
    t, h, _ = out_a.shape
    for what, lse in (("lse_a", lse_a), ("lse_b", lse_b)):
        if tuple(lse.shape) != (h, t):
            raise ValueError(f"{name}: {what} must be [{h}, {t}] ([heads, tokens]), got {tuple(lse.shape)}")
        if lse.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name}: {what} must be float32 (or float64), got {lse.dtype}")
    devices_match(name, "out_a", out_a, lse_a=lse_a, out_b=out_b, lse_b=lse_b)


TRITON_MAX_HEADS = 65535  # CUDA's grid y limit: the Triton prefill and merge kernels put heads there


def triton_heads(name: str, h: int) -> None:
    """Refuse head counts the Triton kernels' grids cannot hold (the reference backend has no limit)."""
    if h > TRITON_MAX_HEADS:
        raise ValueError(
            f"{name}: the triton backend supports at most {TRITON_MAX_HEADS} heads (CUDA grid y), "
            f"got {h}; split the heads or pass backend='reference'"
        )
