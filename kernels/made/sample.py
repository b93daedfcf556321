"""Persistent Triton kernel for autoregressive MADE sampling (pygen.ops.made_sample, feedforward
networks): all D steps of all layers in ONE launch, instead of one masked_linear launch per layer
per step (about 4,700 launches for D = 784 with two hidden layers).

Each program owns BLOCK_B batch rows and walks the same schedule as the step loop in
pygen/ops/_made_sample.py: at step s it computes, for every hidden layer l, the hidden units
[c0, e) that step s newly makes computable (units sorted by degree, so they are a contiguous
range), reading the prefix [0, p) of the layer below (every unit of degree <= t_s), then the
output rows of the input sampled at step s, then that input itself. The layers' activations live
in a global scratch row block that only this program touches; a barrier between dependent phases
makes one phase's stores visible to the next phase's loads (all threads of the program).

Layouts (built once per call by the host side, pygen/ops/_made_sample.py)
----------------------------------------------------------------------------
scratch  : [B, S] weight dtype, contiguous. Buffer 0 (columns [0, D)) holds the sampled inputs in
           sorted (degree) order; buffer l >= 1 (columns [off[l], off[l] + width[l])) holds hidden
           layer l, units sorted by degree.
deg      : [S] int32, the degree of every scratch column (same offsets).
w        : flat weight dtype; layer l (l < L = number of weights) is [width[l+1], width[l]]
           row-major at w_off[l], columns permuted like buffer l, rows like buffer l + 1; the
           output layer (l = L - 1) is [D * m, width[L-1]] with rows in nflows' order
           (input j's params are rows j*m .. j*m + m - 1).
bias     : flat, the same row order, zeros where a layer has none.
ctx      : [B, S] (HAS_CTX) context term added to hidden layer l's pre-activation (buffer l + 1).
meta     : int32 [L, 4], row l: (column offset and width of buffer l, offsets of weight l and bias l,
           the layer that reads buffer l; weight L - 1 is the output layer).
sched    : int32 [D, L - 1, 3] (c0, e, p) per step and hidden layer; sched_out int32 [D, 2]
           (j = the original index of the input sampled at step s, p = prefix of the last hidden
           buffer it reads).
noise    : [B, D] in sorted order.  params_out: [B, D * m] (SAVE_PARAMS).

Math per step (pygen.ref.made.STEPS): h_{l+1}[:, c0:e] = act(h_l[:, :p] . (W_l * M)[c0:e, :p]^T
+ b + ctx) with M[o, i] = deg_o >= deg_i; params = h_{L-1}[:, :p] . (W_out * M_strict)[rows, :p]^T
+ b; x_s = step(params, noise_s): bernoulli (u < sigmoid(p0)), gaussian (p0 + exp(p1) e), affine
(nflows' MAF inverse, (e - p1) / (sigmoid(p0 + 2) + 1e-3)). Accumulation in fp32; every stored
activation and every param is rounded to the weight dtype, as the step loop does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._compile_spec import compile_spec
from .._device import interpreting as _interpreting, launches_on_device
from .._grid import program_block
from . import _activate, _cast, _mma, _precision, _upcast

KIND_CODES = {"bernoulli": 0, "gaussian": 1, "affine": 2}
AFFINE_SCALE_SHIFT = 2.0  # pygen.ref.made.AFFINE_SCALE_SHIFT (nflows' MAF)
AFFINE_EPS = 1e-3  # pygen.ref.made.AFFINE_EPS


@triton.jit
def _prefix_linear(
    h_ptr,
    r_ok,
    p,
    ind_ptr,
    w_ptr,
    w_stride,
    b_ptr,
    od_ptr,
    offs_n,
    n_ok,
    STRICT: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """h[:, :p] . (W * M)[offs_n, :p]^T + b[offs_n] in fp32, M from the degrees (od[offs_n] against
    ind[:p]). h_ptr: [rows, 1] pointers to the first column of a scratch buffer (rows masked by
    r_ok), ind_ptr: that buffer's degrees; w_ptr / w_stride, b_ptr, od_ptr: the layer's weight rows,
    bias and row degrees."""
    od = tl.load(od_ptr + offs_n, mask=n_ok, other=0)
    acc = tl.zeros((h_ptr.shape[0], offs_n.shape[0]), dtype=tl.float32)
    for k0 in range(0, p, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < p
        h = tl.load(h_ptr + offs_k[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + offs_n[None, :] * w_stride + offs_k[:, None], mask=n_ok[None, :] & k_ok[:, None], other=0.0)
        ind = tl.load(ind_ptr + offs_k, mask=k_ok, other=0)
        if STRICT:
            keep = od[None, :] > ind[:, None]
        else:
            keep = od[None, :] >= ind[:, None]
        w = tl.where(keep, w, tl.zeros_like(w))
        acc = _mma(h, w, acc, UPCAST, PRECISION)
    return acc + tl.load(b_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _made_sample_persistent_kernel(
    s_ptr,  # scratch [B, S]
    deg_ptr,  # [S] int32 degrees of the scratch columns
    w_ptr,
    b_ptr,  # flat weights / biases
    ctx_ptr,  # [B, S] context terms (HAS_CTX)
    meta_ptr,  # int32 [L, 4]
    sched_ptr,  # int32 [D, L - 1, 3]
    sched_out_ptr,  # int32 [D, 2]
    out_deg_ptr,  # [D * m] int32 output-unit degrees (original row order)
    noise_ptr,  # [B, D] sorted order
    params_ptr,  # [B, D * m] (SAVE_PARAMS)
    B,
    D,
    L,
    M_OUT,  # batch, features, number of weights, output_multiplier
    stride_s,
    stride_noise,
    stride_params,
    ACT: tl.constexpr,
    KIND: tl.constexpr,
    HAS_CTX: tl.constexpr,
    SAVE_PARAMS: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr,  # batch rows per program
    BLOCK_N: tl.constexpr,  # hidden units per tile (a step makes only a few computable)
    BLOCK_K: tl.constexpr,  # reduction chunk
    BLOCK_O: tl.constexpr,  # output rows per step (>= M_OUT, >= 16 for tl.dot)
):
    dtype = s_ptr.dtype.element_ty
    rows, r_ok = program_block(0, B, BLOCK_B)
    s_rows = s_ptr + rows[:, None] * stride_s  # [BLOCK_B, 1]: column 0 of this program's scratch rows
    offs_o = tl.arange(0, BLOCK_O)
    o_ok = offs_o < M_OUT
    out_w_off = tl.load(meta_ptr + (L - 1) * 4 + 2)
    out_b_off = tl.load(meta_ptr + (L - 1) * 4 + 3)
    last_src = tl.load(meta_ptr + (L - 1) * 4)
    last_w = tl.load(meta_ptr + (L - 1) * 4 + 1)
    for s in range(D):
        # ---- hidden units made computable by step s, layer by layer ----
        for l in range(L - 1):
            c0 = tl.load(sched_ptr + (s * (L - 1) + l) * 3)
            e = tl.load(sched_ptr + (s * (L - 1) + l) * 3 + 1)
            p = tl.load(sched_ptr + (s * (L - 1) + l) * 3 + 2)
            src_off = tl.load(meta_ptr + l * 4)
            src_w = tl.load(meta_ptr + l * 4 + 1)
            dst_off = tl.load(meta_ptr + (l + 1) * 4)
            w_off = tl.load(meta_ptr + l * 4 + 2)
            b_off = tl.load(meta_ptr + l * 4 + 3)
            for n0 in range(c0, e, BLOCK_N):
                offs_n = n0 + tl.arange(0, BLOCK_N)
                n_ok = offs_n < e
                z = _prefix_linear(
                    s_rows + src_off,
                    r_ok,
                    p,
                    deg_ptr + src_off,
                    w_ptr + w_off,
                    src_w,
                    b_ptr + b_off,
                    deg_ptr + dst_off,
                    offs_n,
                    n_ok,
                    False,
                    UPCAST,
                    PRECISION,
                    BLOCK_K,
                )
                cols = rows[:, None] * stride_s + dst_off + offs_n[None, :]
                ok = r_ok[:, None] & n_ok[None, :]
                if HAS_CTX:
                    # the step loop rounds the linear part to the weight dtype before adding ctx
                    z = _cast(z, dtype, UPCAST).to(tl.float32)
                    z = z + tl.load(ctx_ptr + cols, mask=ok, other=0.0).to(tl.float32)
                    z = _cast(z, dtype, UPCAST).to(tl.float32)
                tl.store(s_ptr + cols, _cast(_activate(z, ACT), dtype, UPCAST), mask=ok)
            tl.debug_barrier()  # layer l + 1's new units are read by the next layer (other threads)
        # ---- output rows of the input sampled at step s, then the sample ----
        j = tl.load(sched_out_ptr + s * 2)
        p = tl.load(sched_out_ptr + s * 2 + 1)
        orow = j * M_OUT + offs_o
        prm = _prefix_linear(
            s_rows + last_src,
            r_ok,
            p,
            deg_ptr + last_src,
            w_ptr + out_w_off,
            last_w,
            b_ptr + out_b_off,
            out_deg_ptr,
            orow,
            o_ok,
            True,
            UPCAST,
            PRECISION,
            BLOCK_K,
        )
        prm = _cast(prm, dtype, UPCAST).to(tl.float32)
        if SAVE_PARAMS:
            tl.store(
                params_ptr + rows[:, None] * stride_params + orow[None, :],
                _cast(prm, dtype, UPCAST),
                mask=r_ok[:, None] & o_ok[None, :],
            )
        p0 = tl.sum(tl.where((offs_o == 0)[None, :], prm, 0.0), axis=1)
        u = tl.load(noise_ptr + rows * stride_noise + s, mask=r_ok, other=0.0).to(tl.float32)
        if KIND == 0:
            x = tl.where(u < (1.0 / (1.0 + tl.exp(-p0))), 1.0, 0.0)
        else:
            p1 = tl.sum(tl.where((offs_o == 1)[None, :], prm, 0.0), axis=1)
            if KIND == 1:
                x = p0 + tl.exp(p1) * u
            else:
                x = (u - p1) / (1.0 / (1.0 + tl.exp(-(p0 + 2.0))) + 1e-3)
        tl.store(s_ptr + rows * stride_s + s, _cast(x, dtype, UPCAST), mask=r_ok)
        tl.debug_barrier()  # x_s is read by the next step's first layer (other threads)


def block_sizes(dtype: torch.dtype, interpreting: bool | None = None) -> tuple[int, int, int, int]:
    """(BLOCK_B, BLOCK_N, BLOCK_K, num_warps). Under the interpreter each program and tl.dot step
    costs milliseconds, so the smallest legal tiles (``interpreting=False``: the GPU tiles whatever
    TRITON_INTERPRET says, for the offline specs). On the GPU 64 rows per program (the smallest
    wgmma M; B = 4096 gives 64 programs), BLOCK_N at the tl.dot minimum (a step makes only about
    H / D units computable) and 64-wide reduction chunks; these compile for sm_90 without spills
    (16-bit: 233 registers at 8 warps, wgmma; a 128-wide chunk at 4 warps spilled 504 stores;
    fp32: 206 registers at 4 warps)."""
    if _interpreting() if interpreting is None else interpreting:
        return 16, 16, 32, 4
    return (64, 16, 64, 4) if dtype == torch.float32 else (64, 16, 64, 8)


@launches_on_device
def made_sample_persistent(
    scratch: Tensor,
    deg: Tensor,
    w: Tensor,
    b: Tensor,
    ctx: Tensor | None,
    meta: Tensor,
    sched: Tensor,
    sched_out: Tensor,
    out_deg: Tensor,
    noise: Tensor,
    params: Tensor | None,
    n_weights: int,
    mult: int,
    activation_code: int,
    kind: str,
) -> None:
    """Launch the persistent sampler (layouts in the module docstring); fills scratch buffer 0 with
    the samples in sorted order and ``params`` (when not None) with the network's outputs."""
    bsz, d = noise.shape
    if bsz == 0 or d == 0:
        return
    block_b, block_n, block_k, warps = block_sizes(scratch.dtype)
    block_o = max(16, triton.next_power_of_2(mult))
    _made_sample_persistent_kernel[(triton.cdiv(bsz, block_b),)](
        scratch,
        deg,
        w,
        b,
        ctx if ctx is not None else scratch,
        meta,
        sched,
        sched_out,
        out_deg,
        noise,
        params if params is not None else scratch,
        bsz,
        d,
        n_weights,
        mult,
        scratch.stride(0),
        noise.stride(0),
        params.stride(0) if params is not None else 0,
        ACT=activation_code,
        KIND=KIND_CODES[kind],
        HAS_CTX=ctx is not None,
        SAVE_PARAMS=params is not None,
        UPCAST=_upcast(scratch),
        PRECISION=_precision(scratch),
        BLOCK_B=block_b,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        BLOCK_O=block_o,
        num_warps=warps,
        num_stages=1,
    )


def compile_specs() -> list[dict]:
    """Offline sm_90 compile entries (appended to kernels/made/__init__.py's COMPILE_SPECS)."""
    specs = []
    for tname, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32)):
        p = f"*{tname}"
        bb, bn, bk, warps = block_sizes(dt, interpreting=False)
        sig = {
            "s_ptr": p,
            "deg_ptr": "*i32",
            "w_ptr": p,
            "b_ptr": p,
            "ctx_ptr": p,
            "meta_ptr": "*i32",
            "sched_ptr": "*i32",
            "sched_out_ptr": "*i32",
            "out_deg_ptr": "*i32",
            "noise_ptr": p,
            "params_ptr": p,
            "B": "i32",
            "D": "i32",
            "L": "i32",
            "M_OUT": "i32",
            "stride_s": "i32",
            "stride_noise": "i32",
            "stride_params": "i32",
        }
        consts = {
            "ACT": 1,
            "KIND": 0,
            "HAS_CTX": False,
            "SAVE_PARAMS": False,
            "UPCAST": False,
            "PRECISION": "ieee" if dt == torch.float32 else "tf32",
            "BLOCK_B": bb,
            "BLOCK_N": bn,
            "BLOCK_K": bk,
            "BLOCK_O": 16,
        }
        # recorded without alignment attrs (docs/inspect reports)
        specs.append(
            compile_spec(
                _made_sample_persistent_kernel,
                f"made_sample_persistent[{tname}]",
                sig,
                consts,
                warps,
                1,
                aligned=False,
                tensor_cores=dt != torch.float32,
            )
        )
    return specs
