"""Offline compile specs of kernels/mla/__init__.py (``pygen inspect mla``, tests/mla/test_mla_sm90.py): each
entry is one kernel at its GPU configuration for the default benchmark shapes (docs/mla.md),
specialised as the runtime specialises it there: 16-byte-aligned pointers, ``tt.divisibility``
16 on strides that are multiples of 16 (576-wide tokens, 656-byte FP8 tokens / 164 floats / 328
halves, 192/128-wide heads times 128 heads)."""

from __future__ import annotations

from .._compile_spec import compile_spec as _spec
from . import _merge_attn_states_fwd_kernel as mas, decode_config, prefill_config
from .decode import (
    _mla_cache_append_fwd_kernel as app,
    _mla_decode_fwd_kernel as dec,
    _mla_decode_merge_kernel as merge,
)
from .prefill import (
    _mla_prefill_bwd_dkdv_kernel as dkdv,
    _mla_prefill_bwd_dq_kernel as dq,
    _mla_prefill_bwd_preprocess_kernel as pre,
    _mla_prefill_fwd_kernel as pf,
)

i32 = "i32"


def _decode_spec(t: str, fp8: bool, h_q: int, s_q: int) -> dict:
    """_mla_decode_fwd_kernel for ``t`` queries over a ``t`` (or packed FP8) cache at h_q heads and
    s_q new tokens, at decode_config's GPU tile for those rows."""
    cfg = decode_config(h_q * s_q, fp8, interpreting=False, fp32=t == "fp32")
    p = f"*{t}"
    lat = "*fp8e4nv" if fp8 else p
    sig = {
        "q_ptr": p,
        "lat_ptr": lat,
        "sc_ptr": "*fp32" if fp8 else p,
        "rope_ptr": "*bf16" if fp8 else p,
        "bt_ptr": "*i32",
        "seqlen_ptr": "*i32",
        "out_ptr": p,
        "lse_ptr": "*fp32",
        "opart_ptr": "*fp32",
        "lpart_ptr": "*fp32",
        "scale_log2": "fp32",
        "S_Q": i32,
        "H_Q": i32,
        "ROWS": i32,
        "num_splits": i32,
        "stride_qb": i32,
        "stride_qs": i32,
        "stride_qh": i32,
        "stride_lb": i32,
        "stride_lt": i32,
        "stride_sb": i32,
        "stride_st": i32,
        "stride_rb": i32,
        "stride_rt": i32,
        "stride_btb": i32,
        "stride_ob": i32,
        "stride_os": i32,
        "stride_oh": i32,
    }
    consts = {
        "CAUSAL": s_q > 1,
        "FP8": fp8,
        "DV": 512,
        "DR": 64,
        "BLOCK_R": 64,
        "ROPE_OFF": 264 if fp8 else 512,
        "SC_OFF": 128 if fp8 else 0,
        "PAGE": 64,
        "BLOCK_M": cfg.block_m,
        "BLOCK_N": cfg.block_n,
        "SPLIT": True,
        "UPCAST": False,
        "PRECISION": "ieee" if t == "fp32" else "tf32",
    }
    div = [
        "stride_qb",
        "stride_qs",
        "stride_qh",
        "stride_lb",
        "stride_lt",
        "stride_sb",
        "stride_rb",
        "stride_ob",
        "stride_os",
        "stride_oh",
    ]
    return _spec(
        dec,
        f"mla_decode[{'fp8' if fp8 else t},h{h_q},sq{s_q}]",
        sig,
        consts,
        cfg.num_warps,
        cfg.num_stages,
        div,
        tensor_cores=t != "fp32" and cfg.block_m >= 64,
    )


def _decode_specs() -> list[dict]:
    """Decode over bf16 and FP8 caches at every tile regime; fp16 and float32 (q and cache; fp32 has
    its own tile, decode_config) at 16 and 128 heads."""
    cases = [("bf16", fp8, h_q, s_q) for fp8 in (False, True) for h_q, s_q in ((16, 1), (32, 1), (128, 1), (128, 2))]
    cases += [(t, False, h_q, 1) for t in ("fp16", "fp32") for h_q in (16, 128)]
    return [_decode_spec(t, fp8, h_q, s_q) for t, fp8, h_q, s_q in cases]


def _decode_merge_spec() -> dict:
    """_mla_decode_merge_kernel folding float32 split partials into a bf16 output."""
    return _spec(
        merge,
        "mla_decode_merge[bf16]",
        {
            "opart_ptr": "*fp32",
            "lpart_ptr": "*fp32",
            "out_ptr": "*bf16",
            "lse_ptr": "*fp32",
            "S_Q": i32,
            "H_Q": i32,
            "ROWS": i32,
            "num_splits": i32,
            "stride_ob": i32,
            "stride_os": i32,
            "stride_oh": i32,
        },
        {"DV": 512, "BLOCK_S": 16, "UPCAST": False},
        4,
        1,
        ["stride_ob", "stride_os", "stride_oh"],
    )


def _cache_append_spec(fp8: bool) -> dict:
    """_mla_cache_append_fwd_kernel writing bf16 (latent, rope) rows or whole 656-byte FP8 tokens."""
    return _spec(
        app,
        f"mla_cache_append[{'fp8' if fp8 else 'bf16'}]",
        {
            "cache_ptr": "*u8" if fp8 else "*bf16",
            "bt_ptr": "*i32",
            "pos_ptr": "*i32",
            "a_ptr": "*u8" if fp8 else "*bf16",
            "b_ptr": "*u8" if fp8 else "*bf16",
            "N": i32,
            "stride_cb": i32,
            "stride_ct": i32,
            "stride_btb": i32,
            "stride_pb": i32,
            "stride_pn": i32,
            "stride_ab": i32,
            "stride_an": i32,
            "stride_bb": i32,
            "stride_bn": i32,
        },
        {
            "A": 656 if fp8 else 512,
            "B": 0 if fp8 else 64,
            "BLOCK_A": 1024 if fp8 else 512,
            "BLOCK_B": 1 if fp8 else 64,
            "PAGE": 64,
        },
        4,
        1,
        ["stride_cb", "stride_ct", "stride_ab", "stride_an"],
    )


# token and head strides of the prefill tensors: multiples of 16 at the 192/128-wide heads
_PREFILL_STRIDES = [
    "stride_qt",
    "stride_qh",
    "stride_kt",
    "stride_kh",
    "stride_vt",
    "stride_vh",
    "stride_ot",
    "stride_oh",
    "stride_dot",
    "stride_doh",
    "stride_dkt",
    "stride_dkh",
    "stride_dvt",
    "stride_dvh",
    "stride_dqt",
    "stride_dqh",
]


# the q, k, v token and head strides, in the order every prefill pass takes them
_QKV_STRIDES = {
    "stride_qt": i32,
    "stride_qh": i32,
    "stride_kt": i32,
    "stride_kh": i32,
    "stride_vt": i32,
    "stride_vh": i32,
}


def _prefill_consts(t: str) -> dict:
    """The constexprs every prefill pass shares: 192-wide (128 + 64) q/k heads, 128-wide v heads."""
    return {
        "D": 192,
        "DA": 128,
        "DB": 64,
        "DV": 128,
        "BLOCK_DV": 128,
        "UPCAST": False,
        "PRECISION": "ieee" if t == "fp32" else "tf32",
    }


def _prefill_pass_spec(fn, pass_: str, name: str, t: str, sig: dict) -> dict:
    """One causal prefill pass at prefill_config's GPU tile for ``pass_`` and dtype ``t``."""
    c = prefill_config(pass_, interpreting=False, fp32=t == "fp32")
    return _spec(
        fn,
        f"{name}[{t},causal]",
        sig,
        {"CAUSAL": True, "BLOCK_M": c.block_m, "BLOCK_N": c.block_n, **_prefill_consts(t)},
        c.num_warps,
        c.num_stages,
        _PREFILL_STRIDES,
        tensor_cores=t != "fp32",
    )


def _prefill_fwd_spec(t: str) -> dict:
    p = f"*{t}"
    sig = {
        "q_ptr": p,
        "k_ptr": p,
        "v_ptr": p,
        "cu_q_ptr": "*i32",
        "cu_k_ptr": "*i32",
        "out_ptr": p,
        "lse_ptr": "*fp32",
        "scale_log2": "fp32",
        **_QKV_STRIDES,
        "stride_ot": i32,
        "stride_oh": i32,
        "stride_lh": i32,
        "num_mb": i32,
    }
    return _prefill_pass_spec(pf, "fwd", "mla_prefill_fwd", t, sig)


def _prefill_preprocess_spec() -> dict:
    """The backward's delta = rowsum(out * dout) pass; its tile does not depend on the dtype (bf16 only)."""
    p = "*bf16"
    return _spec(
        pre,
        "mla_prefill_bwd_preprocess[bf16]",
        {
            "out_ptr": p,
            "do_ptr": p,
            "dlse_ptr": "*fp32",
            "delta_ptr": "*fp32",
            "total_q": i32,
            "stride_ot": i32,
            "stride_oh": i32,
            "stride_dot": i32,
            "stride_doh": i32,
            "stride_glh": i32,
            "stride_dh": i32,
        },
        {"DV": 128, "BLOCK_DV": 128, "BLOCK_M": 64},
        4,
        1,
        _PREFILL_STRIDES,
    )


def _prefill_bwd_specs(t: str) -> list[dict]:
    """The key-major dk/dv pass and the query-major dq pass, which share their leading arguments."""
    p = f"*{t}"
    bsig = {
        "q_ptr": p,
        "k_ptr": p,
        "v_ptr": p,
        "do_ptr": p,
        "lse_ptr": "*fp32",
        "delta_ptr": "*fp32",
        "cu_q_ptr": "*i32",
        "cu_k_ptr": "*i32",
        "scale": "fp32",
        "scale_log2": "fp32",
        **_QKV_STRIDES,
        "stride_dot": i32,
        "stride_doh": i32,
        "stride_lh": i32,
    }
    dkdv_sig = {
        **bsig,
        "dk_ptr": p,
        "dv_ptr": p,
        "stride_dkt": i32,
        "stride_dkh": i32,
        "stride_dvt": i32,
        "stride_dvh": i32,
        "num_nb": i32,
    }
    dq_sig = {**bsig, "dq_ptr": p, "stride_dqt": i32, "stride_dqh": i32, "num_mb": i32}
    return [
        _prefill_pass_spec(dkdv, "dkdv", "mla_prefill_bwd_dkdv", t, dkdv_sig),
        _prefill_pass_spec(dq, "dq", "mla_prefill_bwd_dq", t, dq_sig),
    ]


def _merge_attn_states_spec() -> dict:
    return _spec(
        mas,
        "merge_attn_states[bf16]",
        {
            "oa_ptr": "*bf16",
            "la_ptr": "*fp32",
            "ob_ptr": "*bf16",
            "lb_ptr": "*fp32",
            "out_ptr": "*bf16",
            "lse_ptr": "*fp32",
            "H": i32,
            "D": i32,
            "stride_oat": i32,
            "stride_oah": i32,
            "stride_obt": i32,
            "stride_obh": i32,
            "stride_lah": i32,
            "stride_lbh": i32,
            "stride_ot": i32,
            "stride_oh": i32,
            "stride_lh": i32,
        },
        {"BLOCK_D": 128, "UPCAST": False},
        4,
        1,
        ["stride_oat", "stride_oah", "stride_obt", "stride_obh", "stride_ot", "stride_oh"],
    )


def build_specs() -> list[dict]:
    """kernels/mla/__init__.py's COMPILE_SPECS, in their recorded order: decode, its split merge, the
    cache append, then per dtype (bf16 at the wgmma tiles; float32, ieee FMA dots, at its own tiles)
    the prefill forward, (bf16) backward preprocess, dk/dv and dq passes, then merge_attn_states."""
    specs = _decode_specs() + [_decode_merge_spec()] + [_cache_append_spec(fp8) for fp8 in (False, True)]
    for t in ("bf16", "fp32"):
        specs.append(_prefill_fwd_spec(t))
        if t == "bf16":
            specs.append(_prefill_preprocess_spec())
        specs += _prefill_bwd_specs(t)
    return specs + [_merge_attn_states_spec()]
