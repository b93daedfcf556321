"""Offline compile specs of kernels/made/__init__.py (``pygen inspect made``, tests/made/test_made_sm90.py):
each entry is one kernel at its default GPU configuration, specialised the way the runtime
specialises it at the benchmark shape (16-byte-aligned pointers, ``tt.divisibility`` 16 on sizes
and strides that are multiples of 16, unit inner strides as constexpr 1)."""

from __future__ import annotations

import torch

from .._compile_spec import compile_spec


def _spec(fn, name, sig, consts, cfg, div):
    # 16-bit dots (fp32 runs ieee FMA dots) are meant for Hopper wgmma
    return compile_spec(
        fn, name, sig, consts, cfg.num_warps, cfg.num_stages, div, tensor_cores=consts.get("PRECISION") == "tf32"
    )


def build_specs(ns: dict) -> list[dict]:
    """kernels/made/__init__.py's COMPILE_SPECS from its namespace ``ns``: default GPU configs, relu, row-major
    x / weight / mask (so their inner strides are 1)."""
    _GPU_16BIT, _GPU_32BIT, Config = ns["_GPU_16BIT"], ns["_GPU_32BIT"], ns["Config"]
    _masked_linear_fwd_kernel, _masked_linear_dx_kernel = (
        ns["_masked_linear_fwd_kernel"],
        ns["_masked_linear_dx_kernel"],
    )
    _masked_linear_dw_kernel, _made_affine_fwd_kernel = ns["_masked_linear_dw_kernel"], ns["_made_affine_fwd_kernel"]
    _made_plan_kernel = ns["_made_plan_kernel"]
    specs = []
    deg = "*i64"
    for dt, tname in ((torch.float16, "fp16"), (torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        cfgs = _GPU_32BIT if dt == torch.float32 else _GPU_16BIT
        p = f"*{tname}"
        prec = "ieee" if dt == torch.float32 else "tf32"
        for explicit in (False, True):
            kind = "masked_matmul" if explicit else "masked_linear"
            c = cfgs["fwd"]
            specs.append(
                _spec(
                    _masked_linear_fwd_kernel,
                    f"{kind}_fwd[{tname}]",
                    {
                        "x_ptr": p,
                        "w_ptr": p,
                        "b_ptr": p,
                        "in_deg_ptr": deg,
                        "out_deg_ptr": deg,
                        "mask_ptr": "*u8",
                        "plan_ptr": "*i32",
                        "count_ptr": "*i32",
                        "y_ptr": p,
                        "z_ptr": p,
                        "M": "i32",
                        "N": "i32",
                        "K": "i32",
                        "J": "i32",
                        "stride_xm": "i32",
                        "stride_wn": "i32",
                        "stride_mn": "i32",
                    },
                    {
                        "stride_xk": 1,
                        "stride_wk": 1,
                        "stride_mk": 1,
                        "STRICT": 0,
                        "ACT": 1,
                        "HAS_BIAS": True,
                        "SAVE_Z": False,
                        "EXPLICIT_MASK": explicit,
                        "X_BITS": False,
                        "UPCAST": False,
                        "PRECISION": prec,
                        "BLOCK_M": c.block_m,
                        "BLOCK_N": c.block_n,
                        "BLOCK_K": c.block_k,
                        "GROUP_M": c.group_m,
                    },
                    c,
                    ["M", "N", "K", "stride_xm", "stride_wn", "stride_mn"],
                )
            )
            c = cfgs["dx"]
            specs.append(
                _spec(
                    _masked_linear_dx_kernel,
                    f"{kind}_dx[{tname}]",
                    {
                        "gy_ptr": p,
                        "s_ptr": p,
                        "w_ptr": p,
                        "in_deg_ptr": deg,
                        "out_deg_ptr": deg,
                        "mask_ptr": "*u8",
                        "plan_ptr": "*i32",
                        "count_ptr": "*i32",
                        "dx_ptr": p,
                        "M": "i32",
                        "N": "i32",
                        "K": "i32",
                        "J": "i32",
                        "stride_wn": "i32",
                        "stride_mn": "i32",
                    },
                    {
                        "stride_wk": 1,
                        "stride_mk": 1,
                        "STRICT": 0,
                        "ACT": 1,
                        "EXPLICIT_MASK": explicit,
                        "UPCAST": False,
                        "PRECISION": prec,
                        "BLOCK_M": c.block_m,
                        "BLOCK_N": c.block_n,
                        "BLOCK_K": c.block_k,
                        "GROUP_M": c.group_m,
                    },
                    c,
                    ["M", "N", "K", "stride_wn", "stride_mn"],
                )
            )
            c = cfgs["dw"]
            specs.append(
                _spec(
                    _masked_linear_dw_kernel,
                    f"{kind}_dw[{tname}]",
                    {
                        "gy_ptr": p,
                        "s_ptr": p,
                        "x_ptr": p,
                        "in_deg_ptr": deg,
                        "out_deg_ptr": deg,
                        "mask_ptr": "*u8",
                        "dw_ptr": p,
                        "db_ptr": p,
                        "M": "i32",
                        "N": "i32",
                        "K": "i32",
                        "stride_xm": "i32",
                        "stride_mn": "i32",
                    },
                    {
                        "stride_xk": 1,
                        "stride_mk": 1,
                        "STRICT": 0,
                        "ACT": 1,
                        "HAS_BIAS": True,
                        "EXPLICIT_MASK": explicit,
                        "X_BITS": False,
                        "UPCAST": False,
                        "PRECISION": prec,
                        "BLOCK_N": c.block_n,
                        "BLOCK_K": c.block_k,
                        "BLOCK_M": c.block_m,
                        "GROUP_M": c.group_m,
                    },
                    c,
                    ["M", "N", "K", "stride_xm", "stride_mn"],
                )
            )
    # bit-packed binary input (first MADE layer): x is int32 words
    c, p = _GPU_16BIT["fwd"], "*bf16"
    specs.append(
        _spec(
            _masked_linear_fwd_kernel,
            "masked_linear_fwd_bits[bf16]",
            {
                "x_ptr": "*i32",
                "w_ptr": p,
                "b_ptr": p,
                "in_deg_ptr": deg,
                "out_deg_ptr": deg,
                "mask_ptr": "*u8",
                "plan_ptr": "*i32",
                "count_ptr": "*i32",
                "y_ptr": p,
                "z_ptr": p,
                "M": "i32",
                "N": "i32",
                "K": "i32",
                "J": "i32",
                "stride_xm": "i32",
                "stride_wn": "i32",
                "stride_mn": "i32",
            },
            {
                "stride_xk": 1,
                "stride_wk": 1,
                "stride_mk": 1,
                "STRICT": 0,
                "ACT": 1,
                "HAS_BIAS": True,
                "SAVE_Z": False,
                "EXPLICIT_MASK": False,
                "X_BITS": True,
                "UPCAST": False,
                "PRECISION": "tf32",
                "BLOCK_M": c.block_m,
                "BLOCK_N": c.block_n,
                "BLOCK_K": c.block_k,
                "GROUP_M": c.group_m,
            },
            c,
            ["M", "N", "K", "stride_wn", "stride_mn"],
        )
    )
    c = _GPU_16BIT["dw"]
    specs.append(
        _spec(
            _masked_linear_dw_kernel,
            "masked_linear_dw_bits[bf16]",
            {
                "gy_ptr": p,
                "s_ptr": p,
                "x_ptr": "*i32",
                "in_deg_ptr": deg,
                "out_deg_ptr": deg,
                "mask_ptr": "*u8",
                "dw_ptr": p,
                "db_ptr": p,
                "M": "i32",
                "N": "i32",
                "K": "i32",
                "stride_xm": "i32",
                "stride_mn": "i32",
            },
            {
                "stride_xk": 1,
                "stride_mk": 1,
                "STRICT": 0,
                "ACT": 1,
                "HAS_BIAS": True,
                "EXPLICIT_MASK": False,
                "X_BITS": True,
                "UPCAST": False,
                "PRECISION": "tf32",
                "BLOCK_N": c.block_n,
                "BLOCK_K": c.block_k,
                "BLOCK_M": c.block_m,
                "GROUP_M": c.group_m,
            },
            c,
            ["M", "N", "K", "stride_mn"],
        )
    )
    for tname in ("fp16", "bf16"):
        c, p = _GPU_16BIT["fwd"], f"*{tname}"
        specs.append(
            _spec(
                _made_affine_fwd_kernel,
                f"made_affine_fwd[{tname}]",
                {
                    "h_ptr": p,
                    "w_ptr": p,
                    "b_ptr": p,
                    "in_deg_ptr": deg,
                    "out_deg_ptr": deg,
                    "plan_ptr": "*i32",
                    "count_ptr": "*i32",
                    "x_ptr": p,
                    "z_ptr": p,
                    "p_ptr": p,
                    "ld_ptr": "*fp32",
                    "M": "i32",
                    "N": "i32",
                    "K": "i32",
                    "J": "i32",
                    "T": "i32",
                    "stride_hm": "i32",
                    "stride_wn": "i32",
                    "stride_xm": "i32",
                },
                {
                    "stride_hk": 1,
                    "stride_wk": 1,
                    "stride_xd": 1,
                    "HAS_BIAS": True,
                    "SAVE_PARAMS": True,
                    "UPCAST": False,
                    "PRECISION": "tf32",
                    "BLOCK_M": c.block_m,
                    "BLOCK_N": c.block_n,
                    "BLOCK_K": c.block_k,
                    "GROUP_M": c.group_m,
                },
                c,
                ["M", "N", "K", "stride_hm", "stride_wn", "stride_xm"],
            )
        )
    c = _GPU_16BIT["fwd"]
    specs.append(
        _spec(
            _made_plan_kernel,
            "made_plan",
            {
                "row_deg_ptr": deg,
                "red_deg_ptr": deg,
                "plan_ptr": "*i32",
                "count_ptr": "*i32",
                "R": "i32",
                "KR": "i32",
                "J": "i32",
            },
            {"STRICT": 0, "ROWS_ARE_OUT": True, "BLOCK_R": c.block_n, "BLOCK_K": c.block_k},
            Config(0, 0, 0, num_warps=1, num_stages=1),
            ["R", "KR"],
        )
    )
    return specs
