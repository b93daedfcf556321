"""Reference math of the DeepSeek multi-head latent attention (MLA) ops: the test oracle and the
``reference`` backend. Written for clarity; any float dtype (tests run it in float64), any device.

Decode (absorbed form, FlashMLA's ``flash_mla_with_kvcache`` layout)
--------------------------------------------------------------------
    q            [b, s_q, h_q, 576]    512 latent (q_nope . W_UK) + 64 rope
    kv_cache     [num_blocks, P, 1, 576]  one token = 512 latent c_kv + 64 rope key k_pe
                 or the FP8 cache: uint8 [num_blocks, P, 1, 656] (layout below)
    block_table  int32 [b, max_blocks]  page ids; token t of sequence i lives at
                 kv_cache[block_table[i, t // P], t % P, 0]
    cache_seqlens int32 [b]             L_i, the tokens in the cache (the s_q new ones included)

    K_i = kv[token 0 .. L_i-1]  ([L_i, 576]),  V_i = K_i[:, :512]
    S   = softmax_scale * q[i, j, h] . K_i^T           (scale defaults to 576 ** -0.5)
    causal: query j of s_q sees the positions t < L_i - s_q + j + 1 (the new tokens are the last
    s_q of the cache; query j is token L_i - s_q + j); non-causal (s_q == 1): all L_i positions.
    out[i, j, h]  = softmax(S) V_i                      [b, s_q, h_q, 512]
    lse[i, h, j]  = log sum_t exp(S_t)   (natural log, float32 from the ops) [b, h_q, s_q]
    A query that sees no position (L_i == 0, or causal with L_i - s_q + j + 1 <= 0) gives
    out = 0 and lse = -inf, without NaN.

FP8 cache byte layout (656 bytes per token, the last dim of a uint8 cache):
    bytes   0..511  512 latent values, float8_e4m3fn, value = fp8 * scale[g], g = c // 128
    bytes 512..527  4 float32 scales (little endian), scale[g] = amax(|latent[g*128:(g+1)*128]|) / 448
                    (1.0 for an all-zero group, or one whose amax / 448 underflows)
    bytes 528..655  64 rope values, bfloat16
The rope part is never quantised (it carries position information and is small).

Cache append: token t = positions[i, j] of sequence i (latent [b, n, 512], k_rope [b, n, 64]) goes
to kv_cache[block_table[i, t // P], t % P, 0]. Negative positions are padding and write nothing,
as do positions beyond the table or mapping to a page id outside [0, num_blocks). When several
entries map to one slot, the last in row-major order of positions (row i before row i + 1, then by
column) wins: the kernels resolve this before their parallel launch (append_slots), so the
result does not depend on the order in which programs run.

Prefill (non-absorbed form, varlen, FlashAttention conventions)
---------------------------------------------------------------
    q [total_q, h, 192], k [total_k, h, 192], v [total_k, h, 128]; sequence i owns the rows
    cu_seqlens_q[i]:cu_seqlens_q[i+1] of q and cu_seqlens_k[i]:cu_seqlens_k[i+1] of k and v.
    out[r, h] = softmax(scale * q[r, h] . k[., h]^T) v[., h]    (scale defaults to 192 ** -0.5)
    causal: aligned to the bottom-right corner as FlashAttention 2 does: with n_q queries and
    n_k keys, query r (0-based within its sequence) sees keys c <= r + n_k - n_q. So with
    n_k > n_q the queries are the last n_q tokens of the sequence (chunked prefill against a
    cache); with n_k < n_q the first n_q - n_k queries see nothing (out 0, lse -inf).
    lse [h, total_q] float32 (FlashAttention's varlen layout).

merge_attn_states: two partial results over disjoint key sets, (out_a, lse_a) and (out_b, lse_b),
combine into softmax over the union:
    lse = log(exp(lse_a) + exp(lse_b)),  out = exp(lse_a - lse) out_a + exp(lse_b - lse) out_b
in mla_prefill's layout: out [T, H, D], lse [H, T] (vLLM's merge_attn_states uses the same);
-inf on both sides gives out 0, lse -inf.
"""

from __future__ import annotations

import torch

LATENT_DIM = 512
ROPE_DIM = 64
QK_DIM = LATENT_DIM + ROPE_DIM  # 576
FP8_GROUP = 128  # latent values per float32 scale
FP8_GROUPS = LATENT_DIM // FP8_GROUP  # 4
FP8_TOKEN_BYTES = LATENT_DIM + 4 * FP8_GROUPS + 2 * ROPE_DIM  # 656
FP8_MAX = 448.0  # largest finite float8_e4m3fn


# ---- FP8 cache packing ----------------------------------------------------------------------
def fp8_quantize(latent: torch.Tensor, k_rope: torch.Tensor) -> torch.Tensor:
    """[..., 512] latent and [..., 64] rope -> packed uint8 [..., 656] tokens (layout above)."""
    lead = latent.shape[:-1]
    g = latent.float().reshape(*lead, FP8_GROUPS, FP8_GROUP)
    amax = g.abs().amax(dim=-1)
    # 1.0 where amax / 448 is not a positive float32: an all-zero group, or one so small (amax below
    # ~3e-43) that the division underflows to 0 and every value would dequantise to 0/0 = NaN
    scale = amax / FP8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    vals = (g / scale.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    out = torch.empty(*lead, FP8_TOKEN_BYTES, dtype=torch.uint8, device=latent.device)
    out[..., :LATENT_DIM] = vals.reshape(*lead, LATENT_DIM).view(torch.uint8)
    out[..., LATENT_DIM : LATENT_DIM + 16] = scale.contiguous().view(torch.uint8).reshape(*lead, 16)
    out[..., LATENT_DIM + 16 :] = k_rope.to(torch.bfloat16).contiguous().view(torch.uint8).reshape(*lead, 128)
    return out


def fp8_dequantize(packed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Packed uint8 [..., 656] tokens -> [..., 576] values (512 dequantised latent + 64 rope)."""
    lead = packed.shape[:-1]
    p = packed.contiguous()
    vals = p[..., :LATENT_DIM].contiguous().view(torch.float8_e4m3fn).to(torch.float64)
    scale = p[..., LATENT_DIM : LATENT_DIM + 16].contiguous().view(torch.float32).to(torch.float64)
    rope = p[..., LATENT_DIM + 16 :].contiguous().view(torch.bfloat16).to(torch.float64)
    lat = (vals.reshape(*lead, FP8_GROUPS, FP8_GROUP) * scale.unsqueeze(-1)).reshape(*lead, LATENT_DIM)
    return torch.cat([lat, rope], dim=-1).to(dtype)


def cache_values(kv_cache: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The cache as [num_blocks, P, 1, 576] numbers in ``dtype`` (dequantised when FP8)."""
    if kv_cache.dtype == torch.uint8:
        return fp8_dequantize(kv_cache, dtype)
    return kv_cache.to(dtype)


# ---- decode ---------------------------------------------------------------------------------
def gather_tokens(kv_cache: torch.Tensor, block_table: torch.Tensor, seqlen: int, i: int) -> torch.Tensor:
    """The first ``seqlen`` tokens of sequence ``i``: [seqlen, D] (D the cache's last dim)."""
    page = kv_cache.shape[1]
    t = torch.arange(seqlen, device=kv_cache.device)
    blocks = block_table[i].long()[t // page]
    return kv_cache[blocks, t % page, 0]


def mla_decode(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    cache_seqlens: torch.Tensor,
    head_dim_v: int = LATENT_DIM,
    softmax_scale: float | None = None,
    causal: bool = False,
    compute_dtype: torch.dtype | None = None,
):
    """(out [b, s_q, h_q, head_dim_v] in ``compute_dtype`` (default q's), lse [b, h_q, s_q]);
    the math of the module docstring in ``compute_dtype``."""
    dt = compute_dtype or q.dtype
    b, s_q, h_q, d = q.shape
    scale = d**-0.5 if softmax_scale is None else softmax_scale
    values = cache_values(kv_cache, dt)
    out = q.new_zeros((b, s_q, h_q, head_dim_v), dtype=dt)
    lse = q.new_full((b, h_q, s_q), float("-inf"), dtype=dt)
    lens = cache_seqlens.tolist()
    for i in range(b):
        n = int(lens[i])
        if n == 0:
            continue
        kv = gather_tokens(values, block_table, n, i)  # [n, 576]
        s = torch.einsum("jhd,td->hjt", q[i].to(dt), kv) * scale  # [h, s_q, n]
        if causal:
            pos = torch.arange(n, device=q.device)
            limit = n - s_q + torch.arange(s_q, device=q.device) + 1  # query j sees pos < limit[j]
            s = s.masked_fill(pos[None, :] >= limit[:, None], float("-inf"))
        m = s.amax(dim=-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        p = torch.exp(s - m)
        denom = p.sum(-1, keepdim=True)
        l_ = torch.log(denom) + m
        o = torch.einsum("hjt,td->jhd", p / torch.where(denom > 0, denom, torch.ones_like(denom)), kv[:, :head_dim_v])
        out[i] = o
        lse[i] = l_.squeeze(-1)
    return out, lse


def append_slots(kv_cache: torch.Tensor, block_table: torch.Tensor, positions: torch.Tensor):
    """Where mla_cache_append writes: (page [b, n], offset [b, n], keep [b, n] bool), int64 page
    ids ``block_table[i, t // P]`` and offsets ``t % P`` of token t = positions[i, j].

    An entry is written (``keep``) unless its position is negative (padding), beyond the table
    (t >= max_blocks * P), maps to a page id outside [0, num_blocks), or its slot is written by a
    later entry: of the entries that map to one cache slot, the last in row-major order of
    ``positions`` (row i before row i + 1, then by column) wins. Device ops only (a stable sort
    by slot), so there is no host synchronisation, in eager mode or under torch.compile alike."""
    nb, page = kv_cache.shape[0], kv_cache.shape[1]
    pos = positions.long()
    cap = block_table.shape[1] * page
    valid = (pos >= 0) & (pos < cap)
    blk = torch.gather(block_table.long(), 1, torch.where(valid, pos // page, 0)) if cap else torch.zeros_like(pos)
    valid = valid & (blk >= 0) & (blk < nb)
    off = pos % page
    slot = torch.where(valid, blk * page + off, -1).flatten()
    srt, order = torch.sort(slot, stable=True)  # equal slots keep their row-major order
    last = torch.ones_like(srt, dtype=torch.bool)
    last[:-1] = srt[:-1] != srt[1:]  # the last entry of each run of one slot
    keep = torch.empty_like(last).scatter_(0, order, last).view_as(pos) & valid
    return blk, off, keep


def mla_cache_append(
    kv_cache: torch.Tensor,
    block_table: torch.Tensor,
    positions: torch.Tensor,
    latent: torch.Tensor,
    k_rope: torch.Tensor,
) -> torch.Tensor:
    """Write token ``positions[i, j]`` of sequence i (latent [b, n, 512], k_rope [b, n, 64]; a float
    cache takes any latent / rope split of its last dim) into its page, in place (FP8-quantised for
    a uint8 cache); returns kv_cache. Which entries are written, and which one wins when several
    map to one slot (the last in row-major order): append_slots. Selecting the kept entries with
    a boolean mask is a host synchronisation on a GPU (the Triton path marks the others -1
    instead and does not synchronise)."""
    blk, off, keep = append_slots(kv_cache, block_table, positions)
    blk, off = blk[keep], off[keep]
    if kv_cache.dtype == torch.uint8:
        kv_cache[blk, off, 0] = fp8_quantize(latent[keep], k_rope[keep])
    else:
        lat = latent.shape[-1]  # 512 for DeepSeek; any width for a float cache
        kv_cache[blk, off, 0, :lat] = latent[keep].to(kv_cache.dtype)
        kv_cache[blk, off, 0, lat:] = k_rope[keep].to(kv_cache.dtype)
    return kv_cache


# ---- prefill --------------------------------------------------------------------------------
def mla_prefill(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    softmax_scale: float | None = None,
    causal: bool = True,
):
    """(out [total_q, h, dv] in q's dtype, lse [h, total_q] in q's dtype); differentiable in
    q, k, v through autograd (the backward oracle)."""
    total_q, h, d = q.shape
    scale = d**-0.5 if softmax_scale is None else softmax_scale
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    outs, lses = [], []
    for i in range(len(cq) - 1):
        qs, ks = q[cq[i] : cq[i + 1]], k[ck[i] : ck[i + 1]]
        vs = v[ck[i] : ck[i + 1]]
        nq, nk = qs.shape[0], ks.shape[0]
        s = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        if causal:
            r = torch.arange(nq, device=q.device)[:, None]
            c = torch.arange(nk, device=q.device)[None, :]
            s = s.masked_fill(c > r + nk - nq, float("-inf"))
        m = s.amax(dim=-1, keepdim=True) if nk else s.new_zeros((h, nq, 1))
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m)).detach()
        p = torch.exp(s - m)
        denom = p.sum(-1, keepdim=True)
        safe = torch.where(denom > 0, denom, torch.ones_like(denom))
        outs.append(torch.einsum("hqk,khd->qhd", p / safe, vs))
        lses.append((torch.log(denom) + m).squeeze(-1))
    out = torch.cat(outs, 0) if outs else q.new_zeros((0, h, v.shape[-1]))
    lse = torch.cat(lses, 1) if lses else q.new_zeros((h, 0))
    return out, lse


def merge_attn_states(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor):
    """(out [T, H, D], lse [H, T]) of the union of two disjoint key sets."""
    m = torch.maximum(lse_a, lse_b)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    wa, wb = torch.exp(lse_a - m), torch.exp(lse_b - m)
    tot = wa + wb
    safe = torch.where(tot == 0, torch.ones_like(tot), tot)
    # no key on either side: lse -inf through a where, so the backward meets no 1/0 * 0 (NaN); a
    # NaN lse stays NaN (tot NaN)
    lse = torch.where(tot == 0, torch.full_like(m, float("-inf")), torch.log(safe) + m)
    fa = (wa / safe).transpose(0, 1).unsqueeze(-1)  # [T, H, 1]
    fb = (wb / safe).transpose(0, 1).unsqueeze(-1)
    out = out_a * fa.to(out_a.dtype) + out_b * fb.to(out_b.dtype)
    return out, lse


# ---- random problems (tests, benchmarks) ----------------------------------------------------
def random_block_table(
    lens, page_size: int, gen: torch.Generator, spare_pages: int = 1, extra_cols: int = 1
) -> tuple[torch.Tensor, int]:
    """(block_table int32 [b, max_blocks], num_blocks) giving each sequence of ``lens`` its own
    shuffled pages (plus ``spare_pages`` unused ones; ``extra_cols`` unused table columns filled
    with -1, which the ops must never read)."""
    need = [(int(n) + page_size - 1) // page_size for n in lens]
    max_blocks = max(need + [0]) + extra_cols
    num_blocks = sum(need) + spare_pages
    perm = torch.randperm(num_blocks, generator=gen)
    table = torch.full((len(lens), max(max_blocks, 1)), -1, dtype=torch.int32)
    k = 0
    for i, n in enumerate(need):
        table[i, :n] = perm[k : k + n].to(torch.int32)
        k += n
    return table, num_blocks


def random_decode_problem(
    lens,
    s_q: int,
    h_q: int,
    page_size: int,
    gen: torch.Generator,
    dtype=torch.float32,
    fp8: bool = False,
    head_dim: int = QK_DIM,
    device="cpu",
):
    """(q, kv_cache, block_table, cache_seqlens) with N(0, 1) values; an FP8 cache is packed from
    the same values with fp8_quantize."""
    table, nb = random_block_table(lens, page_size, gen)
    kv = torch.randn(nb, page_size, 1, head_dim, generator=gen, dtype=torch.float64)
    q = torch.randn(len(lens), s_q, h_q, head_dim, generator=gen, dtype=torch.float64)
    kv = fp8_quantize(kv[..., :LATENT_DIM], kv[..., LATENT_DIM:]) if fp8 else kv.to(dtype)
    return (
        q.to(dtype).to(device),
        kv.to(device),
        table.to(device),
        torch.tensor(list(lens), dtype=torch.int32, device=device),
    )


def cu_seqlens(lens, device="cpu") -> torch.Tensor:
    c = [0]
    for n in lens:
        c.append(c[-1] + int(n))
    return torch.tensor(c, dtype=torch.int32, device=device)
