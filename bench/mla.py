"""MLA family benchmarks: absorbed paged decode (FlashMLA's layout) and varlen causal prefill.

Default shapes (``cases(quick=False)``, issue 5)
------------------------------------------------
decode    batch 1, 32, 64, 128; ragged context lengths drawn uniformly from [1024, 8192] (seeded
          per case); h_q 16 (memory-bound: one 1152-byte latent row feeds 16 heads) and 128
          (compute-bound: DeepSeek-V3 without tensor parallelism); s_q 1 (decode) and 2
          (multi-token prediction, causal within the new tokens); page 64; the cache either in
          q's dtype ("native": 576 values per token) or FP8 (656 bytes per token: 512 e4m3 + 4
          float32 scales + 64 bf16 rope). q [b, s_q, h_q, 576] -> out [b, s_q, h_q, 512].
          Softmax scale: DeepSeek-V3's 192^-0.5 * mscale(40)^2 (pygen.nn._rope.softmax_scale).
prefill   8 sequences x 4096 tokens (varlen, causal), 128 heads, q/k dim 192, v dim 128.

On a CPU (``cases(device="cpu")``) the defaults scale down to batch 1 and 8, contexts 256-2048,
prefill 2 x 1024 tokens with 16 heads (``CPU``). ``cases(quick=True)`` keeps the structure at
test size (batch 1 and 4, contexts 33-300, h_q 16,
prefill 2 x 64 tokens with 2 heads): on a CPU only the reference runs (the Triton interpreter
is never timed), and bench/test_bench_mla.py also runs every quick case once through the Triton
kernels under the interpreter as a correctness check, in seconds.

Modes: decode is inference-only (its cases declare ``modes=("fwd",)``, so the harness and the
pytest view list its bwd modes as skipped); prefill has fwd and bwd.

Byte model (E = bytes per element of q / out, L_i = cache_seqlens, T = tokens, H = heads)
-----------------------------------------------------------------------------------------
    decode  fwd  sum_i L_i * R + b*s_q*H*(576 + 512)*E + 4*b*H*s_q + 4*b*(max_blocks + 1)
                 (R = 576*E native, 656 FP8: each cached token read once, shared by all heads)
    prefill fwd  T*H*(192 + 192 + 128 + 128)*E + 4*T*H         (q, k, v read; out, lse written)
            bwd  T*H*(192*2 + 128*3)*E + 4*T*H*2 + T*H*(192*2 + 128)*E  (q k v out dout lse delta
                 read; dq dk dv written)
FLOP model (recorded in the shape dict as ``gflop``, so TFLOP/s = gflop / median_s / 1e3)
    decode  2 * H * (576 + 512) * sum_i sum_j visible(i, j), visible = L_i - s_q + j + 1 (causal)
    prefill fwd 2 * H * (192 + 128) * sum over sequences n (n + 1) / 2; bwd 2.5x fwd
H200 floors (docs/mla_module.md): 4.8 TB/s HBM, 989 TFLOP/s dense bf16.

Baselines (each only when importable; otherwise listed as skipped with the import error):
``flashmla`` (flash_mla.flash_mla_with_kvcache, native bf16/fp16 cache), ``vllm-triton``
(vllm's triton_decode_attention.decode_attention_fwd, s_q = 1), ``sglang-triton`` (sglang's
decode_attention_fwd over token slots, s_q = 1). Their call signatures differ across releases:
the wrappers read the installed signature and raise (a skip row) when it is one they do not know.
None was importable where this file was written, so none has been run.
"""

from __future__ import annotations

import inspect
import math

import torch

import pygen.ops.mla as ops
import pygen.ref.mla as ref
from pygen.tools.harness import Case, Inputs

FAMILY = "mla"
BACKENDS = ("triton",)
LATENT, ROPE = 512, 64
DS_V3_SCALE = 192**-0.5 * (0.1 * math.log(40.0) + 1.0) ** 2  # = pygen.nn._rope.softmax_scale(DeepSeek-V3)

DEFAULT = {
    "batches": (1, 32, 64, 128),
    "ctx": (1024, 8192),
    "heads": (16, 128),
    "s_q": (1, 2),
    "page": 64,
    "prefill": (8, 4096, 128),
}
QUICK = {"batches": (1, 4), "ctx": (33, 300), "heads": (16,), "s_q": (1, 2), "page": 64, "prefill": (2, 64, 2)}
# `pygen bench` on a CPU (the README's main command on a fresh machine): the GPU shapes would take
# the eager reference tens of minutes and the prefill scores alone 8.6 GB per sequence, so the CPU
# keeps the structure (both head counts, both s_q, ragged contexts, both cache formats) at a size
# the 2-core / 24 GiB machines run in about a minute.
CPU = {"batches": (1, 8), "ctx": (256, 2048), "heads": (16, 128), "s_q": (1, 2), "page": 64, "prefill": (2, 1024, 16)}


def context_lengths(batch: int, lo: int, hi: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi + 1, (batch,), generator=g).tolist()


def decode_flops(lens, s_q: int, h: int) -> int:
    vis = sum(max(0, n - s_q + j + 1) for n in lens for j in range(s_q))
    return 2 * h * (LATENT + ROPE + LATENT) * vis


def decode_bytes(lens, s_q: int, h: int, e: int, fp8: bool, max_blocks: int) -> int:
    row = ref.FP8_TOKEN_BYTES if fp8 else (LATENT + ROPE) * e
    b = len(lens)
    return sum(lens) * row + b * s_q * h * (LATENT + ROPE + LATENT) * e + 4 * b * h * s_q + 4 * b * (max_blocks + 1)


def prefill_flops(lens, h: int, mode: str) -> int:
    fwd = 2 * h * (192 + 128) * sum(n * (n + 1) // 2 for n in lens)
    return {"fwd": fwd, "bwd": int(2.5 * fwd), "fwd+bwd": int(3.5 * fwd)}[mode]


def prefill_bytes(t: int, h: int, e: int, mode: str) -> int:
    fwd = t * h * (192 * 2 + 128 * 2) * e + 4 * t * h
    bwd = t * h * (192 * 2 + 128 * 3) * e + 8 * t * h + t * h * (192 * 2 + 128) * e
    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": fwd + bwd}[mode]


# ---- baselines ----------------------------------------------------------------------------------
def _native_only(I, who):
    if I.kv.dtype == torch.uint8:
        raise NotImplementedError(f"{who}: pygen's FP8 cache layout is not wired to this baseline")
    if I.q.shape[1] != 1 and who != "flashmla":
        raise NotImplementedError(f"{who}: s_q = 1 only")


def _flashmla():
    from flash_mla import flash_mla_with_kvcache, get_mla_metadata

    def run(I):
        _native_only(I, "flashmla")
        b, s_q, h, _ = I.q.shape
        meta, splits = get_mla_metadata(I.seqlens, s_q * h, 1)
        return flash_mla_with_kvcache(
            I.q, I.kv, I.table, I.seqlens, LATENT, meta, splits, softmax_scale=DS_V3_SCALE, causal=I.causal
        )[0]

    return run


def _call_by_name(fn, values: dict, who: str):
    """Call ``fn`` with the arguments its installed signature names; raise on one we do not know."""
    params = inspect.signature(fn).parameters
    args = {}
    for name, p in params.items():
        if name in values:
            args[name] = values[name]
        elif p.default is inspect.Parameter.empty:
            raise NotImplementedError(f"{who}: unknown required argument {name!r} in this release")
    return fn(**args)


def _splits_for(I) -> int:
    return max(1, min(16, int(I.seqlens.max()) // 512))


def _vllm():
    from vllm.attention.ops.triton_decode_attention import decode_attention_fwd

    def run(I):
        _native_only(I, "vllm-triton")
        b, _, h, _ = I.q.shape
        q = I.q[:, 0]
        o = q.new_empty(b, h, LATENT)
        ns = _splits_for(I)
        vals = {
            "q": q,
            "k_buffer": I.kv,
            "v_buffer": I.kv[..., :LATENT],
            "o": o,
            "lse": torch.empty(b, h, dtype=torch.float32, device=q.device),
            "req_to_token": I.table.clamp_min(0),
            "b_seq_len": I.seqlens,
            "attn_logits": torch.empty(b, h, ns, LATENT + 1, dtype=torch.float32, device=q.device),
            "num_kv_splits": ns,
            "sm_scale": DS_V3_SCALE,
            "page_size": I.kv.shape[1],
        }
        _call_by_name(decode_attention_fwd, vals, "vllm-triton")
        return o[:, None]

    return run


def _sglang():
    try:
        from sglang.srt.layers.attention.triton_ops.decode_attention import decode_attention_fwd
    except ImportError:
        from sglang.kernels.ops.attention.decode_attention import decode_attention_fwd

    def run(I):
        _native_only(I, "sglang-triton")
        b, _, h, _ = I.q.shape
        q = I.q[:, 0]
        page = I.kv.shape[1]
        lens = I.seqlens.long()
        slots = [
            I.table[i, torch.arange(n, device=q.device) // page].long() * page + torch.arange(n, device=q.device) % page
            for i, n in enumerate(lens.tolist())
        ]
        indptr = torch.zeros(b + 1, dtype=torch.int32, device=q.device)
        indptr[1:] = torch.cumsum(lens, 0)
        ns = _splits_for(I)
        kbuf = I.kv.view(-1, 1, LATENT + ROPE)
        o = q.new_empty(b, h, LATENT)
        vals = {
            "q": q,
            "k_buffer": kbuf,
            "v_buffer": kbuf[..., :LATENT],
            "o": o,
            "kv_indptr": indptr,
            "kv_indices": torch.cat(slots).to(torch.int32),
            "attn_logits": torch.empty(b, h, ns, LATENT, dtype=torch.float32, device=q.device),
            "attn_lse": torch.empty(b, h, ns, dtype=torch.float32, device=q.device),
            "num_kv_splits": torch.full((b,), ns, dtype=torch.int32, device=q.device),
            "max_kv_splits": ns,
            "sm_scale": DS_V3_SCALE,
            "k_scale": 1.0,
            "v_scale": 1.0,
        }
        _call_by_name(decode_attention_fwd, vals, "sglang-triton")
        return o[:, None]

    return run


BASELINES = {"flashmla": _flashmla, "vllm-triton": _vllm, "sglang-triton": _sglang}


# ---- cases --------------------------------------------------------------------------------------
# Decode has no backward: the harness lists its bwd modes as skipped.
_FWD_ONLY = {"modes": ("fwd",)}


def _decode_case(batch: int, h: int, s_q: int, fp8: bool, shapes: dict, tag: str) -> Case:
    lo, hi = shapes["ctx"]
    page = shapes["page"]
    seed = 1000 * batch + 10 * h + s_q
    lens = context_lengths(batch, lo, hi, seed)
    max_blocks = max((n + page - 1) // page for n in lens) + 1
    causal = s_q > 1
    cache = "fp8" if fp8 else "native"
    shape = {
        "batch": batch,
        "h_q": h,
        "s_q": s_q,
        "page": page,
        "cache": cache,
        "ctx_range": [lo, hi],
        "ctx_sum": sum(lens),
        "ctx_max": max(lens),
        "causal": causal,
        "gflop": decode_flops(lens, s_q, h) / 1e9,
    }

    def make(device, dtype) -> Inputs:
        g = torch.Generator().manual_seed(seed)
        q, kv, table, sl = ref.random_decode_problem(lens, s_q, h, page, g, dtype=dtype, fp8=fp8, device=device)
        return Inputs({"q": q, "kv": kv, "table": table, "seqlens": sl, "causal": causal}, [])

    def run(I, be):
        return ops.mla_decode(I.q, I.kv, I.table, I.seqlens, LATENT, DS_V3_SCALE, I.causal, backend=be)[0]

    def reference(q, kv, table, sl):
        return ref.mla_decode(q, kv, table, sl, LATENT, DS_V3_SCALE, causal, torch.float32)[0].to(q.dtype)

    def nbytes(I, mode):
        return decode_bytes(lens, s_q, h, I.q.element_size(), fp8, max_blocks)

    label = f"{tag}b{batch}-h{h}-sq{s_q}-{cache}"
    return Case(
        FAMILY,
        "mla_decode",
        label,
        shape,
        make,
        run,
        (reference, lambda I: (I.q, I.kv, I.table, I.seqlens)),
        nbytes,
        "sum(L)*row + b*s_q*H*(576+512)*E + lse + table (row 576E, FP8 656 B)",
        dict(BASELINES),
        backends=BACKENDS,
        **_FWD_ONLY,
    )


def _prefill_case(n_seq: int, n: int, h: int, tag: str) -> Case:
    lens = [n] * n_seq
    t = n * n_seq
    shape = {
        "seqs": n_seq,
        "tokens_per_seq": n,
        "heads": h,
        "dqk": 192,
        "dv": 128,
        "causal": True,
        "gflop": prefill_flops(lens, h, "fwd") / 1e9,
        "gflop_bwd": prefill_flops(lens, h, "bwd") / 1e9,
    }

    def make(device, dtype) -> Inputs:
        g = torch.Generator().manual_seed(7 + n)
        q, k, v = (torch.randn(t, h, d, generator=g).to(device=device, dtype=dtype) for d in (192, 192, 128))
        cu = ref.cu_seqlens(lens, device)
        grad = torch.randn(t, h, 128, generator=g).to(device=device, dtype=dtype)
        return Inputs({"q": q, "k": k, "v": v, "cu": cu}, [q, k, v], grad)

    def run(I, be):
        return ops.mla_prefill(I.q, I.k, I.v, I.cu, I.cu, n, n, causal=True, backend=be)[0]

    def reference(q, k, v, cu):
        return ref.mla_prefill(q, k, v, cu, cu, 192**-0.5, True)[0]

    def nbytes(I, mode):
        return prefill_bytes(t, h, I.q.element_size(), mode)

    return Case(
        FAMILY,
        "mla_prefill",
        f"{tag}{n_seq}x{n}-h{h}",
        shape,
        make,
        run,
        (reference, lambda I: (I.q, I.k, I.v, I.cu)),
        nbytes,
        "fwd T*H*(2*192+2*128)*E + 4TH; bwd T*H*(2*192+3*128)*E + 8TH + T*H*(2*192+128)*E",
        backends=BACKENDS,
    )


def cases(quick: bool = False, device: str | torch.device | None = None) -> list[Case]:
    on_cuda = (
        torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")).type == "cuda"
    )
    s = QUICK if quick else (DEFAULT if on_cuda else CPU)
    tag = "quick-" if quick else ("" if on_cuda else "cpu-")
    out = [
        _decode_case(b, h, sq, fp8, s, tag)
        for b in s["batches"]
        for h in s["heads"]
        for sq in s["s_q"]
        for fp8 in (False, True)
    ]
    out.append(_prefill_case(*s["prefill"], tag))
    return out


def tflops(row: dict) -> float | None:
    """TFLOP/s of a result row (JSON line) from its shape's FLOP model."""
    if row.get("median_ms") is None:
        return None
    key = "gflop" if row.get("mode", "fwd") == "fwd" else None
    g = row["shape"].get(key) if key else None
    if row.get("mode") == "bwd":
        g = row["shape"].get("gflop_bwd")
    elif row.get("mode") == "fwd+bwd" and "gflop_bwd" in row["shape"]:
        g = row["shape"]["gflop"] + row["shape"]["gflop_bwd"]
    return g / row["median_ms"] if g else None


def floors(peak_tbps: float = 4.8, peak_tflops: float = 989.0) -> list[dict]:
    """Memory and compute floors (µs) of every default case at bf16 (docs/mla_module.md's table):
    ``python -c "from pygen.bench import mla; [print(r) for r in mla.floors()]"``."""
    out = []
    for c in cases(quick=False, device="cuda"):
        s = c.shape
        if c.op == "mla_decode":
            lens = context_lengths(s["batch"], *DEFAULT["ctx"], 1000 * s["batch"] + 10 * s["h_q"] + s["s_q"])
            mb = max((n + DEFAULT["page"] - 1) // DEFAULT["page"] for n in lens) + 1
            nbytes = decode_bytes(lens, s["s_q"], s["h_q"], 2, s["cache"] == "fp8", mb)
        else:
            nbytes = prefill_bytes(s["seqs"] * s["tokens_per_seq"], s["heads"], 2, "fwd")
        out.append(
            {
                "op": c.op,
                "label": c.label,
                "MB": nbytes / 1e6,
                "GFLOP": s["gflop"],
                "memory_us": nbytes / (peak_tbps * 1e12) * 1e6,
                "compute_us": s["gflop"] * 1e9 / (peak_tflops * 1e12) * 1e6,
            }
        )
    return out
