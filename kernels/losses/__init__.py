"""Triton backend of the losses family: launchers of the fused linear-logsumexp kernels
(kernels/losses/linear_logsumexp.py states the math, tiles and layouts) and their offline-compile
specs. Semantics are pygen.ref.losses' (the float64 oracle); the launcher contract is
docs/ARCHITECTURE.md's.

    linear_ce_fwd(hidden, weight, bias, targets, part, scale, softcap, entropy, exclude=None)
        part: float32 [5, S, N], S = fwd_splits(N, V, is_cuda); every plane written (plane 4 only
        with ``entropy``)
    linear_ce_bwd(hidden, weight, bias, targets, lse, coef, grad_h, grad_w, grad_b, scale, softcap,
                  filter_eps, entropy, exclude=None)
        grad_h [N, H] / grad_w [V, H] / grad_b [V]: float32, zero-filled, or None when not wanted;
        filter_eps 0 disables the gradient filter; exclude: an int leaves column i + exclude of row
        i out of every statistic and gradient (InfoNCE's self-similarity), None: nothing excluded

hidden [N, H] and weight [V, H] have unit stride along H (the op copies otherwise), bias [V] and
targets [N] are contiguous. Under TRITON_INTERPRET=1 (CPU tests) tiles are upcast to float32 right
after their loads (the interpreter's bf16 arithmetic is broken) and one small configuration runs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from .._args import split
from .._compile_spec import compile_spec
from .._device import interpreting as _interpreting, launches_on_device
from .grpo import _grpo_loss_kernel
from .linear_logsumexp import _linear_ce_bwd_kernel, _linear_ce_fwd_kernel


@dataclass(frozen=True)
class Config:
    block_n: int
    block_v: int
    block_h: int
    num_warps: int
    num_stages: int


# (pass, 16-bit operands): tiles chosen for sm_90 (spill-free in the offline compile,
# tests/common/test_compiled_kernels.py); float32 takes smaller ones (twice the bytes per tile)
_GPU = {
    ("fwd", True): Config(128, 128, 64, 8, 3),
    ("fwd", False): Config(64, 64, 32, 4, 2),
    # backward: 128 x 128 x 64 spilled 116 bytes (bf16), float32 64 x 64 x 32 at 4 warps 11.5 KB
    ("bwd", True): Config(64, 128, 64, 8, 2),
    ("bwd", False): Config(64, 64, 32, 8, 2),
}
_INTERPRETER = Config(32, 64, 32, 4, 1)


def config(pass_: str, dtype: torch.dtype, interpreting: bool | None = None) -> Config:
    """Tile sizes of ``pass_`` ("fwd" / "bwd") for operands of ``dtype``."""
    if _interpreting() if interpreting is None else interpreting:
        return _INTERPRETER
    return _GPU[(pass_, dtype in (torch.float16, torch.bfloat16))]


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def fwd_splits(n: int, v: int, dtype: torch.dtype, is_cuda: bool) -> int:
    """Vocabulary splits S of the forward: enough programs to fill an H100/H200 (about two per SM)
    when there are few row blocks; 2 under the interpreter (so the tests exercise the combine).
    Every split starts inside the vocabulary."""
    cfg = config("fwd", dtype, interpreting=None if is_cuda else True)
    tiles = triton.cdiv(max(v, 1), cfg.block_v)
    want = 2 if not is_cuda else triton.cdiv(264, triton.cdiv(max(n, 1), cfg.block_n))
    want = max(1, min(want, tiles, 1024))
    per = triton.cdiv(tiles, want)
    return triton.cdiv(tiles, per)


def _common(hidden, weight, bias, scale, softcap, cfg: Config):
    """The launch arguments the forward and backward kernels share (shapes, epilogue, tiles)."""
    return dict(
        N=hidden.shape[0],
        V=weight.shape[0],
        H=hidden.shape[1],
        stride_hn=hidden.stride(0),
        stride_wv=weight.stride(0),
        scale=float(scale),
        softcap=float(softcap or 1.0),
        HAS_BIAS=bias is not None,
        SOFTCAP=softcap is not None,
        UPCAST=_interpreting(),
        PRECISION=_precision(hidden.dtype),
        BLOCK_N=cfg.block_n,
        BLOCK_V=cfg.block_v,
        BLOCK_H=cfg.block_h,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


@launches_on_device
def linear_ce_fwd(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    part: Tensor,
    scale: float,
    softcap: float | None,
    entropy: bool,
    exclude: int | None = None,
) -> None:
    """Per-split partials of the online logsumexp into ``part`` [5, S, N] (module docstring)."""
    n, v = hidden.shape[0], weight.shape[0]
    if n == 0:
        return
    splits = part.shape[1]
    cfg = config("fwd", hidden.dtype, interpreting=None if hidden.is_cuda else True)
    tiles = triton.cdiv(v, cfg.block_v)
    per = triton.cdiv(tiles, splits)
    assert triton.cdiv(tiles, per) == splits, "part's S must come from fwd_splits"
    blocks = triton.cdiv(n, cfg.block_n)
    _linear_ce_fwd_kernel[(blocks * splits,)](
        hidden,
        weight,
        bias if bias is not None else hidden,
        targets,
        part,
        n_row_blocks=blocks,
        tiles_per_split=per,
        plane=splits * n,
        exclude_offset=int(exclude or 0),
        ENTROPY=bool(entropy),
        EXCLUDE=exclude is not None,
        **_common(hidden, weight, bias, scale, softcap, cfg),
    )


@launches_on_device
def _alert_not_deterministic() -> None:
    """torch's rule for an op without a deterministic implementation, under
    torch.use_deterministic_algorithms(True): raise (warn with warn_only=True). The backward adds
    each program's tile products into grad_hidden / grad_weight with float32 atomics, in
    run-to-run order."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    msg = (
        "pygen's fused-loss backward on the triton backend (linear_cross_entropy, linear_log_probs, "
        "info_nce) adds gradients with float32 atomics and has no deterministic implementation, but "
        "torch.use_deterministic_algorithms(True) is set: use the cpu backend on CPU tensors, "
        "torch.use_deterministic_algorithms(True, warn_only=True), or turn it off"
    )
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(msg, stacklevel=3)
    else:
        raise RuntimeError(msg)


def linear_ce_bwd(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    lse: Tensor,
    coef: Tensor,
    grad_h: Tensor | None,
    grad_w: Tensor | None,
    grad_b: Tensor | None,
    scale: float,
    softcap: float | None,
    filter_eps: float,
    entropy: bool,
    exclude: int | None = None,
) -> None:
    """Accumulate the gradients of the recomputed tiles into grad_h / grad_w / grad_b (module
    docstring); a None gradient is not computed."""
    n, v = hidden.shape[0], weight.shape[0]
    if n == 0 or (grad_h is None and grad_w is None and grad_b is None):
        return
    _alert_not_deterministic()
    cfg = config("bwd", hidden.dtype, interpreting=None if hidden.is_cuda else True)
    blocks = triton.cdiv(n, cfg.block_n)
    _linear_ce_bwd_kernel[(blocks * triton.cdiv(v, cfg.block_v),)](
        hidden,
        weight,
        bias if bias is not None else hidden,
        targets,
        lse,
        coef,
        grad_h if grad_h is not None else lse,
        grad_w if grad_w is not None else lse,
        grad_b if grad_b is not None else lse,
        filter_eps=float(filter_eps),
        n_row_blocks=blocks,
        exclude_offset=int(exclude or 0),
        ENTROPY=bool(entropy),
        EXCLUDE=exclude is not None,
        FILTER=filter_eps > 0,
        NEED_H=grad_h is not None,
        NEED_W=grad_w is not None,
        NEED_B=grad_b is not None,
        **_common(hidden, weight, bias, scale, softcap, cfg),
    )


# ----------------------------------------------------------------------------------------------
# offline-compile specs (pygen inspect, tests/common/test_compiled_kernels.py): DeepSeek-V3's head
# (H = 7168, V = 129,280) at 8k tokens, bf16 and fp32, with bias / softcap off (the common LM head)
# ----------------------------------------------------------------------------------------------
_TY = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def _spec(pass_: str, dtype: torch.dtype, **flags):
    cfg = config(pass_, dtype, interpreting=False)
    t, i32 = _TY[dtype], "i32"
    sig = {"h_ptr": f"*{t}", "w_ptr": f"*{t}", "b_ptr": f"*{t}", "t_ptr": "*i64"}
    ints = ["N", "V", "H", "stride_hn", "stride_wv"]
    if pass_ == "fwd":
        fn = _linear_ce_fwd_kernel
        sig.update(part_ptr="*fp32")
        ints += ["n_row_blocks", "tiles_per_split", "plane", "exclude_offset"]
    else:
        fn = _linear_ce_bwd_kernel
        sig.update(lse_ptr="*fp32", coef_ptr="*fp32", gh_ptr="*fp32", gw_ptr="*fp32", gb_ptr="*fp32")
        ints += ["n_row_blocks", "exclude_offset"]
    sig.update({a: i32 for a in ints}, scale="fp32", softcap="fp32")
    if pass_ == "bwd":
        sig["filter_eps"] = "fp32"
    consts = {
        "HAS_BIAS": False,
        "SOFTCAP": False,
        "ENTROPY": False,
        "EXCLUDE": False,
        "BLOCK_N": cfg.block_n,
        "BLOCK_V": cfg.block_v,
        "BLOCK_H": cfg.block_h,
        "UPCAST": False,
        "PRECISION": _precision(dtype),
        **flags,
    }
    if pass_ == "bwd":
        consts = {"FILTER": True, "NEED_H": True, "NEED_W": True, "NEED_B": False, **consts}
    name = f"linear_ce_{pass_}[{t}]"
    div = ("H", "stride_hn", "stride_wv")
    tc = dtype != torch.float32
    return compile_spec(fn, name, sig, consts, cfg.num_warps, cfg.num_stages, div, tensor_cores=tc)


def _specs():
    return [_spec(p, dt) for p in ("fwd", "bwd") for dt in (torch.bfloat16, torch.float32)]


# ----------------------------------------------------------------------------------------------
# GRPO loss (kernels/losses/grpo.py states the math and layouts)
#   grpo_fwd(log_probs, old, ref, adv, mask, part, eps_low, eps_high, beta)
#       part [2, S, B], S = grpo_t_blocks(T, is_cuda); every entry written
#   grpo_bwd(g, log_probs, old, ref, adv, mask, grad, eps_low, eps_high, beta)
#       grad [B, T] in log_probs' dtype, unit stride along T; every entry written
# adv, part and g are in the compute dtype (float32; float64 for float64 log-probs); old / ref may
# be None (no ratio / no KL term); [B, T] tensors have unit stride along T.
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GrpoConfig:
    block_b: int
    block_t: int
    num_warps: int


# 4 x 1024 tokens per program: 32 values (8 loads of 16 bytes) per thread and tensor at 4 warps, and
# B T / 4096 programs (a DeepSeek-R1-style batch of 256 x 8192 tokens: 512, about 4 per SM)
_GRPO_GPU = GrpoConfig(4, 1024, 4)
_GRPO_INTERPRETER = GrpoConfig(4, 32, 1)  # several tiles along both dims at test sizes


def grpo_config(is_cuda: bool) -> GrpoConfig:
    return _GRPO_GPU if is_cuda and not _interpreting() else _GRPO_INTERPRETER


def grpo_t_blocks(t: int, is_cuda: bool) -> int:
    """The number S of T blocks, the forward partials' middle dim."""
    return triton.cdiv(t, grpo_config(is_cuda).block_t)


def _grpo_operands(log_probs, old, ref, mask):
    """Pointers (log_probs standing in for a missing old / ref) and row strides."""
    m = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
    o = old if old is not None else log_probs
    r = ref if ref is not None else log_probs
    strides = dict(
        stride_lp=log_probs.stride(0), stride_old=o.stride(0), stride_ref=r.stride(0), stride_mask=m.stride(0)
    )
    return (log_probs, o, r, m), dict(HAS_OLD=old is not None, HAS_REF=ref is not None, **strides)


def _grpo_launch(log_probs, old, ref, adv, mask, out, g, eps_low, eps_high, beta, backward: bool):
    b, t = log_probs.shape
    if b == 0 or t == 0:
        return
    cfg = grpo_config(log_probs.is_cuda)
    nt = triton.cdiv(t, cfg.block_t)
    assert backward or out.shape[1] == nt, "part's S must come from grpo_t_blocks"
    (lp, o, r, m), kw = _grpo_operands(log_probs, old, ref, mask)
    _grpo_loss_kernel[(triton.cdiv(b, cfg.block_b) * nt,)](
        lp, o, r, adv, m, out, g, b, t, stride_out=out.stride(0) if backward else 0, n_t_blocks=nt,
        eps_low=split(eps_low), eps_high=split(eps_high), beta=split(beta), BACKWARD=backward,
        BLOCK_B=cfg.block_b, BLOCK_T=cfg.block_t, UPCAST=_interpreting() and out.dtype == torch.bfloat16,
        num_warps=cfg.num_warps, **kw,
    )  # fmt: skip


@launches_on_device
def grpo_fwd(
    log_probs: Tensor,
    old: Tensor | None,
    ref: Tensor | None,
    adv: Tensor,
    mask: Tensor,
    part: Tensor,
    eps_low: float,
    eps_high: float,
    beta: float,
) -> None:
    _grpo_launch(log_probs, old, ref, adv, mask, part, adv, eps_low, eps_high, beta, backward=False)


@launches_on_device
def grpo_bwd(
    g: Tensor,
    log_probs: Tensor,
    old: Tensor | None,
    ref: Tensor | None,
    adv: Tensor,
    mask: Tensor,
    grad: Tensor,
    eps_low: float,
    eps_high: float,
    beta: float,
) -> None:
    _grpo_launch(log_probs, old, ref, adv, mask, grad, g, eps_low, eps_high, beta, backward=True)


def _grpo_spec(pass_: str):
    """float32 log-probs (what linear_log_probs returns), a bool mask, old and ref present."""
    cfg = _GRPO_GPU
    ptrs = ("lp_ptr", "old_ptr", "ref_ptr", "adv_ptr", "mask_ptr", "out_ptr", "g_ptr")
    sig = {p: "*u8" if p == "mask_ptr" else "*fp32" for p in ptrs}
    strides = ["stride_lp", "stride_old", "stride_ref", "stride_mask", "stride_out"]
    sig.update({a: "i32" for a in ["B", "T", *strides, "n_t_blocks"]})
    sig.update({a: ("fp32", "fp32") for a in ("eps_low", "eps_high", "beta")})  # kernels/_args.py pairs
    consts = {"HAS_OLD": True, "HAS_REF": True, "BACKWARD": pass_ == "bwd", "BLOCK_B": cfg.block_b,
              "BLOCK_T": cfg.block_t, "UPCAST": False}  # fmt: skip
    fn = _grpo_loss_kernel
    return compile_spec(fn, f"grpo_loss_{pass_}[fp32]", sig, consts, cfg.num_warps, None, ("T", *strides))


COMPILE_SPECS = _specs() + [_grpo_spec("fwd"), _grpo_spec("bwd")]
