"""Glow's LU-parametrised 1x1-convolution weight in one launch, for pygen.kernels.flows.

    W        = P @ L' @ U',   L' = tril(L, -1) + I,   U' = triu(U, 1) + diag(s)
    logdet   = scale * sum_c log|s_c|        (scale = H*W of the activation)

Backward (dW from the 1x1-conv backward, g = d loss / d logdet):
    dA  = P^T dW              (A = L' U')
    dL  = tril(dA U'^T, -1)   dU = triu(L'^T dA, 1)   ds = diag(L'^T dA) + g * scale / s

One program computes the C x C result (C <= 64) as a [BC, BC] float32 tile, accumulating the
products over K chunks of 16 with IEEE fp32 dots (no TF32: W feeds both directions of the flow);
the chunks of P, L, U, dW are read from global memory (at most 16 KB each, cache resident), which
keeps a whole 64 x 64 x 64 FMA product from being unrolled into registers (that version spilled
13 KB at 4 warps in `pygen inspect`). This replaces the ~10 small
PyTorch launches (tril, triu, eye, diag, adds, two matmuls, log, abs, sum) of forming W and its
log-det with one, forward and backward. Larger C falls back to PyTorch in the op.

The matrices the kernels read through strides (P, L, U, dW) come as (pointer, row stride, column
stride) tuple arguments (docs/ARCHITECTURE.md, house style), read by ``_at``.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .._args import view as _view
from .._bf16 import cast as _cast
from .._compile_spec import compile_spec
from .._device import launches_on_device

MAX_C = 64


@triton.jit
def _at(m, i, j, mask):
    # m[i, j] in float32 of a matrix m = (pointer, row stride, column stride); 0 where not ``mask``
    ptr, s0, s1 = m
    return tl.load(ptr + i * s0 + j * s1, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _lower_at(lower, i, j, C):
    # L'[i, j] = L[i, j] below the diagonal, 1 on it, 0 above (and outside C x C)
    inside = (i < C) & (j < C)
    return tl.where(inside & (i == j), 1.0, _at(lower, i, j, inside & (i > j)))


@triton.jit
def _upper_at(upper, s_ptr, i, j, C):
    # U'[i, j] = U[i, j] above the diagonal, s[i] on it, 0 below (and outside C x C)
    inside = (i < C) & (j < C)
    d = tl.load(s_ptr + i + j * 0, mask=inside & (i == j), other=0.0).to(tl.float32)
    return _at(upper, i, j, inside & (i < j)) + d


@triton.jit
def _lu_weight_fwd_kernel(
    perm,  # (pointer, 2 strides): [C, C] permutation, any strides
    lower,  # (pointer, 2 strides): [C, C] L, any strides
    upper,  # (pointer, 2 strides): [C, C] U, any strides
    s_ptr,  # [C] signed diagonal, contiguous
    w_ptr,  # [C, C] out, contiguous
    ld_ptr,  # [1] float32 out: scale * sum log|s|
    C,
    scale,
    UPCAST: tl.constexpr,  # interpreter: round bf16 stores in float32 first (kernels/_bf16.py)
    BC: tl.constexpr,
    BK: tl.constexpr,  # K chunk of the products (16: the smallest tl.dot)
):
    rows = tl.arange(0, BC)
    acc = tl.zeros([BC, BC], dtype=tl.float32)
    # W = sum_k P[:, k] A[k, :] with the rows of A = L' U' formed chunk by chunk (operands come
    # from L1/L2: the matrices are at most 16 KB), so no 64 x 64 x 64 product is ever unrolled
    for k0 in range(0, C, BK):
        kk = k0 + tl.arange(0, BK)
        a_k = tl.zeros([BK, BC], dtype=tl.float32)
        for m0 in range(0, C, BK):
            mm = m0 + tl.arange(0, BK)
            lk = _lower_at(lower, kk[:, None], mm[None, :], C)
            um = _upper_at(upper, s_ptr, mm[:, None], rows[None, :], C)
            a_k = tl.dot(lk, um, a_k, input_precision="ieee")
        pk = _at(perm, rows[:, None], kk[None, :], (rows[:, None] < C) & (kk[None, :] < C))
        acc = tl.dot(pk, a_k, acc, input_precision="ieee")
    inside = (rows[:, None] < C) & (rows[None, :] < C)
    tl.store(w_ptr + rows[:, None] * C + rows[None, :], _cast(acc, w_ptr.dtype.element_ty, UPCAST), mask=inside)
    s = tl.load(s_ptr + rows, mask=rows < C, other=1.0).to(tl.float32)
    tl.store(ld_ptr, tl.sum(tl.log(tl.abs(s)), axis=0) * scale)


@triton.jit
def _lu_weight_bwd_kernel(
    perm,  # (pointer, 2 strides), as in the forward
    lower,
    upper,
    s_ptr,
    dw,  # (pointer, 2 strides): [C, C] gradient of W, any strides
    gld_ptr,  # [1] gradient of the scaled log-det
    dl_ptr,
    du_ptr,  # [C, C] out, contiguous
    ds_ptr,  # [C] out
    C,
    scale,
    UPCAST: tl.constexpr,  # interpreter: round bf16 stores in float32 first (kernels/_bf16.py)
    BC: tl.constexpr,
    BK: tl.constexpr,
):
    # grid (2,): program 0 forms dL' = dA U'^T, program 1 dU' = L'^T dA (one accumulator each:
    # both in one program spilled at BC = 64); dA = P^T dW is formed chunk by chunk in both
    rows = tl.arange(0, BC)
    r2 = rows[:, None]
    c2 = rows[None, :]
    inside = (r2 < C) & (c2 < C)
    acc = tl.zeros([BC, BC], dtype=tl.float32)
    if tl.program_id(0) == 0:
        for k0 in range(0, C, BK):
            kk = k0 + tl.arange(0, BK)
            da_cols = tl.zeros([BC, BK], dtype=tl.float32)  # dA[:, k] = sum_m P[m, :]^T dW[m, k]
            for m0 in range(0, C, BK):
                mm = m0 + tl.arange(0, BK)
                pt_all = _at(perm, mm[None, :], r2, (mm[None, :] < C) & (r2 < C))
                dw_mk = _at(dw, mm[:, None], kk[None, :], (mm[:, None] < C) & (kk[None, :] < C))
                da_cols = tl.dot(pt_all, dw_mk, da_cols, input_precision="ieee")
            ut = _upper_at(upper, s_ptr, c2, kk[:, None], C)  # [BK, BC]: U'[j, k]
            acc = tl.dot(da_cols, ut, acc, input_precision="ieee")
        tl.store(dl_ptr + r2 * C + c2, _cast(tl.where(r2 > c2, acc, 0.0), dl_ptr.dtype.element_ty, UPCAST), mask=inside)
    else:
        for k0 in range(0, C, BK):
            kk = k0 + tl.arange(0, BK)
            da_rows = tl.zeros([BK, BC], dtype=tl.float32)  # dA[k, :] = sum_m P[m, k] dW[m, :]
            for m0 in range(0, C, BK):
                mm = m0 + tl.arange(0, BK)
                pt_k = _at(perm, mm[None, :], kk[:, None], (mm[None, :] < C) & (kk[:, None] < C))
                dw_m = _at(dw, mm[:, None], c2, (mm[:, None] < C) & (c2 < C))
                da_rows = tl.dot(pt_k, dw_m, da_rows, input_precision="ieee")
            lt = _lower_at(lower, kk[None, :], r2, C)  # [BC, BK]: L'[k, i]
            acc = tl.dot(lt, da_rows, acc, input_precision="ieee")
        tl.store(du_ptr + r2 * C + c2, _cast(tl.where(r2 < c2, acc, 0.0), du_ptr.dtype.element_ty, UPCAST), mask=inside)
        g = tl.load(gld_ptr).to(tl.float32)
        s = tl.load(s_ptr + rows, mask=rows < C, other=1.0).to(tl.float32)
        ds = tl.sum(tl.where(r2 == c2, acc, 0.0), axis=1) + g * scale / s
        tl.store(ds_ptr + rows, _cast(ds, ds_ptr.dtype.element_ty, UPCAST), mask=rows < C)


def _bc(c: int) -> int:
    return max(16, triton.next_power_of_2(c))


def _warps(c: int) -> int:
    return 8 if _bc(c) >= 64 else 4


def _opts(t) -> dict:
    return {"num_warps": _warps(t.shape[0])} if t.is_cuda else {}


def _launch(kernel, programs: int, factors: tuple, rest: tuple, scale: float) -> None:
    """``kernel`` on ``programs`` programs with the arguments both LU kernels take: the factors
    (perm, lower, upper as strided views, diag), ``rest`` (the kernel's own arguments after diag:
    outputs, and in the backward the incoming gradients first), C, scale."""
    perm, lower, upper, diag = factors
    c = lower.shape[0]
    kernel[(programs,)](
        _view(perm),
        _view(lower),
        _view(upper),
        diag,
        *rest,
        c,
        float(scale),
        UPCAST=not lower.is_cuda,  # the interpreter's bf16 stores round in float32 first
        BC=_bc(c),
        BK=16,
        **_opts(lower),
    )


@launches_on_device
def lu_weight_fwd(
    perm: Tensor, lower: Tensor, upper: Tensor, diag: Tensor, w: Tensor, logdet: Tensor, scale: float
) -> None:
    """w: [C, C] contiguous out; logdet: [1] float32 out (scale * sum log|diag|). C <= 64."""
    _launch(_lu_weight_fwd_kernel, 1, (perm, lower, upper, diag), (w, logdet), scale)


@launches_on_device
def lu_weight_bwd(
    perm: Tensor,
    lower: Tensor,
    upper: Tensor,
    diag: Tensor,
    grad_w: Tensor,
    grad_logdet: Tensor,
    dl: Tensor,
    du: Tensor,
    ds: Tensor,
    scale: float,
) -> None:
    """dl, du: [C, C] contiguous out (zero outside the strictly lower / upper parts); ds: [C]."""
    rest = (_view(grad_w), grad_logdet, dl, du, ds)
    _launch(_lu_weight_bwd_kernel, 2, (perm, lower, upper, diag), rest, scale)


# (kernel, its matrix views after the factors' perm, lower, upper, its pointers after s_ptr)
_KERNELS = (
    (_lu_weight_fwd_kernel, (), ("w_ptr", "ld_ptr")),
    (_lu_weight_bwd_kernel, ("dw",), ("gld_ptr", "dl_ptr", "du_ptr", "ds_ptr")),
)


def compile_specs() -> list[dict]:
    specs = []
    for c in (12, 48):
        for kernel, views, ptrs in _KERNELS:
            sig = {v: ("*fp32", "i32", "i32") for v in ("perm", "lower", "upper", *views)}
            sig.update({p: "*fp32" for p in ("s_ptr", *ptrs)}, C="i32", scale="fp32")
            consts = {"UPCAST": False, "BC": _bc(c), "BK": 16}
            specs.append(compile_spec(kernel, None, sig, consts, _warps(c), None, aligned=False))
    return specs
