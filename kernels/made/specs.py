"""Offline compile specs of kernels/made/__init__.py (``pygen inspect made``, tests/made/test_made_sm90.py):
each entry is one kernel at its default GPU configuration, specialised the way the runtime
specialises it at the benchmark shape (16-byte-aligned pointers, ``tt.divisibility`` 16 on sizes
and strides that are multiples of 16, unit inner strides as constexpr 1), relu, row-major x /
weight / mask (so their inner strides are 1)."""

from __future__ import annotations

import torch

from .._compile_spec import compile_spec
from . import (
    _GPU_16BIT,
    _GPU_32BIT,
    Config,
    _made_affine_fwd_kernel,
    _made_plan_kernel,
    _masked_linear_dw_kernel,
    _masked_linear_dx_kernel,
    _masked_linear_fwd_kernel,
    tile_consts,
)

_DEG = "*i64"
_DEGREES = {"in_deg_ptr": _DEG, "out_deg_ptr": _DEG}


def _spec(fn, name: str, sig: dict, consts: dict, cfg: Config, div: list[str]) -> dict:
    # 16-bit dots (fp32 runs ieee FMA dots) are meant for Hopper wgmma
    return compile_spec(
        fn, name, sig, consts, cfg.num_warps, cfg.num_stages, div, tensor_cores=consts.get("PRECISION") == "tf32"
    )


def _tiles(cfg: Config, prec: str, order: str = "MNK") -> dict:
    """UPCAST, PRECISION and the tile constexprs in the kernel's argument order."""
    return {"UPCAST": False, "PRECISION": prec, **tile_consts(cfg, order)}


def _fwd(name: str, x: str, p: str, cfg: Config, prec: str, explicit: bool, bits: bool) -> dict:
    sig = {"x_ptr": x, "w_ptr": p, "b_ptr": p, **_DEGREES, "mask_ptr": "*u8", "plan_ptr": "*i32", "count_ptr": "*i32"}
    sig.update(y_ptr=p, z_ptr=p, M="i32", N="i32", K="i32", J="i32", stride_xm="i32", stride_wn="i32", stride_mn="i32")
    consts = {"stride_xk": 1, "stride_wk": 1, "stride_mk": 1, "STRICT": 0, "ACT": 1, "HAS_BIAS": True, "SAVE_Z": False}
    consts.update(EXPLICIT_MASK=explicit, X_BITS=bits, **_tiles(cfg, prec))
    div = ["M", "N", "K", "stride_wn", "stride_mn"] if bits else ["M", "N", "K", "stride_xm", "stride_wn", "stride_mn"]
    return _spec(_masked_linear_fwd_kernel, name, sig, consts, cfg, div)


def _dx(name: str, p: str, cfg: Config, prec: str, explicit: bool) -> dict:
    sig = {"gy_ptr": p, "s_ptr": p, "w_ptr": p, **_DEGREES, "mask_ptr": "*u8", "plan_ptr": "*i32", "count_ptr": "*i32"}
    sig.update(dx_ptr=p, M="i32", N="i32", K="i32", J="i32", stride_wn="i32", stride_mn="i32")
    consts = {"stride_wk": 1, "stride_mk": 1, "STRICT": 0, "ACT": 1, "EXPLICIT_MASK": explicit, **_tiles(cfg, prec)}
    return _spec(_masked_linear_dx_kernel, name, sig, consts, cfg, ["M", "N", "K", "stride_wn", "stride_mn"])


def _dw(name: str, x: str, p: str, cfg: Config, prec: str, explicit: bool, bits: bool) -> dict:
    sig = {"gy_ptr": p, "s_ptr": p, "x_ptr": x, **_DEGREES, "mask_ptr": "*u8", "dw_ptr": p, "db_ptr": p}
    sig.update(M="i32", N="i32", K="i32", stride_xm="i32", stride_mn="i32")
    consts = {"stride_xk": 1, "stride_mk": 1, "STRICT": 0, "ACT": 1, "HAS_BIAS": True, "EXPLICIT_MASK": explicit}
    consts.update(X_BITS=bits, **_tiles(cfg, prec, "NKM"))
    div = ["M", "N", "K", "stride_mn"] if bits else ["M", "N", "K", "stride_xm", "stride_mn"]
    return _spec(_masked_linear_dw_kernel, name, sig, consts, cfg, div)


def _affine(tname: str) -> dict:
    c, p = _GPU_16BIT["fwd"], f"*{tname}"
    sig = {"h_ptr": p, "w_ptr": p, "b_ptr": p, **_DEGREES, "plan_ptr": "*i32", "count_ptr": "*i32", "x_ptr": p}
    sig.update(z_ptr=p, p_ptr=p, ld_ptr="*fp32", M="i32", N="i32", K="i32", J="i32", T="i32")
    sig.update(stride_hm="i32", stride_wn="i32", stride_xm="i32")
    consts = {"stride_hk": 1, "stride_wk": 1, "stride_xd": 1, "HAS_BIAS": True, "SAVE_PARAMS": True}
    consts.update(_tiles(c, "tf32"))
    div = ["M", "N", "K", "stride_hm", "stride_wn", "stride_xm"]
    return _spec(_made_affine_fwd_kernel, f"made_affine_fwd[{tname}]", sig, consts, c, div)


def build_specs() -> list[dict]:
    """kernels/made/__init__.py's COMPILE_SPECS (kernels/made/sample.py adds the sampler's)."""
    specs = []
    for dt, tname in ((torch.float16, "fp16"), (torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        cfgs = _GPU_32BIT if dt == torch.float32 else _GPU_16BIT
        p = f"*{tname}"
        prec = "ieee" if dt == torch.float32 else "tf32"
        for explicit in (False, True):
            kind = "masked_matmul" if explicit else "masked_linear"
            specs.append(_fwd(f"{kind}_fwd[{tname}]", p, p, cfgs["fwd"], prec, explicit, False))
            specs.append(_dx(f"{kind}_dx[{tname}]", p, cfgs["dx"], prec, explicit))
            specs.append(_dw(f"{kind}_dw[{tname}]", p, p, cfgs["dw"], prec, explicit, False))
    # bit-packed binary input (first MADE layer): x is int32 words
    specs.append(_fwd("masked_linear_fwd_bits[bf16]", "*i32", "*bf16", _GPU_16BIT["fwd"], "tf32", False, True))
    specs.append(_dw("masked_linear_dw_bits[bf16]", "*i32", "*bf16", _GPU_16BIT["dw"], "tf32", False, True))
    specs += [_affine("fp16"), _affine("bf16")]
    c = _GPU_16BIT["fwd"]
    plan_sig = {"row_deg_ptr": _DEG, "red_deg_ptr": _DEG, "plan_ptr": "*i32", "count_ptr": "*i32"}
    plan_sig.update(R="i32", KR="i32", J="i32")
    plan_consts = {"STRICT": 0, "ROWS_ARE_OUT": True, "BLOCK_R": c.block_n, "BLOCK_K": c.block_k}
    plan_cfg = Config(0, 0, 0, num_warps=1, num_stages=1)
    specs.append(_spec(_made_plan_kernel, "made_plan", plan_sig, plan_consts, plan_cfg, ["R", "KR"]))
    return specs
