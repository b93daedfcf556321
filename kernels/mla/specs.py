"""Offline compile specs of kernels/mla/__init__.py (``pygen inspect mla``, tests/mla/test_mla_sm90.py): each
entry is one kernel at its GPU configuration for the default benchmark shapes (docs/mla.md),
specialised as the runtime specialises it there: 16-byte-aligned pointers, ``tt.divisibility``
16 on strides that are multiples of 16 (576-wide tokens, 656-byte FP8 tokens / 164 floats / 328
halves, 192/128-wide heads times 128 heads)."""

from __future__ import annotations

from .._compile_spec import compile_spec as _spec


def build_specs(ns: dict) -> list[dict]:
    dec, merge = ns["_mla_decode_fwd_kernel"], ns["_mla_decode_merge_kernel"]
    app = ns["_mla_cache_append_fwd_kernel"]
    pf, pre = ns["_mla_prefill_fwd_kernel"], ns["_mla_prefill_bwd_preprocess_kernel"]
    dkdv, dq = ns["_mla_prefill_bwd_dkdv_kernel"], ns["_mla_prefill_bwd_dq_kernel"]
    mas = ns["_merge_attn_states_fwd_kernel"]
    decode_config, prefill_config = ns["decode_config"], ns["prefill_config"]
    specs = []
    i32 = "i32"
    # bf16 and FP8 caches at every tile regime; fp16 and float32 (q and cache; fp32 has its own
    # tile, decode_config) at 16 and 128 heads
    dec_cases = [
        ("bf16", fp8, h_q, s_q) for fp8 in (False, True) for h_q, s_q in ((16, 1), (32, 1), (128, 1), (128, 2))
    ]
    dec_cases += [(t, False, h_q, 1) for t in ("fp16", "fp32") for h_q in (16, 128)]
    for t, fp8, h_q, s_q in dec_cases:
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
        specs.append(
            _spec(
                dec,
                f"mla_decode[{'fp8' if fp8 else t},h{h_q},sq{s_q}]",
                sig,
                consts,
                cfg.num_warps,
                cfg.num_stages,
                div,
                tensor_cores=t != "fp32" and cfg.block_m >= 64,
            )
        )
    specs.append(
        _spec(
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
            {"DV": 512, "BLOCK_S": 16},
            4,
            1,
            ["stride_ob", "stride_os", "stride_oh"],
        )
    )
    for fp8 in (False, True):
        specs.append(
            _spec(
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
        )
    pstr = [
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
    # bf16 at the wgmma tiles; float32 (ieee FMA dots) at its own tiles (prefill_config fp32=True)
    for t in ("bf16", "fp32"):
        fp32 = t == "fp32"
        p = f"*{t}"
        tc = not fp32
        common = {
            "D": 192,
            "DA": 128,
            "DB": 64,
            "DV": 128,
            "BLOCK_DV": 128,
            "UPCAST": False,
            "PRECISION": "ieee" if fp32 else "tf32",
        }
        qkv = {"q_ptr": p, "k_ptr": p, "v_ptr": p}
        c = prefill_config("fwd", interpreting=False, fp32=fp32)
        specs.append(
            _spec(
                pf,
                f"mla_prefill_fwd[{t},causal]",
                {
                    **qkv,
                    "cu_q_ptr": "*i32",
                    "cu_k_ptr": "*i32",
                    "out_ptr": p,
                    "lse_ptr": "*fp32",
                    "scale_log2": "fp32",
                    "stride_qt": i32,
                    "stride_qh": i32,
                    "stride_kt": i32,
                    "stride_kh": i32,
                    "stride_vt": i32,
                    "stride_vh": i32,
                    "stride_ot": i32,
                    "stride_oh": i32,
                    "stride_lh": i32,
                    "num_mb": i32,
                },
                {"CAUSAL": True, "BLOCK_M": c.block_m, "BLOCK_N": c.block_n, **common},
                c.num_warps,
                c.num_stages,
                pstr,
                tensor_cores=tc,
            )
        )
        if not fp32:  # the preprocess tile does not depend on the dtype
            specs.append(
                _spec(
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
                    pstr,
                )
            )
        bsig = {
            **qkv,
            "do_ptr": p,
            "lse_ptr": "*fp32",
            "delta_ptr": "*fp32",
            "cu_q_ptr": "*i32",
            "cu_k_ptr": "*i32",
            "scale": "fp32",
            "scale_log2": "fp32",
            "stride_qt": i32,
            "stride_qh": i32,
            "stride_kt": i32,
            "stride_kh": i32,
            "stride_vt": i32,
            "stride_vh": i32,
            "stride_dot": i32,
            "stride_doh": i32,
            "stride_lh": i32,
        }
        c = prefill_config("dkdv", interpreting=False, fp32=fp32)
        specs.append(
            _spec(
                dkdv,
                f"mla_prefill_bwd_dkdv[{t},causal]",
                {
                    **bsig,
                    "dk_ptr": p,
                    "dv_ptr": p,
                    "stride_dkt": i32,
                    "stride_dkh": i32,
                    "stride_dvt": i32,
                    "stride_dvh": i32,
                    "num_nb": i32,
                },
                {"CAUSAL": True, "BLOCK_M": c.block_m, "BLOCK_N": c.block_n, **common},
                c.num_warps,
                c.num_stages,
                pstr,
                tensor_cores=tc,
            )
        )
        c = prefill_config("dq", interpreting=False, fp32=fp32)
        specs.append(
            _spec(
                dq,
                f"mla_prefill_bwd_dq[{t},causal]",
                {**bsig, "dq_ptr": p, "stride_dqt": i32, "stride_dqh": i32, "num_mb": i32},
                {"CAUSAL": True, "BLOCK_M": c.block_m, "BLOCK_N": c.block_n, **common},
                c.num_warps,
                c.num_stages,
                pstr,
                tensor_cores=tc,
            )
        )
    specs.append(
        _spec(
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
            {"BLOCK_D": 128},
            4,
            1,
            ["stride_oat", "stride_oah", "stride_obt", "stride_obh", "stride_ot", "stride_oh"],
        )
    )
    return specs
